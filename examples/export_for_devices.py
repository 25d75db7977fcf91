"""Export a device package for all-MiniLM-L6-v2 on BBC news, fp32 and int8, and check what a device will load.

    python examples/export_for_devices.py [--out runs/export] [--threads 2]

Shows the server side of edgetune: SALF chooses the cut, the exporter writes the frozen trunk as ONNX (verified
against the torch trunk on real inputs), the top blocks and a probe head as safetensors, the tokenizer and a
manifest with every file's hash; `--int8` adds a dynamically quantized trunk whose size and accuracy change the
manifest records. Then the package is verified and used as a device would: onnxruntime trunk + torch top.
Command-line equivalent:

    edgetune datasets bbc-news --out data/bbc
    edgetune plan --model "$(edgetune datasets minilm-path)" --data data/bbc/train.csv --out plan.json
    edgetune export --model "$(edgetune datasets minilm-path)" --plan plan.json --data data/bbc/train.csv \\
        --out pkg/ --int8
    edgetune inspect pkg/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/export"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from device_sim.package import load_package, verify_package
    from edgetune.api import plan
    from edgetune.data import load_dataset
    from edgetune.datasets import minilm_path, write_bbc_news
    from exporters.export import ExportOptions, export_package

    train_csv, test_csv = write_bbc_news(args.out / "data")
    planned = plan(str(minilm_path()), load_dataset(train_csv), planner="salf", max_length=128, progress=False)
    planned.save(args.out / "plan.json")
    print(f"plan: cut {planned.cut} of {planned.num_layers}; trains blocks {planned.trainable_layers} + head")

    start = time.perf_counter()
    pkg = args.out / "package"
    result = export_package(
        minilm_path(), planned, pkg, data=train_csv, val_data=test_csv,
        options=ExportOptions(int8=True, threads=args.threads), log=print, progress=True,
    )  # fmt: skip
    print(f"exported {pkg} in {time.perf_counter() - start:.0f}s")

    check = verify_package(pkg)
    print(f"verification: {'ok' if check.ok else 'FAILED'} ({len(check.files)} files hashed)")
    for name, entry in sorted(result.manifest["files"].items()):
        print(f"  {name:<28} {entry['size'] / 1e6:8.2f} MB")
    test = load_dataset(test_csv)
    with load_package(pkg, threads=args.threads) as package:
        predictions = package.predict(test.texts[:64])
    correct = sum(p == y for p, y in zip(predictions, test.labels[:64]))
    print(f"device-side prediction (onnxruntime trunk + torch top): {correct}/64 test texts right")


if __name__ == "__main__":
    main()
