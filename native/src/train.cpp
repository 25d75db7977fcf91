#include "train.hpp"

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "model.hpp"
#include "split.hpp"

namespace edgetune {

using executorch::aten::ScalarType;
using executorch::extension::BufferDataLoader;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;  // torch.optim.AdamW's defaults
constexpr int64_t kMinWidth = 2;                              // the program's smallest sequence

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

[[noreturn]] void runtime_error(const std::string& message) { throw ModelError(ModelError::Kind::Runtime, message); }

struct Param {
  std::string name;
  std::vector<int64_t> shape;
  float lr = 0, weight_decay = 0;
  std::vector<float> m, v, best;
  std::vector<float> grad_sum;  // the batch's gradient when it takes several calls of the program
  float* live = nullptr;  // the program's weights (its parameter outputs alias them)
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

bool is_head(const std::string& name) { return name.rfind("head.", 0) == 0 || name.rfind("norm.", 0) == 0; }

int64_t method_int(Module& module, const std::string& file, const std::string& name) {
  auto result = module.execute(name);
  if (!result.ok() || result->empty()) runtime_error(file + ": no method " + name);
  return result->at(0).toInt();
}

}  // namespace

void Features::add(const float* row, int64_t length, int64_t label) {
  offsets.push_back(static_cast<int64_t>(data.size()));
  lengths.push_back(length);
  labels.push_back(label);
  data.insert(data.end(), row, row + length * hidden);
}

void Features::reserve(const std::vector<int64_t>& row_lengths, const std::vector<int64_t>& row_labels) {
  lengths = row_lengths;
  labels = row_labels;
  offsets.clear();
  int64_t total = 0;
  for (int64_t length : lengths) {
    offsets.push_back(total);
    total += length * hidden;
  }
  data.assign(static_cast<size_t>(total), 0.0f);
}

void Features::gather(const int64_t* idx, int64_t count, int64_t min_width, std::vector<float>& hidden_out,
                      std::vector<int64_t>& mask_out, int64_t& width) const {
  width = min_width;
  for (int64_t r = 0; r < count; ++r) width = std::max(width, lengths[idx[r]]);
  hidden_out.assign(static_cast<size_t>(count * width * hidden), 0.0f);
  mask_out.assign(static_cast<size_t>(count * width), 0);
  for (int64_t r = 0; r < count; ++r) {
    const int64_t i = idx[r];
    std::memcpy(&hidden_out[r * width * hidden], &data[offsets[i]], sizeof(float) * lengths[i] * hidden);
    for (int64_t c = 0; c < lengths[i]; ++c) mask_out[r * width + c] = 1;
  }
}

std::pair<double, double> accuracy_and_macro_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred) {
  std::set<int64_t> present(truth.begin(), truth.end());
  present.insert(pred.begin(), pred.end());
  int64_t right = 0;
  for (size_t i = 0; i < truth.size(); ++i) right += truth[i] == pred[i];
  double f1_sum = 0;
  for (int64_t c : present) {
    int64_t tp = 0, wrong = 0;
    for (size_t i = 0; i < truth.size(); ++i) {
      tp += truth[i] == c && pred[i] == c;
      wrong += (truth[i] != c && pred[i] == c) + (truth[i] == c && pred[i] != c);
    }
    f1_sum += (tp + wrong) ? 2.0 * tp / (2.0 * tp + wrong) : 0.0;
  }
  return {truth.empty() ? 0.0 : double(right) / double(truth.size()), present.empty() ? 0.0 : f1_sum / present.size()};
}

