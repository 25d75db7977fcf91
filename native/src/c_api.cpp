// The C API of include/edgetune_device.h: every C++ exception becomes a status and a message here, so that
// none crosses into the caller's (C, JNI, Swift) frames.
#include "edgetune_device.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <string>

#include "canonical.hpp"
#include "dataset.hpp"
#include "package.hpp"
#include "personal.hpp"
#include "safetensors.hpp"
#include "wordpiece.hpp"
#ifdef EDGETUNE_WITH_EXECUTORCH
#include "job.hpp"
#include "model.hpp"
#endif

struct edgetune_tokenizer {
  std::unique_ptr<edgetune::WordPieceTokenizer> impl;
};

struct edgetune_dataset {
  edgetune::Dataset data;
  std::vector<int64_t> labels;  // indices among the package's labels, or -1
  std::string path;             // the file it was read from (recorded as the personalization's data)
};

struct edgetune_package {
  std::unique_ptr<edgetune::Package> impl;
  std::string manifest_json;  // made on first request
};

struct edgetune_model {
#ifdef EDGETUNE_WITH_EXECUTORCH
  std::unique_ptr<edgetune::Model> impl;
#endif
  const edgetune_package* package = nullptr;
  std::unique_ptr<edgetune::WordPieceTokenizer> tokenizer;  // made on the first edgetune_model_predict
};

namespace {

thread_local std::string last_error;

edgetune_status fail(edgetune_status status, const std::string& message) {
  last_error = message;
  return status;
}

// Runs ``body`` (which returns a status) and turns what it throws into a status and this thread's message:
// the one place where C++ exceptions stop. ``context`` prefixes the messages of errors about a file.
template <class Body>
edgetune_status guarded(const std::string& context, Body&& body) {
  try {
    return body();
  } catch (const edgetune::TokenizerError& err) {
    return fail(err.unsupported ? EDGETUNE_ERROR_UNSUPPORTED : EDGETUNE_ERROR_FORMAT, context + err.what());
  } catch (const edgetune::PackageError& err) {
    using Kind = edgetune::PackageError::Kind;
    edgetune_status status = err.kind == Kind::Io            ? EDGETUNE_ERROR_IO
                             : err.kind == Kind::Unsupported ? EDGETUNE_ERROR_UNSUPPORTED
                                                             : EDGETUNE_ERROR_FORMAT;
    return fail(status, context + err.what());
  } catch (const edgetune::PersonalStateError& err) {
    using Kind = edgetune::PersonalStateError::Kind;
    edgetune_status status = err.kind == Kind::Io            ? EDGETUNE_ERROR_IO
                             : err.kind == Kind::Unsupported ? EDGETUNE_ERROR_UNSUPPORTED
                             : err.kind == Kind::Mismatch    ? EDGETUNE_ERROR_DATA
                                                             : EDGETUNE_ERROR_FORMAT;
    return fail(status, err.what());
  } catch (const edgetune::SafetensorsError& err) {
    return fail(EDGETUNE_ERROR_FORMAT, context + err.what());
#ifdef EDGETUNE_WITH_EXECUTORCH
  } catch (const edgetune::ModelError& err) {
    using Kind = edgetune::ModelError::Kind;
    edgetune_status status = err.kind == Kind::Unsupported ? EDGETUNE_ERROR_UNSUPPORTED
                             : err.kind == Kind::Argument  ? EDGETUNE_ERROR_ARGUMENT
                                                           : EDGETUNE_ERROR_INTERNAL;
    return fail(status, context + err.what());
#endif
  } catch (const edgetune::EncodeError& err) {
    return fail(EDGETUNE_ERROR_DATA, err.what());
  } catch (const edgetune::DataError& err) {
    return fail(EDGETUNE_ERROR_DATA, err.what());
  } catch (const std::bad_alloc&) {
    return fail(EDGETUNE_ERROR_INTERNAL, context + "out of memory");
  } catch (const std::exception& err) {
    return fail(EDGETUNE_ERROR_INTERNAL, err.what());
  }
}

bool read_file(const char* path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return false;
  out = buffer.str();
  return true;
}

}  // namespace

