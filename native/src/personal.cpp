#include "personal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>
#include <set>

#include "canonical.hpp"
#include "sha256.hpp"

namespace edgetune {

namespace {

using Kind = PersonalStateError::Kind;
constexpr const char* kManifest = "personal.json";
constexpr size_t kMaxManifestBytes = 16u << 20;

[[noreturn]] void refuse(const std::string& where, const std::string& message, Kind kind = Kind::Format) {
  throw PersonalStateError(kind, where + ": " + message);
}

// A whole file, read without following links (a missing file is reported as missing).
bool read_all(const std::string& path, std::string& out, size_t limit) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat info;
  bool ok = ::fstat(fd, &info) == 0 && S_ISREG(info.st_mode) && static_cast<size_t>(info.st_size) <= limit;
  if (ok) {
    out.resize(static_cast<size_t>(info.st_size));
    size_t done = 0;
    while (ok && done < out.size()) {
      ssize_t got = ::read(fd, &out[done], out.size() - done);
      ok = got > 0;
      if (ok) done += static_cast<size_t>(got);
    }
  }
  ::close(fd);
  return ok;
}

std::string sha_of_listed(const Package& package, const std::string& name) {
  const Json* entry = package.manifest().at("files").find(name);
  if (entry == nullptr) throw PersonalStateError(Kind::Format, "manifest.json: " + name + " is not listed");
  return entry->at("sha256").str("sha256");
}

// Blocks of the state's trained view are numbered from its train cut; the package top numbers them from its first
// block. ``offset`` = how many of the top's blocks (top.json ``blocks``, 1-based) lie at or below the train cut.
std::string renumber(const std::string& name, int offset) {
  static const std::regex block(R"(^blocks\.(\d+)\.(.+)$)");
  std::smatch m;
  if (!std::regex_match(name, m, block)) return name;
  return "blocks." + std::to_string(std::stoi(m[1]) + offset) + "." + m[2].str();
}

}  // namespace

Json package_identity(const Package& package) {
  const Json& m = package.manifest();
  std::vector<std::string> names;
  for (const Json& f : m.at("trunk").at("files").items("trunk.files")) names.push_back(f.str("file"));
  names.push_back(m.at("top").at("weights").str("weights"));
  names.push_back(m.at("top").at("spec").str("spec"));
  names.push_back(m.at("tokenizer").at("tokenizer").str("tokenizer"));
  names.push_back(m.at("tokenizer").at("encoder").str("encoder"));
  std::string files = "{";
  std::set<std::string> sorted(names.begin(), names.end());
  for (const std::string& name : sorted)
    files += (files.size() > 1 ? "," : "") + std::string("\"") + name + "\":\"" + sha_of_listed(package, name) + "\"";
  files += "}";
  std::string labels = "[";
  for (const Json& l : m.at("labels").items("labels")) labels += (labels.size() > 1 ? "," : "") + canonical_json(l);
  labels += "]";
  const std::string text = "{\"backbone_hash\":" + canonical_json(m.at("backbone").at("hash")) +
                           ",\"backbone_id\":" + canonical_json(m.at("backbone").at("id")) +
                           ",\"cut\":" + std::to_string(package.cut()) + ",\"files\":" + files +
                           ",\"labels\":" + labels + ",\"num_layers\":" + std::to_string(package.num_layers()) + "}";
  return Json::parse(text);
}

