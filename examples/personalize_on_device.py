"""Personalize a device package for one simulated user, as a phone would, then predict one text at a time.

    python examples/personalize_on_device.py [--out runs/device] [--profile phone-high] [--threads 2]

Shows the device side: the package is loaded and verified, the user's labelled texts are tokenized with the
package's tokenizer, the ONNX trunk runs once over them (cached), only the top blocks + head train in torch
(the plan's cut and tuner), under a device profile that refuses jobs over its memory or time budget. The
personal state (only the changed tensors) is written atomically; an interrupted run resumes. Then the user's
held-out texts are labelled by the global and the personal model, and a stream of texts is answered one by one.
Builds the package first (as examples/export_for_devices.py does, without int8) when --package is not given.
Command-line equivalent:

    edgetune personalize --package pkg/ --data user.csv --out personal/ --profile phone-high
    edgetune evaluate --package pkg/ --personal personal/ --data user-test.csv
    echo "Chelsea won the cup final" | edgetune predict --package pkg/ --personal personal/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build_package(out: Path, threads: int) -> Path:
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from exporters.export import ExportOptions, export_package

    server, _ = stratified_split(bbc_news(), test_size=0.75, seed=0)
    planned = plan(str(minilm_path()), server, planner="salf", max_length=128, progress=False)
    export_package(minilm_path(), planned, out, data=server, options=ExportOptions(threads=threads))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/device"))
    ap.add_argument("--package", type=Path, help="A package from `edgetune export` (default: build one).")
    ap.add_argument("--profile", default="phone-high", help="phone-low, phone-high or edge-box.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from device_sim.device import Device
    from device_sim.personalize import PersonalizeConfig
    from device_sim.profiles import ProfileError
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news
    from edgetune.formatting import accuracy as percent
    from edgetune_fleet.users import UserConfig, simulate_users

    package = args.package or build_package(args.out / "package", args.threads)
    _, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    # user 1 of the simulation files two topics the other way round: something global training cannot know
    user = simulate_users(pool, UserConfig(num_users=2, examples_per_user=260, test_fraction=60 / 260))[1]
    user.train.to_csv(args.out / "user.csv")
    user.test.to_csv(args.out / "user-test.csv")
    mix = {label: round(share, 2) for label, share in user.label_mix.items()}
    print(f"user {user.user_id}: {len(user.train)} texts to learn from, topic mix {mix}, "
          f"prefers {user.preference or 'the usual labels'}")  # fmt: skip

    with Device(package, profile=args.profile, threads=args.threads) as device:
        start = time.perf_counter()
        try:
            result = device.personalize(user.train, args.out / "personal")
        except ProfileError as err:  # the cost model says the job breaks the profile's budget: train less
            print(f"refused: {err}")
            # the head alone starts from the package's probe and needs a larger step than beside a trained block
            config = PersonalizeConfig(cut=err.suggested_cut, head_lr=0.1)
            result = device.personalize(user.train, args.out / "personal", config)
        print(f"personalized on the {args.profile} profile in {time.perf_counter() - start:.1f}s "
              f"({result.trainable_params:,} trainable parameters, trunk {result.seconds['trunk']:.1f}s, "
              f"training {result.seconds['train']:.1f}s, best epoch {result.best_epoch})")  # fmt: skip
        before = device.evaluate(user.test)["accuracy"]
        after = device.evaluate(user.test, result.path)["accuracy"]
        print(f"accuracy on the user's held-out texts: global {percent(before)} -> personal {percent(after)}")
        predictor = device.predictor(result.path)
        for prediction, text in zip(predictor.stream(user.test.texts[:3]), user.test.texts[:3]):
            print(f"  {prediction.label:<14} ({prediction.confidence:.2f})  {text[:70]!r}")


if __name__ == "__main__":
    main()
