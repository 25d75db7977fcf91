"""``edgetune plan``: decide where to fine-tune, under an optional budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgetune.planner_registry import PLANNER_NAMES
from edgetune_cli.common import (
    LabelColumnOption,
    QuietTableOption,
    TextColumnOption,
    file_output,
    png_file,
    print_plan_table,
)
from edgetune_cli.config_options import ConfigOptions
from edgetune_cli.tuner_opts import TUNER_PARAM_HELP, tuner_options

if TYPE_CHECKING:
    from edgetune.plan_config import PlanConfig  # imported by PLAN_SETTINGS when the command runs or shows its help
    from edgetune.planner.plan import Plan  # the planner loads torch: only when planning

PLANNER_CHOICES = PLANNER_NAMES  # the registry's names, read without loading the planners (torch)

# The PlanConfig fields `plan` takes as options (flag, type, default, help and choices from the fields themselves).
PLAN_SETTINGS = ConfigOptions(
    "edgetune.plan_config:PlanConfig",
    fields=(
        "planner",
        "max_length",
        "batch_size",
        "epochs",
        "sample_size",
        "policy",
        "tolerance",
        "min_trainable_layers",
        "k",
        "max_backward_frac",
        "max_train_memory_mb",
        "max_device_seconds",
        "device_gflops",
        "seed",
    ),
    panel="Planner settings",
)

PlanTunerOption = Annotated[
    str, typer.Option(help="How to train the chosen layers: full, lora, roselora or dsee (priced per cut).")
]
ReportOption = Annotated[Path | None, typer.Option(help="Write a PNG report: deviation/gain per layer, cost per cut.")]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("plan", cls=PLAN_SETTINGS.command_class())(handle_errors(plan_command))


def plan_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory (or hub id).")],
    data: Annotated[Path, typer.Option("--data", help="Training data: CSV with a header, or JSONL.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write plan.json.")],
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    tuner: PlanTunerOption = "full",
    tuner_param: Annotated[list[str] | None, typer.Option(help=TUNER_PARAM_HELP)] = None,
    report: ReportOption = None,
    quiet: QuietTableOption = False,
) -> None:
    """Read the frozen model's latent traces on your data and pick the cheapest top layers worth training."""
    settings = PLAN_SETTINGS.build(ctx)  # checks every setting: a refusal is shown under its flag
    from edgetune.data import load_dataset
    from edgetune.io import check_output_file, json_with_keys
    from edgetune.planner import Budget

    inputs = [("--data", data), ("--model", model)]
    if report is not None:
        check_output_file(report, [*inputs, ("--out", out)], png_file, "PNG report", "--report")
    plan_owned = json_with_keys("schema_version", "planner", "cut", "rows")
    with file_output(out, [*inputs, ("--report", report)], plan_owned, "plan"):
        tuner_name, tuner_params = tuner_options(tuner, None, None, tuner_param)
        dataset = load_dataset(data, text_column, label_column)  # fail on bad data before loading the model
        result = run_plan(
            model, dataset, settings, quiet,
            budget=Budget(**settings.budget_limits()), tuner=tuner_name, tuner_params=tuner_params,
            text_column=text_column, label_column=label_column,
        )  # fmt: skip
        result.save(out)
        report_plan(result, out, report, quiet)


def run_plan(model: Path, dataset: Any, settings: PlanConfig, quiet: bool, **plan_args: Any) -> Plan:
    """Load the model and plan on the data, pricing each cut for the training job the settings describe."""
    from edgetune.api import load_model, plan
    from edgetune.planner import CostConfig

    backbone, encoder = load_model(model, settings.max_length)
    cost = CostConfig(
        seq_len=encoder.max_length,
        batch_size=settings.batch_size,
        num_examples=len(dataset),
        epochs=settings.epochs,
        device_gflops=settings.device_gflops,
    )
    return plan(
        (backbone, encoder), dataset, planner=settings.planner, planner_params=settings.planner_params(), cost=cost,
        seed=settings.seed, progress=not quiet, **plan_args,
    )  # fmt: skip


def report_plan(result: Plan, out: Path, report: Path | None, quiet: bool) -> None:
    """The per-cut table (unless --quiet), the PNG report if asked, and the one-line verdict."""
    from edgetune.report import plot_plan
    from edgetune_cli import console

    if not quiet:
        print_plan_table(result)
    what = f"blocks {result.trainable_layers} + head" if result.trainable_layers else "the head only"
    loss = result.chosen.predicted_loss
    expected = f", predicted {loss:.2f} points below the best cut" if loss is not None else ""
    sure = result.confidence_text()
    sure = f"; {sure.split(': ', 1)[1]}" if sure else ""
    msg = (
        f"plan: cut {result.cut} -> train {what} ({result.chosen.backward_frac:.0%} of full backward FLOPs"
        f"{expected}{sure}); wrote {out} in {result.seconds:.1f}s"
    )
    if report is not None:
        plot_plan(result, report)
        msg += f"; report {report}"
    console.print(msg, highlight=False)
