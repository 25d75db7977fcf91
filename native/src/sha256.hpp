// SHA-256 (FIPS 180-4): the digest of every file in a package's file table and of the manifest's seal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace edgetune {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  std::string hex();  // lower-case; the object is spent afterwards

  static std::string of(std::string_view data) {
    Sha256 h;
    h.update(data);
    return h.hex();
  }

 private:
  void block(const uint8_t* p);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;
};

}  // namespace edgetune
