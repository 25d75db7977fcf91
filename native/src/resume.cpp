#include "resume.hpp"

#include <cstring>

#include "json.hpp"
#include "json_writer.hpp"
#include "safetensors.hpp"
#include "sha256.hpp"

namespace edgetune {

namespace {

constexpr char kMagic[] = "edgetune-work-record-1\n";

void write_record(const WorkDir& work, const std::string& name, const std::string& header,
                  const std::vector<TensorRef>& tensors) {
  std::string head = kMagic;
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) head += static_cast<char>((length >> (8 * i)) & 0xff);
  head += header;
  work.put_streamed(name, [&](const WorkDir::Sink& sink) {
    sink(head.data(), head.size());
    write_safetensors(tensors, sink);
  });
}

bool unrecord(const std::string& bytes, Json& header, Tensors& tensors) {
  const size_t magic = sizeof kMagic - 1;
  if (bytes.size() < magic + 8 || bytes.compare(0, magic, kMagic) != 0) return false;
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= uint64_t(static_cast<unsigned char>(bytes[magic + i])) << (8 * i);
  if (length > bytes.size() - magic - 8) return false;
  try {
    header = Json::parse(std::string_view(bytes).substr(magic + 8, length));
    tensors = parse_safetensors(bytes.substr(magic + 8 + length), "work record");
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

void write_training(JsonWriter& w, const TrainResult& r) {
  w.key("history").open('[');
  for (const EpochRecord& e : r.history) {
    w.open('{').key("epoch").value(e.epoch).key("steps").value(e.steps).key("loss").number(e.loss);
    w.key("seconds").number(e.seconds).key("val_accuracy").number(e.val_accuracy);
    w.key("val_macro_f1").number(e.val_macro_f1).close('}');
  }
  w.close(']').key("step_losses").open('[');
  for (double loss : r.step_losses) w.number(loss);
  w.close(']').key("best_epoch").value(r.best_epoch).key("stopped_early").value(r.stopped_early);
}

void read_training(const Json& j, TrainResult& r) {
  for (const Json& e : j.at("history").items("history")) {
    EpochRecord rec;
    rec.epoch = e.at("epoch").integer("epoch");
    rec.steps = e.at("steps").integer("steps");
    rec.loss = e.at("loss").number("loss");
    rec.seconds = e.at("seconds").number("seconds");
    rec.val_accuracy = e.at("val_accuracy").number("val_accuracy");
    rec.val_macro_f1 = e.at("val_macro_f1").number("val_macro_f1");
    r.history.push_back(rec);
  }
  for (const Json& x : j.at("step_losses").items("step_losses")) r.step_losses.push_back(x.number("loss"));
  r.best_epoch = j.at("best_epoch").integer("best_epoch");
  r.stopped_early = j.at("stopped_early").boolean("stopped_early");
}

// ``group/name`` entries of ``from`` into ``into`` under their names.
void take(const Tensors& from, const std::string& group, Tensors& into) {
  const std::string prefix = group + "/";
  for (const auto& [name, t] : from)
    if (name.compare(0, prefix.size(), prefix) == 0) into[name.substr(prefix.size())] = t;
}


}  // namespace

std::string job_identity(const Package& package, const std::vector<std::string>& texts,
                         const std::vector<int64_t>& labels, const PersonalizeSettings& s,
                         const std::vector<CandidateSpec>& candidates) {
  JsonWriter w;
  w.open('{').key("package").value(package.manifest().at("integrity").at("manifest_sha256").str("seal"));
  Sha256 data;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string row = std::to_string(texts[i].size()) + ":" + texts[i] + ":" + std::to_string(labels[i]) + ";";
    data.update(row.data(), row.size());
  }
  w.key("data").value(data.hex());
  w.key("epochs").value(s.epochs).key("batch_size").value(s.batch_size).key("patience").value(s.patience);
  w.key("lr").number(s.lr).key("head_lr").number(s.head_lr).key("weight_decay").number(s.weight_decay);
  w.key("warmup_ratio").number(s.warmup_ratio).key("max_grad_norm").number(s.max_grad_norm);
  w.key("seed").value(static_cast<int64_t>(s.seed)).key("metric").value(s.metric);
  w.key("head_only").value(s.head_only).key("select").value(s.select).key("int8_trunk").value(s.int8_trunk);
  w.key("tuner").value(s.tuner);
  w.key("val_fraction").number(s.val_fraction).key("guard_fraction").number(s.guard_fraction);
  w.key("guard_alpha").number(s.guard_alpha).key("cache_batch_size").value(s.cache_batch_size);
  w.key("candidates").open('[');
  for (const CandidateSpec& c : candidates) {
    w.open('{').key("name").value(c.name).key("prior").value(c.prior).key("head_only").value(c.head_only);
    w.key("tuner").value(c.tuner).key("lr").number(c.lr).key("head_lr").number(c.head_lr).close('}');
  }
  w.close(']').close('}');
  return Sha256::of(w.text());
}

void write_checkpoint(const WorkDir& work, const std::string& name, const CheckpointState& c,
                      const std::vector<TensorRef>& tensors) {
  JsonWriter w;
  w.open('{').key("epochs_done").value(c.epochs_done).key("step").value(c.step);
  w.key("without_improvement").value(c.without_improvement).key("best_metric").number(c.best_metric);
  write_training(w, c.so_far);
  w.close('}');
  write_record(work, name, w.text(), tensors);
}

bool decode_checkpoint(const std::string& bytes, TrainCheckpoint& c) {
  Json j;
  Tensors all;
  if (!unrecord(bytes, j, all)) return false;
  try {
    c = TrainCheckpoint{};
    c.epochs_done = j.at("epochs_done").integer("epochs_done");
    c.step = j.at("step").integer("step");
    c.without_improvement = j.at("without_improvement").integer("without_improvement");
    c.best_metric = j.at("best_metric").number("best_metric");
    read_training(j, c.so_far);
  } catch (const std::exception&) {
    return false;
  }
  take(all, "live", c.live);
  take(all, "m", c.m);
  take(all, "v", c.v);
  take(all, "best", c.best);
  return true;
}

void write_candidate(const WorkDir& work, const std::string& name, const CandidateOutcome& o) {
  JsonWriter w;
  w.open('{').key("val_accuracy").number(o.val_accuracy).key("seconds").number(o.seconds);
  w.key("prior_shift").open('[');
  for (double d : o.prior_shift) w.number(d);
  w.close(']');
  write_training(w, o.training);
  w.close('}');
  std::vector<TensorRef> tensors;
  for (const auto& [tensor_name, t] : o.training.tensors) tensors.push_back({tensor_name, t.shape, t.values.data()});
  write_record(work, name, w.text(), tensors);
}

bool decode_candidate(const std::string& bytes, CandidateOutcome& o) {
  Json j;
  Tensors tensors;
  if (!unrecord(bytes, j, tensors)) return false;
  try {
    o.val_accuracy = j.at("val_accuracy").number("val_accuracy");
    o.seconds = j.at("seconds").number("seconds");
    o.prior_shift.clear();
    for (const Json& x : j.at("prior_shift").items("prior_shift")) o.prior_shift.push_back(x.number("shift"));
    o.training = TrainResult{};
    read_training(j, o.training);
  } catch (const std::exception&) {
    return false;
  }
  o.training.tensors = std::move(tensors);
  return true;
}

}  // namespace edgetune
