"""``edgetune plan``: decide where to fine-tune, under an optional budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgetune.planner_registry import PLANNER_NAMES
from edgetune_cli.common import (
    LabelColumnOption,
    MaxLengthOption,
    QuietTableOption,
    TextColumnOption,
    at_least_one,
    check_range,
    file_output,
    png_file,
    positive,
    print_plan_table,
)
from edgetune_cli.tuner_opts import TUNER_PARAM_HELP, tuner_options

if TYPE_CHECKING:  # the planner loads torch: only when planning
    from edgetune.planner.plan import Plan

PLANNER_CHOICES = PLANNER_NAMES  # the registry's names, read without loading the planners (torch)

# The options of `plan` whose declarations take more than a line.
PlannerOption = Annotated[
    str, typer.Option(help=f"Planner: {', '.join(PLANNER_CHOICES)}. SALF reads latent traces (no training).")
]
PolicyOption = Annotated[
    str,
    typer.Option(
        help="SALF's choice: 'cheapest' = the cheapest cut whose predicted accuracy loss against the best "
        "cut is within --tolerance (head-only allowed); 'argmax-gain' = the paper's rule, the layer of "
        "largest expected fine-tuning gain."
    ),
]
ToleranceOption = Annotated[
    float, typer.Option(help="SALF 'cheapest': accuracy points the plan may give up against the best cut.")
]
MinTrainableLayersOption = Annotated[
    int | None,
    typer.Option(
        help="SALF/random: keep at least this many top blocks trainable (default: 0 for SALF 'cheapest', 1 otherwise)."
    ),
]
MaxBackwardFracOption = Annotated[
    float | None, typer.Option(help="Budget: max backward FLOPs as a fraction of full fine-tuning (0-1].")
]
MaxTrainMemoryOption = Annotated[float | None, typer.Option(help="Budget: max estimated training memory in MB.")]
MaxDeviceSecondsOption = Annotated[
    float | None, typer.Option(help="Budget: max estimated job time in seconds at --device-gflops.")
]
PlanTunerOption = Annotated[
    str, typer.Option(help="How to train the chosen layers: full, lora, roselora or dsee (priced per cut).")
]
ReportOption = Annotated[Path | None, typer.Option(help="Write a PNG report: deviation/gain per layer, cost per cut.")]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("plan")(handle_errors(plan_command))


def plan_command(
    model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory (or hub id).")],
    data: Annotated[Path, typer.Option("--data", help="Training data: CSV with a header, or JSONL.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write plan.json.")],
    planner: PlannerOption = "salf",
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    max_length: MaxLengthOption = 128,
    batch_size: Annotated[int, typer.Option(help="Training batch size assumed by the cost model.")] = 16,
    epochs: Annotated[int, typer.Option(help="Training epochs assumed by the cost model.")] = 3,
    sample_size: Annotated[int, typer.Option(help="SALF calibration sample size.")] = 256,
    policy: PolicyOption = "cheapest",
    tolerance: ToleranceOption = 1.0,
    min_trainable_layers: MinTrainableLayersOption = None,
    k: Annotated[int, typer.Option("--k", help="topk planner: number of top blocks to train.")] = 2,
    max_backward_frac: MaxBackwardFracOption = None,
    max_train_memory_mb: MaxTrainMemoryOption = None,
    max_device_seconds: MaxDeviceSecondsOption = None,
    device_gflops: Annotated[float, typer.Option(help="Sustained GFLOP/s of the target device.")] = 20.0,
    tuner: PlanTunerOption = "full",
    tuner_param: Annotated[list[str] | None, typer.Option(help=TUNER_PARAM_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling and splits: same seed, same plan.")] = 0,
    report: ReportOption = None,
    quiet: QuietTableOption = False,
) -> None:
    """Read the frozen model's latent traces on your data and pick the cheapest top layers worth training."""
    check_planner_choice(planner, max_backward_frac, policy, tolerance)
    check_range("--max-length", max_length, 2, 1 << 16)
    at_least_one(batch_size=batch_size, epochs=epochs, sample_size=sample_size, k=k)
    check_range("--min-trainable-layers", min_trainable_layers, 0)
    positive(
        max_train_memory_mb=max_train_memory_mb, max_device_seconds=max_device_seconds, device_gflops=device_gflops
    )
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
        budget = Budget(max_backward_frac, max_train_memory_mb, max_device_seconds)
        params = planner_params(planner, sample_size, min_trainable_layers, policy, tolerance, k)
        result = run_plan(
            model, dataset, max_length, batch_size, epochs, device_gflops, seed, quiet,
            planner=planner, budget=budget, planner_params=params, tuner=tuner_name, tuner_params=tuner_params,
            text_column=text_column, label_column=label_column,
        )  # fmt: skip
        result.save(out)
        report_plan(result, out, report, quiet)


def check_planner_choice(planner: str, max_backward_frac: float | None, policy: str, tolerance: float) -> None:
    """Refuse an unknown planner or SALF policy, a budget fraction outside (0, 1] or a negative tolerance."""
    if planner not in PLANNER_CHOICES:
        raise typer.BadParameter(f"choose one of {', '.join(PLANNER_CHOICES)}", param_hint="--planner")
    if max_backward_frac is not None and not 0 < max_backward_frac <= 1:
        raise typer.BadParameter("must be in (0, 1]", param_hint="--max-backward-frac")
    from edgetune.planner.salf import POLICIES  # the planner loads torch: only when planning

    if policy not in POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
    if tolerance < 0:
        raise typer.BadParameter("must be >= 0 (accuracy points)", param_hint="--tolerance")


def planner_params(
    planner: str, sample_size: int, min_trainable_layers: int | None, policy: str, tolerance: float, k: int
) -> dict[str, Any]:
    """The flags the chosen planner reads (the others are ignored)."""
    if planner == "salf":
        return {
            "sample_size": sample_size,
            "min_trainable_layers": min_trainable_layers,
            "policy": policy,
            "tolerance": tolerance,
        }
    if planner == "random":
        return {"min_trainable_layers": 1 if min_trainable_layers is None else min_trainable_layers}
    if planner == "topk":
        return {"k": k}
    return {}


def run_plan(
    model: Path,
    dataset: Any,
    max_length: int,
    batch_size: int,
    epochs: int,
    device_gflops: float,
    seed: int,
    quiet: bool,
    **plan_args: Any,
) -> Plan:
    """Load the model and plan on the data, pricing each cut for the training job the flags describe."""
    from edgetune.api import load_model, plan
    from edgetune.planner import CostConfig

    backbone, encoder = load_model(model, max_length)
    cost = CostConfig(
        seq_len=encoder.max_length,
        batch_size=batch_size,
        num_examples=len(dataset),
        epochs=epochs,
        device_gflops=device_gflops,
    )
    return plan((backbone, encoder), dataset, cost=cost, seed=seed, progress=not quiet, **plan_args)


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
