#!/usr/bin/env bash
# Build libedgetune_device and edgetune-device for x86-64 and for linux-aarch64 (cross-compiled), run the same
# job with both (the aarch64 one under qemu-aarch64) on a tiny package, and compare the outputs byte for byte.
#
#   bash native/tools/arm64.sh [WORK_DIR]        # default build/arm64-check
#
# Needs Debian's g++-aarch64-linux-gnu and qemu-user-static, cmake, and the repo's Python environment
# (it exports the tiny package). The job: open and verify the package (inspect --json: the whole verified
# manifest), then tokenize every line of texts.txt (encode).
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
"$CMAKE" -S native -B "$WORK/x86-64" > /dev/null && "$CMAKE" --build "$WORK/x86-64" -j2 > /dev/null
"$CMAKE" -S native -B "$WORK/aarch64" -DCMAKE_TOOLCHAIN_FILE="$PWD/native/aarch64.cmake" > /dev/null
"$CMAKE" --build "$WORK/aarch64" -j2 > /dev/null
[ -d "$WORK/tiny/pkg" ] || "$PY" native/tools/tiny_package.py "$WORK/tiny" > /dev/null
echo "x86-64:  $(file -b "$WORK/x86-64/edgetune-device" | cut -d, -f1-2)"
echo "aarch64: $(file -b "$WORK/aarch64/edgetune-device" | cut -d, -f1-2)"
run_x86() { "$WORK/x86-64/edgetune-device" "$@"; }
run_arm() { "$QEMU" -L /usr/aarch64-linux-gnu "$WORK/aarch64/edgetune-device" "$@"; }
for arch in x86 arm; do
  "run_$arch" inspect "$WORK/tiny/pkg" --json > "$WORK/$arch.inspect.json"
  "run_$arch" encode --package "$WORK/tiny/pkg" < "$WORK/tiny/texts.txt" > "$WORK/$arch.encode.jsonl"
done
run_arm inspect "$WORK/tiny/pkg"
echo "texts encoded: $(wc -l < "$WORK/arm.encode.jsonl"), first: $(head -n 1 "$WORK/arm.encode.jsonl")"
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
sys.exit(0 if got == want else 3)
PY
if cmp -s "$WORK/x86.inspect.json" "$WORK/arm.inspect.json" && cmp -s "$WORK/x86.encode.jsonl" "$WORK/arm.encode.jsonl"; then
  echo "aarch64 under qemu == x86-64: same verified manifest, same ids for every text"
else
  echo "aarch64 and x86-64 DIFFER" >&2
  exit 2
fi
