#include "model.hpp"

#include "train.hpp"

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

// libexecutorch_threadpool.so ships without its header; this is the part of its interface used here.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace edgetune {

using executorch::aten::ScalarType;
using executorch::extension::BufferDataLoader;
using executorch::extension::FileDataLoader;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

constexpr int64_t kMinSequence = 2;  // the programs' smallest sequence (torch.export specializes a size of 1)

[[noreturn]] void unsupported(const std::string& message) { throw ModelError(ModelError::Kind::Unsupported, message); }

const Json& entry(const Json& object, const char* key, const std::string& what) {
  const Json* value = object.find(key);
  if (value == nullptr || value->is_null())
    unsupported("this package has no " + what + " (export it with --targets onnx,executorch with this edgetune)");
  return *value;
}

// The trunk program's entry: ``executorch.trunk`` (trunk.pte) or another one named by the caller
// (``trunk_int8``: trunk.int8.pte); refused with what would make one.
const Json& trunk_program(const Json& executorch, const std::string& name) {
  const Json* value = executorch.find(name);
  if (value != nullptr && !value->is_null()) return *value;
  if (name == "trunk") return entry(executorch, "trunk", "ExecuTorch trunk (trunk.pte)");
  if (name == "trunk_int8")
    unsupported("this package has no int8 trunk program (trunk.int8.pte); re-export it with --int8 --targets "
                "onnx,executorch");
  unsupported("this package has no ExecuTorch trunk program '" + name + "' (executorch." + name +
              " in its manifest)");
}

}  // namespace

// A verified program and the module running it. A small program is read once into ``bytes`` (the loader points
// into them: they live as long). A large one (the trunk) is read from the descriptor of the file that was
// checked, segment by segment, so its delegate's weights are freed once XNNPACK has packed its own copy instead
// of staying in memory beside it.
struct LoadedProgram {
  std::string bytes;
  std::unique_ptr<Module> module;
  void load(const Package& package, const std::string& name) {
    bytes = package.read_verified(name);
    module = std::make_unique<Module>(std::make_unique<BufferDataLoader>(bytes.data(), bytes.size()));
    load_forward(name);
  }
  void load_from_file(const Package& package, const std::string& name) {
    const int fd = package.open_verified(name);
    // the checked file itself, even if the name now points elsewhere (Linux and Android have /proc)
    const std::string by_descriptor = "/proc/self/fd/" + std::to_string(fd);
    const bool proc = ::access(by_descriptor.c_str(), R_OK) == 0;
    auto loader = FileDataLoader::from((proc ? by_descriptor : package.path(name)).c_str());
    ::close(fd);  // the loader holds a descriptor of its own
    if (!loader.ok()) throw ModelError(ModelError::Kind::Runtime, name + ": ExecuTorch cannot open it");
    module = std::make_unique<Module>(std::make_unique<FileDataLoader>(std::move(loader.get())));
    load_forward(name);
  }

 private:
  void load_forward(const std::string& name) {
    if (module->load_method("forward") != executorch::runtime::Error::Ok)
      throw ModelError(ModelError::Kind::Runtime, name + ": ExecuTorch cannot load its forward method");
  }
};

struct Model::Programs {
  LoadedProgram trunk, top;
};

namespace {

// ExecuTorch's log: its information lines (CPU probing, thread pool size) would land on an app's stderr at
// every open; errors still do.
void runtime_log(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*, size_t line,
                 const char* message, size_t length) {
  if (level == kError || level == kFatal)
    std::fprintf(stderr, "executorch: %s:%zu: %.*s\n", file ? file : "?", line, static_cast<int>(length), message);
}

void quiet_runtime_log() {
  static const bool registered =
      executorch::runtime::register_pal(executorch::runtime::PalImpl::create(runtime_log, __FILE__));
  (void)registered;
}

}  // namespace