TrainResult train_top(const Package& package, const Json& program, const Features& train, const Features& val,
                      const TrainSettings& s, const std::function<void(int64_t, int64_t, double)>& on_step,
                      const TrainCheckpoint* resume, const EpochHook& on_epoch) {
  if (train.rows() == 0) throw ModelError(ModelError::Kind::Argument, "no training example");
  const std::string file = program.at("file").str("file");
  const std::string bytes = package.read_verified(file);
  Module module(std::make_unique<BufferDataLoader>(bytes.data(), bytes.size()));
  const int64_t grad_start = method_int(module, file, "__et_training_gradients_index_forward");
  const int64_t param_start = method_int(module, file, "__et_training_parameters_index_forward");
  std::vector<Param> params;
  for (const Json& p : program.at("parameters").items("parameters")) {
    Param param;
    param.name = p.at("name").str("name");
    for (const Json& d : p.at("shape").items("shape")) param.shape.push_back(d.integer("shape"));
    param.lr = static_cast<float>(is_head(param.name) ? s.head_lr : (s.head_only ? 0.0 : s.lr));
    param.weight_decay = static_cast<float>(param.shape.size() >= 2 ? s.weight_decay : 0.0);
    param.m.assign(static_cast<size_t>(param.numel()), 0.0f);
    param.v.assign(static_cast<size_t>(param.numel()), 0.0f);
    params.push_back(std::move(param));
  }
  if (param_start - grad_start != static_cast<int64_t>(params.size()))
    runtime_error(file + " trains " + std::to_string(param_start - grad_start) + " tensors, the manifest lists " +
                  std::to_string(params.size()));
  const int64_t n = train.rows(), hidden = train.hidden;
  const int64_t steps_per_epoch = (n + s.batch_size - 1) / s.batch_size;
  const int64_t total = steps_per_epoch * s.epochs, warmup = static_cast<int64_t>(s.warmup_ratio * double(total));

  // Rows per call of the program (its memory plan is sized for them); a batch of more rows is run in several
  // calls whose gradients are summed. Packages exported before the entry said so: the programs' common largest.
  const Json* per_call = program.find("max_batch");
  const int64_t call_rows = (per_call != nullptr ? *per_call : package.manifest().at("executorch").at("max_batch"))
                                .integer("max_batch");
  if (call_rows < 1) runtime_error(file + ": max_batch must be at least 1");

  std::vector<float> h;
  std::vector<int64_t> mask;
  int64_t width = 0;
  auto run = [&](const Features& f, const int64_t* idx, int64_t rows) {
    f.gather(idx, rows, kMinWidth, h, mask, width);
    std::vector<int64_t> labels(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) labels[r] = f.labels[idx[r]];
    auto ht = from_blob(h.data(), {int(rows), int(width), int(hidden)}, ScalarType::Float);
    auto mt = from_blob(mask.data(), {int(rows), int(width)}, ScalarType::Long);
    auto yt = from_blob(labels.data(), {int(rows)}, ScalarType::Long);
    auto result = module.execute("forward", {EValue(*ht), EValue(*mt), EValue(*yt)});
    if (!result.ok()) runtime_error(file + ": forward failed (error " + std::to_string(int(result.error())) + ")");
    return std::move(*result);
  };

  TrainResult out;
  int64_t planned_bytes = 0;
  if (auto meta = module.method_meta("forward"); meta.ok())
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i)
      if (auto size = meta->memory_planned_buffer_size(i); size.ok()) planned_bytes += *size;
  int64_t step = 0, without_improvement = 0, first_epoch = 0;
  double best_metric = -1;
  auto bind = [&](std::vector<EValue>& outputs) {  // the program's live weights, as its outputs alias them
    for (size_t i = 0; i < params.size(); ++i) {
      auto w = outputs[param_start + i].toTensor();
      if (w.numel() != params[i].numel())
        runtime_error(file + ": " + params[i].name + " has another shape than the manifest says");
      params[i].live = w.mutable_data_ptr<float>();
    }
  };
  if (resume != nullptr) {
    // one forward to reach the weights, which are then overwritten: the next step computes with the restored ones
    const Indices first = epoch_order(n, s.seed, 0);
    auto outputs = run(train, first.data(), std::min(call_rows, n));
    bind(outputs);
    auto restore = [&](const Tensors& from, const Param& p, float* to, const char* what) {
      auto it = from.find(p.name);
      if (it == from.end() || it->second.numel() != p.numel())
        throw ModelError(ModelError::Kind::Argument, std::string("checkpoint: no ") + what + " of " + p.name);
      std::copy(it->second.values.begin(), it->second.values.end(), to);
    };
    for (Param& p : params) {
      restore(resume->live, p, p.live, "weights");
      restore(resume->m, p, p.m.data(), "first moment");
      restore(resume->v, p, p.v.data(), "second moment");
      if (resume->so_far.best_epoch > 0) {
        p.best.resize(p.m.size());
        restore(resume->best, p, p.best.data(), "best weights");
      }
    }
    first_epoch = resume->epochs_done;
    step = resume->step;
    without_improvement = resume->without_improvement;
    best_metric = resume->best_metric;
    out = resume->so_far;
    out.tensors.clear();
    out.planned_bytes = planned_bytes;
  }
  auto checkpoint = [&](int64_t epochs_done) {
    CheckpointState c;
    c.epochs_done = epochs_done;
    c.step = step;
    c.without_improvement = without_improvement;
    c.best_metric = best_metric;
    c.so_far = out;
    std::vector<TensorRef> tensors;
    for (const Param& p : params) {
      tensors.push_back({"live/" + p.name, p.shape, p.live});
      tensors.push_back({"m/" + p.name, p.shape, p.m.data()});
      tensors.push_back({"v/" + p.name, p.shape, p.v.data()});
      if (!p.best.empty()) tensors.push_back({"best/" + p.name, p.shape, p.best.data()});
    }
    on_epoch(c, tensors);
  };
  for (int64_t epoch = first_epoch; epoch < s.epochs && !out.stopped_early; ++epoch) {
    const double t0 = now();
    const Indices order = epoch_order(n, s.seed, static_cast<uint64_t>(epoch));
    EpochRecord record;
    record.epoch = epoch + 1;
    for (int64_t start = 0; start < n; start += s.batch_size) {
      const int64_t rows = std::min(s.batch_size, n - start);
      float loss = 0;
      std::vector<const float*> grads(params.size());
      for (int64_t part = 0; part < rows; part += call_rows) {
        const int64_t part_rows = std::min(call_rows, rows - part);
        auto outputs = run(train, &order[start + part], part_rows);
        bind(outputs);
        // the mean loss over the batch = the calls' mean losses weighted by their rows (and so their gradients)
        const float weight = static_cast<float>(part_rows) / static_cast<float>(rows);
        loss += weight * outputs[0].toTensor().const_data_ptr<float>()[0];
        for (size_t i = 0; i < params.size(); ++i) {
          auto g = outputs[grad_start + i].toTensor();
          if (g.numel() != params[i].numel())
            runtime_error(file + ": the gradient of " + params[i].name + " has another shape than the manifest says");
          const float* gi = g.const_data_ptr<float>();
          if (part_rows == rows) {  // one call: its outputs are the batch's gradients
            grads[i] = gi;
            continue;
          }
          // the program's outputs are overwritten by its next call: sum them in the parameter's own buffer
          std::vector<float>& acc = params[i].grad_sum;
          if (part == 0) acc.assign(static_cast<size_t>(g.numel()), 0.0f);
          for (int64_t k = 0; k < g.numel(); ++k) acc[k] += weight * gi[k];
          grads[i] = acc.data();
        }
      }
      double norm2 = 0;
      for (size_t i = 0; i < params.size(); ++i)
        for (int64_t k = 0; k < params[i].numel(); ++k) norm2 += double(grads[i][k]) * grads[i][k];
      float clip = 1.0f;
      if (s.max_grad_norm > 0)
        clip = std::min(1.0f, static_cast<float>(s.max_grad_norm) / (static_cast<float>(std::sqrt(norm2)) + 1e-6f));
      const double factor = step < warmup ? double(step) / std::max<int64_t>(1, warmup)
                                          : std::max(0.0, double(total - step) / std::max<int64_t>(1, total - warmup));
      const double bc1 = 1.0 - std::pow(kBeta1, step + 1), bc2_sqrt = std::sqrt(1.0 - std::pow(kBeta2, step + 1));
      for (size_t i = 0; i < params.size(); ++i) {
        Param& p = params[i];
        const float lr = static_cast<float>(p.lr * factor);
        const float decay = 1.0f - lr * p.weight_decay;
        const float step_size = static_cast<float>(lr / bc1);
        for (size_t k = 0; k < p.m.size(); ++k) {
          const float gk = grads[i][k] * clip;
          p.live[k] *= decay;
          p.m[k] += (gk - p.m[k]) * static_cast<float>(1.0 - kBeta1);
          p.v[k] = p.v[k] * static_cast<float>(kBeta2) + static_cast<float>(1.0 - kBeta2) * gk * gk;
          const float denom = std::sqrt(p.v[k]) / static_cast<float>(bc2_sqrt) + static_cast<float>(kEps);
          p.live[k] -= step_size * p.m[k] / denom;
        }
      }
      out.step_losses.push_back(loss);
      record.loss += loss;
      ++record.steps;
      ++step;
      if (on_step) on_step(step, total, loss);
    }
    record.loss /= std::max<int64_t>(1, record.steps);
    record.seconds = now() - t0;
    if (val.rows() > 0) {
      std::vector<int64_t> pred, idx(static_cast<size_t>(val.rows()));
      for (int64_t i = 0; i < val.rows(); ++i) idx[i] = i;
      for (int64_t start = 0; start < val.rows(); start += call_rows) {
        const int64_t rows = std::min(call_rows, val.rows() - start);
        auto outputs = run(val, &idx[start], rows);
        auto logits = outputs[1].toTensor();
        const int64_t classes = logits.size(1);
        const float* l = logits.const_data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r)
          pred.push_back(std::max_element(l + r * classes, l + (r + 1) * classes) - (l + r * classes));
      }
      std::tie(record.val_accuracy, record.val_macro_f1) = accuracy_and_macro_f1(val.labels, pred);
      const double value = s.metric == "macro_f1" ? record.val_macro_f1 : record.val_accuracy;
      if (out.best_epoch < 0 || value > best_metric) {
        best_metric = value;
        out.best_epoch = epoch + 1;
        without_improvement = 0;
        for (Param& p : params) p.best.assign(p.live, p.live + p.numel());
      } else if (++without_improvement >= s.patience && s.patience >= 0) {
        out.stopped_early = true;
      }
    }
    out.history.push_back(record);
    if (on_epoch) checkpoint(epoch + 1);
  }
  out.planned_bytes = planned_bytes;
  for (Param& p : params) {
    Tensor t;
    t.shape = p.shape;
    t.values = out.best_epoch > 0 ? p.best : std::vector<float>(p.live, p.live + p.numel());
    out.tensors.emplace(p.name, std::move(t));
  }
  return out;
}

}  // namespace edgetune
