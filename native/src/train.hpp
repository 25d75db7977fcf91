// Training the package's top (top_train.pte) on cached trunk features with ExecuTorch's runtime: the torch
// backend's loop (device_sim.backends.program): epochs over numpy's epoch permutation, batches trimmed to their
// longest example, AdamW with torch's update rule (per-tensor learning rate and weight decay), linear warm-up then
// linear decay, clipping by global norm, validation after every epoch, the best epoch's tensors kept, early
// stopping after ``patience`` epochs without improvement.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "package.hpp"
#include "safetensors.hpp"

namespace edgetune {

// Trunk outputs of several examples, each row its own length (padding is not stored: it reads as zeros).
struct Features {
  int64_t hidden = 0;
  std::vector<int64_t> lengths, offsets;  // per row: tokens, and where its floats start in ``data``
  std::vector<float> data;
  std::vector<int64_t> labels;
  int64_t rows() const { return static_cast<int64_t>(lengths.size()); }
  void add(const float* row, int64_t length, int64_t label);
  // Rows of the given lengths and labels, their values zero until written at row(i) (filled in any order).
  void reserve(const std::vector<int64_t>& row_lengths, const std::vector<int64_t>& row_labels);
  float* row(int64_t i) { return &data[offsets[i]]; }
  // Rows ``idx`` as a batch: right-padded to the longest (at least ``min_width``) with its attention mask.
  void gather(const int64_t* idx, int64_t count, int64_t min_width, std::vector<float>& hidden_out,
              std::vector<int64_t>& mask_out, int64_t& width) const;
};

struct TrainSettings {
  int64_t epochs = 8, batch_size = 16, patience = 3;  // patience < 0: none
  double lr = 1e-4, head_lr = 3e-3, weight_decay = 0.01, warmup_ratio = 0.06, max_grad_norm = 1.0;
  uint64_t seed = 0;
  std::string metric = "accuracy";  // or macro_f1
  bool head_only = false;           // the blocks at learning rate 0
};

struct EpochRecord {
  int64_t epoch = 0, steps = 0;
  double loss = 0, seconds = 0, val_accuracy = -1, val_macro_f1 = -1;  // -1: no validation
};

struct TrainResult {
  Tensors tensors;  // every trained tensor (the best epoch's with validation, else the last)
  std::vector<EpochRecord> history;
  std::vector<double> step_losses;
  int64_t best_epoch = -1;  // -1: no validation
  bool stopped_early = false;
  int64_t planned_bytes = 0;  // the memory top_train.pte's plan sets aside for its largest batch
};

// Where a training run stands after an epoch: enough to go on exactly as if it had never stopped (the epoch
// orders are numpy's per-epoch draws and the program has no dropout, so the rest of the run is determined).
struct CheckpointState {
  int64_t epochs_done = 0, step = 0, without_improvement = 0;
  double best_metric = -1;
  TrainResult so_far;  // history, step losses, best epoch, stopped early (its tensors unused)
};

// A checkpoint read back: per trained tensor, the weights, AdamW's moments and the best epoch's weights.
struct TrainCheckpoint : CheckpointState {
  Tensors live, m, v, best;
};

// Called after every epoch with the run's state and its tensors in place ("live/NAME", "m/NAME", "v/NAME",
// "best/NAME"), valid during the call: written out without a copy.
using EpochHook = std::function<void(const CheckpointState&, const std::vector<TensorRef>&)>;

// Accuracy and macro-F1 over the labels present in truth or predictions (edgetune.metrics).
std::pair<double, double> accuracy_and_macro_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred);

// Trains the package's training program ``program`` (the manifest's executorch.train or executorch.train_lora
// entry: its file, starting from the weights the program holds) on ``train`` (validating on ``val`` when it has rows). ``on_step(step, total,
// loss)`` after every optimizer step, ``on_epoch`` with the run's checkpoint after every epoch (either may be
// empty); ``resume``: go on from such a checkpoint instead of the package's weights.
TrainResult train_top(const Package& package, const Json& program, const Features& train, const Features& val,
                      const TrainSettings& settings,
                      const std::function<void(int64_t, int64_t, double)>& on_step = nullptr,
                      const TrainCheckpoint* resume = nullptr, const EpochHook& on_epoch = nullptr);

}  // namespace edgetune
