"""``edgetune swap`` (one device moves to a new backbone) and ``edgetune simulate`` (a whole fleet, beforehand)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgetune.tables import fleet_summary
from edgetune_cli.common import TrustOption, at_least_one, check_range, check_threads, locks_output, trusting
from edgetune_cli.config_options import ConfigOptions

METHOD_HELP = (
    "fala: personal matrix from curated examples (no backbone training); retrain: the new top layers on all the "
    "data; head-only: the new head on the curated examples."
)

# The PersonalizeConfig field each command takes as an option (its default and help from the field).
RETRAIN_SETTINGS = ConfigOptions(
    "device_sim.settings:PersonalizeConfig", fields=("epochs",), panel="Re-training settings (retrain, head-only)"
)
FLEET_SETTINGS = ConfigOptions(
    "device_sim.settings:PersonalizeConfig", fields=("epochs",), panel="Personalization and re-training settings"
)


# The options of `swap` and `simulate` whose declarations take more than a line.
SelectionOption = Annotated[
    str,
    typer.Option(
        help="random: examples drawn at random in proportion to each label (the default: as accurate as the "
        "clustering on the swap benchmark's users, and cheaper); cluster: correlation-clustering medoids."
    ),
]
SilhouetteOption = Annotated[
    bool, typer.Option("--silhouette", help="Choose k by the silhouette score (one clustering, all labels).")
]
FormOption = Annotated[
    str,
    typer.Option(
        help="FaLA: plain (old personal head after W) or residual (new global head + the user's "
        "difference from the old global head, through W)."
    ),
]
PreferenceFractionOption = Annotated[
    float, typer.Option(help="Share of users who file two labels the other way round.")
]
FleetMethodsOption = Annotated[
    list[str] | None, typer.Option("--method", help="none, fala, fala-random, head-only, retrain (repeatable).")
]
FleetThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads per user (default: all for local, 1 per Ray task).")
]
FleetBackendOption = Annotated[
    str, typer.Option(help="local: users one after another in this process; ray: one Ray task per user.")
]
WorkersOption = Annotated[
    int | None,
    typer.Option(help="--backend ray: users in parallel (default: every CPU of the Ray instance / cluster)."),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="--backend ray: an existing cluster (e.g. ray://head:10001 or auto); default: start one."),
]
OverwriteFleetOption = Annotated[
    bool, typer.Option("--overwrite", help="Start over instead of resuming the simulation logged in OUT.")
]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("swap", cls=RETRAIN_SETTINGS.command_class())(handle_errors(locks_output()(swap_command)))
    app.command("simulate", cls=FLEET_SETTINGS.command_class())(handle_errors(locks_output()(simulate_command)))
    app.command("derive-backbone")(handle_errors(locks_output()(derive_backbone_command)))


def derive_backbone_command(
    model: Annotated[Path, typer.Option("--model", help="The backbone to derive from (a Hugging Face directory).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the derived backbone (replaced atomically).")],
    drop_top: Annotated[int, typer.Option(help="How many top blocks to leave out (1 .. blocks - 1).")] = 1,
) -> None:
    """A second backbone for trying a swap in seconds: --model without its top --drop-top blocks, saved with its
    tokenizer as a plain Hugging Face directory that plan and export take like any model. Its features (a lower
    block's output) live in another space than the original's, as after a vendor's update: a simulated swap."""
    from edgetune_cli import console
    from edgetune_fleet.derived import derive_backbone

    if not (model / "config.json").is_file():
        raise typer.BadParameter(f"{model}: not a model directory (no config.json)", param_hint="--model")
    check_range("--drop-top", drop_top, 1)
    if model.resolve() == out.resolve():
        raise typer.BadParameter("--out must not be --model (the source is never replaced)", param_hint="--out")
    try:
        path = derive_backbone(model, out, drop_top=drop_top)
    except ValueError as err:  # more blocks dropped than the model has
        raise typer.BadParameter(str(err), param_hint="--drop-top") from None
    console.print(
        f"wrote {path}: {model} without its top {drop_top} block{'s' if drop_top > 1 else ''}", highlight=False
    )


def swap_command(
    ctx: typer.Context,
    old: Annotated[Path, typer.Option("--old", help="The package the personal state was trained on.")],
    new: Annotated[Path, typer.Option("--new", help="The package with the new backbone.")],
    personal: Annotated[Path, typer.Option("--personal", help="The user's personal state for --old.")],
    data: Annotated[Path, typer.Option("--data", help="The user's labelled texts (CSV with a header, or JSONL).")],
    out: Annotated[
        Path, typer.Option("--out", help="New personal state for --new (not --personal: the old one is kept).")
    ],
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "fala",
    k: Annotated[int | None, typer.Option(help="Curated examples (default: --fraction of the data).")] = None,
    fraction: Annotated[float, typer.Option(help="Curated examples as a share of the data.")] = 0.1,
    selection: SelectionOption = "random",
    silhouette: SilhouetteOption = False,
    tune_epochs: Annotated[int, typer.Option(help="FaLA: steps tuning matrix + head (0: ridge fit only).")] = 100,
    tune_lr: Annotated[float, typer.Option(help="FaLA: learning rate of the tuning steps.")] = 1e-3,
    ridge_alpha: Annotated[float, typer.Option(help="FaLA: ridge penalty of the personal matrix.")] = 1.0,
    form: FormOption = "plain",
    map_on: Annotated[
        str, typer.Option(help="FaLA: fit the matrix on all the user's texts (no labels needed) or the curated ones.")
    ] = "all",
    cluster_on: Annotated[
        str, typer.Option(help="FaLA: the features the clustering reads: new, old (personal) or both.")
    ] = "new",
    distill: Annotated[
        float, typer.Option(help="FaLA: weight of keeping the predictions on all texts near the old personal model.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the random selection and of training.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval-data",
            help="The user's held-out labelled texts: the accuracy before (old package + personal state) and "
            "after the swap is measured on them (default: on --data, which the swap itself used).",
        ),
    ] = None,
    trust: TrustOption = None,
) -> None:
    """Carry a user's personalization from the old package to a new one. The old package and personal state
    are never modified: on any failure they stay in use, and nothing is written at --out."""
    from device_sim.swap import swap
    from edgetune_cli import console

    check_threads(threads)
    at_least_one(k=k)  # --epochs: PersonalizeConfig checks it when swap_config builds it
    check_range("--fraction", fraction, 0, 1, low_open=True)
    check_range("--tune-epochs", tune_epochs, 0)
    config = swap_config(
        ctx, method, k, fraction, selection, silhouette, tune_epochs, tune_lr, ridge_alpha, form, seed,
        map_on=map_on, cluster_on=cluster_on, distill=distill,
    )  # fmt: skip
    with trusting(trust):
        result = swap(old, new, personal, data, out, config, threads=threads)
    reduction = result.flops_reduction
    console.print(
        f"swapped with {result.method} on {result.examples_used} of {result.num_examples} examples in "
        f"{result.seconds['total']:.1f}s; backward FLOPs {result.backward_flops:.3g} "
        + (f"({reduction:,.0f}x below full re-training of the new backbone)" if reduction else "(nothing trained)")
        + f"; wrote {out}",
        highlight=False,
    )
    with trusting(trust):
        summary = swap_accuracy(old, new, personal, out, eval_data or data, eval_data is None, threads)
    console.print(summary, highlight=False)


def swap_accuracy(
    old: Path, new: Path, personal: Path, out: Path, data: Path, own_data: bool, threads: int | None
) -> str:
    """The user's accuracy before the swap (old package + personal state) and after it (new package + new state)."""
    from device_sim.device import Device
    from edgetune.formatting import accuracy

    with Device(old, threads=threads) as before_device, Device(new, threads=threads) as after_device:
        before = before_device.evaluate(data, personal)
        after = after_device.evaluate(data, out)
    where = f"{before['num_examples']} texts of {data}" + (
        " (the swap's own data, not held out: --eval-data for a held-out score)" if own_data else ""
    )
    return f"accuracy on {where}: before {accuracy(before['accuracy'])}, after {accuracy(after['accuracy'])}"


def swap_config(
    ctx: typer.Context,
    method: str,
    k: int | None,
    fraction: float,
    selection: str,
    silhouette: bool,
    tune_epochs: int,
    tune_lr: float,
    ridge_alpha: float,
    form: str,
    seed: int,
    **fala: Any,
) -> Any:
    """The SwapConfig of the flags (``fala``: its map, clustering and distillation settings); one it refuses is a
    SwapError (the one red line of every swap failure)."""
    from device_sim.swap import SwapConfig, SwapError

    try:
        return SwapConfig(
            method=method,
            k=k,
            fraction=fraction,
            selection=selection,
            per_label=not silhouette,
            silhouette=silhouette,
            tune_epochs=tune_epochs,
            tune_lr=tune_lr,
            ridge_alpha=ridge_alpha,
            form=form,
            seed=seed,
            personalize=RETRAIN_SETTINGS.build(ctx, seed=seed, progress=False),
            **fala,
        )
    except ValueError as err:
        raise SwapError(str(err)) from None


def simulate_command(
    ctx: typer.Context,
    old: Annotated[Path, typer.Option("--old", help="The package the fleet runs today.")],
    new: Annotated[Path, typer.Option("--new", help="The package with the new backbone.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled corpus the simulated users are drawn from.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for simulate.json and simulate.png.")],
    users: Annotated[int, typer.Option(help="Simulated users.")] = 10,
    examples_per_user: Annotated[int, typer.Option(help="Texts per user (train + held-out).")] = 200,
    test_fraction: Annotated[float, typer.Option(help="Share of each user's texts held out.")] = 0.3,
    alpha: Annotated[float, typer.Option(help="Dirichlet alpha of the users' label mixes (small: non-IID).")] = 0.5,
    preference_fraction: PreferenceFractionOption = 0.5,
    methods: FleetMethodsOption = None,
    fraction: Annotated[float, typer.Option(help="Curated examples per user, as a share of their data.")] = 0.1,
    random_draws: Annotated[int, typer.Option(help="Random selections per user (fala-random).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the user simulation.")] = 0,
    threads: FleetThreadsOption = None,
    backend: FleetBackendOption = "local",
    workers: WorkersOption = None,
    ray_address: RayAddressOption = None,
    overwrite: OverwriteFleetOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate a backbone replacement across a fleet: users personalize --old, then move to --new by each
    method; accuracy before/after, examples used, backward FLOPs, wall time and per-user cost (trunk,
    training, swap). Finished users are logged to OUT/simulate.jsonl and OUT/simulate.json as they finish:
    re-running an interrupted simulation resumes it without redoing them."""
    check_fleet_numbers(ctx, threads, users, examples_per_user, test_fraction, fraction, random_draws)
    check_fleet_outputs(out, data)
    check_fleet_backend(backend, workers, ray_address)
    if backend == "ray" and threads is None:
        threads = 1
    user_config = fleet_user_config(users, examples_per_user, alpha, test_fraction, preference_fraction, seed)
    config = fleet_config(ctx, methods, fraction, random_draws, threads)
    fleet = draw_users(old, data, user_config)
    out.mkdir(parents=True, exist_ok=True)
    results = run_fleet(old, new, fleet, config, out, backend, workers, ray_address, overwrite, quiet)
    report_fleet(results, out)


def check_fleet_numbers(
    ctx: typer.Context,
    threads: int | None,
    users: int,
    examples_per_user: int,
    test_fraction: float,
    fraction: float,
    random_draws: int,
) -> None:
    """Refuse a count or share out of range before anything is read."""
    check_threads(threads)
    at_least_one(users=users, random_draws=random_draws)  # --epochs: the config checks it (fleet_config)
    check_range("--examples-per-user", examples_per_user, 2)
    check_range("--test-fraction", test_fraction, 0, 1, low_open=True, high_open=True)
    check_range("--fraction", fraction, 0, 1, low_open=True)


def check_fleet_outputs(out: Path, data: Path) -> None:
    """Refuse an --out whose simulate.json or simulate.png the command did not write (or that is --data)."""
    from edgetune.io import check_output_file, json_with_keys
    from edgetune_cli.common import png_file

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    check_output_file(out / "simulate.json", [("--data", data)], json_with_keys("summary"), "simulation result")
    check_output_file(out / "simulate.png", [("--data", data)], png_file, "simulation plot")


def check_fleet_backend(backend: str, workers: int | None, ray_address: str | None) -> None:
    """Refuse an unknown backend, or Ray's options without Ray."""
    from edgetune_fleet.fleet import BACKENDS

    if backend not in BACKENDS:
        raise typer.BadParameter(f"choose one of {', '.join(BACKENDS)}", param_hint="--backend")
    if backend == "local" and (workers not in (None, 1) or ray_address is not None):
        raise typer.BadParameter("--workers and --ray-address need --backend ray", param_hint="--backend")
    if workers is not None and workers < 1:
        raise typer.BadParameter(f"must be >= 1, got {workers}", param_hint="--workers")


def fleet_user_config(
    users: int, examples_per_user: int, alpha: float, test_fraction: float, preference_fraction: float, seed: int
) -> Any:
    """How the simulated users are drawn (a usage error where UserConfig refuses the flags)."""
    from edgetune_fleet.users import UserConfig

    try:
        return UserConfig(
            num_users=users,
            examples_per_user=examples_per_user,
            alpha=alpha,
            test_fraction=test_fraction,
            preference_fraction=preference_fraction,
            seed=seed,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def fleet_config(
    ctx: typer.Context, methods: list[str] | None, fraction: float, random_draws: int, threads: int | None
) -> Any:
    """What each simulated user runs (a usage error where FleetConfig refuses the flags)."""
    from edgetune_fleet.fleet import FLEET_METHODS, FleetConfig

    try:
        return FleetConfig(
            methods=tuple(methods or FLEET_METHODS),
            fraction=fraction,
            random_draws=random_draws,
            personalize=FLEET_SETTINGS.build(ctx, progress=False),
            threads=threads,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def draw_users(old: Path, data: Path, user_config: Any) -> Any:
    """The simulated users, drawn from --data read with the old package's text and label columns."""
    from device_sim.device import Device
    from edgetune.data import DataError, load_dataset
    from edgetune.package_plan import PackagePlan
    from edgetune_fleet.users import simulate_users

    with Device(old) as device:
        plan = PackagePlan.from_manifest(device.package.manifest)
    corpus = load_dataset(data, plan.text_column, plan.label_column)
    try:
        return simulate_users(corpus, user_config)
    except ValueError as err:
        raise DataError(f"{data}: {err}") from None


def run_fleet(
    old: Path,
    new: Path,
    fleet: Any,
    config: Any,
    out: Path,
    backend: str,
    workers: int | None,
    ray_address: str | None,
    overwrite: bool,
    quiet: bool,
) -> dict[str, Any]:
    """Every user through every method, with a progress bar; a fleet failure is one red line (exit 2), as every
    user error (see edgetune_cli.handle_errors)."""
    from edgetune.progress import progress_bar
    from edgetune_fleet.fleet import FleetError, simulate_fleet

    try:
        with progress_bar("users", len(fleet), enabled=not quiet) as advance:
            return simulate_fleet(
                old, new, fleet, config, on_user=lambda row: advance(1), backend=backend, workers=workers,
                ray_address=ray_address, out=out, overwrite=overwrite,
            )  # fmt: skip
    except FleetError as err:
        from rich.markup import escape

        from edgetune_cli import err_console

        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def report_fleet(results: dict[str, Any], out: Path) -> None:
    """Write simulate.json and simulate.png, and print the per-method summary."""
    from edgetune.io import atomic_write_json
    from edgetune_cli import console
    from edgetune_fleet.fleet import plot_fleet

    atomic_write_json(out / "simulate.json", results)
    plot_fleet(results, out / "simulate.png")
    if results["run"]["resumed_users"]:
        console.print(f"resumed: {results['run']['resumed_users']} users were already done in {out}")
    console.print(*fleet_summary(results), highlight=False)
    console.print(f"wrote {out / 'simulate.json'} and {out / 'simulate.png'}", highlight=False)
