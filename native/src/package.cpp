#include "package.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>

#include "canonical.hpp"
#include "sha256.hpp"

namespace edgetune {

namespace {

using Kind = PackageError::Kind;

[[noreturn]] void refuse(const std::string& message, Kind kind = Kind::Format) { throw PackageError(kind, message); }

constexpr const char* kManifest = "manifest.json";
constexpr const char* kSignature = "manifest.sig";
constexpr size_t kKeptBytes = 64u << 20;  // JSON parts up to this size are kept in memory as verified

bool plain_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || name == kManifest || name.find("..") != std::string::npos) return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

// One listed file, opened without following links, checked for kind, size and sha256 on the bytes read;
// ``keep`` receives them when asked (the small JSON parts).
// Checks the file and, when ``keep_open`` is given, hands its descriptor over (rewound) instead of closing it.
void check_file(const std::string& root, const std::string& name, int64_t size, const std::string& sha256,
                std::string* keep, int* keep_open = nullptr) {
  std::string path = root + "/" + name;
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) refuse(name + ": missing from the package");
    if (errno == ELOOP) refuse(name + ": a link (refused)");
    refuse(name + ": unreadable (" + std::strerror(errno) + ")", Kind::Io);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat info;
  if (::fstat(fd, &info) != 0) refuse(name + ": unreadable (" + std::strerror(errno) + ")", Kind::Io);
  if (!S_ISREG(info.st_mode)) refuse(name + ": not a regular file");
  if (info.st_size != size)
    refuse(name + ": " + std::to_string(info.st_size) + " bytes, manifest says " + std::to_string(size) +
           (info.st_size < size ? " (truncated)" : " (longer than exported)"));
  Sha256 hash;
  std::vector<char> block(1 << 20);
  int64_t total = 0;
  while (true) {
    ssize_t got = ::read(fd, block.data(), block.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      refuse(name + ": unreadable (" + std::strerror(errno) + ")", Kind::Io);
    }
    if (got == 0) break;
    hash.update(block.data(), static_cast<size_t>(got));
    if (keep) keep->append(block.data(), static_cast<size_t>(got));
    total += got;
    if (total > size) break;  // it grew while read
  }
  if (total != size) refuse(name + ": changed while it was read");
  if (hash.hex() != sha256) refuse(name + ": sha256 does not match the manifest (tampered or corrupt)");
  if (keep_open != nullptr) {
    if (::lseek(fd, 0, SEEK_SET) != 0) refuse(name + ": unreadable (" + std::strerror(errno) + ")", Kind::Io);
    *keep_open = ::dup(fd);
    if (*keep_open < 0) refuse(name + ": unreadable (" + std::strerror(errno) + ")", Kind::Io);
  }
}

std::string read_manifest(const std::string& root) {
  std::string path = root + "/" + kManifest;
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) refuse(std::string(kManifest) + ": missing (not a device package)");
    if (errno == ELOOP) refuse(std::string(kManifest) + ": a link (refused)");
    refuse(std::string(kManifest) + ": cannot be read (" + std::strerror(errno) + ")", Kind::Io);
  }
  std::string raw;
  char block[65536];
  while (true) {
    ssize_t got = ::read(fd, block, sizeof block);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    raw.append(block, static_cast<size_t>(got));
    if (raw.size() > Package::kMaxManifestBytes) {
      ::close(fd);
      refuse(std::string(kManifest) + ": more than " + std::to_string(Package::kMaxManifestBytes) +
             " bytes (not a real manifest)");
    }
  }
  ::close(fd);
  return raw;
}

const Json& member(const Json& object, const char* key, const char* where) {
  const Json* value = object.find(key);
  if (value == nullptr) refuse(std::string(kManifest) + ": missing entry " + where);
  return *value;
}

}  // namespace

const std::string& Package::verified_text(const std::string& name) const {
  auto it = texts_.find(name);
  if (it == texts_.end()) refuse(name + ": not a verified part of this package");
  return it->second;
}

