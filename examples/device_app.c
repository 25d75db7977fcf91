/* device_app: what an app does with libedgetune_device, in a few lines of C.
 *
 *   cmake -S native -B build/native && cmake --build build/native -j2
 *   build/native/device_app PACKAGE USER_DATA.csv STATE_DIR "a text to label"
 *
 * It opens (and so verifies) a device package exported with the executorch target, personalizes it on the
 * user's labelled texts (the library's job: the trunk once, the top trained, the do-no-harm guard, the personal
 * state written atomically) and labels a text with the personal state. Every call returns a status;
 * edgetune_last_error() says why.
 */
#include <stdio.h>
#include <string.h>

#include "edgetune_device.h"

static int fail(const char* what) {
  fprintf(stderr, "%s: %s\n", what, edgetune_last_error());
  return 2;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s PACKAGE USER_DATA.csv STATE_DIR TEXT\n", argv[0]);
    return 1;
  }
  edgetune_package* package = NULL;
  if (edgetune_package_open(argv[1], &package) != EDGETUNE_OK) return fail("refused");
  edgetune_package_info info;
  edgetune_package_info_get(package, &info);
  printf("%s package, %d labels, first: %s\n", info.family, info.num_labels, edgetune_package_label(package, 0));

  edgetune_dataset* data = NULL;
  edgetune_personalize_settings settings;
  edgetune_personalize_defaults(&settings);
  edgetune_personalize_result result;
  int status = 0;
  if (edgetune_dataset_read(argv[2], package, NULL, NULL, 1, &data) != EDGETUNE_OK ||
      edgetune_personalize(package, data, argv[3], &settings, NULL, NULL, &result) != EDGETUNE_OK) {
    status = fail("cannot personalize");
  } else {
    printf("personalized on %d texts (chose %s): %s\n", result.num_train, result.chosen_name,
           result.kept_personal ? "kept the personal model" : "kept the global model (the guard said so)");
    edgetune_model* model = NULL;
    float logits[256];
    size_t length = strlen(argv[4]);
    const char* text = argv[4];
    if (info.num_labels > 256 || edgetune_model_open(package, argv[3], 0, 0, &model) != EDGETUNE_OK ||
        edgetune_model_predict(model, &text, &length, 1, logits) != EDGETUNE_OK) {
      status = fail("cannot predict");
    } else {
      int best = 0;
      for (int i = 1; i < info.num_labels; ++i)
        if (logits[i] > logits[best]) best = i;
      printf("\"%s\" -> %s (%s state)\n", text, edgetune_package_label(package, (size_t)best),
             edgetune_model_state_kind(model));
    }
    edgetune_model_close(model);
  }
  edgetune_dataset_close(data);
  edgetune_package_close(package);
  return status;
}