void set_threads(int threads) {
  quiet_runtime_log();
  if (threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
}

Model::Model(const Package& package, std::unique_ptr<PersonalState> state, int threads,
             const std::string& trunk_entry)
    : package_(package), programs_(std::make_unique<Programs>()) {
  set_threads(threads);  // first: it also quiets the runtime's log before anything is loaded
  const Json& m = package.manifest();
  const Json& et = entry(m, "executorch", "ExecuTorch programs");
  const Json& trunk = trunk_program(et, trunk_entry);
  trunk_file_ = trunk.at("file").str("file");
  const Json& inference = entry(et, "inference", "ExecuTorch top");
  const Json& tensor_inputs = entry(inference, "tensor_inputs", "top.pte with its tensors as inputs");
  for (const Json& n : tensor_inputs.items("tensor_inputs")) names_.push_back(n.str("tensor input"));
  max_batch_ = et.at("max_batch").integer("max_batch");
  max_length_ = package.max_length();
  if (const Json* length = et.find("max_length"); length && !length->is_null())
    max_length_ = std::min(max_length_, length->integer("max_length"));
  num_labels_ = static_cast<int64_t>(package.labels().size());
  const std::string weights_name = m.at("top").at("weights").str("weights");
  weights_ = parse_safetensors(package.read_verified(weights_name), weights_name);
  for (const std::string& name : names_)
    if (!weights_.count(name) || weights_.at(name).is_index)
      throw PackageError(PackageError::Kind::Format, weights_name + ": no float tensor " + name + " (top.pte reads it)");
  hidden_ = weights_.at("head.weight").shape.at(1);
  if (state) {
    const Json spec = Json::parse(package.verified_text(m.at("top").at("spec").str("spec")));
    apply_personal_state(weights_, spec, package.family(), *state);
    state_kind_ = state->kind;
  }
  top_file_ = inference.at("file").str("file");
  programs_->trunk.load_from_file(package, trunk_file_);
  programs_->top.load(package, top_file_);
}

Model::~Model() = default;

void Model::release_trunk() {
  programs_->trunk.module.reset();
  std::string().swap(programs_->trunk.bytes);
}

void Model::release_top() {
  programs_->top.module.reset();
  std::string().swap(programs_->top.bytes);
}

std::vector<float> Model::features(const IdBatch& b) {
  if (!programs_->trunk.module) throw ModelError(ModelError::Kind::Runtime, trunk_file_ + ": released");
  std::vector<int64_t> ids(b.ids), mask(static_cast<size_t>(b.rows * b.width), 0);
  for (int64_t r = 0; r < b.rows; ++r)
    for (int64_t c = 0; c < b.lengths[r]; ++c) mask[r * b.width + c] = 1;
  auto ids_t = from_blob(ids.data(), {int(b.rows), int(b.width)}, ScalarType::Long);
  auto mask_t = from_blob(mask.data(), {int(b.rows), int(b.width)}, ScalarType::Long);
  auto result = programs_->trunk.module->execute("forward", {EValue(*ids_t), EValue(*mask_t)});
  if (!result.ok())
    throw ModelError(ModelError::Kind::Runtime,
                     trunk_file_ + ": forward failed (error " + std::to_string(int(result.error())) + ")");
  const auto out = result->at(0).toTensor();
  if (out.numel() != b.rows * b.width * hidden_)
    throw ModelError(ModelError::Kind::Runtime, trunk_file_ + ": output of another size than rows x width x hidden");
  const float* p = out.const_data_ptr<float>();
  return std::vector<float>(p, p + out.numel());
}

std::vector<float> Model::top_logits(const std::vector<float>& features, const IdBatch& b, const Tensors* replacing) {
  std::vector<float> hidden(features);
  std::vector<int64_t> mask(static_cast<size_t>(b.rows * b.width), 0);
  for (int64_t r = 0; r < b.rows; ++r)
    for (int64_t c = 0; c < b.lengths[r]; ++c) mask[r * b.width + c] = 1;
  auto h = from_blob(hidden.data(), {int(b.rows), int(b.width), int(hidden_)}, ScalarType::Float);
  auto m = from_blob(mask.data(), {int(b.rows), int(b.width)}, ScalarType::Long);
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> inputs = {EValue(*h), EValue(*m)};
  for (const std::string& name : names_) {
    auto other = replacing ? replacing->find(name) : Tensors::const_iterator();
    // from_blob takes a mutable pointer; the program only reads its inputs
    Tensor& t = (replacing && other != replacing->end()) ? const_cast<Tensor&>(other->second) : weights_.at(name);
    if (t.values.size() != weights_.at(name).values.size())
      throw ModelError(ModelError::Kind::Runtime, name + ": a candidate tensor of another size than the top's");
    std::vector<executorch::aten::SizesType> sizes(t.shape.begin(), t.shape.end());
    tensors.push_back(from_blob(t.values.data(), sizes, ScalarType::Float));
    inputs.emplace_back(*tensors.back());
  }
  if (!programs_->top.module) programs_->top.load(package_, top_file_);  // released while a candidate trained
  auto result = programs_->top.module->execute("forward", inputs);
  if (!result.ok())
    throw ModelError(ModelError::Kind::Runtime, "top.pte: forward failed (error " +
                                                    std::to_string(int(result.error())) + ")");
  const auto out = result->at(0).toTensor();
  if (out.numel() != b.rows * num_labels_)
    throw ModelError(ModelError::Kind::Runtime, "top.pte: logits of another size than rows x labels");
  const float* p = out.const_data_ptr<float>();
  return std::vector<float>(p, p + out.numel());
}

std::vector<float> Model::logits(const int64_t* ids, const int64_t* lengths, int64_t rows, int64_t width) {
  if (rows < 0 || width < 0) throw ModelError(ModelError::Kind::Argument, "negative rows or width");
  std::vector<int64_t> order(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    if (lengths[i] < 1 || lengths[i] > width || lengths[i] > max_length_)
      throw ModelError(ModelError::Kind::Argument, "row " + std::to_string(i) + ": length " +
                                                       std::to_string(lengths[i]) + " is not in 1.." +
                                                       std::to_string(std::min(width, max_length_)));
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] < lengths[b]; });
  std::vector<float> out(static_cast<size_t>(rows * num_labels_));
  const int64_t pad = package_.pad_id();
  for (int64_t start = 0; start < rows; start += max_batch_) {
    IdBatch b;
    b.rows = std::min(max_batch_, rows - start);
    for (int64_t r = 0; r < b.rows; ++r) b.width = std::max(b.width, lengths[order[start + r]]);
    b.width = std::max(b.width, kMinSequence);
    b.ids.assign(static_cast<size_t>(b.rows * b.width), pad);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t i = order[start + r];
      std::memcpy(&b.ids[r * b.width], ids + i * width, sizeof(int64_t) * lengths[i]);
      b.lengths.push_back(lengths[i]);
    }
    const std::vector<float> l = top_logits(features(b), b);
    for (int64_t r = 0; r < b.rows; ++r)
      std::memcpy(&out[order[start + r] * num_labels_], &l[r * num_labels_], sizeof(float) * num_labels_);
  }
  return out;
}

std::vector<float> Model::logits_of_features(const Features& f, const Tensors* replacing) {
  const int64_t rows = f.rows();
  std::vector<float> out(static_cast<size_t>(rows * num_labels_));
  std::vector<int64_t> idx(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) idx[i] = i;
  std::vector<float> hidden;
  std::vector<int64_t> mask;
  for (int64_t start = 0; start < rows; start += max_batch_) {
    IdBatch b;
    b.rows = std::min(max_batch_, rows - start);
    f.gather(&idx[start], b.rows, kMinSequence, hidden, mask, b.width);
    for (int64_t r = 0; r < b.rows; ++r) b.lengths.push_back(f.lengths[start + r]);
    const std::vector<float> l = top_logits(hidden, b, replacing);
    std::memcpy(&out[start * num_labels_], l.data(), sizeof(float) * l.size());
  }
  return out;
}

}  // namespace edgetune
