/* device_app: what an app does with libedgetune_device, in a few lines of C.
 *
 *   cmake -S native -B build/native && cmake --build build/native -j2
 *   build/native/device_app PACKAGE "a text to tokenize"
 *
 * It opens (and so verifies) a device package, reads its settings and labels, and turns a text into the
 * token ids the package's trunk takes. Every call returns a status; edgetune_last_error() says why.
 */
#include <stdio.h>
#include <string.h>

#include "edgetune_device.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PACKAGE TEXT\n", argv[0]);
    return 1;
  }
  edgetune_package* package = NULL;
  if (edgetune_package_open(argv[1], &package) != EDGETUNE_OK) {
    fprintf(stderr, "refused: %s\n", edgetune_last_error());
    return 2;
  }
  edgetune_package_info info;
  edgetune_package_info_get(package, &info);
  printf("%s package, %d labels, first: %s\n", info.family, info.num_labels, edgetune_package_label(package, 0));

  edgetune_tokenizer* tokenizer = NULL;
  int64_t ids[512];
  size_t count = 0;
  size_t max_length = info.max_length < 512 ? (size_t)info.max_length : 512;
  if (edgetune_package_tokenizer(package, &tokenizer) != EDGETUNE_OK ||
      edgetune_tokenizer_encode(tokenizer, argv[2], strlen(argv[2]), max_length, ids, 512, &count) != EDGETUNE_OK) {
    fprintf(stderr, "cannot tokenize: %s\n", edgetune_last_error());
    edgetune_package_close(package);
    return 2;
  }
  printf("%zu token ids:", count);
  for (size_t i = 0; i < count; ++i) printf(" %lld", (long long)ids[i]);
  printf("\n");
  edgetune_tokenizer_close(tokenizer);
  edgetune_package_close(package);
  return 0;
}
