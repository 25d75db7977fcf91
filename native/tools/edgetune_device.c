/* edgetune-device: the device side of edgetune from the command line, over libedgetune_device alone (what an
 * app would call). Commands so far:
 *
 *   edgetune-device inspect PACKAGE [--json]      verify a package and summarize it (exit 2 when refused)
 *   edgetune-device encode --package PACKAGE [TEXT ...]
 *                                                 token ids of each TEXT (or of each line of stdin), one JSON
 *                                                 array per line, at the package's max_length
 *
 * Exit codes, as edgetune's: 0 done, 1 usage, 2 refused (bad package or data).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgetune_device.h"

static int usage(FILE* out) {
  fprintf(out,
          "usage: edgetune-device inspect PACKAGE [--json]\n"
          "       edgetune-device encode --package PACKAGE [TEXT ...]   (no TEXT: each line of stdin)\n"
          "\n"
          "inspect  verify a device package (manifest seal, every file's size and sha256, nothing unlisted)\n"
          "         and summarize it; --json prints the verified manifest. Exit 2 when it is refused.\n"
          "encode   the token ids of each text as the package's tokenizer gives them (special tokens and\n"
          "         truncation at the package's max_length included), one JSON array per line.\n");
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

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) return usage(stdout);
  if (strcmp(argv[1], "--version") == 0) {
    printf("edgetune-device %s\n", edgetune_version());
    return 0;
  }
  if (strcmp(argv[1], "inspect") == 0) return inspect(argc - 2, argv + 2);
  if (strcmp(argv[1], "encode") == 0) return encode(argc - 2, argv + 2);
  fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
