/* edgetune-device: the device side of edgetune from the command line, over libedgetune_device alone (what an
 * app would call). Commands so far:
 *
 *   edgetune-device inspect PACKAGE [--json]      verify a package and summarize it (exit 2 when refused)
 *   edgetune-device encode --package PACKAGE [TEXT ...]
 *                                                 token ids of each TEXT (or of each line of stdin), one JSON
 *                                                 array per line, at the package's max_length
 *   edgetune-device personalize --package PACKAGE --data FILE --out STATE [--epochs N] [--no-select]
 *                               [--lr X] [--head-lr X] [--head-only] [--guard-fraction X] [--seed N] ... (see --help)
 *                                                 the device's personalization job, as `edgetune personalize`
 *                                                 does it (candidate selection, guard, atomic state)
 *   edgetune-device predict --package PACKAGE [--personal STATE] (--data FILE [--out CSV] | --text TEXT ...)
 *                           [--format label|jsonl] [--logits] [--threads N] [--batch-size N] [--text-column C]
 *                                                 label texts, as `edgetune predict` does
 *   edgetune-device evaluate --package PACKAGE [--personal STATE] --data FILE [--out JSON] [--threads N]
 *                            [--text-column C] [--label-column C] [--quiet]
 *                                                 accuracy, macro-F1 and each label's F1, as `edgetune evaluate`
 *
 * Exit codes, as edgetune's: 0 done, 1 usage, 2 refused (bad package or data).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "edgetune_device.h"

static int usage(FILE* out) {
  fprintf(out,
          "usage: edgetune-device inspect PACKAGE [--json]\n"
          "       edgetune-device encode --package PACKAGE [TEXT ...]   (no TEXT: each line of stdin)\n"
          "\n"
          "inspect  verify a device package (manifest seal, every file's size and sha256, nothing unlisted)\n"
          "         and summarize it; --json prints the verified manifest. Exit 2 when it is refused.\n"
          "       edgetune-device personalize --package PACKAGE --data FILE --out STATE [--epochs N] [--batch-size N]\n"
          "                               [--lr X] [--head-lr X] [--weight-decay X] [--warmup-ratio X]\n"
          "                               [--max-grad-norm X] [--patience N] [--seed N] [--val-fraction X]\n"
          "                               [--guard-fraction X] [--guard-alpha X] [--no-select] [--head-only]\n"
          "                               [--tuner full|lora]\n"
          "                               [--threads N] [--precision fp32|int8]\n"
          "                               [--text-column C] [--label-column C] [--quiet]\n"
          "       edgetune-device predict --package PACKAGE [--personal STATE] (--data FILE [--out CSV] | --text TEXT ...)\n"
          "                               [--format label|jsonl] [--logits] [--threads N] [--batch-size N]\n"
          "                               [--text-column C] [--precision fp32|int8]\n"
          "       edgetune-device evaluate --package PACKAGE [--personal STATE] --data FILE [--out JSON] [--threads N]\n"
          "                                [--text-column C] [--label-column C] [--quiet]\n"
          "\n"
          "encode   the token ids of each text as the package's tokenizer gives them (special tokens and\n"
          "         truncation at the package's max_length included), one JSON array per line.\n"
          "personalize  personalize the package's top on labelled texts: trunk.pte once, then the candidates\n"
          "         (the head's bias fitted to the label prior; the head alone at two rates; LoRA adapters in the\n"
          "         top's blocks, with top_train_lora.pte; the top above the package's cut, with top_train.pte),\n"
          "         the best on a validation split chosen and kept only when\n"
          "         it beats the global model there and the do-no-harm guard says it is better on a held-out\n"
          "         split (--guard-fraction 0: no guard); writes the personal state STATE atomically.\n"
          "         --no-select trains one configuration (--lr, --head-lr; --head-only: the head alone; --tuner\n"
          "         lora: LoRA adapters in the top's blocks, with its final norm and head).\n"
          "predict  label texts with the package's ExecuTorch programs (trunk.pte, top.pte), and a personal\n"
          "         state when --personal names one: one label per line, or JSON lines with the confidence and\n"
          "         every label's score (--format jsonl; --logits adds the raw logits); --out writes a\n"
          "         text,label,confidence CSV instead (atomically).\n"
          "evaluate accuracy, macro-F1 and each label's F1 on labelled data; --out also writes them as JSON.\n"
          "--precision int8 runs the trunk as trunk.int8.pte (a package exported with --int8) instead of\n"
          "         trunk.pte.\n");
  return out == stderr ? 1 : 0;
}

static int refused(const char* what) {
  fprintf(stderr, "error: %s%s%s\n", what ? what : "", what ? ": " : "", edgetune_last_error());
  return 2;
}

static int inspect(int argc, char** argv) {
  const char* path = NULL;
  int json = 0;
  for (int i = 0; i < argc; ++i) {
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (strcmp(argv[i], "--help") == 0) return usage(stdout);
    else if (argv[i][0] == '-' || path) return usage(stderr);
    else path = argv[i];
  }
  if (!path) return usage(stderr);
  edgetune_package* package = NULL;
  if (edgetune_package_open(path, &package) != EDGETUNE_OK) return refused(NULL);
  if (json) {
    printf("%s\n", edgetune_package_manifest_json(package));
  } else {
    edgetune_package_info info;
    edgetune_package_info_get(package, &info);
    printf("package: %s (verified)\n", path);
    printf("family: %s, %d blocks, trunk to block %d, top: blocks %d..%d + head\n", info.family, info.num_layers,
           info.cut, info.cut + 1, info.num_layers);
    printf("labels (%d):", info.num_labels);
    for (int i = 0; i < info.num_labels; ++i) printf(" %s", edgetune_package_label(package, (size_t)i));
    printf("\ntokens per text: %d (padding id %lld)\n", info.max_length, (long long)info.pad_id);
  }
  edgetune_package_close(package);
  return 0;
}

static int encode_one(const edgetune_tokenizer* tokenizer, const char* text, size_t length, size_t max_length,
                      int64_t* ids) {
  size_t count = 0;
  if (edgetune_tokenizer_encode(tokenizer, text, length, max_length, ids, max_length, &count) != EDGETUNE_OK)
    return refused("a text");
  putchar('[');
  for (size_t i = 0; i < count; ++i) printf(i ? ",%lld" : "%lld", (long long)ids[i]);
  printf("]\n");
  return 0;
}

static int encode(int argc, char** argv) {
  const char* path = NULL;
  int first_text = argc;
  for (int i = 0; i < argc; ++i) {
    if (strcmp(argv[i], "--help") == 0) return usage(stdout);
    if (strcmp(argv[i], "--package") == 0 && i + 1 < argc) {
      path = argv[++i];
    } else {
      first_text = i;
      break;
    }
  }
  if (!path) return usage(stderr);
  edgetune_package* package = NULL;
  edgetune_tokenizer* tokenizer = NULL;
  if (edgetune_package_open(path, &package) != EDGETUNE_OK) return refused(NULL);
  int status = 0;
  if (edgetune_package_tokenizer(package, &tokenizer) != EDGETUNE_OK) {
    status = refused(NULL);
  } else {
    edgetune_package_info info;
    edgetune_package_info_get(package, &info);
    int64_t* ids = malloc(sizeof(int64_t) * (size_t)info.max_length);
    if (first_text < argc) {
      for (int i = first_text; i < argc && status == 0; ++i)
        status = encode_one(tokenizer, argv[i], strlen(argv[i]), (size_t)info.max_length, ids);
    } else {
      char* line = NULL;
      size_t capacity = 0;
      ssize_t got;
      while (status == 0 && (got = getline(&line, &capacity, stdin)) >= 0) {
        if (got > 0 && line[got - 1] == '\n') --got;
        status = encode_one(tokenizer, line, (size_t)got, (size_t)info.max_length, ids);
      }
      free(line);
    }
    free(ids);
  }
  edgetune_tokenizer_close(tokenizer);
  edgetune_package_close(package);
  return status;
}

/* -- predict and evaluate ------------------------------------------------------------------------------ */

