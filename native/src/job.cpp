#include "job.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <numeric>

#include "canonical.hpp"
#include "model.hpp"
#include "personal.hpp"
#include "sha256.hpp"
#include "split.hpp"
#include "wordpiece.hpp"

namespace edgetune {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

[[noreturn]] void write_error(const std::string& message) {
  throw PersonalStateError(PersonalStateError::Kind::Io, message);
}

// JSON text built in order (the seal is computed over its canonical form, so only the values matter).
class JsonWriter {
 public:
  JsonWriter& key(const std::string& k) {
    comma();
    string(k);
    text_ += ":";
    fresh_ = true;
    return *this;
  }
  JsonWriter& open(char bracket) {
    comma();
    text_ += bracket;
    fresh_ = true;
    return *this;
  }
  JsonWriter& close(char bracket) {
    text_ += bracket;
    fresh_ = false;
    return *this;
  }
  JsonWriter& value(const std::string& s) { return comma(), string(s), done(); }
  JsonWriter& value(const char* s) { return value(std::string(s)); }
  JsonWriter& value(int64_t n) { return comma(), text_ += std::to_string(n), done(); }
  JsonWriter& value(int n) { return value(static_cast<int64_t>(n)); }
  JsonWriter& value(bool b) { return comma(), text_ += b ? "true" : "false", done(); }
  JsonWriter& number(double x) {  // NaN and infinities are not JSON: null
    comma();
    if (!std::isfinite(x)) {
      text_ += "null";
    } else {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", x);
      text_ += buf;
      if (std::string(buf).find_first_of(".eEn") == std::string::npos) text_ += ".0";  // stays a float
    }
    return done();
  }
  JsonWriter& null() { return comma(), text_ += "null", done(); }
  JsonWriter& raw(const std::string& json) { return comma(), text_ += json, done(); }
  const std::string& text() const { return text_; }

 private:
  void comma() {
    if (!fresh_ && !text_.empty()) text_ += ",";
    fresh_ = false;
  }
  JsonWriter& done() {
    fresh_ = false;
    return *this;
  }
  void string(const std::string& s) {
    text_ += '"';
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        text_ += '\\';
        text_ += static_cast<char>(c);
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        text_ += buf;
      } else {
        text_ += static_cast<char>(c);
      }
    }
    text_ += '"';
  }
  std::string text_;
  bool fresh_ = true;
};

void write_file(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) write_error(path + ": cannot be written");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      write_error(path + ": write failed");
    }
    done += static_cast<size_t>(n);
  }
  const bool ok = ::fsync(fd) == 0;
  if (::close(fd) != 0 || !ok) write_error(path + ": write failed");
}

void remove_tree(const std::string& path) {
  if (DIR* dir = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((path + "/" + name).c_str());
    }
    ::closedir(dir);
  }
  ::rmdir(path.c_str());
}

// ``out`` may be absent, an empty directory or a personal state: anything else is refused (a mistyped path never
// destroys a directory of other files).
void check_writable(const std::string& out) {
  struct stat info;
  if (::lstat(out.c_str(), &info) != 0) return;
  if (!S_ISDIR(info.st_mode)) write_error(out + ": exists and is not a directory; refusing to replace it");
  if (::stat((out + "/personal.json").c_str(), &info) == 0) return;
  DIR* dir = ::opendir(out.c_str());
  bool empty = true;
  while (dir && empty)
    if (dirent* e = ::readdir(dir)) empty = std::string(e->d_name) == "." || std::string(e->d_name) == "..";
    else break;
  if (dir) ::closedir(dir);
  if (!empty) write_error(out + ": a directory that is not a personal state; refusing to replace it");
}

