#include "job.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <numeric>

#include "canonical.hpp"
#include "json_writer.hpp"
#include "model.hpp"
#include "personal.hpp"
#include "sha256.hpp"
#include "resume.hpp"
#include "split.hpp"
#include "work.hpp"
#include "wordpiece.hpp"

namespace edgetune {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

[[noreturn]] void write_error(const std::string& message) {
  throw PersonalStateError(PersonalStateError::Kind::Io, message);
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

// The state's files in a directory beside ``out``, then renamed into place (the old state moved aside first and
// removed after): a crash leaves the old state or the new one, never a mix.
void publish_state(const std::string& out, const std::string& delta, const std::string& manifest_text) {
  const std::string target = trimmed(out), parent = parent_of(target), name = base_of(target);
  const std::string tmp = temporary_beside(target);
  const std::string old = parent + "/." + name + ".old-" + std::to_string(::getpid());
  remove_tree(tmp);
  if (::mkdir(tmp.c_str(), 0755) != 0) write_error(target + ": cannot create a directory beside it");
  try {
    write_file(tmp + "/delta.safetensors", delta);
    write_file(tmp + "/personal.json", manifest_text);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  struct stat info;
  const bool had_old = ::lstat(target.c_str(), &info) == 0;
  if (had_old && ::rename(target.c_str(), old.c_str()) != 0) {
    remove_tree(tmp);
    write_error(target + ": cannot be replaced");
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    if (had_old) ::rename(old.c_str(), target.c_str());
    remove_tree(tmp);
    write_error(target + ": cannot be written");
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

namespace {

// Why the package cannot train tuner lora ("" when it has top_train_lora.pte).
std::string no_lora_program(const Package& package) {
  const Json* lora = package.manifest().at("executorch").find("train_lora");
  if (lora != nullptr && lora->find("file") != nullptr) return "";
  const Json* why = lora ? lora->find("skipped") : nullptr;
  return "tuner 'lora': this package has no LoRA training program (" +
         (why ? why->str("skipped") : std::string("exported before top_train_lora.pte existed")) + ")";
}

}  // namespace

const Json& training_program(const Package& package, const std::string& tuner) {
  const Json& entry = package.manifest().at("executorch");
  if (tuner == "full") return entry.at("train");
  if (tuner != "lora") throw ModelError(ModelError::Kind::Argument, "tuner '" + tuner + "': the device trains full or lora");
  if (const std::string why = no_lora_program(package); !why.empty()) throw ModelError(ModelError::Kind::Argument, why);
  return entry.at("train_lora");
}

std::vector<CandidateSpec> default_candidates(const Package& package) {
  std::vector<CandidateSpec> c(3);
  c[0].name = "prior";
  c[0].prior = true;
  c[1].name = "head";
  c[1].head_only = true;
  c[1].head_lr = 0.03;
  c[2].name = "head-fast";
  c[2].head_only = true;
  c[2].head_lr = 0.1;
  if (no_lora_program(package).empty()) {
    CandidateSpec lora;
    lora.name = "lora";
    lora.tuner = "lora";
    lora.lr = 1e-3;
    lora.head_lr = 0.03;
    c.push_back(lora);
  }
  CandidateSpec block;
  block.name = "block";  // the plan's blocks (the full top above the package's cut)
  block.lr = 1e-4;
  block.head_lr = 3e-3;
  c.push_back(block);
  return c;
}

std::vector<SkippedCandidate> default_skipped(const Package& package) {
  const std::string why = no_lora_program(package);
  if (why.empty()) return {};
  return {{"lora", why}};
}

std::vector<double> prior_shift(const std::vector<float>& logits, const std::vector<int64_t>& labels,
                                int64_t c, double l2, int steps) {
  const size_t n = labels.size();
  std::vector<double> delta(static_cast<size_t>(c), 0.0), p(n * c), grad(c), hess(c * c);
  for (int it = 0; it < steps && n > 0; ++it) {
    for (size_t r = 0; r < n; ++r) {  // p = softmax(z + delta), row by row
      double top = -INFINITY, sum = 0;
      for (int64_t k = 0; k < c; ++k) top = std::max(top, double(logits[r * c + k]) + delta[k]);
      for (int64_t k = 0; k < c; ++k) sum += p[r * c + k] = std::exp(double(logits[r * c + k]) + delta[k] - top);
      for (int64_t k = 0; k < c; ++k) p[r * c + k] /= sum;
    }
    for (int64_t k = 0; k < c; ++k) {
      double g = 0;
      for (size_t r = 0; r < n; ++r) g += p[r * c + k] - (labels[r] == k ? 1.0 : 0.0);
      grad[k] = g / double(n) + 2 * l2 * delta[k];
      for (int64_t j = 0; j < c; ++j) {
        double h = 0;
        for (size_t r = 0; r < n; ++r) h -= p[r * c + k] * p[r * c + j];
        if (j == k)
          for (size_t r = 0; r < n; ++r) h += p[r * c + k];
        hess[k * c + j] = h / double(n) + (j == k ? 2 * l2 : 0.0);
      }
    }
    // solve hess x = grad (Gaussian elimination, partial pivoting: a small symmetric positive definite system)
    std::vector<double> a = hess, x = grad;
    for (int64_t col = 0; col < c; ++col) {
      int64_t pivot = col;
      for (int64_t r = col + 1; r < c; ++r)
        if (std::fabs(a[r * c + col]) > std::fabs(a[pivot * c + col])) pivot = r;
      if (pivot != col) {
        for (int64_t j = 0; j < c; ++j) std::swap(a[col * c + j], a[pivot * c + j]);
        std::swap(x[col], x[pivot]);
      }
      for (int64_t r = col + 1; r < c; ++r) {
        const double f = a[r * c + col] / a[col * c + col];
        for (int64_t j = col; j < c; ++j) a[r * c + j] -= f * a[col * c + j];
        x[r] -= f * x[col];
      }
    }
    double largest = 0;
    for (int64_t k = c - 1; k >= 0; --k) {
      for (int64_t j = k + 1; j < c; ++j) x[k] -= a[k * c + j] * x[j];
      x[k] = std::clamp(x[k] / a[k * c + k], -2.0, 2.0);  // a damped step: stable on confident logits
    }
    for (int64_t k = 0; k < c; ++k) {
      delta[k] -= x[k];
      largest = std::max(largest, std::fabs(x[k]));
    }
    if (largest < 1e-8) break;
  }
  const double mean = c ? std::accumulate(delta.begin(), delta.end(), 0.0) / double(c) : 0.0;
  for (double& d : delta) d -= mean;  // softmax is shift-invariant: the centred shift
  return delta;
}

namespace {

// The guard's test of the chosen top against the global one on the guard split.
GuardVerdict run_guard(Model& model, const Features& guard, const Tensors& chosen, double alpha, bool enabled) {
  GuardVerdict g;
  g.enabled = enabled;
  g.keep_personal = true;
  if (!enabled) return g;
  if (guard.rows() == 0) {
    g.keep_personal = false;
    g.reason = "too few examples to hold out a guard split";
    return g;
  }
  const auto global_pred = argmax_rows(model.logits_of_features(guard), model.num_labels());
  const auto personal_pred = argmax_rows(model.logits_of_features(guard, &chosen), model.num_labels());
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
  g.keep_personal = g.wins > g.losses && g.p_value < alpha;
  if (!g.keep_personal) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "the personal top was not significantly better on the guard split (p = %.3g >= alpha %g)",
                  g.p_value, alpha);
    g.reason = buf;
  }
  return g;
}

// Each candidate's tensors as a personal state holds them (the prior: the global head with its bias shifted;
// ``top``: the package's top tensors, as the job's model already holds them).
Tensors candidate_tensors(const Tensors& top, const CandidateOutcome& c) {
  if (!c.spec.prior) return c.training.tensors;
  Tensors out;
  out["head.weight"] = top.at("head.weight");
  Tensor bias = top.at("head.bias");
  for (size_t k = 0; k < bias.values.size(); ++k) bias.values[k] += static_cast<float>(c.prior_shift.at(k));
  out["head.bias"] = std::move(bias);
  return out;
}

void nullable(JsonWriter& w, double x) {
  if (x >= 0) w.number(x); else w.null();
}

void nullable_epoch(JsonWriter& w, int64_t epoch) {
  if (epoch > 0) w.value(epoch); else w.null();
}

// The state's tuner: none (kept_global), full, or lora with the program's parameters (alpha and r fold it).
void write_tuner(JsonWriter& w, const Package& package, const CandidateOutcome* kept) {
  const bool lora = kept && kept->spec.tuner == "lora";
  w.key("tuner").open('{').key("name").value(kept ? kept->spec.tuner : "none").key("params");
  if (lora) w.raw(canonical_json(training_program(package, "lora").at("tuner").at("params")));
  else w.open('{').close('}');
  if (kept && kept->spec.prior) {
    w.key("prior_shift").open('[');
    for (double d : kept->prior_shift) w.number(d);
    w.close(']');
  }
  w.close('}');
}

struct Timings {
  double prepare = 0, trunk = 0, train = 0, guard = 0;
};

// personal.json without its integrity entry, for the outcome ``o`` (fields and records as
// device_sim.selection writes them).
std::string state_json(const Package& package, const PersonalizeOutcome& o, const Tensors& tensors,
                       const std::string& data_name, const PersonalizeSettings& s, int64_t num_guard,
                       const Timings& t, const std::string& delta) {
  const CandidateOutcome& chosen = o.chosen_candidate();
  const bool keep = o.kind == "top_delta";
  const TrainResult& trained = chosen.training;
  int64_t num_params = 0;
  for (const auto& [name, tensor] : tensors) num_params += tensor.numel();
  char created[64];
  std::time_t clock = std::time(nullptr);
  std::strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&clock));
  JsonWriter w;
  w.open('{');
  w.key("format").value("edgetune-personal-state").key("schema_version").value(1);
  w.key("kind").value(o.kind).key("created_at").value(created);
  w.key("package").raw(canonical_json(package_identity(package)));
  w.key("train_cut").value(keep ? chosen.train_cut : package.cut());
  write_tuner(w, package, keep ? &chosen : nullptr);
  w.key("weights").value("delta.safetensors");
  w.key("tensors").open('{');
  for (const auto& [name, tensor] : tensors) {
    w.key(name).open('[');
    for (int64_t d : tensor.shape) w.value(d);
    w.close(']');
  }
  w.close('}');
  w.key("num_params").value(num_params);
  w.key("training").open('{');
  w.key("data").value(data_name).key("num_train").value(o.num_train).key("num_val").value(o.num_val);
  w.key("num_guard").value(num_guard);
  w.key("config").open('{');
  w.key("epochs").value(s.epochs).key("batch_size").value(s.batch_size).key("lr").number(s.lr);
  w.key("head_lr").number(s.head_lr).key("weight_decay").number(s.weight_decay);
  w.key("warmup_ratio").number(s.warmup_ratio).key("max_grad_norm").number(s.max_grad_norm);
  w.key("seed").value(static_cast<int64_t>(s.seed)).key("val_fraction").number(s.val_fraction);
  w.key("patience");
  if (s.patience < 0) w.null(); else w.value(s.patience);
  w.key("metric").value(s.metric).key("cache_batch_size").value(s.cache_batch_size);
  w.key("precision").value(s.int8_trunk ? "int8" : "fp32");
  w.key("cut").value(s.head_only ? package.num_layers() : package.cut()).key("tuner").value(s.tuner);
  w.key("select").value(s.select);
  if (s.select) {
    w.key("candidates").open('[');
    for (const CandidateOutcome& c : o.candidates) {
      w.open('{').key("name").value(c.spec.name);
      if (c.spec.prior) {
        w.key("kind").value("prior");
      } else {
        w.key("cut").value(c.spec.head_only ? "head" : "plan");
        if (c.spec.tuner != "full") w.key("tuner").value(c.spec.tuner);
        w.key("lr").number(c.spec.lr).key("head_lr").number(c.spec.head_lr);
      }
      w.close('}');
    }
    w.close(']');
  }
  w.key("guard_fraction").number(s.guard_fraction).key("guard_alpha").number(s.guard_alpha).close('}');
  w.key("candidate").value(chosen.spec.name).key("history").open('[');
  for (const EpochRecord& e : trained.history) {
    w.open('{').key("epoch").value(e.epoch).key("loss").number(e.loss).key("seconds").number(e.seconds);
    w.key("steps").value(e.steps).key("resumed").value(false);
    if (e.val_accuracy >= 0) w.key("val_accuracy").number(e.val_accuracy).key("val_macro_f1").number(e.val_macro_f1);
    w.close('}');
  }
  w.close(']');
  w.key("best_epoch");
  nullable_epoch(w, trained.best_epoch);
  w.key("stopped_early").value(trained.stopped_early);
  w.key("val_metrics");
  if (chosen.val_accuracy >= 0) {
    w.open('{').key("accuracy").number(chosen.val_accuracy);
    for (const EpochRecord& e : trained.history)
      if (e.epoch == trained.best_epoch) w.key("macro_f1").number(e.val_macro_f1);
    w.close('}');
  } else {
    w.null();
  }
  w.key("trainable_params").value(keep ? num_params : int64_t{0});
  w.key("resumed").value(o.resumed);
  w.key("seconds").open('{').key("prepare").number(t.prepare).key("trunk").number(t.trunk);
  w.key("train").number(t.train).key("guard").number(t.guard).close('}');
  int64_t planned = 0;
  for (const CandidateOutcome& c : o.candidates) planned = std::max(planned, c.training.planned_bytes);
  w.key("program_planned_bytes").value(planned);  // top_train.pte's memory plan, allocated for its largest batch
  w.key("backend").value("libedgetune_device").key("step_losses").open('[');
  for (double loss : trained.step_losses) w.number(loss);
  w.close(']').close('}');
  const GuardVerdict& g = o.guard;
  w.key("guard").open('{');  // the decision's fields only when the test ran (device_sim.selection.guard_record)
  if (g.num_examples > 0) {
    w.key("keep_personal").value(g.keep_personal).key("num_examples").value(g.num_examples);
    w.key("personal_accuracy").number(g.personal_accuracy).key("global_accuracy").number(g.global_accuracy);
    w.key("wins").value(g.wins).key("losses").value(g.losses).key("p_value").number(g.p_value);
    w.key("alpha").number(s.guard_alpha).key("min_wins_without_losses").value(min_wins(s.guard_alpha));
    w.key("test").value("exact one-sided McNemar (binomial sign test on the discordant pairs)");
  }
  w.key("kept").value(keep ? "personal" : "global").key("reason");
  if (o.reason.empty()) w.null(); else w.value(o.reason);
  w.key("candidate").value(chosen.spec.name).key("seconds").number(t.guard);
  w.key("enabled").value(g.enabled).close('}');
  w.key("selection").open('{').key("global_val_accuracy");
  nullable(w, o.global_val_accuracy);
  w.key("candidates").open('[');
  for (const CandidateOutcome& c : o.candidates) {
    w.open('{').key("name").value(c.spec.name).key("train_cut").value(c.train_cut);
    w.key("tuner").value(c.spec.tuner).key("val_accuracy");
    nullable(w, c.val_accuracy);
    w.key("best_epoch");
    nullable_epoch(w, c.training.best_epoch);
    w.key("epochs_run").value(static_cast<int64_t>(c.training.history.size()));
    w.key("seconds").number(c.seconds).key("estimated_device_seconds");
    nullable(w, c.spec.estimated_seconds);
    w.close('}');
  }
  w.close(']');
  w.key("chosen").value(chosen.spec.name).key("skipped").open('[');
  for (const SkippedCandidate& k : s.skipped) w.open('{').key("name").value(k.name).key("reason").value(k.reason).close('}');
  w.close(']').close('}');
  w.key("files").open('{').key("delta.safetensors").open('{').key("sha256").value(Sha256::of(delta));
  w.key("size").value(static_cast<int64_t>(delta.size())).close('}').close('}');
  w.close('}');
  return w.text();
}

}  // namespace

PersonalizeOutcome personalize(const Package& package, const std::vector<std::string>& texts,
                               const std::vector<int64_t>& labels, const std::string& data_name,
                               const std::string& out, const PersonalizeSettings& settings,
                               const JobProgress& progress) {
  const double start = now();
  check_writable(out);
  PersonalizeSettings s = settings;
  std::vector<CandidateSpec> specs;
  if (!s.select) {
    CandidateSpec configured;
    configured.name = "configured";
    configured.head_only = s.head_only;
    configured.lr = s.lr;
    configured.head_lr = s.head_lr;
    configured.tuner = s.tuner;
    specs.push_back(configured);
  } else if (s.candidates.empty()) {
    specs = default_candidates(package);
    if (s.skipped.empty()) s.skipped = default_skipped(package);
  } else {
    specs = s.candidates;
  }
  for (const CandidateSpec& spec : specs) {  // before any work: a candidate the package cannot train is refused
    if (spec.prior) continue;
    if (spec.head_only && spec.tuner != "full")
      throw ModelError(ModelError::Kind::Argument, "candidate '" + spec.name + "': a head-only candidate has no tuner");
    training_program(package, spec.tuner);
  }
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
  Model model(package, nullptr, s.threads, s.int8_trunk ? "trunk_int8" : "trunk");
  const std::string tokenizer_name = package.manifest().at("tokenizer").at("tokenizer").str("tokenizer");
  auto tokenizer = WordPieceTokenizer::from_json(package.verified_text(tokenizer_name));
  std::vector<std::vector<int64_t>> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = tokenizer->encode(texts[i], static_cast<size_t>(package.max_length()));
  // an interrupted run of this very job left its finished candidates and its last epoch here (resume.hpp)
  const WorkDir work(out, job_identity(package, texts, labels, s, specs));
  Timings t;
  t.prepare = now() - start;
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
    if (progress) progress("trunk", "", std::min(n, startb + b.rows), n, 0.0);
  }
  model.release_trunk();  // the job needs only the top from here on
  const double cached = now();
  t.trunk = cached - prepared;
  // 4. every candidate, then the one with the best inner validation accuracy (ties: the first listed)
  PersonalizeOutcome result;
  result.resumed = work.resumed();
  result.num_train = train.rows();
  result.num_val = val.rows();
  std::vector<float> global_val_logits;
  if (val.rows() > 0) {
    global_val_logits = model.logits_of_features(val);
    result.global_val_accuracy =
        accuracy_and_macro_f1(val.labels, argmax_rows(global_val_logits, model.num_labels())).first;
  }
  for (size_t index = 0; index < specs.size(); ++index) {
    const CandidateSpec& spec = specs[index];
    const std::string done_name = "candidate-" + std::to_string(index), epoch_name = done_name + ".epoch";
    const double t0 = now();
    CandidateOutcome c;
    c.spec = spec;
    c.train_cut = spec.prior || spec.head_only ? package.num_layers() : package.cut();
    std::string bytes;
    if (!spec.prior && work.get(done_name, bytes) && decode_candidate(bytes, c)) {  // finished before the kill
      result.candidates.push_back(std::move(c));
      continue;
    }
    if (spec.prior) {
      c.prior_shift = prior_shift(model.logits_of_features(train), train.labels, model.num_labels());
      if (val.rows() > 0) {
        int64_t right = 0;
        const int64_t k = model.num_labels();
        for (int64_t r = 0; r < val.rows(); ++r) {
          int64_t best = 0;
          for (int64_t j = 1; j < k; ++j)
            if (double(global_val_logits[r * k + j]) + c.prior_shift[j] >
                double(global_val_logits[r * k + best]) + c.prior_shift[best])
              best = j;
          right += best == val.labels[r];
        }
        c.val_accuracy = double(right) / double(val.rows());
      }
    } else {
      TrainSettings ts = s;
      ts.lr = spec.lr;
      ts.head_lr = spec.head_lr;
      ts.head_only = spec.head_only;
      TrainCheckpoint last;
      const bool resuming = work.get(epoch_name, bytes) && decode_checkpoint(bytes, last);
      model.release_top();  // the training program's memory plan, not both: the top is loaded again to score it
      c.training = train_top(
          package, training_program(package, spec.tuner), train, val, ts,
          [&](int64_t step, int64_t total, double loss) {
            if (progress) progress("train", spec.name.c_str(), step, total, loss);
          },
          resuming ? &last : nullptr,
          [&](const CheckpointState& state, const std::vector<TensorRef>& tensors) {
            write_checkpoint(work, epoch_name, state, tensors);
          });
      Tensors& trained = c.training.tensors;
      if (spec.head_only)
        for (auto it = trained.begin(); it != trained.end();)
          it = (it->first.rfind("head.", 0) == 0 || it->first.rfind("norm.", 0) == 0) ? std::next(it) : trained.erase(it);
      for (const EpochRecord& e : c.training.history)
        if (e.epoch == c.training.best_epoch) c.val_accuracy = e.val_accuracy;
    }
    c.seconds = now() - t0;
    if (!spec.prior) {
      write_candidate(work, done_name, c);
      work.remove(epoch_name);
    }
    result.candidates.push_back(std::move(c));
  }
  for (size_t i = 1; i < result.candidates.size(); ++i)
    if (result.candidates[i].val_accuracy > result.candidates[result.chosen].val_accuracy) result.chosen = i;
  const CandidateOutcome& chosen = result.chosen_candidate();
  const Tensors chosen_tensors = candidate_tensors(model.weights(), chosen);
  Tensors folded;  // a LoRA candidate's adapters folded into the top's weights, as the guard's top runs them
  if (chosen.spec.tuner == "lora") {
    const Json& params = training_program(package, "lora").at("tuner").at("params");
    folded = fold_lora(model.weights(), chosen_tensors, lora_scale(params), "candidate lora");
  }
  const double trained_at = now();
  t.train = trained_at - cached;
  // 5. the verdict: beat the global top on the validation split (with selection), then the guard
  const bool beats_global =
      !s.select || result.global_val_accuracy < 0 || chosen.val_accuracy > result.global_val_accuracy;
  if (!beats_global) result.reason = "no candidate beat the global model on the inner validation split";
  result.guard = run_guard(model, guard, folded.empty() ? chosen_tensors : folded, s.guard_alpha,
                           s.guard_fraction > 0);
  if (result.reason.empty()) result.reason = result.guard.reason;
  const bool keep = beats_global && result.guard.keep_personal;
  t.guard = now() - trained_at;
  // 6. the personal state
  result.kind = keep ? "top_delta" : "kept_global";
  const Tensors empty;
  const std::string delta = serialize_safetensors(keep ? chosen_tensors : empty);
  std::string text = state_json(package, result, keep ? chosen_tensors : empty, data_name, s, guard.rows(), t, delta);
  const std::string seal = Sha256::of(canonical_json(Json::parse(text)));
  text.pop_back();
  text += ",\"integrity\":{\"algorithm\":\"sha256\",\"manifest_sha256\":\"" + seal + "\"}}\n";
  publish_state(out, delta, text);
  work.remove_all();  // the state is written: nothing in it is needed again
  return result;
}

}  // namespace edgetune
