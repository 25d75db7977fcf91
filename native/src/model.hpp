// The package's model on ExecuTorch: trunk.pte (the trunk, XNNPACK) and top.pte (the top, its tensors as
// inputs) run on the top's tensors from top.safetensors with a personal state applied. Both programs' bytes
// are read once and checked against the manifest before they are loaded, so what runs is what was verified.
// The trunk program may instead be another entry of the manifest's `executorch` object with the same
// interface: "trunk_int8" is trunk.int8.pte (int8 Linear layers and embedding table, --int8 at export).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "package.hpp"
#include "personal.hpp"
#include "safetensors.hpp"

namespace edgetune {

struct Features;  // train.hpp

struct ModelError : std::runtime_error {
  enum class Kind { Unsupported, Runtime, Argument };
  ModelError(Kind kind_, const std::string& message) : std::runtime_error(message), kind(kind_) {}
  Kind kind;
};

// Token ids of several texts, right-padded to a common width, with each row's length.
struct IdBatch {
  std::vector<int64_t> ids;
  std::vector<int64_t> lengths;
  int64_t rows = 0, width = 0;
};

class Model {
 public:
  // ``package`` must outlive the model; ``state`` may be null (the global model); ``threads`` 0: the runtime's.
  // ``trunk_entry``: the trunk program, the manifest's ``executorch.<trunk_entry>.file`` ("trunk": trunk.pte,
  // fp32; "trunk_int8": trunk.int8.pte). A package without that entry is refused (ModelError Unsupported).
  Model(const Package& package, std::unique_ptr<PersonalState> state, int threads,
        const std::string& trunk_entry = "trunk");
  ~Model();

  int64_t num_labels() const { return num_labels_; }
  int64_t hidden_size() const { return hidden_; }
  int64_t max_batch() const { return max_batch_; }
  const std::string& state_kind() const { return state_kind_; }
  // The trunk program's file name (trunk.pte, trunk.int8.pte).
  const std::string& trunk_file() const { return trunk_file_; }
  // The top's tensors the model predicts with (the package's, with the personal state applied).
  const Tensors& weights() const { return weights_; }

  // The trunk's output (rows x width x hidden, padding positions as the program leaves them).
  std::vector<float> features(const IdBatch& batch);
  // Frees the trunk program (its bytes, packed weights and planned memory): a job that has cached the trunk's
  // output needs only the top. features() is refused afterwards.
  void release_trunk();
  // Frees the top program (its memory plan is sized for max_batch rows) while a training program runs beside
  // it; the next top_logits() loads it again from the package (verified again).
  void release_top();
  // Logits (rows x num_labels) of the top on trunk features.
  std::vector<float> top_logits(const std::vector<float>& features, const IdBatch& batch,
                                const Tensors* replacing = nullptr);
  // Logits of any number of rows: batches of at most max_batch rows, each trimmed to its longest row.
  std::vector<float> logits(const int64_t* ids, const int64_t* lengths, int64_t rows, int64_t width);
  // Logits (rows x num_labels) of cached trunk ``features`` (of any number of rows), with the tensors of
  // ``replacing`` in place of the model's (a candidate top), or the model's own when null.
  std::vector<float> logits_of_features(const Features& features, const Tensors* replacing = nullptr);

 private:
  struct Programs;
  const Package& package_;
  std::unique_ptr<Programs> programs_;
  std::vector<std::string> names_;  // top.pte's tensor inputs, in order
  Tensors weights_;                 // the top's tensors, the state applied
  int64_t num_labels_ = 0, hidden_ = 0, max_batch_ = 1, max_length_ = 0;
  std::string state_kind_ = "global";
  std::string trunk_file_, top_file_;
};

// Threads of ExecuTorch's pool (XNNPACK and the optimized kernels): 0 leaves the runtime's choice.
void set_threads(int threads);

}  // namespace edgetune