std::string parent_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The state's files in a directory beside ``out``, then renamed into place (the old state moved aside first and
// removed after): a crash leaves the old state or the new one, never a mix.
void publish_state(const std::string& out, const std::string& delta, const std::string& manifest_text) {
  std::string trimmed = out;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const std::string parent = parent_of(trimmed), name = base_of(trimmed);
  const std::string tmp = parent + "/." + name + ".tmp-" + std::to_string(::getpid());
  const std::string old = parent + "/." + name + ".old-" + std::to_string(::getpid());
  remove_tree(tmp);
  if (::mkdir(tmp.c_str(), 0755) != 0) write_error(trimmed + ": cannot create a directory beside it");
  try {
    write_file(tmp + "/delta.safetensors", delta);
    write_file(tmp + "/personal.json", manifest_text);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  struct stat info;
  const bool had_old = ::lstat(trimmed.c_str(), &info) == 0;
  if (had_old && ::rename(trimmed.c_str(), old.c_str()) != 0) {
    remove_tree(tmp);
    write_error(trimmed + ": cannot be replaced");
  }
  if (::rename(tmp.c_str(), trimmed.c_str()) != 0) {
    if (had_old) ::rename(old.c_str(), trimmed.c_str());
    remove_tree(tmp);
    write_error(trimmed + ": cannot be written");
  }
  if (had_old) remove_tree(old);
  if (int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

int64_t min_wins(double alpha) {
  int64_t k = 1;
  while (sign_test_p_value(k, 0) >= alpha) ++k;
  return k;
}

std::vector<int64_t> argmax_rows(const std::vector<float>& logits, int64_t classes) {
  std::vector<int64_t> out;
  for (size_t r = 0; r * classes < logits.size(); ++r) {
    const float* l = &logits[r * classes];
    out.push_back(std::max_element(l, l + classes) - l);
  }
  return out;
}

}  // namespace

double sign_test_p_value(int64_t wins, int64_t losses) {
  const int64_t n = wins + losses;
  if (n == 0) return 1.0;
  if (n <= 125) {  // exact: the binomial coefficients fit 128 bits, and the sum is rounded once, as Python does
    unsigned __int128 coefficient = 1, tail = 0;  // C(n, k) for k = 0..n
    for (int64_t k = 0; k <= n; ++k) {
      if (k >= wins) tail += coefficient;
      coefficient = coefficient * static_cast<unsigned>(n - k) / static_cast<unsigned>(k + 1);
    }
    return std::min(1.0, std::ldexp(static_cast<double>(tail), -static_cast<int>(n)));
  }
  double tail = 0;  // larger splits: the terms in logs (relative error ~1e-12)
  for (int64_t k = wins; k <= n; ++k)
    tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0) - n * std::log(2.0));
  return std::min(1.0, tail);
}

