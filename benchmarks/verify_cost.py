"""What checking a package costs on the device: verification with and without a signature, in ms per package.

    python benchmarks/verify_cost.py [--threads 1] [--repeats 5] [--out benchmarks/results]

Package: all-MiniLM-L6-v2 exported with a top-2 plan (trunk.onnx + its external data, top.safetensors,
top.onnx, tokenizer), signed with a fresh Ed25519 key. Timed, each ``--repeats`` times on the same package:

- ``verify_unsigned``: ``verify_package`` with no trust store (seal, schema, every file copied into the private
  snapshot and hashed, the fit checks);
- ``verify_signed``: the same with the vendor's key trusted (adds the signature check and the release check);
- ``signature_only``: the trust store's check alone: parse and schema-check ``manifest.json``, verify the
  Ed25519 signature of ``manifest.sig`` over its bytes, read the rollback record;
- ``load_signed``: ``load_package`` under the trust store (what a job pays before it runs), closed at once.

The figure is the median of each. The signature's own cost is the difference the device pays per package on
top of the hashing it did anyway.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import exclusive, load_average, machine_record, parser, write_figure, write_json


def export_signed(work: Path, threads: int) -> tuple[Path, Path, dict[str, int]]:
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune_format.trust import generate_key
    from exporters.export import ExportOptions, export_package

    key, public = generate_key(work / "vendor")
    server, _ = stratified_split(bbc_news(), test_size=0.75, seed=0)
    planned = plan(minilm_path(), server, planner="topk", planner_params={"k": 2}, max_length=128, progress=False)
    options = ExportOptions(threads=threads, sign=key, release="bbc-news-minilm", release_version=1)
    result = export_package(minilm_path(), planned, work / "pkg", data=server, options=options)
    return result.path, public, {name: entry["size"] for name, entry in result.manifest["files"].items()}


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = parser(__doc__, threads=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load_start = load_average()

    from device_sim.package import load_package, verify_package
    from edgetune_format import manifest as mf
    from edgetune_format.trust import TrustStore, trusting

    with tempfile.TemporaryDirectory(prefix="verify-cost-") as tmp:
        pkg, public, sizes = export_signed(Path(tmp), args.threads)
        raw, sig = (pkg / mf.MANIFEST).read_bytes(), (pkg / mf.SIGNATURE).read_bytes()
        store = TrustStore.load([public])
        store.versions_path = Path(tmp) / "versions.json"

        def verify_signed() -> None:
            with trusting([public]):
                assert verify_package(pkg).trusted

        def load_signed() -> None:
            with trusting([public]):
                load_package(pkg, threads=args.threads, record=False).close()

        with exclusive(args.lock):
            timings = {
                "verify_unsigned": timed(lambda: verify_package(pkg), args.repeats),
                "verify_signed": timed(verify_signed, args.repeats),
                "signature_only": timed(lambda: store.check(raw, sig, mf.parse(raw)), args.repeats),
                "load_signed": timed(load_signed, args.repeats),
            }
    medians = {k: statistics.median(v) for k, v in timings.items()}
    for name, ms in medians.items():
        print(f"{name:16s} {ms:9.2f} ms per package (median of {args.repeats})", flush=True)
    result = {
        "benchmark": "verify_cost",
        "machine": machine_record(load_start, args.threads),
        "package": "all-MiniLM-L6-v2, top-2 plan, top.onnx, signed (Ed25519)",
        "package_bytes": sum(sizes.values()),
        "file_sizes": sizes,
        "repeats": args.repeats,
        "ms": timings,
        "median_ms": medians,
        "signature_overhead_ms": medians["verify_signed"] - medians["verify_unsigned"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "verify_cost.json", result)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    names = list(medians)
    ax.barh(names, [medians[n] for n in names], color=["#999999", "#4477aa", "#66ccee", "#228833"])
    for i, n in enumerate(names):
        ax.text(medians[n], i, f" {medians[n]:.1f} ms", va="center", fontsize=8)
    ax.set_xlabel("ms per package (median)")
    ax.set_title(f"Checking a {sum(sizes.values()) / 1e6:.0f} MB MiniLM package", fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(medians.values()) * 1.3)
    fig.tight_layout()
    write_figure(fig, args.out / "verify_cost.png")
    print(f"wrote {args.out / 'verify_cost.json'} and verify_cost.png", flush=True)


if __name__ == "__main__":
    main()
