// The personalization job of the device (docs/device-runtime.md, "The personalization job"), for one
// configuration: the guard and validation splits (numpy's draws, as device_sim.split), the trunk once over the
// user's texts, the top trained on the cached features (train.hpp), the do-no-harm guard (a one-sided exact
// McNemar test on the guard split, as device_sim.guard), and the personal state written atomically in the
// spec's format: the trained tensors (kind top_delta, tuner full), or kept_global when the guard refuses them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "package.hpp"
#include "train.hpp"

namespace edgetune {

struct PersonalizeSettings : TrainSettings {
  double val_fraction = 0.15, guard_fraction = 0.2, guard_alpha = 0.05;
  int threads = 0;
  int64_t cache_batch_size = 8;  // texts per trunk call
};

struct GuardVerdict {
  bool enabled = false, keep_personal = false;
  int64_t num_examples = 0, wins = 0, losses = 0;
  double personal_accuracy = -1, global_accuracy = -1, p_value = 1;
  std::string reason;  // empty when the personal top is kept
};

struct PersonalizeOutcome {
  GuardVerdict guard;
  TrainResult training;
  int64_t num_train = 0, num_val = 0;
  double global_val_accuracy = -1, best_val_accuracy = -1;
  std::string kind;  // top_delta or kept_global
};

// One-sided exact p-value of ``wins`` among ``wins + losses`` discordant pairs (device_sim.guard).
double sign_test_p_value(int64_t wins, int64_t losses);

// Personalizes ``package`` on the texts and label indices given and writes the state at ``out`` (replacing only an
// empty directory or another personal state, atomically). ``data_name`` is recorded as the data's name.
PersonalizeOutcome personalize(const Package& package, const std::vector<std::string>& texts,
                               const std::vector<int64_t>& labels, const std::string& data_name,
                               const std::string& out, const PersonalizeSettings& settings,
                               const std::function<void(const char*, int64_t, int64_t)>& progress = nullptr);

}  // namespace edgetune