std::string Package::read_verified(const std::string& name) const {
  const Json* files = manifest_.find("files");
  const Json* entry = files ? files->find(name) : nullptr;
  if (entry == nullptr) refuse(name + ": not listed in manifest.json");
  std::string bytes;
  check_file(root_, name, member(*entry, "size", "files.size").integer("size"),
             member(*entry, "sha256", "files.sha256").str("sha256"), &bytes);
  return bytes;
}

int Package::open_verified(const std::string& name) const {
  const Json* files = manifest_.find("files");
  const Json* entry = files ? files->find(name) : nullptr;
  if (entry == nullptr) refuse(name + ": not listed in manifest.json");
  int fd = -1;
  check_file(root_, name, member(*entry, "size", "files.size").integer("size"),
             member(*entry, "sha256", "files.sha256").str("sha256"), nullptr, &fd);
  return fd;
}

std::unique_ptr<Package> Package::open(const std::string& root) {
  struct stat info;
  if (::stat(root.c_str(), &info) != 0) refuse("no such package", Kind::Io);
  if (!S_ISDIR(info.st_mode)) refuse("not a package directory (the library reads unpacked packages)", Kind::Unsupported);
  auto pkg = std::unique_ptr<Package>(new Package());
  pkg->root_ = root;
  const std::string raw = read_manifest(root);
  try {
    // 1-2. JSON within the limits, the format, a version this reader reads
    pkg->manifest_ = Json::parse(raw, kMaxDepth);
    const Json& m = pkg->manifest_;
    const Json* format = m.find("format");
    if (!m.is_object() || format == nullptr || !format->is_string() || format->str("format") != "edgetune-device-package")
      refuse(std::string(kManifest) + ": not an edgetune device package (format is not 'edgetune-device-package')");
    const Json* version = m.find("schema_version");
    if (version == nullptr || !version->is_integer_literal() || (version->literal() != "1" && version->literal() != "2"))
      refuse(std::string(kManifest) + ": schema version is not supported by this reader (it reads versions 1, 2); "
             "re-export the package with this edgetune");
    // 3. the seal over the canonical form of everything but itself
    const Json& integrity = member(m, "integrity", "integrity");
    const Json* algorithm = integrity.find("algorithm");
    const Json* digest = integrity.find("manifest_sha256");
    if (algorithm == nullptr || !algorithm->is_string() || algorithm->str("algorithm") != "sha256" ||
        digest == nullptr || !digest->is_string())
      refuse(std::string(kManifest) + ": integrity entry is missing or uses an unknown algorithm");
    if (Sha256::of(canonical_json(m, "integrity")) != digest->str("manifest_sha256"))
      refuse(std::string(kManifest) + ": content does not match its integrity hash: edited or corrupted after it "
             "was written; re-export the package");
    // 4-5. the structure this library reads, names, references, labels, cut
    const Json& backbone = member(m, "backbone", "backbone");
    pkg->num_layers_ = static_cast<int>(member(backbone, "num_layers", "backbone.num_layers").integer("num_layers"));
    pkg->family_ = member(backbone, "model_type", "backbone.model_type").str("model_type");
    pkg->cut_ = static_cast<int>(member(m, "cut", "cut").integer("cut"));
    if (pkg->cut_ < 0 || pkg->cut_ > pkg->num_layers_)
      refuse(std::string(kManifest) + ": cut " + std::to_string(pkg->cut_) + " is outside 0.." +
             std::to_string(pkg->num_layers_));
    std::set<std::string> distinct;
    for (const Json& label : member(m, "labels", "labels").items("labels")) {
      pkg->labels_.push_back(label.str("label"));
      if (!distinct.insert(pkg->labels_.back()).second)
        refuse(std::string(kManifest) + ": label " + pkg->labels_.back() + " is listed twice");
    }
    if (pkg->labels_.empty()) refuse(std::string(kManifest) + ": no labels");
    const auto& files = member(m, "files", "files").members("files");
    std::set<std::string> listed;
    for (const auto& [name, entry] : files) {
      if (!plain_name(name)) refuse(std::string(kManifest) + ": file name '" + name + "' is not a plain file name");
      listed.insert(name);
    }
    const Json& tokenizer = member(m, "tokenizer", "tokenizer");
    const Json& trunk = member(m, "trunk", "trunk");
    const Json& top = member(m, "top", "top");
    std::vector<std::string> referenced = {member(tokenizer, "tokenizer", "tokenizer.tokenizer").str("tokenizer"),
                                           member(tokenizer, "encoder", "tokenizer.encoder").str("encoder"),
                                           member(top, "weights", "top.weights").str("weights"),
                                           member(top, "spec", "top.spec").str("spec")};
    for (const Json& name : member(trunk, "files", "trunk.files").items("trunk.files")) referenced.push_back(name.str("file"));
    for (const char* optional : {"trunk_int8", "top_onnx", "executorch"}) {
      const Json* part = m.find(optional);
      if (part != nullptr && !part->is_null())
        for (const Json& name : member(*part, "files", optional).items(optional)) referenced.push_back(name.str("file"));
    }
    for (const std::string& name : referenced)
      if (!listed.count(name)) refuse(std::string(kManifest) + ": " + name + " is named by a component but not listed");
    // 6. every listed file, and nothing else
    const std::set<std::string> json_parts = {referenced[0], referenced[1], referenced[3]};
    for (const auto& [name, entry] : files) {
      std::string* keep = nullptr;
      if (json_parts.count(name) && member(entry, "size", "files.size").integer("size") <= int64_t(kKeptBytes))
        keep = &pkg->texts_[name];
      check_file(root, name, member(entry, "size", "files.size").integer("size"),
                 member(entry, "sha256", "files.sha256").str("sha256"), keep);
    }
    DIR* dir = ::opendir(root.c_str());
    if (dir == nullptr) refuse(std::string("cannot be listed (") + std::strerror(errno) + ")", Kind::Io);
    std::vector<std::string> unlisted;
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name == "." || name == ".." || name == kManifest || name == kSignature || listed.count(name)) continue;
      unlisted.push_back(name);
    }
    ::closedir(dir);
    if (!unlisted.empty()) {
      std::sort(unlisted.begin(), unlisted.end());
      refuse(unlisted[0] + ": not listed in manifest.json (refused)");
    }
    // 7-8. the parts agree with the manifest
    Json top_spec = Json::parse(pkg->texts_.at(referenced[3]), kMaxDepth);
    if (member(top_spec, "cut", "top.json cut").integer("cut") != pkg->cut_)
      refuse(referenced[3] + ": cut does not match the manifest's");
    const auto& spec_labels = member(top_spec, "labels", "top.json labels").items("labels");
    bool same = spec_labels.size() == pkg->labels_.size();
    for (size_t i = 0; same && i < spec_labels.size(); ++i) same = spec_labels[i].str("label") == pkg->labels_[i];
    if (!same) refuse(referenced[3] + ": labels do not match the manifest's");
    Json encoder = Json::parse(pkg->texts_.at(referenced[1]), kMaxDepth);
    pkg->max_length_ = member(encoder, "max_length", "encoder.json max_length").integer("max_length");
    pkg->pad_id_ = member(encoder, "pad_id", "encoder.json pad_id").integer("pad_id");
    if (const Json* stated = tokenizer.find("max_length"); stated && !stated->is_null() &&
                                                            stated->integer("max_length") != pkg->max_length_)
      refuse(referenced[1] + ": max_length does not match the manifest's tokenizer.max_length");
  } catch (const JsonError& err) {
    refuse(std::string(kManifest) + " or a part it lists: " + err.what());
  }
  return pkg;
}

}  // namespace edgetune
