#!/usr/bin/env bash
# Build libedgetune_device and edgetune-device for x86-64 and for linux-aarch64 (cross-compiled, against the
# aarch64 build of the same ExecuTorch wheel, fetched with pip download), run the same jobs with both (the aarch64
# one under qemu-aarch64) on a tiny package, and compare the outputs.
#
#   bash native/tools/arm64.sh [WORK_DIR]        # default build/arm64-check
#
# Needs Debian's g++-aarch64-linux-gnu and qemu-user-static, cmake, and the repo's Python environment
# (it exports the tiny package). The jobs: open and verify the package (inspect --json: the whole verified
# manifest), tokenize every line of texts.txt (encode), personalize on user.csv as the device does (the candidates,
# the choice, the guard's verdict and scores), personalize one configuration without the guard (a trained state),
# then predict test.csv with that state and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-build/arm64-check}
PY=${PYTHON:-python}
CMAKE=${CMAKE:-cmake}
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if ! command -v aarch64-linux-gnu-g++ > /dev/null || [ -z "$QEMU" ]; then
  echo "needs g++-aarch64-linux-gnu and qemu-user-static (apt-get install g++-aarch64-linux-gnu qemu-user-static)" >&2
  exit 1
fi
mkdir -p "$WORK"
ET_X86=$("$PY" -c 'import executorch; print(list(executorch.__path__)[0])')
ET_VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("executorch"))')
ET_ARM="$WORK/executorch-aarch64/executorch"
if [ ! -d "$ET_ARM/lib" ]; then  # the aarch64 wheel of the same release: its include/ and lib/
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version "$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')" \
    -d "$WORK/wheel" "executorch==$ET_VERSION"
  "$PY" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("executorch/include/", "executorch/lib/", "executorch/share/"))])' \
    "$(ls "$WORK"/wheel/executorch-*aarch64*.whl)" "$WORK/executorch-aarch64"
fi
"$CMAKE" -S native -B "$WORK/x86-64" -DEXECUTORCH_PREFIX="$ET_X86" > /dev/null
"$CMAKE" --build "$WORK/x86-64" -j2 > /dev/null
"$CMAKE" -S native -B "$WORK/aarch64" -DCMAKE_TOOLCHAIN_FILE="$PWD/native/aarch64.cmake" \
  -DEXECUTORCH_PREFIX="$ET_ARM" > /dev/null
"$CMAKE" --build "$WORK/aarch64" -j2 > /dev/null
[ -d "$WORK/tiny/pkg" ] || "$PY" native/tools/tiny_package.py "$WORK/tiny" > /dev/null
echo "x86-64:  $(file -b "$WORK/x86-64/edgetune-device" | cut -d, -f1-2)"
echo "aarch64: $(file -b "$WORK/aarch64/edgetune-device" | cut -d, -f1-2)"
run_x86() { "$WORK/x86-64/edgetune-device" "$@"; }
run_arm() { "$QEMU" -L /usr/aarch64-linux-gnu "$WORK/aarch64/edgetune-device" "$@"; }
TRAIN=(--epochs 4 --threads 1 --quiet)
for arch in x86 arm; do
  "run_$arch" inspect "$WORK/tiny/pkg" --json > "$WORK/$arch.inspect.json"
  "run_$arch" encode --package "$WORK/tiny/pkg" < "$WORK/tiny/texts.txt" > "$WORK/$arch.encode.jsonl"
  "run_$arch" personalize --package "$WORK/tiny/pkg" --data "$WORK/tiny/user.csv" --out "$WORK/$arch.guarded" \
    "${TRAIN[@]}" | sed "s|$WORK/$arch|STATE|" > "$WORK/$arch.guarded.txt"
  "run_$arch" personalize --package "$WORK/tiny/pkg" --data "$WORK/tiny/user.csv" --out "$WORK/$arch.state" \
    "${TRAIN[@]}" --no-select --lr 3e-3 --head-lr 0.1 --guard-fraction 0 > /dev/null
  "run_$arch" predict --package "$WORK/tiny/pkg" --personal "$WORK/$arch.state" --data "$WORK/tiny/test.csv" \
    --format jsonl --logits > "$WORK/$arch.predict.jsonl"
  "run_$arch" evaluate --package "$WORK/tiny/pkg" --personal "$WORK/$arch.state" --data "$WORK/tiny/test.csv" \
    --quiet > "$WORK/$arch.evaluate.txt"
done
run_arm inspect "$WORK/tiny/pkg"
echo "texts encoded: $(wc -l < "$WORK/arm.encode.jsonl"), first: $(head -n 1 "$WORK/arm.encode.jsonl")"
echo "personalize (guard on), aarch64:"
sed 's/^/  /' "$WORK/arm.guarded.txt"
echo "evaluate test.csv with the state trained without the guard, aarch64: $(cat "$WORK/arm.evaluate.txt")"
"$PY" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
from device_sim.package import load_package
work = Path(sys.argv[1])
texts = (work / "tiny/texts.txt").read_text().split("\n")[:-1]
ids, mask = load_package(work / "tiny/pkg").encode(texts)
want = [[int(i) for i, m in zip(row, ms) if m] for row, ms in zip(ids, mask)]
got = [json.loads(line) for line in (work / "arm.encode.jsonl").read_text().splitlines()]
print(f"aarch64 ids == edgetune's Python package encoder on all {len(texts)} texts: {got == want}")
arm = [json.loads(line) for line in (work / "arm.predict.jsonl").read_text().splitlines()]
x86 = [json.loads(line) for line in (work / "x86.predict.jsonl").read_text().splitlines()]
same_labels = [a["label"] for a in arm] == [x["label"] for x in x86]
worst = max(abs(p - q) for a, x in zip(arm, x86) for p, q in zip(a["logits"], x["logits"]))
print(f"predict test.csv with the trained state: aarch64 labels == x86-64 labels on all {len(arm)} texts: "
      f"{same_labels}; largest logit difference {worst:.1e}")
sys.exit(0 if got == want and same_labels and worst <= 1e-4 else 3)
PY
if cmp -s "$WORK/x86.inspect.json" "$WORK/arm.inspect.json" && cmp -s "$WORK/x86.encode.jsonl" "$WORK/arm.encode.jsonl" \
   && cmp -s "$WORK/x86.guarded.txt" "$WORK/arm.guarded.txt" && cmp -s "$WORK/x86.evaluate.txt" "$WORK/arm.evaluate.txt"; then
  echo "aarch64 under qemu == x86-64: same verified manifest, same ids for every text, same guard verdict and"
  echo "scores, same test accuracy"
else
  echo "aarch64 and x86-64 DIFFER" >&2
  exit 2
fi
