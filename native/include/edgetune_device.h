/* edgetune_device: the on-device side of edgetune as a C library (docs/device-runtime.md).
 *
 * Every function returns an edgetune_status; on failure, edgetune_last_error() gives this thread's message
 * of the failed call. Nothing here crashes on bad input: a null pointer, an unreadable or corrupt file, text
 * that is not UTF-8 are errors with a code and a message. Objects are opaque; each *_open pairs with a
 * *_close (which accepts NULL). Thread safety: one object may be used by one thread at a time; the
 * tokenizer's encode is const and may be called from several threads at once.
 */
#ifndef EDGETUNE_DEVICE_H
#define EDGETUNE_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGETUNE_API __declspec(dllexport)
#else
#define EDGETUNE_API __attribute__((visibility("default")))
#endif

typedef enum edgetune_status {
  EDGETUNE_OK = 0,
  EDGETUNE_ERROR_ARGUMENT = 1,    /* a null pointer or an impossible value */
  EDGETUNE_ERROR_IO = 2,          /* a file cannot be read */
  EDGETUNE_ERROR_FORMAT = 3,      /* a file is corrupt or not what the spec says */
  EDGETUNE_ERROR_UNSUPPORTED = 4, /* valid, but beyond this library (e.g. a tokenizer it does not implement) */
  EDGETUNE_ERROR_DATA = 5,        /* the caller's data cannot be used (e.g. text that is not UTF-8) */
  EDGETUNE_ERROR_CAPACITY = 6,    /* an output buffer is too small; the size needed is reported */
  EDGETUNE_ERROR_INTERNAL = 7     /* a bug or an exhausted resource (out of memory) */
} edgetune_status;

/* The message of this thread's last failed call ("" when none); valid until the next failing call. */
EDGETUNE_API const char* edgetune_last_error(void);

/* The library's version, "MAJOR.MINOR.PATCH". */
EDGETUNE_API const char* edgetune_version(void);

/* -- Tokenizer ------------------------------------------------------------------------------------------ */
/* The WordPiece tokenizer of a package's tokenizer.json (families BERT, DistilBERT, ELECTRA, MPNet), giving
 * the ids the `tokenizers` library gives, special tokens and truncation included (docs/package-format.md,
 * "Tokenization"). Other tokenizers are EDGETUNE_ERROR_UNSUPPORTED: an app passes token ids instead. */
typedef struct edgetune_tokenizer edgetune_tokenizer;

EDGETUNE_API edgetune_status edgetune_tokenizer_open(const char* tokenizer_json_path, edgetune_tokenizer** out);

/* The ids of `text` (`length` bytes of UTF-8; `text` may be NULL when `length` is 0), its own tokens cut
 * from the end so that at most `max_length` ids remain (0: no limit). Writes `*count` ids into `ids`; when
 * `capacity` is too small, returns EDGETUNE_ERROR_CAPACITY with `*count` set to the number needed (max_length
 * ids always suffice). */
EDGETUNE_API edgetune_status edgetune_tokenizer_encode(const edgetune_tokenizer* tokenizer, const char* text,
                                                       size_t length, size_t max_length, int64_t* ids,
                                                       size_t capacity, size_t* count);

EDGETUNE_API void edgetune_tokenizer_close(edgetune_tokenizer* tokenizer);

/* -- Package ------------------------------------------------------------------------------------------- */
/* A device package directory, verified on open as docs/package-format.md ("Reading a package safely") says:
 * the manifest (at most 16 MiB and 32 levels deep, its format, schema version 1 or 2, its seal), every file
 * it lists (a regular file, not a link, of the listed size and sha256), nothing unlisted beside them, and
 * top.json and encoder.json agreeing with it. A problem is EDGETUNE_ERROR_FORMAT (EDGETUNE_ERROR_IO when a
 * file cannot be read) naming the file. Signatures (manifest.sig) are not checked by this version. */
typedef struct edgetune_package edgetune_package;