std::unique_ptr<PersonalState> read_personal_state(const std::string& directory, const Package& package) {
  auto state = std::make_unique<PersonalState>();
  state->path = directory;
  struct stat info;
  if (::stat(directory.c_str(), &info) != 0) refuse(directory, "no such personal state directory", Kind::Io);
  std::string raw;
  if (!read_all(directory + "/" + kManifest, raw, kMaxManifestBytes)) {
    const bool is_package = ::stat((directory + "/manifest.json").c_str(), &info) == 0;
    refuse(directory, std::string(kManifest) + " missing (" +
                          (is_package ? "a device package, not a personal state" : "not a personal state") + ")");
  }
  const std::string where = directory + ": " + kManifest;
  try {
    state->manifest = Json::parse(raw, 32);
    const Json& m = state->manifest;
    const Json* format = m.find("format");
    if (!m.is_object() || !format || !format->is_string() || format->str("format") != "edgetune-personal-state")
      refuse(where, "not a personal state (format is not 'edgetune-personal-state')");
    const Json* version = m.find("schema_version");
    if (!version || !version->is_integer_literal() || version->literal() != "1")
      refuse(where, "schema version is not supported by this reader (it reads versions 1); personalize again");
    for (const char* key : {"kind", "package", "train_cut", "tuner", "weights", "tensors", "files", "integrity"})
      if (!m.find(key)) refuse(where, std::string("missing entry ") + key);
    const Json& integrity = m.at("integrity");
    const Json* algorithm = integrity.find("algorithm");
    const Json* digest = integrity.find("manifest_sha256");
    if (!algorithm || !algorithm->is_string() || algorithm->str("algorithm") != "sha256" || !digest ||
        !digest->is_string())
      refuse(where, "integrity entry is missing or uses an unknown algorithm");
    if (Sha256::of(canonical_json(m, "integrity")) != digest->str("manifest_sha256"))
      refuse(where, "content does not match its integrity hash: edited or corrupted after it was written; "
                    "personalize again to rewrite it");
    state->kind = m.at("kind").str("kind");
    if (state->kind != "top_delta" && state->kind != "fala" && state->kind != "kept_global")
      refuse(where, "personal state kind '" + state->kind + "' is not known to this reader");
    state->train_cut = static_cast<int>(m.at("train_cut").integer("train_cut"));
    state->tuner = m.at("tuner").at("name").str("tuner.name");
    // the delta file: size, sha256, the tensors listed
    const std::string weights = m.at("weights").str("weights");
    const Json* entry = m.at("files").find(weights);
    std::string bytes;
    if (entry == nullptr || !read_all(directory + "/" + weights, bytes, size_t(1) << 40))
      refuse(directory, weights + " missing");
    const int64_t size = entry->at("size").integer("size");
    if (int64_t(bytes.size()) != size)
      refuse(directory, weights + ": " + std::to_string(bytes.size()) + " bytes, " + kManifest + " says " +
                            std::to_string(size) + " (truncated?)");
    if (Sha256::of(bytes) != entry->at("sha256").str("sha256"))
      refuse(directory, weights + ": sha256 does not match " + kManifest +
                            " (tampered or corrupt); personalize again to rewrite it");
    state->tensors = parse_safetensors(bytes, directory + ": " + weights);
    const auto& listed = m.at("tensors").members("tensors");
    bool same = listed.size() == state->tensors.size();
    for (const auto& [name, shape] : listed) {
      auto it = state->tensors.find(name);
      if (!same || it == state->tensors.end() || shape.items("shape").size() != it->second.shape.size()) {
        same = false;
        break;
      }
      for (size_t d = 0; d < it->second.shape.size(); ++d)
        same = same && shape.items("shape")[d].integer("shape") == it->second.shape[d];
    }
    if (!same) refuse(directory, weights + " holds other tensors than " + kManifest + " lists");
  } catch (const JsonError& err) {
    refuse(where, err.what());
  } catch (const SafetensorsError& err) {
    throw PersonalStateError(Kind::Format, err.what());
  }
  // the package identity
  const Json& mine = state->manifest.at("package");
  const Json theirs = package_identity(package);
  std::vector<std::string> differ;
  for (const char* key : {"backbone_hash", "cut", "num_layers", "labels", "files"}) {
    const Json* a = mine.find(key);
    if (a == nullptr || canonical_json(*a) != canonical_json(theirs.at(key))) differ.push_back(key);
  }
  if (!differ.empty()) {
    std::string list;
    for (const std::string& d : differ) list += (list.empty() ? "" : "; ") + d;
    refuse(directory, "personal state belongs to another package (differs in: " + list +
                          "); personalize again for this package (or swap the personal state to it)",
           Kind::Mismatch);
  }
  if (state->train_cut < package.cut() || state->train_cut > package.num_layers())
    refuse(directory, "train cut " + std::to_string(state->train_cut) + " is outside this package's top");
  return state;
}

namespace {

// y = a (m x k) @ b (k x n), row-major, added into out (m x n) times scale.
void matmul_add(const float* a, const float* b, float* out, int64_t m, int64_t k, int64_t n, float scale) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p) {
      const float av = a[i * k + p] * scale;
      if (av == 0.0f) continue;
      for (int64_t j = 0; j < n; ++j) out[i * n + j] += av * b[p * n + j];
    }
}

const Tensor& need(const Tensors& t, const std::string& name, const std::string& where) {
  auto it = t.find(name);
  if (it == t.end() || it->second.is_index) refuse(where, "not a FaLA personal head (no " + name + ")");
  return it->second;
}

