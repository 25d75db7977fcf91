// numpy's random generator, bit for bit: ``np.random.default_rng(seed)`` (SeedSequence -> PCG64) and the draws
// the device job makes with it (``permutation``, ``random``). The job's splits and epoch orders are defined by
// these draws (device_sim.split, device_sim.backends.program.epoch_order), so the library reproduces them
// exactly and makes the same choices as the Python device on the same data.
#pragma once

#include <cstdint>
#include <vector>

namespace edgetune {

class NumpyGenerator {
 public:
  // default_rng(entropy): ``entropy`` holds the seed's integers (one for ``default_rng(seed)``, two for
  // ``default_rng([seed, epoch])``), each non-negative.
  explicit NumpyGenerator(const std::vector<uint64_t>& entropy);

  uint64_t next_uint64();
  uint32_t next_uint32();
  double next_double();  // Generator.random()
  // Generator.permutation(n): a shuffled arange(n).
  std::vector<int64_t> permutation(int64_t n);
  // Generator.shuffle on a 1-d array, in place.
  void shuffle(std::vector<int64_t>& values);

 private:
  uint64_t interval(uint64_t max);  // numpy's random_interval: uniform in [0, max] by masked rejection
  unsigned __int128 state_ = 0, increment_ = 0;
  bool has_uint32_ = false;
  uint32_t uinteger_ = 0;
};

}  // namespace edgetune