typedef struct edgetune_package_info {
  int32_t cut;          /* the trunk ends at this block */
  int32_t num_layers;   /* blocks of the backbone */
  int32_t num_labels;
  int32_t max_length;   /* tokens per text, special tokens included (encoder.json) */
  int64_t pad_id;       /* the id that fills padding positions */
  const char* family;   /* backbone.model_type: "bert", "mpnet", ... (owned by the package) */
} edgetune_package_info;

EDGETUNE_API edgetune_status edgetune_package_open(const char* directory, edgetune_package** out);
EDGETUNE_API edgetune_status edgetune_package_info_get(const edgetune_package* package, edgetune_package_info* info);
/* The label at `index` (0-based, the head's row order), or NULL when out of range (owned by the package). */
EDGETUNE_API const char* edgetune_package_label(const edgetune_package* package, size_t index);
/* The package's tokenizer, from the tokenizer.json bytes verified on open; encode with the package's
 * max_length (edgetune_package_info). EDGETUNE_ERROR_UNSUPPORTED for tokenizers this library lacks. */
EDGETUNE_API edgetune_status edgetune_package_tokenizer(const edgetune_package* package, edgetune_tokenizer** out);
/* The verified manifest as canonical JSON (sorted keys, no whitespace; owned by the package). */
EDGETUNE_API const char* edgetune_package_manifest_json(const edgetune_package* package);
EDGETUNE_API void edgetune_package_close(edgetune_package* package);

/* -- The user's data -------------------------------------------------------------------------------------- */
/* Labelled texts from a .csv (with a header; quotes, doubled quotes and newlines inside quotes as Python's
 * csv module reads them) or .jsonl file, UTF-8, read as edgetune reads them: an empty file, a missing column,
 * an empty text or label, a label the package does not know are EDGETUNE_ERROR_DATA naming the row. */
typedef struct edgetune_dataset edgetune_dataset;

/* `text_column`/`label_column` NULL: the package's plan's columns ("text"/"label" without a package);
 * `labelled` 0 reads texts alone (for prediction). With `package`, every label must be one of its labels. */
EDGETUNE_API edgetune_status edgetune_dataset_read(const char* path, const edgetune_package* package,
                                                   const char* text_column, const char* label_column,
                                                   int labelled, edgetune_dataset** out);
EDGETUNE_API size_t edgetune_dataset_size(const edgetune_dataset* dataset);
/* The i-th text (UTF-8, NUL-terminated; NULL out of range), its label's index among the package's labels
 * (-1: unlabelled or read without a package), its label's name, its row in the file. */
EDGETUNE_API const char* edgetune_dataset_text(const edgetune_dataset* dataset, size_t index);
EDGETUNE_API int64_t edgetune_dataset_label(const edgetune_dataset* dataset, size_t index);
EDGETUNE_API const char* edgetune_dataset_label_name(const edgetune_dataset* dataset, size_t index);
EDGETUNE_API int64_t edgetune_dataset_row(const edgetune_dataset* dataset, size_t index);
EDGETUNE_API void edgetune_dataset_close(edgetune_dataset* dataset);

/* -- The model: predict with or without a personal state ------------------------------------------------ */
/* The package's trunk.pte and top.pte (export target executorch) on ExecuTorch's runtime, with the top's
 * tensors from top.safetensors and, when `personal_directory` is not NULL, a personal state applied to them.
 * The state is verified as the spec says (its seal, delta.safetensors' size and sha256, the tensors listed) and
 * must belong to the package (EDGETUNE_ERROR_DATA naming what differs). Kinds applied: kept_global, top_delta
 * of tuners full and lora, fala; others are EDGETUNE_ERROR_UNSUPPORTED, as is a package without the programs
 * or a library built without ExecuTorch. The package must stay open while the model is. */
typedef struct edgetune_model edgetune_model;

/* `threads`: ExecuTorch's thread pool size (0: the runtime's default); the pool is shared by the process.
 * `int8_trunk` 1: the trunk runs as trunk.int8.pte (a package exported with --int8 and the executorch target;
 * EDGETUNE_ERROR_UNSUPPORTED without it), 0: trunk.pte (fp32). */