typedef struct {
  const char* package;
  const char* personal;
  const char* data;
  const char* out;
  const char* text_column;
  const char* label_column;
  const char* format;
  int logits, quiet, threads, batch_size;
  edgetune_personalize_settings settings;  /* personalize's numbers */
  int first_text, text_count;  /* --text values, collected in argv order */
  const char** texts;
} options;

/* personalize's numeric flags: 1 when `flag` is one of them (with `*status` 1 when its value is not a number). */
static int number_option(const char* flag, const char* value, edgetune_personalize_settings* s, int* status) {
  static const char* reals[] = {"--lr", "--head-lr", "--weight-decay", "--warmup-ratio", "--max-grad-norm",
                                "--val-fraction", "--guard-fraction", "--guard-alpha"};
  double* targets[] = {&s->lr, &s->head_lr, &s->weight_decay, &s->warmup_ratio, &s->max_grad_norm,
                       &s->val_fraction, &s->guard_fraction, &s->guard_alpha};
  char* end = NULL;
  *status = 0;
  for (size_t i = 0; i < sizeof reals / sizeof *reals; ++i) {
    if (strcmp(flag, reals[i]) != 0) continue;
    *targets[i] = strtod(value, &end);
    if (*value == '\0' || *end != '\0') {
      fprintf(stderr, "error: %s must be a number, got '%s'\n", flag, value);
      *status = 1;
    }
    return 1;
  }
  if (strcmp(flag, "--epochs") == 0 || strcmp(flag, "--patience") == 0 || strcmp(flag, "--seed") == 0) {
    long long n = strtoll(value, &end, 10);
    if (*value == '\0' || *end != '\0' || n < (flag[2] == 'p' ? -1 : flag[2] == 'e' ? 1 : 0) || n > 1000000000) {
      fprintf(stderr, "error: %s must be a whole number%s, got '%s'\n", flag,
              flag[2] == 'p' ? " (-1: none)" : flag[2] == 'e' ? " of at least 1" : " of at least 0", value);
      *status = 1;
    } else if (flag[2] == 'e') {
      s->epochs = (int32_t)n;
    } else if (flag[2] == 'p') {
      s->patience = (int32_t)n;
    } else {
      s->seed = (uint64_t)n;
    }
    return 1;
  }
  return 0;
}

