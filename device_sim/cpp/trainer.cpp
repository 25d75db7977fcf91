// edgetune-trainer: trains a package's top (top_train.pte) on cached trunk features with ExecuTorch's C++
// runtime, torch-free. Written for device_sim.backends.executorch_cpp, which writes the job file and reads the
// results; see device_sim/cpp/README.md for the formats.
//
// The loop is the torch backend's: epochs over an order given by the caller (numpy's epoch permutation),
// batches trimmed to their longest example, AdamW (torch's update rule, per-parameter lr and weight decay),
// linear warm-up then linear decay, gradient clipping by global norm, validation after every epoch, the best
// epoch's tensors kept, early stopping after `patience` epochs without improvement.
//
// usage: edgetune-trainer JOB_FILE

#include <executorch/extension/module/module.h>
#include <fcntl.h>
#include <unistd.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// libexecutorch_threadpool.so ships without its header; this is the part of its interface used here.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

struct Param {
  std::string name;
  float lr = 0;
  float weight_decay = 0;
  std::vector<int64_t> shape;
  std::vector<float> m, v, best;
};

struct Split {
  int64_t n = 0;
  int fd = -1;                  // n x seq x hidden float32 rows, read per batch (not held in memory)
  std::vector<uint8_t> mask;    // n x seq
  std::vector<int64_t> labels;  // n
  ~Split() {
    if (fd >= 0) ::close(fd);
  }
};

struct Job {
  std::map<std::string, std::string> values;
  std::vector<Param> params;
  std::string get(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw std::runtime_error("job file: missing '" + key + "'");
    return it->second;
  }
  double num(const std::string& key) const { return std::stod(get(key)); }
  int64_t integer(const std::string& key) const { return std::stoll(get(key)); }
};

Job read_job(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the job file");
  Job job;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream row(line);
    std::string key;
    if (!(row >> key)) continue;
    if (key == "param") {  // param NAME LR WEIGHT_DECAY DIMS...
      Param p;
      row >> p.name >> p.lr >> p.weight_decay;
      int64_t d;
      while (row >> d) p.shape.push_back(d);
      job.params.push_back(std::move(p));
    } else {
      std::string value;
      std::getline(row >> std::ws, value);
      job.values[key] = value;
    }
  }
  return job;
}

template <typename T>
std::vector<T> read_array(const std::string& path, size_t count) {
  std::vector<T> out(count);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error(path + ": cannot open");
  size_t got = std::fread(out.data(), sizeof(T), count, f);
  std::fclose(f);
  if (got != count) throw std::runtime_error(path + ": truncated (" + std::to_string(got) + " of " +
                                             std::to_string(count) + " values)");
  return out;
}

void read_split(Split& s, const Job& job, const std::string& prefix, int64_t seq) {
  s.n = job.integer(prefix + "_n");
  if (s.n == 0) return;
  const std::string features = job.get(prefix + "_features");
  s.fd = ::open(features.c_str(), O_RDONLY);
  if (s.fd < 0) throw std::runtime_error(features + ": cannot open");
  s.mask = read_array<uint8_t>(job.get(prefix + "_mask"), static_cast<size_t>(s.n * seq));
  s.labels = read_array<int64_t>(job.get(prefix + "_labels"), static_cast<size_t>(s.n));
}

int64_t sum(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

struct Batch {
  std::vector<float> hidden;
  std::vector<int64_t> mask;
  std::vector<int64_t> labels;
  int64_t rows = 0, width = 0;
};

// Gather rows `idx` of a split, trimmed to the batch's longest example (at least 2 columns, the program's minimum).
Batch gather(const Split& s, const int64_t* idx, int64_t rows, int64_t seq, int64_t hidden) {
  Batch b;
  b.rows = rows;
  int64_t width = 1;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = seq - 1; c >= 0; --c)
      if (s.mask[idx[r] * seq + c]) {
        width = std::max(width, c + 1);
        break;
      }
  b.width = std::max<int64_t>(width, 2);
  b.hidden.assign(static_cast<size_t>(rows * b.width * hidden), 0.0f);
  b.mask.assign(static_cast<size_t>(rows * b.width), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = idx[r];
    const int64_t cols = std::min(b.width, seq);
    const size_t bytes = sizeof(float) * cols * hidden;
    const off_t offset = static_cast<off_t>(sizeof(float) * i * seq * hidden);
    if (::pread(s.fd, &b.hidden[r * b.width * hidden], bytes, offset) != static_cast<ssize_t>(bytes))
      throw std::runtime_error("features: short read (truncated file?)");
    for (int64_t c = 0; c < cols; ++c) b.mask[r * b.width + c] = s.mask[i * seq + c];
    b.labels.push_back(s.labels[i]);
  }
  return b;
}

