#include "split.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "numpy_random.hpp"

namespace edgetune {

namespace {

// device_sim.split.stratified_draw: ``n_held`` indices, each label its largest-remainder share when every label
// present has two examples (and there are at least as many to draw as labels), else a plain random draw.
Indices stratified_draw(const std::vector<int64_t>& labels, int64_t n_held, NumpyGenerator& rng, bool keep_one) {
  const int64_t n = static_cast<int64_t>(labels.size());
  std::map<int64_t, int64_t> counts;  // np.unique: sorted classes
  for (int64_t y : labels) ++counts[y];
  std::vector<int64_t> classes, count;
  for (const auto& [c, k] : counts) classes.push_back(c), count.push_back(k);
  const int64_t min_count = *std::min_element(count.begin(), count.end());
  if (min_count < 2 || n_held < static_cast<int64_t>(classes.size())) {
    Indices order = rng.permutation(n);
    order.resize(static_cast<size_t>(n_held));
    return order;
  }
  const size_t k = classes.size();
  std::vector<int64_t> share(k);
  std::vector<double> remainder(k);
  int64_t total = 0;
  for (size_t i = 0; i < k; ++i) {
    const double exact = static_cast<double>(n_held * count[i]) / static_cast<double>(n);
    share[i] = static_cast<int64_t>(std::floor(exact));
    remainder[i] = exact - static_cast<double>(share[i]);
    total += share[i];
  }
  std::vector<double> ties(k);
  for (double& t : ties) t = rng.next_double();
  std::vector<size_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  // np.lexsort((ties, -remainder)): by -remainder, then by the tie draw; stable
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (-remainder[a] != -remainder[b]) return -remainder[a] < -remainder[b];
    return ties[a] < ties[b];
  });
  for (int64_t i = 0; i < n_held - total; ++i) ++share[order[static_cast<size_t>(i)]];
  if (keep_one)
    for (size_t i = 0; i < k; ++i) share[i] = std::min(share[i], count[i] - 1);
  Indices out;
  for (size_t i = 0; i < k; ++i) {
    Indices members;
    for (int64_t j = 0; j < n; ++j)
      if (labels[static_cast<size_t>(j)] == classes[i]) members.push_back(j);
    rng.shuffle(members);  // Generator.permutation(array)
    out.insert(out.end(), members.begin(), members.begin() + share[i]);
  }
  return out;
}

std::pair<Indices, Indices> split_by(int64_t n, const Indices& held) {
  std::vector<bool> mask(static_cast<size_t>(n), false);
  for (int64_t i : held) mask[static_cast<size_t>(i)] = true;
  Indices rest, out;
  for (int64_t i = 0; i < n; ++i) (mask[static_cast<size_t>(i)] ? out : rest).push_back(i);
  return {rest, out};
}

Indices all(int64_t n) {
  Indices idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return idx;
}

}  // namespace

std::pair<Indices, Indices> validation_split(const std::vector<int64_t>& labels, double fraction, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t n_val = static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(n)));  // round half even
  if (fraction <= 0 || n_val < kMinValidation || n - n_val < kMinValidation) return {all(n), {}};
  NumpyGenerator rng({seed});
  return split_by(n, stratified_draw(labels, n_val, rng, true));
}

std::pair<Indices, Indices> guard_split(const std::vector<int64_t>& labels, double fraction, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(labels.size());
  if (fraction <= 0 || n < 2) return {all(n), {}};
  const int64_t n_guard = std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(n))));
  if (n_guard >= n) return {all(n), {}};
  NumpyGenerator rng({seed + 7919});
  return split_by(n, stratified_draw(labels, n_guard, rng, false));
}

Indices epoch_order(int64_t n, uint64_t seed, uint64_t epoch) { return NumpyGenerator({seed, epoch}).permutation(n); }

}  // namespace edgetune