void apply_fala(Tensors& top, const PersonalState& state) {
  const std::string& where = state.path;
  const Tensor& mw = need(state.tensors, "matrix.linear.weight", where);  // (d_old, d_new)
  const Tensor& mb = need(state.tensors, "matrix.linear.bias", where);    // (d_old)
  const Tensor& hw = need(state.tensors, "head.weight", where);           // (labels, d_old)
  const Tensor& hb = need(state.tensors, "head.bias", where);
  Tensor& head_w = top.at("head.weight");
  Tensor& head_b = top.at("head.bias");
  const int64_t labels = hw.shape[0], d_old = mw.shape[0], width = head_w.shape[1];
  if (mw.shape.size() != 2 || mw.shape[1] != width || hw.shape.size() != 2 || hw.shape[1] != d_old ||
      labels != head_w.shape[0] || mb.numel() != d_old || hb.numel() != labels)
    refuse(where, "personal matrix and head do not fit this package's features");
  std::vector<float> w(static_cast<size_t>(labels * width), 0.0f), b(hb.values);
  matmul_add(hw.values.data(), mw.values.data(), w.data(), labels, d_old, width, 1.0f);
  matmul_add(hw.values.data(), mb.values.data(), b.data(), labels, d_old, 1, 1.0f);
  const char* residual[] = {"base.weight", "base.bias", "reference.weight", "reference.bias"};
  int present = 0;
  for (const char* name : residual) present += state.tensors.count(name) ? 1 : 0;
  if (present != 0 && present != 4) refuse(where, "a residual FaLA head needs both base.* and reference.* tensors");
  if (present == 4) {  // G e + H (M e) - R (M e): head = G_W + (H_W - R_W) M_W, bias = G_b + (H_W - R_W) M_b + H_b - R_b
    const Tensor& gw = need(state.tensors, "base.weight", where);
    const Tensor& gb = need(state.tensors, "base.bias", where);
    const Tensor& rw = need(state.tensors, "reference.weight", where);
    const Tensor& rb = need(state.tensors, "reference.bias", where);
    if (gw.numel() != labels * width || rw.numel() != labels * d_old || gb.numel() != labels || rb.numel() != labels)
      refuse(where, "the residual FaLA head's base or reference does not fit its head");
    matmul_add(rw.values.data(), mw.values.data(), w.data(), labels, d_old, width, -1.0f);
    matmul_add(rw.values.data(), mb.values.data(), b.data(), labels, d_old, 1, -1.0f);
    for (size_t i = 0; i < w.size(); ++i) w[i] += gw.values[i];
    for (int64_t i = 0; i < labels; ++i) b[i] += gb.values[i] - rb.values[i];
  }
  head_w.values = std::move(w);
  head_b.values = std::move(b);
}

}  // namespace

double lora_scale(const Json& params) {
  return params.at("alpha").number("alpha") / double(params.at("r").integer("r"));
}

Tensors fold_lora(const Tensors& top, const Tensors& tensors, double scale, const std::string& where) {
  static const std::regex factor(R"(^(.+)\.lora_A\.default\.weight$)");
  Tensors rest = tensors;
  std::vector<std::string> modules;
  for (const auto& [name, t] : rest) {
    std::smatch m;
    if (std::regex_match(name, m, factor)) modules.push_back(m[1].str());
  }
  for (const std::string& module : modules) {
    auto a = rest.find(module + ".lora_A.default.weight"), b = rest.find(module + ".lora_B.default.weight");
    auto w = top.find(module + ".weight");
    if (b == rest.end()) refuse(where, module + " has only one of its two LoRA factors");
    if (w == top.end()) refuse(where, "adapts " + module + ", which this package's top does not have");
    Tensor merged = w->second;
    const int64_t out = merged.shape[0], in = merged.shape[1], r = a->second.shape[0];
    if (a->second.shape[1] != in || b->second.shape[0] != out || b->second.shape[1] != r)
      refuse(where, "LoRA factors of " + module + " do not fit its weight");
    matmul_add(b->second.values.data(), a->second.values.data(), merged.values.data(), out, r, in,
               static_cast<float>(scale));
    rest.erase(a);
    rest.erase(b);
    rest[module + ".weight"] = std::move(merged);
  }
  for (const auto& [name, t] : rest)
    if (name.find(".lora_B.") != std::string::npos) refuse(where, name + " has no lora_A factor");
  return rest;
}

void apply_personal_state(Tensors& top, const Json& top_spec, const std::string& family, const PersonalState& state) {
  const std::string& where = state.path;
  if (state.kind == "kept_global") return;
  if (state.kind == "fala") return apply_fala(top, state);
  if (state.tuner != "full" && state.tuner != "lora")
    refuse(where, "tuner '" + state.tuner + "' is not applied by this library (it applies full and lora states)",
           Kind::Unsupported);
  int offset = 0;
  if (const Json* blocks = top_spec.find("blocks")) {
    for (const Json& b : blocks->items("blocks")) offset += b.integer("blocks") <= state.train_cut ? 1 : 0;
  } else {
    offset = state.train_cut - static_cast<int>(top_spec.at("cut").integer("cut"));
  }
  Tensors rest;
  for (const auto& [name, t] : state.tensors) rest.emplace(renumber(name, offset), t);
  if (state.tuner == "lora") {
    if (family == "gpt2") refuse(where, "LoRA states of Conv1D families are not applied by this library", Kind::Unsupported);
    const Json& params = state.manifest.at("tuner").at("params");
    rest = fold_lora(top, rest, lora_scale(params), where);
  }
  for (auto& [name, t] : rest) {
    auto it = top.find(name);
    if (it == top.end()) refuse(where, name + " is not a tensor of this package's top");
    if (it->second.shape != t.shape) refuse(where, name + " has another shape than the top's");
    it->second.values = std::move(t.values);
  }
}

}  // namespace edgetune