/* Flags of personalize/predict/evaluate; returns 0, or the exit code of a usage error. */
static int parse_options(int argc, char** argv, options* o) {
  int status = 0;
  memset(o, 0, sizeof(*o));
  o->format = "label";
  o->batch_size = 32;
  edgetune_personalize_defaults(&o->settings);
  o->texts = calloc((size_t)argc + 1, sizeof(char*));
  for (int i = 0; i < argc; ++i) {
    const char* flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(flag, "--help") == 0) return usage(stdout) - 100;  /* marks "printed help" */
    if (strcmp(flag, "--logits") == 0) { o->logits = 1; continue; }
    if (strcmp(flag, "--quiet") == 0 || strcmp(flag, "-q") == 0) { o->quiet = 1; continue; }
    if (strcmp(flag, "--head-only") == 0) { o->settings.head_only = 1; o->settings.select = 0; continue; }
    if (strcmp(flag, "--no-select") == 0) { o->settings.select = 0; continue; }
    if (!value) { fprintf(stderr, "error: %s needs a value\n", flag); return 1; }
    ++i;
    if (strcmp(flag, "--package") == 0) o->package = value;
    else if (strcmp(flag, "--personal") == 0) o->personal = value;
    else if (strcmp(flag, "--data") == 0) o->data = value;
    else if (strcmp(flag, "--out") == 0) o->out = value;
    else if (strcmp(flag, "--text-column") == 0) o->text_column = value;
    else if (strcmp(flag, "--label-column") == 0) o->label_column = value;
    else if (strcmp(flag, "--format") == 0) o->format = value;
    else if (strcmp(flag, "--precision") == 0) {
      if (strcmp(value, "fp32") != 0 && strcmp(value, "int8") != 0) {
        fprintf(stderr, "error: --precision: choose one of fp32, int8\n");
        return 1;
      }
      o->settings.int8_trunk = strcmp(value, "int8") == 0;
    }
    else if (strcmp(flag, "--tuner") == 0) {
      if (strcmp(value, "full") != 0 && strcmp(value, "lora") != 0) {
        fprintf(stderr, "error: --tuner: choose one of full, lora\n");
        return 1;
      }
      o->settings.tuner = value;
      o->settings.select = 0;
    }
    else if (strcmp(flag, "--text") == 0) o->texts[o->text_count++] = value;
    else if (number_option(flag, value, &o->settings, &status)) {
      if (status) return status;
    } else if (strcmp(flag, "--threads") == 0 || strcmp(flag, "--batch-size") == 0) {
      char* end = NULL;
      long n = strtol(value, &end, 10);
      if (*value == '\0' || *end != '\0' || n < 1 || n > 4096) {
        fprintf(stderr, "error: %s must be a whole number from 1 to 4096, got '%s'\n", flag, value);
        return 1;
      }
      if (flag[2] == 't') o->threads = (int)n; else o->batch_size = (int)n;
    } else {
      fprintf(stderr, "error: unknown option '%s'\n", flag);
      return 1;
    }
  }
  if (!o->package) { fprintf(stderr, "error: --package is required\n"); return 1; }
  if (strcmp(o->format, "label") != 0 && strcmp(o->format, "jsonl") != 0) {
    fprintf(stderr, "error: --format: choose one of label, jsonl\n");
    return 1;
  }
  if (o->logits && strcmp(o->format, "jsonl") != 0) {
    fprintf(stderr, "error: --logits adds a field to --format jsonl\n");
    return 1;
  }
  return 0;
}