std::vector<EValue> run(Module& module, Batch& b, int64_t hidden) {
  auto h = from_blob(b.hidden.data(), {static_cast<int>(b.rows), static_cast<int>(b.width), static_cast<int>(hidden)},
                     ScalarType::Float);
  auto m = from_blob(b.mask.data(), {static_cast<int>(b.rows), static_cast<int>(b.width)}, ScalarType::Long);
  auto y = from_blob(b.labels.data(), {static_cast<int>(b.rows)}, ScalarType::Long);
  auto result = module.execute("forward", {EValue(*h), EValue(*m), EValue(*y)});
  if (!result.ok())
    throw std::runtime_error("top_train.pte: forward failed (error " + std::to_string(int(result.error())) + ")");
  return std::move(*result);
}

int64_t method_int(Module& module, const std::string& name) {
  auto result = module.execute(name);
  if (!result.ok() || result->empty()) throw std::runtime_error("top_train.pte: no method " + name);
  return result->at(0).toInt();
}

struct Scores {
  double accuracy = 0, macro_f1 = 0;
};

// Accuracy and macro-F1 over the labels present in truth or predictions (scikit-learn's choice with labels=present).
Scores score(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred) {
  Scores s;
  std::set<int64_t> present(truth.begin(), truth.end());
  present.insert(pred.begin(), pred.end());
  int64_t right = 0;
  for (size_t i = 0; i < truth.size(); ++i) right += truth[i] == pred[i];
  s.accuracy = truth.empty() ? 0.0 : double(right) / truth.size();
  double f1_sum = 0;
  for (int64_t c : present) {
    int64_t tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < truth.size(); ++i) {
      tp += truth[i] == c && pred[i] == c;
      fp += truth[i] != c && pred[i] == c;
      fn += truth[i] == c && pred[i] != c;
    }
    f1_sum += (2 * tp + fp + fn) ? 2.0 * tp / (2.0 * tp + fp + fn) : 0.0;
  }
  s.macro_f1 = present.empty() ? 0.0 : f1_sum / present.size();
  return s;
}