EDGETUNE_API edgetune_status edgetune_model_open(const edgetune_package* package, const char* personal_directory,
                                                 int threads, int int8_trunk, edgetune_model** out);
/* What the model predicts with: "global", "kept_global", "top_delta" or "fala" (owned by the model). */
EDGETUNE_API const char* edgetune_model_state_kind(const edgetune_model* model);
/* Logits of `rows` texts given as token ids (`rows` x `width`, row-major, each row's first `lengths[i]` ids
 * used, 1 <= lengths[i] <= the package's max_length), written to `logits` (`rows` x num_labels). */
EDGETUNE_API edgetune_status edgetune_model_logits(edgetune_model* model, const int64_t* ids, const int64_t* lengths,
                                                   size_t rows, size_t width, float* logits);
/* Logits of `count` UTF-8 texts (`texts[i]` of `lengths[i]` bytes), tokenized with the package's tokenizer. */
EDGETUNE_API edgetune_status edgetune_model_predict(edgetune_model* model, const char* const* texts,
                                                    const size_t* lengths, size_t count, float* logits);
EDGETUNE_API void edgetune_model_close(edgetune_model* model);

/* -- Personalization ------------------------------------------------------------------------------------ */
/* The device's personalization job (docs/device-runtime.md), as edgetune's Python device runs it: the guard and
 * validation splits (drawn as the Python device draws them), the trunk once over the texts, every candidate
 * configuration on the cached features (the prior candidate: the global head's bias fitted to the user's label
 * prior; the others: top_train.pte, or top_train_lora.pte for tuner lora, trained with AdamW, warm-up and
 * linear decay, clipping, the best epoch on the validation split, early stopping), the candidate with the best
 * validation accuracy chosen (ties: the first
 * listed) and kept only when it beats the global top there and passes the do-no-harm guard (a one-sided exact
 * McNemar test on the guard split at guard_alpha), and the personal state written atomically at
 * `out_directory` in the spec's format (kind top_delta, tuner full or lora; or kept_global). `out_directory`
 * may be absent, empty or another personal state; anything else is refused. */
typedef struct edgetune_candidate {
  const char* name;         /* unique among the job's candidates */
  int32_t prior;            /* 1: the global head with its bias fitted to the label prior (nothing trained) */
  int32_t head_only;        /* 1: the head and final norm alone; 0: the top above the package's cut */
  double lr, head_lr;       /* the blocks', and the head's and final norm's */
  double estimated_seconds; /* the caller's price of it, recorded in the state (-1: none) */
  const char* tuner;        /* NULL or "full": the top above the package's cut; "lora": top_train_lora.pte's
                               adapters with the final norm and head (lr the adapters'); not with head_only */
} edgetune_candidate;

typedef struct edgetune_skipped_candidate {
  const char* name;   /* a candidate the caller dropped (over a device budget, say) */
  const char* reason; /* recorded in the state's selection */
} edgetune_skipped_candidate;

typedef struct edgetune_personalize_settings {
  int32_t epochs;          /* 8 */
  int32_t batch_size;      /* 16 (any size: the program runs it in calls of its manifest's max_batch rows) */
  double lr;               /* 1e-4: the blocks (the configured job's; candidates carry their own) */
  double head_lr;          /* 3e-3: the head and the final norm (the same) */
  double weight_decay;     /* 0.01 (not on biases and norms) */
  double warmup_ratio;     /* 0.06 */
  double max_grad_norm;    /* 1.0 (0: no clipping) */
  int32_t patience;        /* 3 epochs without improvement (-1: none) */
  uint64_t seed;           /* 0 */
  double val_fraction;     /* 0.15 */
  double guard_fraction;   /* 0.2 (0: no guard) */
  double guard_alpha;      /* 0.05 */
  int32_t head_only;       /* without selection: 0 the top above the package's cut; 1 the head and final norm */
  int32_t threads;         /* 0: the runtime's choice */
  int32_t select;          /* 1: choose among the candidates; 0: train the one configuration (lr, head_lr,
                              head_only), named "configured", with no validation-split requirement */
  const edgetune_candidate* candidates; /* with select: NULL (0) the defaults, "prior", "head" (head_lr 0.03),
                                           "head-fast" (head_lr 0.1), "lora" (lr 1e-3, head_lr 0.03;
                                           where the package has top_train_lora.pte) and "block" (lr 1e-4,
                                           head_lr 3e-3) */
  size_t num_candidates;
  const edgetune_skipped_candidate* skipped; /* recorded; NULL with the default candidates: "lora" when the
                                                package has no top_train_lora.pte */
  size_t num_skipped;
  int32_t int8_trunk;      /* 0: the features of trunk.pte; 1: of trunk.int8.pte (see edgetune_model_open) */
  const char* tuner;       /* without selection: NULL or "full", or "lora" (the configured job's tuner) */
} edgetune_personalize_settings;