/* A JSON string (UTF-8 kept as is, as Python's json.dumps with ensure_ascii=False writes it). */
static void json_string(FILE* f, const char* s) {
  fputc('"', f);
  for (const unsigned char* p = (const unsigned char*)s; *p; ++p) {
    switch (*p) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      case '\b': fputs("\\b", f); break;
      case '\f': fputs("\\f", f); break;
      default:
        if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
  }
  fputc('"', f);
}

/* A CSV field as Python's csv.writer writes it (quoted when it holds a comma, a quote or a line break). */
static void csv_field(FILE* f, const char* s) {
  if (strpbrk(s, ",\"\r\n") == NULL) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (const char* p = s; *p; ++p) {
    if (*p == '"') fputc('"', f);
    fputc(*p, f);
  }
  fputc('"', f);
}

/* Softmax of one row of logits into `scores`; returns the index of the largest. */
static int softmax(const float* logits, int n, double* scores) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  double total = 0;
  for (int i = 0; i < n; ++i) total += scores[i] = exp((double)logits[i] - (double)logits[best]);
  for (int i = 0; i < n; ++i) scores[i] /= total;
  return best;
}

typedef struct {
  edgetune_package* package;
  edgetune_model* model;
  edgetune_dataset* dataset;
  int num_labels;
} session;

static void session_close(session* s) {
  edgetune_dataset_close(s->dataset);
  edgetune_model_close(s->model);
  edgetune_package_close(s->package);
}

static int session_open(const options* o, int labelled, session* s) {
  memset(s, 0, sizeof(*s));
  if (edgetune_package_open(o->package, &s->package) != EDGETUNE_OK) return refused(NULL);
  edgetune_package_info info;
  edgetune_package_info_get(s->package, &info);
  s->num_labels = info.num_labels;
  if (o->data && edgetune_dataset_read(o->data, s->package, o->text_column, o->label_column, labelled,
                                       &s->dataset) != EDGETUNE_OK)
    return refused(NULL);
  if (edgetune_model_open(s->package, o->personal, o->threads, o->settings.int8_trunk, &s->model) != EDGETUNE_OK)
    return refused(NULL);
  return 0;
}

/* Logits of `count` texts, `batch` at a time (rows x num_labels, allocated). */
static float* logits_of(const session* s, const char** texts, size_t count, int batch) {
  float* logits = malloc(sizeof(float) * (count ? count : 1) * (size_t)s->num_labels);
  size_t* lengths = malloc(sizeof(size_t) * (count ? count : 1));
  for (size_t i = 0; i < count; ++i) lengths[i] = strlen(texts[i]);
  for (size_t start = 0; start < count; start += (size_t)batch) {
    size_t n = count - start < (size_t)batch ? count - start : (size_t)batch;
    if (edgetune_model_predict(s->model, texts + start, lengths + start, n,
                               logits + start * (size_t)s->num_labels) != EDGETUNE_OK) {
      free(logits);
      logits = NULL;
      break;
    }
  }
  free(lengths);
  return logits;
}