extern "C" {

const char* edgetune_last_error(void) { return last_error.c_str(); }

const char* edgetune_version(void) { return EDGETUNE_DEVICE_VERSION; }

edgetune_status edgetune_tokenizer_open(const char* path, edgetune_tokenizer** out) {
  if (out == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_open: out is NULL");
  *out = nullptr;
  if (path == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_open: path is NULL");
  return guarded(std::string(path) + ": ", [&] {
    std::string text;
    if (!read_file(path, text)) return fail(EDGETUNE_ERROR_IO, std::string(path) + ": cannot be read");
    auto tokenizer = std::make_unique<edgetune_tokenizer>();
    tokenizer->impl = edgetune::WordPieceTokenizer::from_json(text);
    *out = tokenizer.release();
    return EDGETUNE_OK;
  });
}

edgetune_status edgetune_tokenizer_encode(const edgetune_tokenizer* tokenizer, const char* text, size_t length,
                                          size_t max_length, int64_t* ids, size_t capacity, size_t* count) {
  if (tokenizer == nullptr || tokenizer->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_encode: tokenizer is NULL");
  if (count == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_encode: count is NULL");
  *count = 0;
  if (text == nullptr && length > 0) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_encode: text is NULL");
  if (ids == nullptr && capacity > 0) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_tokenizer_encode: ids is NULL");
  return guarded("", [&] {
    std::vector<int64_t> encoded = tokenizer->impl->encode(std::string_view(text ? text : "", length), max_length);
    *count = encoded.size();
    if (encoded.size() > capacity)
      return fail(EDGETUNE_ERROR_CAPACITY, "edgetune_tokenizer_encode: " + std::to_string(encoded.size()) +
                                               " ids do not fit a buffer of " + std::to_string(capacity));
    if (!encoded.empty()) std::memcpy(ids, encoded.data(), encoded.size() * sizeof(int64_t));
    return EDGETUNE_OK;
  });
}

void edgetune_tokenizer_close(edgetune_tokenizer* tokenizer) { delete tokenizer; }

edgetune_status edgetune_package_open(const char* directory, edgetune_package** out) {
  if (out == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_open: out is NULL");
  *out = nullptr;
  if (directory == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_open: directory is NULL");
  return guarded(std::string(directory) + ": ", [&] {
    auto package = std::make_unique<edgetune_package>();
    package->impl = edgetune::Package::open(directory);
    *out = package.release();
    return EDGETUNE_OK;
  });
}

edgetune_status edgetune_package_info_get(const edgetune_package* package, edgetune_package_info* info) {
  if (package == nullptr || package->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_info_get: package is NULL");
  if (info == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_info_get: info is NULL");
  const edgetune::Package& p = *package->impl;
  info->cut = p.cut();
  info->num_layers = p.num_layers();
  info->num_labels = static_cast<int32_t>(p.labels().size());
  info->max_length = static_cast<int32_t>(p.max_length());
  info->pad_id = p.pad_id();
  info->family = p.family().c_str();
  return EDGETUNE_OK;
}

const char* edgetune_package_label(const edgetune_package* package, size_t index) {
  if (package == nullptr || package->impl == nullptr || index >= package->impl->labels().size()) return nullptr;
  return package->impl->labels()[index].c_str();
}

edgetune_status edgetune_package_tokenizer(const edgetune_package* package, edgetune_tokenizer** out) {
  if (out == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_tokenizer: out is NULL");
  *out = nullptr;
  if (package == nullptr || package->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_tokenizer: package is NULL");
  const edgetune::Package& p = *package->impl;
  const edgetune::Json* part = p.manifest().find("tokenizer");  // verified on open: present
  const edgetune::Json* file = part ? part->find("tokenizer") : nullptr;
  const std::string name = (file && file->is_string()) ? file->str("tokenizer") : "tokenizer.json";
  return guarded(name + ": ", [&] {
    auto tokenizer = std::make_unique<edgetune_tokenizer>();
    tokenizer->impl = edgetune::WordPieceTokenizer::from_json(p.verified_text(name));
    *out = tokenizer.release();
    return EDGETUNE_OK;
  });
}

const char* edgetune_package_manifest_json(const edgetune_package* package) {
  if (package == nullptr || package->impl == nullptr) {
    fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_package_manifest_json: package is NULL");
    return nullptr;
  }
  auto* mutable_package = const_cast<edgetune_package*>(package);  // a cache: the manifest itself is unchanged
  edgetune_status status = guarded("", [&] {
    if (mutable_package->manifest_json.empty())
      mutable_package->manifest_json = edgetune::canonical_json(package->impl->manifest());
    return EDGETUNE_OK;
  });
  return status == EDGETUNE_OK ? mutable_package->manifest_json.c_str() : nullptr;
}

void edgetune_package_close(edgetune_package* package) { delete package; }

}  // extern "C"

namespace {

std::string plan_column(const edgetune_package* package, const char* key, const char* fallback) {
  if (package == nullptr || package->impl == nullptr) return fallback;
  const edgetune::Json* plan = package->impl->manifest().find("plan");
  const edgetune::Json* column = plan ? plan->find(key) : nullptr;
  return (column && column->is_string()) ? column->str(key) : fallback;
}

}  // namespace

extern "C" {

edgetune_status edgetune_dataset_read(const char* path, const edgetune_package* package, const char* text_column,
                                      const char* label_column, int labelled, edgetune_dataset** out) {
  if (out == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_dataset_read: out is NULL");
  *out = nullptr;
  if (path == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_dataset_read: path is NULL");
  return guarded("", [&] {
    std::string text = text_column ? text_column : plan_column(package, "text_column", "text");
    std::string label = !labelled ? "" : label_column ? label_column : plan_column(package, "label_column", "label");
    if (labelled && label.empty()) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_dataset_read: empty label column");
    auto dataset = std::make_unique<edgetune_dataset>();
    dataset->data = edgetune::read_dataset(path, text, label);
    dataset->path = path;
    if (labelled && package != nullptr && package->impl != nullptr)
      dataset->labels = edgetune::encode_labels(dataset->data, package->impl->labels(), path);
    else
      dataset->labels.assign(dataset->data.texts.size(), -1);
    *out = dataset.release();
    return EDGETUNE_OK;
  });
}

size_t edgetune_dataset_size(const edgetune_dataset* dataset) { return dataset ? dataset->data.texts.size() : 0; }

const char* edgetune_dataset_text(const edgetune_dataset* dataset, size_t index) {
  return (dataset && index < dataset->data.texts.size()) ? dataset->data.texts[index].c_str() : nullptr;
}

int64_t edgetune_dataset_label(const edgetune_dataset* dataset, size_t index) {
  return (dataset && index < dataset->labels.size()) ? dataset->labels[index] : -1;
}

const char* edgetune_dataset_label_name(const edgetune_dataset* dataset, size_t index) {
  return (dataset && index < dataset->data.labels.size()) ? dataset->data.labels[index].c_str() : nullptr;
}

int64_t edgetune_dataset_row(const edgetune_dataset* dataset, size_t index) {
  return (dataset && index < dataset->data.rows.size()) ? dataset->data.rows[index] : -1;
}

void edgetune_dataset_close(edgetune_dataset* dataset) { delete dataset; }

}  // extern "C"

extern "C" {

edgetune_status edgetune_model_open(const edgetune_package* package, const char* personal_directory, int threads,
                                    int int8_trunk, edgetune_model** out) {
  if (out == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_open: out is NULL");
  *out = nullptr;
  if (package == nullptr || package->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_open: package is NULL");
  if (threads < 0) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_open: threads is negative");
#ifdef EDGETUNE_WITH_EXECUTORCH
  return guarded("", [&] {
    std::unique_ptr<edgetune::PersonalState> state;
    if (personal_directory != nullptr) state = edgetune::read_personal_state(personal_directory, *package->impl);
    auto model = std::make_unique<edgetune_model>();
    model->package = package;
    model->impl = std::make_unique<edgetune::Model>(*package->impl, std::move(state), threads,
                                                    int8_trunk ? "trunk_int8" : "trunk");
    *out = model.release();
    return EDGETUNE_OK;
  });
#else
  (void)personal_directory, (void)int8_trunk;
  return fail(EDGETUNE_ERROR_UNSUPPORTED, "edgetune_model_open: this library was built without ExecuTorch "
                                          "(-DEDGETUNE_WITH_EXECUTORCH=OFF)");
#endif
}

const char* edgetune_model_state_kind(const edgetune_model* model) {
#ifdef EDGETUNE_WITH_EXECUTORCH
  if (model != nullptr && model->impl != nullptr) return model->impl->state_kind().c_str();
#else
  (void)model;
#endif
  return nullptr;
}

edgetune_status edgetune_model_logits(edgetune_model* model, const int64_t* ids, const int64_t* lengths, size_t rows,
                                      size_t width, float* logits) {
#ifdef EDGETUNE_WITH_EXECUTORCH
  if (model == nullptr || model->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_logits: model is NULL");
  if (rows > 0 && (ids == nullptr || lengths == nullptr || logits == nullptr))
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_logits: ids, lengths or logits is NULL");
  return guarded("", [&] {
    const auto out = model->impl->logits(ids, lengths, static_cast<int64_t>(rows), static_cast<int64_t>(width));
    if (!out.empty()) std::memcpy(logits, out.data(), out.size() * sizeof(float));
    return EDGETUNE_OK;
  });
#else
  (void)model, (void)ids, (void)lengths, (void)rows, (void)width, (void)logits;
  return fail(EDGETUNE_ERROR_UNSUPPORTED, "edgetune_model_logits: this library was built without ExecuTorch");
#endif
}

edgetune_status edgetune_model_predict(edgetune_model* model, const char* const* texts, const size_t* lengths,
                                       size_t count, float* logits) {
  if (model == nullptr || model->package == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_predict: model is NULL");
  if (count > 0 && (texts == nullptr || lengths == nullptr || logits == nullptr))
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_predict: texts, lengths or logits is NULL");
  return guarded("", [&] {
    const edgetune::Package& p = *model->package->impl;
    if (!model->tokenizer) {
      const std::string name = p.manifest().at("tokenizer").at("tokenizer").str("tokenizer");
      model->tokenizer = edgetune::WordPieceTokenizer::from_json(p.verified_text(name));
    }
    const size_t max_length = static_cast<size_t>(p.max_length());
    std::vector<int64_t> ids(count * max_length, p.pad_id()), row_lengths(count);
    for (size_t i = 0; i < count; ++i) {
      if (texts[i] == nullptr && lengths[i] > 0)
        return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_model_predict: text " + std::to_string(i) + " is NULL");
      auto encoded = model->tokenizer->encode(std::string_view(texts[i] ? texts[i] : "", lengths[i]), max_length);
      std::copy(encoded.begin(), encoded.end(), ids.begin() + static_cast<long>(i * max_length));
      row_lengths[i] = static_cast<int64_t>(encoded.size());
    }
    return edgetune_model_logits(model, ids.data(), row_lengths.data(), count, max_length, logits);
  });
}

void edgetune_model_close(edgetune_model* model) { delete model; }

}  // extern "C"

extern "C" {

void edgetune_personalize_defaults(edgetune_personalize_settings* s) {
  if (s == nullptr) return;
  *s = edgetune_personalize_settings{};
  s->epochs = 8;
  s->batch_size = 16;
  s->lr = 1e-4;
  s->head_lr = 3e-3;
  s->weight_decay = 0.01;
  s->warmup_ratio = 0.06;
  s->max_grad_norm = 1.0;
  s->patience = 3;
  s->seed = 0;
  s->val_fraction = 0.15;
  s->guard_fraction = 0.2;
  s->guard_alpha = 0.05;
  s->select = 1;
}

}  // extern "C"

namespace {

// A tuner the device does not train (NULL is the default, full).
bool unknown_tuner(const char* tuner) {
  return tuner != nullptr && std::string(tuner) != "full" && std::string(tuner) != "lora";
}

// The settings' problem in words ("" when none).
std::string settings_problem(const edgetune_personalize_settings& s) {
  if (s.epochs < 1) return "epochs must be at least 1";
  if (s.batch_size < 1) return "batch_size must be at least 1";
  if (!(s.lr >= 0) || !(s.head_lr >= 0) || !(s.weight_decay >= 0) || !(s.max_grad_norm >= 0))
    return "lr, head_lr, weight_decay and max_grad_norm must be >= 0";
  if (!(s.warmup_ratio >= 0 && s.warmup_ratio <= 1)) return "warmup_ratio must be in [0, 1]";
  if (!(s.val_fraction >= 0 && s.val_fraction < 1)) return "val_fraction must be in [0, 1)";
  if (!(s.guard_fraction >= 0 && s.guard_fraction < 1)) return "guard_fraction must be in [0, 1)";
  if (!(s.guard_alpha > 0 && s.guard_alpha < 1)) return "guard_alpha must be in (0, 1)";
  if (s.threads < 0) return "threads must be >= 0";
  if (s.num_candidates > 0 && s.candidates == nullptr) return "candidates is NULL with num_candidates > 0";
  if (s.num_skipped > 0 && s.skipped == nullptr) return "skipped is NULL with num_skipped > 0";
  std::vector<std::string> names;
  for (size_t i = 0; i < s.num_candidates; ++i) {
    const edgetune_candidate& c = s.candidates[i];
    if (c.name == nullptr || *c.name == '\0') return "candidate " + std::to_string(i) + " has no name";
    if (std::find(names.begin(), names.end(), c.name) != names.end())
      return std::string("candidate names must be unique: '") + c.name + "' is given twice";
    names.push_back(c.name);
    if (!(c.lr >= 0) || !(c.head_lr >= 0)) return std::string("candidate '") + c.name + "': lr and head_lr must be >= 0";
    if (unknown_tuner(c.tuner))
      return std::string("candidate '") + c.name + "': tuner '" + c.tuner + "' (the device trains full or lora)";
  }
  if (unknown_tuner(s.tuner)) return std::string("tuner '") + s.tuner + "' (the device trains full or lora)";
  for (size_t i = 0; i < s.num_skipped; ++i)
    if (s.skipped[i].name == nullptr || s.skipped[i].reason == nullptr) return "a skipped candidate's name or reason is NULL";
  return "";
}

#ifdef EDGETUNE_WITH_EXECUTORCH
edgetune::PersonalizeSettings job_settings(const edgetune_personalize_settings& s) {
  edgetune::PersonalizeSettings job;
  job.epochs = s.epochs;
  job.batch_size = s.batch_size;
  job.lr = s.lr;
  job.head_lr = s.head_lr;
  job.weight_decay = s.weight_decay;
  job.warmup_ratio = s.warmup_ratio;
  job.max_grad_norm = s.max_grad_norm;
  job.patience = s.patience;
  job.seed = s.seed;
  job.val_fraction = s.val_fraction;
  job.guard_fraction = s.guard_fraction;
  job.guard_alpha = s.guard_alpha;
  job.head_only = s.head_only != 0;
  job.threads = s.threads;
  job.select = s.select != 0;
  job.int8_trunk = s.int8_trunk != 0;
  if (s.tuner != nullptr) job.tuner = s.tuner;
  for (size_t i = 0; i < s.num_candidates; ++i) {
    const edgetune_candidate& c = s.candidates[i];
    edgetune::CandidateSpec spec;
    spec.name = c.name;
    spec.prior = c.prior != 0;
    spec.head_only = c.head_only != 0;
    spec.lr = c.lr;
    spec.head_lr = c.head_lr;
    spec.estimated_seconds = c.estimated_seconds;
    if (c.tuner != nullptr) spec.tuner = c.tuner;
    job.candidates.push_back(spec);
  }
  for (size_t i = 0; i < s.num_skipped; ++i) job.skipped.push_back({s.skipped[i].name, s.skipped[i].reason});
  return job;
}

void fill_result(const edgetune::PersonalizeOutcome& o, edgetune_personalize_result* result) {
  if (result == nullptr) return;
  const auto& g = o.guard;
  const auto& chosen = o.chosen_candidate();
  *result = edgetune_personalize_result{};
  result->kept_personal = o.kind == "top_delta";
  result->num_train = static_cast<int32_t>(o.num_train);
  result->num_val = static_cast<int32_t>(o.num_val);
  result->num_guard = static_cast<int32_t>(g.num_examples);
  result->num_candidates = static_cast<int32_t>(o.candidates.size());
  result->chosen = static_cast<int32_t>(o.chosen);
  std::snprintf(result->chosen_name, sizeof result->chosen_name, "%s", chosen.spec.name.c_str());
  result->epochs_run = static_cast<int32_t>(chosen.training.history.size());
  result->best_epoch = static_cast<int32_t>(std::max<int64_t>(0, chosen.training.best_epoch));
  result->best_val_accuracy = chosen.val_accuracy;
  result->global_val_accuracy = o.global_val_accuracy;
  result->guard_personal_accuracy = g.num_examples ? g.personal_accuracy : -1;
  result->guard_global_accuracy = g.num_examples ? g.global_accuracy : -1;
  result->guard_p_value = g.p_value;
  result->guard_wins = static_cast<int32_t>(g.wins);
  result->guard_losses = static_cast<int32_t>(g.losses);
  result->resumed = o.resumed;
}
#endif

// The job on texts and label indices already checked, with the settings checked.
edgetune_status run_personalize(const edgetune_package* package, const std::vector<std::string>& texts,
                                const std::vector<int64_t>& labels, const std::string& data_name, const char* out,
                                const edgetune_personalize_settings& s, edgetune_progress_fn progress, void* user,
                                edgetune_personalize_result* result) {
#ifdef EDGETUNE_WITH_EXECUTORCH
  return guarded("", [&] {
    auto report = [&](const char* stage, const char* candidate, int64_t done, int64_t total, double loss) {
      if (progress) progress(user, stage, candidate, done, total, loss);
    };
    fill_result(edgetune::personalize(*package->impl, texts, labels, data_name, out, job_settings(s), report),
                result);
    return EDGETUNE_OK;
  });
#else
  (void)package, (void)texts, (void)labels, (void)data_name, (void)out, (void)s, (void)progress, (void)user,
      (void)result;
  return fail(EDGETUNE_ERROR_UNSUPPORTED, "edgetune_personalize: this library was built without ExecuTorch");
#endif
}

// The arguments every personalization entry checks, and ``s``: the settings to run (the defaults for NULL).
edgetune_status check_personalize(const edgetune_package* package, const char* out,
                                  const edgetune_personalize_settings* settings, edgetune_personalize_settings& s) {
  if (package == nullptr || package->impl == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize: package is NULL");
  if (out == nullptr || *out == '\0')
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize: out_directory is NULL or empty");
  edgetune_personalize_defaults(&s);
  if (settings != nullptr) s = *settings;
  const std::string bad = settings_problem(s);
  if (!bad.empty()) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize: " + bad);
  return EDGETUNE_OK;
}

}  // namespace

extern "C" {

edgetune_status edgetune_personalize(const edgetune_package* package, const edgetune_dataset* dataset,
                                     const char* out_directory, const edgetune_personalize_settings* settings,
                                     edgetune_progress_fn progress, void* user, edgetune_personalize_result* result) {
  edgetune_personalize_settings s;
  if (edgetune_status status = check_personalize(package, out_directory, settings, s); status != EDGETUNE_OK)
    return status;
  if (dataset == nullptr) return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize: dataset is NULL");
  for (int64_t label : dataset->labels)
    if (label < 0)
      return fail(EDGETUNE_ERROR_DATA, "edgetune_personalize: the dataset has no labels of this package (read it "
                                       "labelled, with the package)");
  return run_personalize(package, dataset->data.texts, dataset->labels, dataset->path, out_directory, s, progress,
                         user, result);
}

edgetune_status edgetune_personalize_texts(const edgetune_package* package, const char* const* texts,
                                           const size_t* lengths, const int64_t* labels, size_t count,
                                           const char* data_name, const char* out_directory,
                                           const edgetune_personalize_settings* settings,
                                           edgetune_progress_fn progress, void* user,
                                           edgetune_personalize_result* result) {
  edgetune_personalize_settings s;
  if (edgetune_status status = check_personalize(package, out_directory, settings, s); status != EDGETUNE_OK)
    return status;
  if (count == 0) return fail(EDGETUNE_ERROR_DATA, "edgetune_personalize_texts: no examples");
  if (texts == nullptr || lengths == nullptr || labels == nullptr)
    return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize_texts: texts, lengths or labels is NULL");
  const size_t classes = package->impl->labels().size();
  std::vector<std::string> owned(count);
  std::vector<int64_t> label_vec(labels, labels + count);
  for (size_t i = 0; i < count; ++i) {
    if (texts[i] == nullptr && lengths[i] > 0)
      return fail(EDGETUNE_ERROR_ARGUMENT, "edgetune_personalize_texts: text " + std::to_string(i) + " is NULL");
    if (labels[i] < 0 || static_cast<size_t>(labels[i]) >= classes)
      return fail(EDGETUNE_ERROR_DATA, "edgetune_personalize_texts: example " + std::to_string(i) + " has label index " +
                                           std::to_string(labels[i]) + "; the package has " + std::to_string(classes) +
                                           " labels");
    if (lengths[i] > 0) owned[i].assign(texts[i], lengths[i]);
  }
  return run_personalize(package, owned, label_vec, data_name ? data_name : "", out_directory, s, progress, user,
                         result);
}

}  // extern "C"
