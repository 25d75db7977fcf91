"""``edgetune skip``: fine-tune with HadSkip gates for an inference budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgetune.formatting import accuracy
from edgetune_cli.common import (
    LabelColumnOption,
    MaxLengthOption,
    QuietTableOption,
    TextColumnOption,
    check_range,
    locks_output,
)
from edgetune_cli.config_options import ConfigOptions
from edgetune_cli.report_opts import LoggingDirOption, ReportToOption, reporting

if TYPE_CHECKING:
    from edgetune.skip import HadSkipResult

# The HadSkipConfig fields `skip` takes as options (flag, type, default and help from the fields themselves).
SKIP_SETTINGS = ConfigOptions(
    "edgetune.training_config:HadSkipConfig",
    fields=(
        "budget",
        "epochs",
        "lr",
        "head_lr",
        "gate_lr",
        "penalty",
        "adaptive",
        "temperature_start",
        "temperature_end",
        "batch_size",
        "checkpoint_steps",
        "device",
        "seed",
    ),
    panel="HadSkip and training settings",
)


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("skip", cls=SKIP_SETTINGS.command_class())(handle_errors(locks_output()(skip_command)))


def skip_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory (or hub id).")],
    data: Annotated[Path, typer.Option("--data", help="Labelled training data (CSV with a header, or JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write (atomically).")],
    max_length: MaxLengthOption = 128,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    eval_data: Annotated[
        Path | None, typer.Option(help="Labelled held-out data: accuracy of the saved (static-skip) model.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a finished model in --out, or start its interrupted run over.")
    ] = False,
    quiet: QuietTableOption = False,
    report_to: ReportToOption = "none",
    logging_dir: LoggingDirOption = None,
) -> None:
    """Fine-tune the whole model jointly with a learnable gate before each block, under a budget of
    executed blocks (HadSkip); save it skipping the blocks its gates turn off for the task. It trains on
    the same loop as `edgetune train` (warm-up and decay, clipping, a GPU when there is one); an interrupted
    run started again with the same flags resumes from --out/checkpoint."""
    from edgetune.skip import hadskip_finetune

    check_skip_flags([("--model", model), ("--data", data), ("--eval-data", eval_data)], out, max_length)
    try:  # HadSkipConfig checks the settings, before any data is read
        cfg = SKIP_SETTINGS.build(ctx, max_length=max_length, progress=not quiet)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    dataset, held_out = load_skip_data(data, eval_data, text_column, label_column)
    with reporting(report_to, logging_dir, out) as callbacks:
        clf, encoder, result = hadskip_finetune(
            model, dataset, out, cfg, max_length, text_column, label_column, progress=not quiet,
            overwrite=overwrite, callbacks=callbacks,
        )  # fmt: skip
    report_skip(result, cfg.budget, out, clf, encoder, held_out, quiet)


def check_skip_flags(inputs: list[tuple[str, Path | None]], out: Path, max_length: int) -> None:
    """Refuse an --out skip may not write or a --max-length out of range, before any data is read."""
    from edgetune.io import check_output_dir

    check_output_dir(out, inputs, ["edgetune.json", "checkpoint"], "checkpoint")
    check_range("--max-length", max_length, 2, 1 << 16)


def load_skip_data(data: Path, eval_data: Path | None, text_column: str, label_column: str) -> tuple[Any, Any]:
    """The training data and the held-out data (whose labels must be the training data's), read before the
    model loads so that bad data fails fast."""
    from edgetune.data import load_dataset

    dataset = load_dataset(data, text_column, label_column)
    held_out = load_dataset(eval_data, text_column, label_column) if eval_data is not None else None
    if held_out is not None:
        held_out.encoded_labels(dataset.label_map())
    return dataset, held_out


def report_skip(
    result: HadSkipResult, budget: float, out: Path, clf: Any, encoder: Any, held_out: Any, quiet: bool
) -> None:
    """The gates table (unless --quiet) and the one-line result, with the held-out accuracy when asked."""
    from edgetune.evaluation import evaluate_classifier
    from edgetune_cli import console

    if not quiet:
        print_gates(result, budget)
    msg = (
        f"skip: executed fraction {result.executed_fraction:.2f} (target {budget:.2f}); "
        f"saved {out} running blocks {[i + 1 for i in result.keep]}"
    )
    if held_out is not None:
        metrics = evaluate_classifier(clf, encoder, held_out, progress=not quiet)
        msg += f"; held-out accuracy {accuracy(metrics['accuracy'])}"
    console.print(msg, highlight=False)


def print_gates(result: HadSkipResult, budget: float) -> None:
    """Per block: its importance, its mean gate after training and whether the saved model runs it."""
    from rich.table import Table

    from edgetune_cli import console

    table = Table(title=f"HadSkip gates (budget {budget:.2f})")
    for col in ("block", "importance", "mean gate", "exported"):
        table.add_column(col, justify="right")
    for i, (imp, g) in enumerate(zip(result.importance, result.mean_gate)):
        kept = i in result.keep
        table.add_row(str(i + 1), f"{imp:.4f}", f"{g:.3f}", "run" if kept else "skip", style="" if kept else "dim")
    console.print(table)