typedef struct edgetune_personalize_result {
  int32_t kept_personal;          /* 1: the state holds the chosen top; 0: kept_global */
  int32_t num_train, num_val, num_guard;
  int32_t num_candidates, chosen; /* the candidates tried, and the chosen one's index among them */
  char chosen_name[64];           /* its name (cut to 63 bytes) */
  int32_t epochs_run, best_epoch; /* the chosen candidate's; best_epoch 0: none (no validation, or the prior) */
  double best_val_accuracy;       /* the chosen candidate's validation accuracy; -1 without validation */
  double global_val_accuracy;     /* the package's top on the validation split, -1 without one */
  double guard_personal_accuracy, guard_global_accuracy, guard_p_value; /* -1, -1, 1 without a guard */
  int32_t guard_wins, guard_losses;
  int32_t resumed;                /* 1: an interrupted run of the same job was continued (see below) */
} edgetune_personalize_result;

/* Called while the job runs: `stage` "trunk" (`done` of `total` texts; `candidate` "") or "train" (optimizer
 * steps of the candidate named `candidate`, `loss` the step's loss). */
typedef void (*edgetune_progress_fn)(void* user, const char* stage, const char* candidate, int64_t done,
                                     int64_t total, double loss);

/* The settings above, written into `settings`. */
EDGETUNE_API void edgetune_personalize_defaults(edgetune_personalize_settings* settings);
/* `dataset`: labelled, read with `package` (edgetune_dataset_read). `settings` NULL: the defaults. `progress`
 * and `result` may be NULL. */
EDGETUNE_API edgetune_status edgetune_personalize(const edgetune_package* package, const edgetune_dataset* dataset,
                                                  const char* out_directory,
                                                  const edgetune_personalize_settings* settings,
                                                  edgetune_progress_fn progress, void* user,
                                                  edgetune_personalize_result* result);
/* Resuming: while the job runs, `.<out>.partial/` beside `out_directory` keeps every finished candidate and the
 * last epoch of the one in training (each record written atomically). A job that is killed and run again with
 * the same package, texts, labels, settings and candidates goes on from there and gives the result an
 * uninterrupted run gives (the trunk runs again); any other job discards those records. The directory is
 * removed once the state is written. One job per output at a time: the caller keeps a second one away (the
 * driver locks `.<out>.lock`). */
/* The same job on `count` UTF-8 texts (`texts[i]` of `lengths[i]` bytes) and their labels' indices among the
 * package's labels (edgetune_package_label); `data_name` (may be NULL) is recorded as the data's name. */
EDGETUNE_API edgetune_status edgetune_personalize_texts(const edgetune_package* package, const char* const* texts,
                                                        const size_t* lengths, const int64_t* labels, size_t count,
                                                        const char* data_name, const char* out_directory,
                                                        const edgetune_personalize_settings* settings,
                                                        edgetune_progress_fn progress, void* user,
                                                        edgetune_personalize_result* result);

#ifdef __cplusplus
}
#endif

#endif /* EDGETUNE_DEVICE_H */
