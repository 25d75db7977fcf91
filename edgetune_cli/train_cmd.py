"""``edgetune train`` and ``edgetune evaluate``: fine-tune as a plan says, then measure on held-out data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgetune.formatting import accuracy
from edgetune_cli.common import (
    LegacyBackendOption,
    QuietTablesOption,
    RuntimeOption,
    TrustOption,
    at_least_one,
    check_runtime,
    check_threads,
    deprecated_alias,
    file_output,
    trusting,
)
from edgetune_cli.config_options import ConfigOptions
from edgetune_cli.report_opts import LoggingDirOption, ReportToOption, reporting
from edgetune_cli.tuner_opts import (
    LoraAlphaOption,
    LoraROption,
    TunerOption,
    TunerParamOption,
    tuner_options,
)

# The TrainConfig fields `train` takes as options (flag, type, default and help from the fields themselves).
TRAIN_SETTINGS = ConfigOptions(
    "edgetune.training_config:TrainConfig",
    fields=(
        "mode",
        "epochs",
        "batch_size",
        "head_lr",
        "val_fraction",
        "patience",
        "cache",
        "cache_dtype",
        "checkpoint_steps",
        "max_length",
        "device",
        "seed",
    ),
    # The command keeps the best epoch on a held-out tenth of the data by default; the library holds nothing out.
    defaults={"val_fraction": 0.1},
)


def print_history(history: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from edgetune_cli import console

    has_val = any("val_accuracy" in h for h in history)
    table = Table(title="training")
    for col in ("epoch", "loss", "seconds", *(("val acc", "val macro-F1") if has_val else ())):
        table.add_column(col, justify="right")
    for h in history:
        cells = [str(h["epoch"]), "-" if h["loss"] is None else f"{h['loss']:.4f}", f"{h['seconds']:.1f}"]
        if has_val:
            cells += [accuracy(h["val_accuracy"]), accuracy(h["val_macro_f1"])]
        table.add_row(*cells)
    console.print(table)


def parse_rate(value: str, flag: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise typer.BadParameter(f"expected a positive number or 'auto', got {value!r}", param_hint=flag) from None
    if not rate > 0:
        raise typer.BadParameter(f"must be positive, got {value}", param_hint=flag)
    return rate


def print_lr_search(trials: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from edgetune_cli import console

    table = Table(title="learning-rate search (validation split)")
    for col in ("block lr", "head lr", "val acc", "val macro-F1"):
        table.add_column(col, justify="right")
    best = max(range(len(trials)), key=lambda i: (trials[i]["val_macro_f1"], -i))
    for i, t in enumerate(trials):
        table.add_row(
            f"{t['lr']:.2g}",
            f"{t['head_lr']:.2g}",
            accuracy(t["val_accuracy"]),
            accuracy(t["val_macro_f1"]),
            style="bold" if i == best else None,
        )
    console.print(table)


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    from rich.table import Table

    from edgetune_cli import console

    table = Table(title=f"{title} ({metrics['num_examples']} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", accuracy(metrics["accuracy"]))
    table.add_row("macro-F1", accuracy(metrics["macro_f1"]))
    for label, f1 in metrics["per_label_f1"].items():
        table.add_row(f"F1 {label}", accuracy(f1), style="dim")
    console.print(table)


# TrainConfig.lr, by hand: the command also takes 'auto' (a search, not a rate)
LrOption = Annotated[
    str | None,
    typer.Option(
        help="Learning rate of the trained blocks: a number; 'auto' trains the rule's rate, 1/3 and 3x "
        "of it and keeps the best on the validation split (3x the time); default: the rule for the "
        "cut (3e-4 up to half the blocks, down to 5e-5 for all; 5e-4 for adapters).",
        rich_help_panel=TRAIN_SETTINGS.panel,
    ),
]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("train", cls=TRAIN_SETTINGS.command_class())(handle_errors(train_command))
    app.command("evaluate")(handle_errors(evaluate_command))


def train_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory the plan was made on.")],
    plan: Annotated[Path, typer.Option("--plan", help="plan.json from `edgetune plan`.")],
    data: Annotated[Path, typer.Option("--data", help="Training data: CSV with a header, or JSONL.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (resumes a run interrupted there).")],
    tuner: TunerOption = None,
    lora_r: LoraROption = None,
    lora_alpha: LoraAlphaOption = None,
    tuner_param: TunerParamOption = None,
    lr: LrOption = None,
    eval_data: Annotated[Path | None, typer.Option(help="Held-out test data, evaluated at the end.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a trained model in OUT.")] = False,
    quiet: QuietTablesOption = False,
    report_to: ReportToOption = "none",
    logging_dir: LoggingDirOption = None,
) -> None:
    """Fine-tune the layers the plan chose (the trunk below the cut stays frozen) and save the model."""
    from edgetune.finetune import finetune
    from edgetune.train import is_main_process

    main_process = is_main_process()  # torchrun / accelerate launch: the other processes print nothing
    quiet = quiet or not main_process
    tuner_name, tuner_params = tuner_options(tuner, lora_r, lora_alpha, tuner_param)
    config, search_lr = train_config(ctx, lr, quiet)
    with reporting(report_to, logging_dir, out, main_process) as callbacks:
        result = finetune(
            model,
            plan,
            data,
            out,
            config,
            tuner=tuner_name,
            tuner_params=tuner_params,
            eval_data=eval_data,
            overwrite=overwrite,
            search_lr=search_lr,
            callbacks=callbacks,
        )
    if main_process:
        report_train(result, config, out, eval_data, quiet)


def train_config(ctx: typer.Context, lr: str | None, quiet: bool) -> tuple[Any, bool]:
    """The TrainConfig of the flags, and whether --lr auto asks for a search (then the config has no rate)."""
    from edgetune.train import TrainError

    search_lr = lr is not None and lr.strip().lower() == "auto"
    block_lr = None if lr is None or search_lr else parse_rate(lr, "--lr")
    try:
        return TRAIN_SETTINGS.build(ctx, lr=block_lr, progress=not quiet), search_lr
    except ValueError as err:
        raise TrainError(str(err)) from None


def report_train(result: Any, config: Any, out: Path, eval_data: Path | None, quiet: bool) -> None:
    """The search, training and held-out tables (unless --quiet), then what was trained at which rates."""
    from edgetune_cli import console

    if not quiet:
        if result.lr_search:
            print_lr_search(result.lr_search)
        print_history(result.history)
        if result.metrics is not None:
            print_metrics(result.metrics, f"held-out {eval_data}")
    layers = result.classifier.num_layers
    what = f"blocks {result.cut + 1}..{layers} + head" if result.cut < layers else "the head only"
    console.print(f"learning rates: blocks {result.config.lr:.2g}, head {result.config.head_lr:.2g}", highlight=False)
    params = f"{result.trainable_params:,} trainable parameters"
    msg = f"trained {what} with {result.tuner.name} ({params}, {config.mode} mode)"
    if result.metrics is not None:
        m = result.metrics
        msg += f"; held-out accuracy {accuracy(m['accuracy'])}, macro-F1 {accuracy(m['macro_f1'])}"
    console.print(f"{msg}; wrote {out}", highlight=False)
    report = getattr(result.tuner, "report", None)
    if report:
        print_pruning(report)


def print_pruning(report: dict[str, Any]) -> None:
    """What a pruning tuner (dsee) removed: weight sparsity and the inference FLOPs it saves."""
    from edgetune_cli import console

    before = report["flops_before"]
    console.print(
        f"pruned: weight sparsity {report['weight_sparsity']:.1%}, inference FLOPs of the trained blocks "
        f"-{1 - report['flops_dense_after'] / before:.1%} (dense kernels), "
        f"-{1 - report['flops_nonzero_after'] / before:.1%} (non-zero weights only, theoretical)",
        highlight=False,
    )


def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="Labelled held-out data: CSV with a header, or JSONL.")],
    model: Annotated[
        Path | None, typer.Option("--model", help="A trained model directory (from `edgetune train`).")
    ] = None,
    package: Annotated[Path | None, typer.Option("--package", help="A device package (instead of --model).")] = None,
    personal: Annotated[
        Path | None, typer.Option("--personal", help="A personal state for --package (`edgetune personalize`).")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="Column holding the text (default: text, or the plan's).")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Column holding the label (default: label, or the plan's).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 64,
    int8: Annotated[bool, typer.Option("--int8", help="With --package: run its int8 trunk.")] = False,
    threads: Annotated[int | None, typer.Option(help="With --package: CPU threads.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the metrics as JSON here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the one-line summary.")] = False,
    runtime: RuntimeOption = "auto",
    legacy_backend: LegacyBackendOption = None,
    trust: TrustOption = None,
) -> None:
    """Accuracy and macro-F1 on labelled data, of a trained model (--model) or of a device package with an
    optional personal state (--package [--personal])."""
    from edgetune.io import json_with_keys

    runtime = deprecated_alias("--backend", legacy_backend, "--runtime", runtime, "auto")
    if (model is None) == (package is None):
        raise typer.BadParameter("give exactly one of --model or --package", param_hint="--model/--package")
    if personal is not None and package is None:
        raise typer.BadParameter("--personal applies to a --package", param_hint="--personal")
    check_threads(threads)
    at_least_one(batch_size=batch_size)
    inputs = [("--data", data), ("--model", model), ("--package", package), ("--personal", personal)]
    owned = json_with_keys("accuracy", "macro_f1", "num_examples")
    with trusting(trust), file_output(out, inputs, owned, "metrics JSON"):
        _evaluate(
            data, model, package, personal, text_column, label_column, batch_size, int8, threads, out, quiet,
            check_runtime(runtime),
        )  # fmt: skip


def _evaluate(
    data, model, package, personal, text_column, label_column, batch_size, int8, threads, out, quiet, runtime="auto"
):
    """Measure the model or the package (+ personal state), write --out, print the table and the summary line."""
    from edgetune.io import atomic_write_json
    from edgetune_cli import console

    if package is not None:
        from device_sim.device import Device

        with Device(package, threads=threads) as device:
            metrics = device.evaluate(
                data,
                personal,
                batch_size=batch_size,
                precision="int8" if int8 else "fp32",
                text_column=text_column,
                label_column=label_column,
                progress=not quiet,
                backend=runtime,
            )
        source: dict[str, Any] = {"package": str(package), "personal": None if personal is None else str(personal)}
        name = f"{package}" + (f" + {personal}" if personal is not None else "")
    else:
        from edgetune.data import load_dataset
        from edgetune.evaluation import evaluate_classifier, load_trained

        dataset = load_dataset(data, text_column or "text", label_column or "label")
        classifier, encoder = load_trained(model)
        metrics = evaluate_classifier(classifier, encoder, dataset, batch_size=batch_size, progress=not quiet)
        source, name = {"model": str(model)}, str(model)
    if out is not None:
        atomic_write_json(out, {**source, "data": str(data), **metrics})
    if not quiet:
        print_metrics(metrics, f"{name} on {data}")
    console.print(
        f"accuracy {accuracy(metrics['accuracy'])}, macro-F1 {accuracy(metrics['macro_f1'])} "
        f"on {metrics['num_examples']} examples",
        highlight=False,
    )
