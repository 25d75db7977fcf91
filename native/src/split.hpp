// The validation and guard splits of a personalization job, exactly as device_sim.split draws them (numpy's
// generator, the same seeds), and each epoch's example order (device_sim.backends.program.epoch_order).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace edgetune {

constexpr int64_t kMinValidation = 4;  // fewer held-out examples than this: nothing is held out

using Indices = std::vector<int64_t>;

// (train, validation) indices, both sorted (device_sim.split.validation_split).
std::pair<Indices, Indices> validation_split(const std::vector<int64_t>& labels, double fraction, uint64_t seed);
// (rest, guard) indices, both sorted (device_sim.split.guard_split).
std::pair<Indices, Indices> guard_split(const std::vector<int64_t>& labels, double fraction, uint64_t seed);
// The order of ``n`` examples in ``epoch``: default_rng([seed, epoch]).permutation(n).
Indices epoch_order(int64_t n, uint64_t seed, uint64_t epoch);

}  // namespace edgetune
