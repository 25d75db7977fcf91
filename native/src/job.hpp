// The personalization job of the device (docs/device-runtime.md, "The personalization job"), as
// device_sim.personalize runs it: the guard and validation splits (numpy's draws, as device_sim.split), the
// trunk once over the user's texts, every candidate configuration computed or trained on the cached features
// (the prior shift of device_sim.guard.prior_shift; train.hpp), the one with the best inner validation accuracy
// chosen (ties: the one listed first) and kept only when it beats the global top there (with selection) and
// passes the do-no-harm guard (a one-sided exact McNemar test on the guard split, as device_sim.guard), and the
// personal state written atomically in the spec's format: the chosen top's tensors (kind top_delta, tuner
// full), or kept_global when it is not kept.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "package.hpp"
#include "train.hpp"

namespace edgetune {

// One configuration a selecting job tries (device_sim.settings.DEFAULT_CANDIDATES).
struct CandidateSpec {
  std::string name;
  bool prior = false;      // the global head's bias fitted to the user's label prior: nothing is trained
  bool head_only = false;  // the head and final norm alone (the blocks at learning rate 0)
  std::string tuner = "full";  // full (top_train.pte) or lora (top_train_lora.pte: adapters, final norm, head)
  double lr = 1e-4, head_lr = 3e-3;
  double estimated_seconds = -1;  // the caller's price of it, recorded in the selection (-1: none)
};

struct SkippedCandidate {
  std::string name, reason;
};

// The device's default candidates that the package's programs can train (the full top above the package's cut,
// its head, and LoRA where the package has top_train_lora.pte), in device_sim.settings.DEFAULT_CANDIDATES's order,
// and those it cannot (LoRA without that program), as the Python device's ExecuTorch backends choose them.
std::vector<CandidateSpec> default_candidates(const Package& package);
std::vector<SkippedCandidate> default_skipped(const Package& package);

// The manifest entry of the program that trains ``tuner`` (executorch.train or executorch.train_lora); a tuner the
// package has no program for is a ModelError (Argument) saying why.
const Json& training_program(const Package& package, const std::string& tuner);

struct PersonalizeSettings : TrainSettings {
  double val_fraction = 0.15, guard_fraction = 0.2, guard_alpha = 0.05;
  int threads = 0;
  int64_t cache_batch_size = 8;  // texts per trunk call
  // With ``select``, every candidate (empty: default_candidates() with default_skipped() recorded) and the
  // chosen one kept only if it beats the global top on the validation split; without, the one configuration
  // that lr, head_lr and head_only give (named "configured").
  bool select = true;
  std::string tuner = "full";  // the configured job's tuner (without select): full or lora
  bool int8_trunk = false;  // the features of trunk.int8.pte instead of trunk.pte
  std::vector<CandidateSpec> candidates;
  std::vector<SkippedCandidate> skipped;  // recorded in the selection (those the caller dropped, and why)
};

struct CandidateOutcome {
  CandidateSpec spec;
  TrainResult training;             // empty for the prior candidate
  std::vector<double> prior_shift;  // the prior candidate's bias shift
  double val_accuracy = -1;         // -1: no validation split
  double seconds = 0;
  int train_cut = 0;
};

struct GuardVerdict {
  bool enabled = false, keep_personal = false;
  int64_t num_examples = 0, wins = 0, losses = 0;
  double personal_accuracy = -1, global_accuracy = -1, p_value = 1;
  std::string reason;  // empty when the personal top is kept
};

struct PersonalizeOutcome {
  GuardVerdict guard;
  std::vector<CandidateOutcome> candidates;
  size_t chosen = 0;  // index in candidates
  int64_t num_train = 0, num_val = 0;
  double global_val_accuracy = -1;
  std::string kind;    // top_delta or kept_global
  std::string reason;  // why the chosen top was not kept (empty when it was)
  bool resumed = false;  // an interrupted run of the same job was continued
  const CandidateOutcome& chosen_candidate() const { return candidates.at(chosen); }
};

// The bias shift (one value per label, centred) that fits ``logits`` (rows x classes) to the labels' prior:
// maximum likelihood with an L2 penalty, by damped Newton steps (device_sim.guard.prior_shift).
std::vector<double> prior_shift(const std::vector<float>& logits, const std::vector<int64_t>& labels,
                                int64_t classes, double l2 = 1e-2, int steps = 200);

// One-sided exact p-value of ``wins`` among ``wins + losses`` discordant pairs (device_sim.guard).
double sign_test_p_value(int64_t wins, int64_t losses);

// Called while the job runs: ``stage`` "trunk" (``done`` of ``total`` texts) or "train" (optimizer steps of the
// candidate ``candidate``, ``loss`` the step's).
using JobProgress = std::function<void(const char* stage, const char* candidate, int64_t done, int64_t total,
                                       double loss)>;

// Personalizes ``package`` on the texts and label indices given and writes the state at ``out`` (replacing only an
// empty directory or another personal state, atomically). ``data_name`` is recorded as the data's name.
PersonalizeOutcome personalize(const Package& package, const std::vector<std::string>& texts,
                               const std::vector<int64_t>& labels, const std::string& data_name,
                               const std::string& out, const PersonalizeSettings& settings,
                               const JobProgress& progress = nullptr);

}  // namespace edgetune