/* A file written whole or not at all: a temporary file beside it, renamed over it when complete. */
static FILE* open_atomic(const char* path, char* tmp, size_t size) {
  snprintf(tmp, size, "%s.tmp-%ld", path, (long)getpid());
  return fopen(tmp, "w");
}

static int close_atomic(FILE* f, const char* tmp, const char* path) {
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    remove(tmp);
    fprintf(stderr, "error: %s: cannot be written\n", path);
    return 2;
  }
  return 0;
}

static int predict(int argc, char** argv) {
  options o;
  int status = parse_options(argc, argv, &o);
  if (status != 0) {
    free(o.texts);
    return status < 0 ? 0 : status;
  }
  if (o.data && o.text_count) {
    fprintf(stderr, "error: give either --data or --text\n");
    free(o.texts);
    return 1;
  }
  if (!o.data && !o.text_count) {
    fprintf(stderr, "error: give --data FILE or --text TEXT\n");
    free(o.texts);
    return 1;
  }
  if (o.out && !o.data) {
    fprintf(stderr, "error: --out writes the predictions of --data\n");
    free(o.texts);
    return 1;
  }
  session s;
  status = session_open(&o, 0, &s);
  const char** texts = o.texts;
  size_t count = (size_t)o.text_count;
  if (status == 0 && s.dataset) {
    count = edgetune_dataset_size(s.dataset);
    texts = calloc(count + 1, sizeof(char*));
    for (size_t i = 0; i < count; ++i) texts[i] = edgetune_dataset_text(s.dataset, i);
  }
  float* logits = status == 0 ? logits_of(&s, texts, count, o.batch_size) : NULL;
  if (status == 0 && !logits) status = refused(NULL);
  if (status == 0) {
    double* scores = malloc(sizeof(double) * (size_t)s.num_labels);
    char tmp[4096];
    FILE* f = o.out ? open_atomic(o.out, tmp, sizeof tmp) : stdout;
    if (!f) {
      fprintf(stderr, "error: %s: cannot be written\n", o.out);
      status = 2;
    }
    if (f && o.out) fputs("text,label,confidence\r\n", f);
    for (size_t i = 0; f && i < count; ++i) {
      const float* row = logits + i * (size_t)s.num_labels;
      int best = softmax(row, s.num_labels, scores);
      const char* label = edgetune_package_label(s.package, (size_t)best);
      if (o.out) {
        csv_field(f, texts[i]);
        fputc(',', f);
        csv_field(f, label);
        fprintf(f, ",%.6f\r\n", scores[best]);
      } else if (strcmp(o.format, "label") == 0) {
        printf("%s\n", label);
      } else {
        fputs("{\"text\": ", f);
        json_string(f, texts[i]);
        fputs(", \"label\": ", f);
        json_string(f, label);
        fprintf(f, ", \"confidence\": %.6f, \"scores\": {", scores[best]);
        for (int c = 0; c < s.num_labels; ++c) {
          fputs(c ? ", " : "", f);
          json_string(f, edgetune_package_label(s.package, (size_t)c));
          fprintf(f, ": %.6f", scores[c]);
        }
        fputc('}', f);
        if (o.logits) {
          fputs(", \"logits\": [", f);
          for (int c = 0; c < s.num_labels; ++c) fprintf(f, c ? ", %.9g" : "%.9g", row[c]);
          fputc(']', f);
        }
        fputs("}\n", f);
      }
    }
    if (f && o.out) {
      status = close_atomic(f, tmp, o.out);
      if (status == 0) fprintf(stderr, "wrote %zu predictions to %s\n", count, o.out);
    }
    free(scores);
  }
  free(logits);
  if (texts != o.texts) free(texts);
  free(o.texts);
  session_close(&s);
  return status;
}