// safetensors: 8-byte little-endian header length, JSON header, then the raw data. Written to a temporary file
// and renamed, so a crash never leaves half a file.
void write_safetensors(const std::string& path, const std::vector<Param>& params,
                       const std::vector<const float*>& data) {
  std::ostringstream header;
  header << "{";
  size_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const size_t bytes = sizeof(float) * sum(params[i].shape);
    header << (i ? "," : "") << "\"" << params[i].name << "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t d = 0; d < params[i].shape.size(); ++d) header << (d ? "," : "") << params[i].shape[d];
    header << "],\"data_offsets\":[" << offset << "," << offset + bytes << "]}";
    offset += bytes;
  }
  header << "}";
  std::string h = header.str();
  while (h.size() % 8) h += ' ';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    uint64_t n = h.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), h.size());
    for (size_t i = 0; i < params.size(); ++i)
      out.write(reinterpret_cast<const char*>(data[i]), sizeof(float) * sum(params[i].shape));
    out.flush();
    if (!out) throw std::runtime_error(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int train(const Job& job_in) {
  Job job = job_in;
  const int64_t seq = job.integer("seq"), hidden = job.integer("hidden");
  const int64_t epochs = job.integer("epochs"), batch_size = job.integer("batch_size");
  const int64_t warmup = job.integer("warmup_steps"), total = job.integer("total_steps");
  const double max_norm = job.num("max_grad_norm"), beta1 = job.num("beta1"), beta2 = job.num("beta2");
  const double eps = job.num("eps");
  const int64_t patience = job.integer("patience");  // < 0: none
  const std::string metric = job.get("metric");
  const int64_t threads = job.integer("threads");
  if (threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);

  Split train, val;
  read_split(train, job, "train", seq);
  read_split(val, job, "val", seq);
  auto order = read_array<int64_t>(job.get("order"), static_cast<size_t>(epochs * train.n));

  Module module(job.get("program"), Module::LoadMode::File);
  const int64_t grad_start = method_int(module, "__et_training_gradients_index_forward");
  const int64_t param_start = method_int(module, "__et_training_parameters_index_forward");
  auto& params = job.params;
  if (param_start - grad_start != static_cast<int64_t>(params.size()))
    throw std::runtime_error("top_train.pte: " + std::to_string(param_start - grad_start) +
                             " trained tensors, the job file lists " + std::to_string(params.size()));
  for (auto& p : params) {
    p.m.assign(sum(p.shape), 0.0f);
    p.v.assign(sum(p.shape), 0.0f);
  }
  std::ofstream log(job.get("log"));
  log.precision(17);

  std::vector<float*> weights(params.size(), nullptr);
  auto snapshot_best = [&]() {
    for (size_t i = 0; i < params.size(); ++i) params[i].best.assign(weights[i], weights[i] + sum(params[i].shape));
  };
  int64_t step = 0, best_epoch = -1, without_improvement = 0;
  double best_metric = -1;
  bool stopped_early = false;
  for (int64_t epoch = 0; epoch < epochs && !stopped_early; ++epoch) {
    const double t0 = now();
    double loss_sum = 0;
    int64_t steps = 0;
    for (int64_t start = 0; start < train.n; start += batch_size) {
      const int64_t rows = std::min(batch_size, train.n - start);
      Batch b = gather(train, &order[epoch * train.n + start], rows, seq, hidden);
      auto out = run(module, b, hidden);
      const float loss = out[0].toTensor().const_data_ptr<float>()[0];
      // grads and live weights
      double norm2 = 0;
      std::vector<float*> grads(params.size());
      for (size_t i = 0; i < params.size(); ++i) {
        auto g = out[grad_start + i].toTensor();
        auto w = out[param_start + i].toTensor();
        if (g.numel() != sum(params[i].shape) || w.numel() != g.numel())
          throw std::runtime_error("top_train.pte: " + params[i].name + " has another shape than the job file says");
        grads[i] = g.mutable_data_ptr<float>();
        weights[i] = w.mutable_data_ptr<float>();
        for (int64_t k = 0; k < g.numel(); ++k) norm2 += double(grads[i][k]) * grads[i][k];
      }
      float clip = 1.0f;
      if (max_norm > 0) {
        const float total_norm = static_cast<float>(std::sqrt(norm2));
        clip = std::min(1.0f, static_cast<float>(max_norm) / (total_norm + 1e-6f));
      }
      const double factor = step < warmup ? double(step) / std::max<int64_t>(1, warmup)
                                          : std::max(0.0, double(total - step) / std::max<int64_t>(1, total - warmup));
      const double bc1 = 1.0 - std::pow(beta1, step + 1), bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, step + 1));
      for (size_t i = 0; i < params.size(); ++i) {
        Param& p = params[i];
        const float lr = static_cast<float>(p.lr * factor);
        const float decay = 1.0f - lr * p.weight_decay;
        const float step_size = static_cast<float>(lr / bc1);
        float* w = weights[i];
        const float* g = grads[i];
        for (size_t k = 0; k < p.m.size(); ++k) {
          const float gk = g[k] * clip;
          w[k] *= decay;
          p.m[k] += (gk - p.m[k]) * static_cast<float>(1.0 - beta1);
          p.v[k] = p.v[k] * static_cast<float>(beta2) + static_cast<float>(1.0 - beta2) * gk * gk;
          const float denom = std::sqrt(p.v[k]) / static_cast<float>(bc2_sqrt) + static_cast<float>(eps);
          w[k] -= step_size * p.m[k] / denom;
        }
      }
      log << "step " << step << " " << epoch << " " << loss << "\n";
      loss_sum += loss;
      ++steps;
      ++step;
    }
    const double seconds = now() - t0;
    log << "epoch " << epoch + 1 << " " << loss_sum / std::max<int64_t>(1, steps) << " " << steps << " " << seconds;
    if (val.n > 0) {
      std::vector<int64_t> pred;
      std::vector<int64_t> idx(val.n);
      for (int64_t i = 0; i < val.n; ++i) idx[i] = i;
      for (int64_t start = 0; start < val.n; start += batch_size) {
        const int64_t rows = std::min(batch_size, val.n - start);
        Batch b = gather(val, &idx[start], rows, seq, hidden);
        auto out = run(module, b, hidden);
        auto logits = out[1].toTensor();
        const int64_t classes = logits.size(1);
        const float* l = logits.const_data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r)
          pred.push_back(std::max_element(l + r * classes, l + (r + 1) * classes) - (l + r * classes));
      }
      Scores s = score(val.labels, pred);
      const double value = metric == "macro_f1" ? s.macro_f1 : s.accuracy;
      log << " " << s.accuracy << " " << s.macro_f1;
      if (best_epoch < 0 || value > best_metric) {
        best_metric = value;
        best_epoch = epoch + 1;
        without_improvement = 0;
        snapshot_best();
      } else if (++without_improvement >= patience && patience >= 0) {
        stopped_early = true;
      }
    }
    log << "\n";
    log.flush();
  }
  std::vector<const float*> data(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    data[i] = (val.n > 0 && best_epoch > 0) ? params[i].best.data() : weights[i];
  if (train.n == 0 || weights.empty() || weights[0] == nullptr) throw std::runtime_error("no training step ran");
  write_safetensors(job.get("out"), params, data);
  log << "done " << best_epoch << " " << (stopped_early ? 1 : 0) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: edgetune-trainer JOB_FILE\n";
    return 2;
  }
  try {
    return train(read_job(argv[1]));
  } catch (const std::exception& err) {
    std::cerr << "edgetune-trainer: " << err.what() << "\n";
    return 1;
  }
}
