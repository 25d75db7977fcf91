#include "numpy_random.hpp"

#include <array>
#include <cstddef>
#include <utility>

namespace edgetune {

namespace {

// SeedSequence's constants (numpy/random/bit_generator.pyx).
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kXShift = 16;
constexpr size_t kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// SeedSequence(entropy).generate_state(4, uint64): the PCG64 seed (words 0, 1) and increment (words 2, 3).
std::array<uint64_t, 4> seed_state(const std::vector<uint64_t>& entropy) {
  std::vector<uint32_t> words;  // each integer as little-endian 32-bit words; 0 is one word
  for (uint64_t n : entropy) {
    if (n == 0) words.push_back(0);
    for (; n > 0; n >>= 32) words.push_back(static_cast<uint32_t>(n & 0xffffffffu));
  }
  std::array<uint32_t, kPoolSize> pool{};
  uint32_t hash_const = kInitA;
  for (size_t i = 0; i < kPoolSize; ++i) pool[i] = hashmix(i < words.size() ? words[i] : 0, hash_const);
  for (size_t src = 0; src < kPoolSize; ++src)
    for (size_t dst = 0; dst < kPoolSize; ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
  for (size_t src = kPoolSize; src < words.size(); ++src)
    for (size_t dst = 0; dst < kPoolSize; ++dst) pool[dst] = mix(pool[dst], hashmix(words[src], hash_const));
  std::array<uint32_t, 8> state{};
  uint32_t b = kInitB;
  for (size_t i = 0; i < state.size(); ++i) {
    uint32_t value = pool[i % kPoolSize];
    value ^= b;
    b *= kMultB;
    value *= b;
    value ^= value >> kXShift;
    state[i] = value;
  }
  std::array<uint64_t, 4> out{};
  for (size_t i = 0; i < 4; ++i) out[i] = uint64_t(state[2 * i]) | (uint64_t(state[2 * i + 1]) << 32);
  return out;
}

constexpr unsigned __int128 kMultiplier =
    (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) + 4865540595714422341ULL;

}  // namespace

NumpyGenerator::NumpyGenerator(const std::vector<uint64_t>& entropy) {
  const auto words = seed_state(entropy);
  const unsigned __int128 seed = (static_cast<unsigned __int128>(words[0]) << 64) | words[1];
  const unsigned __int128 sequence = (static_cast<unsigned __int128>(words[2]) << 64) | words[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  increment_ = (sequence << 1) | 1;
  state_ = state_ * kMultiplier + increment_;
  state_ += seed;
  state_ = state_ * kMultiplier + increment_;
}

uint64_t NumpyGenerator::next_uint64() {
  state_ = state_ * kMultiplier + increment_;
  const uint64_t folded = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rotation = static_cast<unsigned>(state_ >> 122);
  return (folded >> rotation) | (folded << ((64 - rotation) & 63));
}

uint32_t NumpyGenerator::next_uint32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = next_uint64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next & 0xffffffffu);
}

double NumpyGenerator::next_double() { return static_cast<double>(next_uint64() >> 11) * (1.0 / 9007199254740992.0); }

uint64_t NumpyGenerator::interval(uint64_t max) {
  if (max == 0) return 0;
  uint64_t mask = max;
  for (int shift : {1, 2, 4, 8, 16, 32}) mask |= mask >> shift;
  uint64_t value;
  if (max <= 0xffffffffULL) {
    while ((value = (next_uint32() & mask)) > max) {
    }
  } else {
    while ((value = (next_uint64() & mask)) > max) {
    }
  }
  return value;
}

void NumpyGenerator::shuffle(std::vector<int64_t>& values) {
  for (size_t i = values.size(); i-- > 1;) std::swap(values[i], values[interval(i)]);
}

std::vector<int64_t> NumpyGenerator::permutation(int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n > 0 ? n : 0));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(i);
  shuffle(out);
  return out;
}

}  // namespace edgetune