static int evaluate(int argc, char** argv) {
  options o;
  int status = parse_options(argc, argv, &o);
  free(o.texts);
  if (status != 0) return status < 0 ? 0 : status;
  if (!o.data) {
    fprintf(stderr, "error: --data is required (labelled texts)\n");
    return 1;
  }
  session s;
  status = session_open(&o, 1, &s);
  size_t count = status == 0 ? edgetune_dataset_size(s.dataset) : 0;
  const char** texts = calloc(count + 1, sizeof(char*));
  for (size_t i = 0; i < count; ++i) texts[i] = edgetune_dataset_text(s.dataset, i);
  float* logits = status == 0 ? logits_of(&s, texts, count, 64) : NULL;
  if (status == 0 && !logits) status = refused(NULL);
  if (status == 0) {
    /* confusion counts per label: F1 over the labels present in truth or predictions (scikit-learn's choice) */
    int n = s.num_labels;
    long* tp = calloc((size_t)n, sizeof(long));
    long* fp = calloc((size_t)n, sizeof(long));
    long* fn = calloc((size_t)n, sizeof(long));
    double* scores = malloc(sizeof(double) * (size_t)n);
    long right = 0;
    for (size_t i = 0; i < count; ++i) {
      int pred = softmax(logits + i * (size_t)n, n, scores);
      int truth = (int)edgetune_dataset_label(s.dataset, i);
      if (pred == truth) ++tp[truth], ++right;
      else ++fp[pred], ++fn[truth];
    }
    double f1_sum = 0;
    int present = 0;
    for (int c = 0; c < n; ++c)
      if (tp[c] + fp[c] + fn[c]) f1_sum += 2.0 * tp[c] / (2.0 * tp[c] + fp[c] + fn[c]), ++present;
    double accuracy = count ? (double)right / (double)count : 0.0, macro = present ? f1_sum / present : 0.0;
    char tmp[4096];
    FILE* f = o.out ? open_atomic(o.out, tmp, sizeof tmp) : NULL;
    if (o.out && !f) {
      fprintf(stderr, "error: %s: cannot be written\n", o.out);
      status = 2;
    }
    if (f) {
      fputs("{\n  \"package\": ", f);
      json_string(f, o.package);
      fputs(",\n  \"personal\": ", f);
      if (o.personal) json_string(f, o.personal); else fputs("null", f);
      fputs(",\n  \"data\": ", f);
      json_string(f, o.data);
      fprintf(f, ",\n  \"accuracy\": %.17g,\n  \"macro_f1\": %.17g,\n  \"num_examples\": %zu,\n  \"per_label_f1\": {",
              accuracy, macro, count);
      int first = 1;
      for (int c = 0; c < n; ++c) {
        if (!(tp[c] + fp[c] + fn[c])) continue;
        fputs(first ? "\n    " : ",\n    ", f);
        json_string(f, edgetune_package_label(s.package, (size_t)c));
        fprintf(f, ": %.17g", 2.0 * tp[c] / (2.0 * tp[c] + fp[c] + fn[c]));
        first = 0;
      }
      fputs("\n  }\n}\n", f);
      status = close_atomic(f, tmp, o.out);
    }
    if (status == 0) {
      if (!o.quiet) {
        printf("%s%s%s on %s (%zu examples, %s)\n", o.package, o.personal ? " + " : "", o.personal ? o.personal : "",
               o.data, count, edgetune_model_state_kind(s.model));
        for (int c = 0; c < n; ++c)
          if (tp[c] + fp[c] + fn[c])
            printf("  F1 %-24s %.1f%%\n", edgetune_package_label(s.package, (size_t)c),
                   100.0 * 2.0 * tp[c] / (2.0 * tp[c] + fp[c] + fn[c]));
      }
      printf("accuracy %.1f%%, macro-F1 %.1f%% on %zu examples\n", 100 * accuracy, 100 * macro, count);
    }
    free(tp), free(fp), free(fn), free(scores);
  }
  free(logits);
  free(texts);
  session_close(&s);
  return status;
}

static void show_progress(void* user, const char* stage, const char* candidate, int64_t done, int64_t total,
                          double loss) {
  if (*(const int*)user) return;  /* --quiet */
  if (*candidate)
    fprintf(stderr, "\r%s %-10s %lld/%lld loss %.4f", stage, candidate, (long long)done, (long long)total, loss);
  else
    fprintf(stderr, "\r%-5s %lld/%lld", stage, (long long)done, (long long)total);
  if (done == total) fputc('\n', stderr);
}

/* `.<name>.lock` beside the output, as edgetune's Python writers name it: the lock file descriptor, or -1 with
 * the message printed when another job holds it (one job per output; the lock dies with its process). */
static char lock_name[4096];

