// A device package read as the spec says a reader must (docs/package-format.md, "Reading a package safely"):
// the manifest (size, depth, format, version, seal, structure), every listed file (a regular file of the
// listed size and sha256, nothing unlisted beside them), and the parts that must agree (top.json,
// encoder.json). The small JSON parts are kept as the verified bytes, so what is used is what was checked.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"

namespace edgetune {

struct PackageError : std::runtime_error {
  enum class Kind { Io, Format, Unsupported };
  PackageError(Kind kind_, const std::string& message) : std::runtime_error(message), kind(kind_) {}
  Kind kind;
};

class Package {
 public:
  static constexpr size_t kMaxManifestBytes = 16u << 20;
  static constexpr int kMaxDepth = 32;

  // Opens and verifies the package directory ``root``: throws PackageError naming the first problem.
  static std::unique_ptr<Package> open(const std::string& root);

  const Json& manifest() const { return manifest_; }
  const std::vector<std::string>& labels() const { return labels_; }
  int cut() const { return cut_; }
  int num_layers() const { return num_layers_; }
  int64_t max_length() const { return max_length_; }
  int64_t pad_id() const { return pad_id_; }
  const std::string& family() const { return family_; }
  // The verified bytes of a small JSON part (tokenizer.json, encoder.json, top.json).
  const std::string& verified_text(const std::string& name) const;
  std::string path(const std::string& name) const { return root_ + "/" + name; }
  // A listed file's bytes, read again and checked against the manifest's size and sha256 (what is then run
  // is what was checked, even if the file changed since the package was opened).
  std::string read_verified(const std::string& name) const;
  // A listed file opened and checked the same way without keeping its bytes: the open descriptor (the caller
  // closes it), positioned at the start, of the very file that was checked (a large program is then read from
  // it piece by piece).
  int open_verified(const std::string& name) const;

 private:
  std::string root_;
  Json manifest_;
  std::vector<std::string> labels_;
  int cut_ = 0, num_layers_ = 0;
  int64_t max_length_ = 0, pad_id_ = 0;
  std::string family_;
  std::map<std::string, std::string> texts_;
};

}  // namespace edgetune
