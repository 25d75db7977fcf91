// What a killed personalization job needs to go on: the job's identity (a digest of everything that decides its
// result, so that only the same job resumes) and the records its work directory keeps (work.hpp): a finished
// candidate's outcome, and a candidate's training checkpoint after its last epoch. A record is a JSON header and
// a safetensors body; one that cannot be read back is ignored (its candidate starts again).
#pragma once

#include <string>
#include <vector>

#include "job.hpp"
#include "package.hpp"
#include "train.hpp"
#include "work.hpp"

namespace edgetune {

std::string job_identity(const Package& package, const std::vector<std::string>& texts,
                         const std::vector<int64_t>& labels, const PersonalizeSettings& settings,
                         const std::vector<CandidateSpec>& candidates);

// The records are written straight from the tensors in place (no copy of them is made).
void write_checkpoint(const WorkDir& work, const std::string& name, const CheckpointState& state,
                      const std::vector<TensorRef>& tensors);
bool decode_checkpoint(const std::string& bytes, TrainCheckpoint& checkpoint);

void write_candidate(const WorkDir& work, const std::string& name, const CandidateOutcome& outcome);
// Fills the outcome's scores, training record and tensors (its spec and cut are the caller's).
bool decode_candidate(const std::string& bytes, CandidateOutcome& outcome);

}  // namespace edgetune