static int lock_output(const char* out) {
  size_t n = strlen(out);
  while (n > 1 && out[n - 1] == '/') --n;
  size_t slash = n;
  while (slash > 0 && out[slash - 1] != '/') --slash;
  snprintf(lock_name, sizeof lock_name, "%.*s.%.*s.lock", (int)slash, out, (int)(n - slash), out + slash);
  int fd = open(lock_name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "error: %s: cannot create the output's lock file\n", lock_name);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    fprintf(stderr, "error: %.*s: another job is writing this output (%s is locked)\n", (int)n, out, lock_name);
    close(fd);
    return -1;
  }
  char pid[32];  /* the holder, as edgetune's Python writers record it */
  int length = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)length, 0) != length) { /* the lock holds without it */ }
  return fd;
}

static void unlock_output(const char* out, int fd) {
  (void)out;
  if (fd < 0) return;
  unlink(lock_name);
  close(fd);
}

static int personalize(int argc, char** argv) {
  options o;
  int status = parse_options(argc, argv, &o);
  free(o.texts);
  if (status != 0) return status < 0 ? 0 : status;
  if (!o.data || !o.out) {
    fprintf(stderr, "error: --data (labelled texts) and --out (the personal state) are required\n");
    return 1;
  }
  o.settings.threads = o.threads;
  if (o.batch_size != 32) o.settings.batch_size = o.batch_size;  /* --batch-size given: training batches */
  edgetune_package* package = NULL;
  edgetune_dataset* dataset = NULL;
  if (edgetune_package_open(o.package, &package) != EDGETUNE_OK) return refused(NULL);
  if (edgetune_dataset_read(o.data, package, o.text_column, o.label_column, 1, &dataset) != EDGETUNE_OK) {
    edgetune_package_close(package);
    return refused(NULL);
  }
  edgetune_personalize_result r;
  int lock = lock_output(o.out);
  if (lock < 0) {
    status = 2;
  } else if (edgetune_personalize(package, dataset, o.out, &o.settings, show_progress, &o.quiet, &r) != EDGETUNE_OK) {
    status = refused(NULL);
  } else {
    if (r.resumed) printf("resumed an interrupted run of this job\n");
    if (r.num_candidates > 1)
      printf("chose %s among %d candidates", r.chosen_name, r.num_candidates);
    else
      printf("trained %s", o.settings.head_only ? "the head"
                           : o.settings.tuner && strcmp(o.settings.tuner, "lora") == 0
                               ? "LoRA adapters in the top above the package's cut"
                               : "the top above the package's cut");
    printf(" on %d examples (%d validation, %d held out for the guard), %d epochs", r.num_train, r.num_val,
           r.num_guard, r.epochs_run);
    if (r.best_val_accuracy >= 0) printf("; validation accuracy %.1f%%", 100 * r.best_val_accuracy);
    if (r.global_val_accuracy >= 0) printf(" (global %.1f%%)", 100 * r.global_val_accuracy);
    printf("\n");
    if (r.num_guard > 0)
      printf("guard: on %d held-out examples: personal %.1f%%, global %.1f%% (%d wins, %d losses, one-sided p = "
             "%.3g, alpha %g)\n",
             r.num_guard, 100 * r.guard_personal_accuracy, 100 * r.guard_global_accuracy, r.guard_wins,
             r.guard_losses, r.guard_p_value, o.settings.guard_alpha);
    if (r.kept_personal)
      printf("kept the personal model; wrote %s\n", o.out);
    else
      printf("KEPT THE GLOBAL MODEL: personalization would not reliably help this user; wrote a kept-global "
             "state to %s\n", o.out);
  }
  unlock_output(o.out, lock);
  edgetune_dataset_close(dataset);
  edgetune_package_close(package);
  return status;
}

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) return usage(stdout);
  if (strcmp(argv[1], "--version") == 0) {
    printf("edgetune-device %s\n", edgetune_version());
    return 0;
  }
  if (strcmp(argv[1], "inspect") == 0) return inspect(argc - 2, argv + 2);
  if (strcmp(argv[1], "encode") == 0) return encode(argc - 2, argv + 2);
  if (strcmp(argv[1], "personalize") == 0) return personalize(argc - 2, argv + 2);
  if (strcmp(argv[1], "predict") == 0) return predict(argc - 2, argv + 2);
  if (strcmp(argv[1], "evaluate") == 0) return evaluate(argc - 2, argv + 2);
  fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