PersonalizeOutcome personalize(const Package& package, const std::vector<std::string>& texts,
                               const std::vector<int64_t>& labels, const std::string& data_name,
                               const std::string& out, const PersonalizeSettings& s,
                               const std::function<void(const char*, int64_t, int64_t)>& progress) {
  const double start = now();
  check_writable(out);
  const int64_t n = static_cast<int64_t>(texts.size());
  if (n == 0) throw ModelError(ModelError::Kind::Argument, "no examples to personalize on");
  // 1-2. splits, as the Python device draws them
  auto [rest, guard_idx] = guard_split(labels, s.guard_fraction, s.seed);
  std::vector<int64_t> rest_labels;
  for (int64_t i : rest) rest_labels.push_back(labels[i]);
  auto [inner_train, inner_val] = validation_split(rest_labels, s.val_fraction, s.seed);
  Indices train_idx, val_idx;
  for (int64_t i : inner_train) train_idx.push_back(rest[i]);
  for (int64_t i : inner_val) val_idx.push_back(rest[i]);
  // 3. tokens, then the trunk once over every text (in length order, a few texts per call)
  Model model(package, nullptr, s.threads);
  const std::string tokenizer_name = package.manifest().at("tokenizer").at("tokenizer").str("tokenizer");
  auto tokenizer = WordPieceTokenizer::from_json(package.verified_text(tokenizer_name));
  std::vector<std::vector<int64_t>> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = tokenizer->encode(texts[i], static_cast<size_t>(package.max_length()));
  const double prepared = now();
  Indices by_length(static_cast<size_t>(n));
  std::iota(by_length.begin(), by_length.end(), 0);
  std::stable_sort(by_length.begin(), by_length.end(), [&](int64_t a, int64_t b) { return ids[a].size() < ids[b].size(); });
  // each example's features go straight into its split's store (no second copy of them at any time)
  Features train, val, guard;
  std::vector<std::pair<Features*, int64_t>> place(static_cast<size_t>(n));  // (split, row in it)
  for (auto [split, idx] : {std::pair<Features*, const Indices*>{&train, &train_idx}, {&val, &val_idx},
                            {&guard, &guard_idx}}) {
    std::vector<int64_t> lengths, split_labels;
    for (size_t r = 0; r < idx->size(); ++r) {
      const int64_t i = (*idx)[r];
      lengths.push_back(static_cast<int64_t>(ids[i].size()));
      split_labels.push_back(labels[i]);
      place[i] = {split, static_cast<int64_t>(r)};
    }
    split->hidden = model.hidden_size();
    split->reserve(lengths, split_labels);
  }
  for (int64_t startb = 0; startb < n; startb += s.cache_batch_size) {
    IdBatch b;
    b.rows = std::min(s.cache_batch_size, n - startb);
    for (int64_t r = 0; r < b.rows; ++r) b.width = std::max<int64_t>(b.width, ids[by_length[startb + r]].size());
    b.width = std::max<int64_t>(b.width, 2);
    b.ids.assign(static_cast<size_t>(b.rows * b.width), package.pad_id());
    for (int64_t r = 0; r < b.rows; ++r) {
      const auto& row = ids[by_length[startb + r]];
      std::copy(row.begin(), row.end(), b.ids.begin() + r * b.width);
      b.lengths.push_back(static_cast<int64_t>(row.size()));
    }
    const std::vector<float> f = model.features(b);
    for (int64_t r = 0; r < b.rows; ++r) {
      const auto [split, at] = place[by_length[startb + r]];
      std::copy_n(&f[r * b.width * model.hidden_size()], b.lengths[r] * model.hidden_size(), split->row(at));
    }
    if (progress) progress("trunk", std::min(n, startb + b.rows), n);
  }
  model.release_trunk();  // the job needs only the top from here on
  const double cached = now();
  // 4. train the configuration
  PersonalizeOutcome result;
  result.num_train = train.rows();
  result.num_val = val.rows();
  if (val.rows() > 0) {
    const auto pred = argmax_rows(model.logits_of_features(val), model.num_labels());
    result.global_val_accuracy = accuracy_and_macro_f1(val.labels, pred).first;
  }
  result.training = train_top(package, train, val, s, [&](int64_t step, int64_t total, double) {
    if (progress) progress("train", step, total);
  });
  TrainResult& trained = result.training;
  if (s.head_only)
    for (auto it = trained.tensors.begin(); it != trained.tensors.end();)
      it = (it->first.rfind("head.", 0) == 0 || it->first.rfind("norm.", 0) == 0) ? std::next(it) : trained.tensors.erase(it);
  for (const EpochRecord& e : trained.history)
    if (e.epoch == trained.best_epoch) result.best_val_accuracy = e.val_accuracy;
  const double trained_at = now();
  // 5. the guard
  GuardVerdict& g = result.guard;
  g.enabled = s.guard_fraction > 0;
  g.keep_personal = true;
  if (g.enabled && guard.rows() == 0) {
    g.keep_personal = false;
    g.reason = "too few examples to hold out a guard split";
  } else if (g.enabled) {
    const auto global_pred = argmax_rows(model.logits_of_features(guard), model.num_labels());
    const auto personal_pred = argmax_rows(model.logits_of_features(guard, &trained.tensors), model.num_labels());
    int64_t right_p = 0, right_g = 0;
    for (size_t i = 0; i < guard.labels.size(); ++i) {
      const bool p = personal_pred[i] == guard.labels[i], q = global_pred[i] == guard.labels[i];
      right_p += p, right_g += q;
      g.wins += p && !q;
      g.losses += !p && q;
    }
    g.num_examples = guard.rows();
    g.personal_accuracy = double(right_p) / double(g.num_examples);
    g.global_accuracy = double(right_g) / double(g.num_examples);
    g.p_value = sign_test_p_value(g.wins, g.losses);
    g.keep_personal = g.wins > g.losses && g.p_value < s.guard_alpha;
    if (!g.keep_personal) {
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "the personal top was not significantly better on the guard split (p = %.3g >= alpha %g)",
                    g.p_value, s.guard_alpha);
      g.reason = buf;
    }
  }
  const double guarded_at = now();
  // 6. the personal state
  result.kind = g.keep_personal ? "top_delta" : "kept_global";
  const Tensors empty;
  const Tensors& tensors = g.keep_personal ? trained.tensors : empty;
  const std::string delta = serialize_safetensors(tensors);
  const int train_cut = s.head_only ? package.num_layers() : package.cut();
  int64_t num_params = 0;
  for (const auto& [name, t] : tensors) num_params += t.numel();
  char created[64];
  std::time_t clock = std::time(nullptr);
  std::strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&clock));
  JsonWriter w;
  w.open('{');
  w.key("format").value("edgetune-personal-state").key("schema_version").value(1);
  w.key("kind").value(result.kind).key("created_at").value(created);
  w.key("package").raw(canonical_json(package_identity(package)));
  w.key("train_cut").value(g.keep_personal ? train_cut : package.cut());
  w.key("tuner").open('{').key("name").value(g.keep_personal ? "full" : "none").key("params").open('{').close('}').close('}');
  w.key("weights").value("delta.safetensors");
  w.key("tensors").open('{');
  for (const auto& [name, t] : tensors) {
    w.key(name).open('[');
    for (int64_t d : t.shape) w.value(d);
    w.close(']');
  }
  w.close('}');
  w.key("num_params").value(num_params);
  w.key("training").open('{');
  w.key("data").value(data_name).key("num_train").value(train.rows()).key("num_val").value(val.rows());
  w.key("num_guard").value(guard.rows());
  w.key("config").open('{');
  w.key("epochs").value(s.epochs).key("batch_size").value(s.batch_size).key("lr").number(s.lr);
  w.key("head_lr").number(s.head_lr).key("weight_decay").number(s.weight_decay);
  w.key("warmup_ratio").number(s.warmup_ratio).key("max_grad_norm").number(s.max_grad_norm);
  w.key("seed").value(static_cast<int64_t>(s.seed)).key("val_fraction").number(s.val_fraction);
  w.key("patience");
  if (s.patience < 0) w.null(); else w.value(s.patience);
  w.key("metric").value(s.metric).key("cache_batch_size").value(s.cache_batch_size);
  w.key("cut").value(train_cut).key("tuner").value("full").key("select").value(false);
  w.key("guard_fraction").number(s.guard_fraction).key("guard_alpha").number(s.guard_alpha).close('}');
  w.key("candidate").value("configured").key("history").open('[');
  for (const EpochRecord& e : trained.history) {
    w.open('{').key("epoch").value(e.epoch).key("loss").number(e.loss).key("seconds").number(e.seconds);
    w.key("steps").value(e.steps).key("resumed").value(false);
    if (e.val_accuracy >= 0) w.key("val_accuracy").number(e.val_accuracy).key("val_macro_f1").number(e.val_macro_f1);
    w.close('}');
  }
  w.close(']');
  w.key("best_epoch");
  if (trained.best_epoch > 0) w.value(trained.best_epoch); else w.null();
  w.key("stopped_early").value(trained.stopped_early);
  w.key("seconds").open('{').key("prepare").number(prepared - start).key("trunk").number(cached - prepared);
  w.key("train").number(trained_at - cached).key("guard").number(guarded_at - trained_at).close('}');
  w.key("backend").value("libedgetune_device").key("step_losses").open('[');
  for (double loss : trained.step_losses) w.number(loss);
  w.close(']').close('}');
  w.key("guard").open('{');  // the decision's fields only when the test ran (device_sim.selection.guard_record)
  if (g.num_examples > 0) {
    w.key("keep_personal").value(g.keep_personal).key("num_examples").value(g.num_examples);
    w.key("personal_accuracy").number(g.personal_accuracy).key("global_accuracy").number(g.global_accuracy);
    w.key("wins").value(g.wins).key("losses").value(g.losses).key("p_value").number(g.p_value);
    w.key("alpha").number(s.guard_alpha).key("min_wins_without_losses").value(min_wins(s.guard_alpha));
    w.key("test").value("exact one-sided McNemar (binomial sign test on the discordant pairs)");
  }
  w.key("kept").value(g.keep_personal ? "personal" : "global").key("reason");
  if (g.reason.empty()) w.null(); else w.value(g.reason);
  w.key("candidate").value("configured").key("seconds").number(guarded_at - trained_at);
  w.key("enabled").value(g.enabled).close('}');
  w.key("selection").open('{').key("global_val_accuracy");
  if (result.global_val_accuracy >= 0) w.number(result.global_val_accuracy); else w.null();
  w.key("candidates").open('[').open('{').key("name").value("configured").key("train_cut").value(train_cut);
  w.key("tuner").value("full").key("val_accuracy");
  if (result.best_val_accuracy >= 0) w.number(result.best_val_accuracy); else w.null();
  w.key("best_epoch");
  if (trained.best_epoch > 0) w.value(trained.best_epoch); else w.null();
  w.key("epochs_run").value(static_cast<int64_t>(trained.history.size()));
  w.key("seconds").number(trained_at - cached).close('}').close(']');
  w.key("chosen").value("configured").key("skipped").open('[').close(']').close('}');
  w.key("files").open('{').key("delta.safetensors").open('{').key("sha256").value(Sha256::of(delta));
  w.key("size").value(static_cast<int64_t>(delta.size())).close('}').close('}');
  w.close('}');
  std::string text = w.text();
  const std::string seal = Sha256::of(canonical_json(Json::parse(text)));
  text.pop_back();
  text += ",\"integrity\":{\"algorithm\":\"sha256\",\"manifest_sha256\":\"" + seal + "\"}}\n";
  publish_state(out, delta, text);
  return result;
}

}  // namespace edgetune
