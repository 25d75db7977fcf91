"""``edgetune plan``: decide where to fine-tune, under an optional budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune_cli.common import at_least_one, check_range, file_output, png_file, positive, print_plan_table
from edgetune_cli.tuner_opts import TUNER_PARAM_HELP, tuner_options

PLANNER_CHOICES = ("salf", "topk", "gradnorm", "autofreeze", "random", "full")


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    @app.command("plan")
    @handle_errors
    def plan_command(
        model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory (or hub id).")],
        data: Annotated[Path, typer.Option("--data", help="Training data: CSV with a header, or JSONL.")],
        out: Annotated[Path, typer.Option("--out", help="Where to write plan.json.")],
        planner: Annotated[
            str, typer.Option(help=f"Planner: {', '.join(PLANNER_CHOICES)}. SALF reads latent traces (no training).")
        ] = "salf",
        text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
        label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
        max_length: Annotated[int, typer.Option(help="Tokens per example (truncation).")] = 128,
        batch_size: Annotated[int, typer.Option(help="Training batch size assumed by the cost model.")] = 16,
        epochs: Annotated[int, typer.Option(help="Training epochs assumed by the cost model.")] = 3,
        sample_size: Annotated[int, typer.Option(help="SALF calibration sample size.")] = 256,
        policy: Annotated[
            str,
            typer.Option(
                help="SALF's choice: 'cheapest' = the cheapest cut whose predicted accuracy loss against the best "
                "cut is within --tolerance (head-only allowed); 'argmax-gain' = the paper's rule, the layer of "
                "largest expected fine-tuning gain."
            ),
        ] = "cheapest",
        tolerance: Annotated[
            float, typer.Option(help="SALF 'cheapest': accuracy points the plan may give up against the best cut.")
        ] = 1.0,
        min_trainable_layers: Annotated[
            int | None,
            typer.Option(
                help="SALF/random: keep at least this many top blocks trainable "
                "(default: 0 for SALF 'cheapest', 1 otherwise)."
            ),
        ] = None,
        k: Annotated[int, typer.Option("--k", help="topk planner: number of top blocks to train.")] = 2,
        max_backward_frac: Annotated[
            float | None, typer.Option(help="Budget: max backward FLOPs as a fraction of full fine-tuning (0-1].")
        ] = None,
        max_train_memory_mb: Annotated[
            float | None, typer.Option(help="Budget: max estimated training memory in MB.")
        ] = None,
        max_device_seconds: Annotated[
            float | None, typer.Option(help="Budget: max estimated job time in seconds at --device-gflops.")
        ] = None,
        device_gflops: Annotated[float, typer.Option(help="Sustained GFLOP/s of the target device.")] = 20.0,
        tuner: Annotated[
            str, typer.Option(help="How to train the chosen layers: full, lora, roselora or dsee (priced per cut).")
        ] = "full",
        tuner_param: Annotated[list[str] | None, typer.Option(help=TUNER_PARAM_HELP)] = None,
        seed: Annotated[int, typer.Option(help="Seed for sampling and splits: same seed, same plan.")] = 0,
        report: Annotated[
            Path | None, typer.Option(help="Write a PNG report: deviation/gain per layer, cost per cut.")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    ) -> None:
        """Read the frozen model's latent traces on your data and pick the cheapest top layers worth training."""

        if planner not in PLANNER_CHOICES:
            raise typer.BadParameter(f"choose one of {', '.join(PLANNER_CHOICES)}", param_hint="--planner")
        if max_backward_frac is not None and not 0 < max_backward_frac <= 1:
            raise typer.BadParameter("must be in (0, 1]", param_hint="--max-backward-frac")
        from edgetune.planner.salf import POLICIES  # the planner loads torch: only when planning

        if policy not in POLICIES:
            raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
        if tolerance < 0:
            raise typer.BadParameter("must be >= 0 (accuracy points)", param_hint="--tolerance")
        check_range("--max-length", max_length, 2, 1 << 16)
        at_least_one(batch_size=batch_size, epochs=epochs, sample_size=sample_size, k=k)
        check_range("--min-trainable-layers", min_trainable_layers, 0)
        positive(
            max_train_memory_mb=max_train_memory_mb, max_device_seconds=max_device_seconds, device_gflops=device_gflops
        )
        from edgetune.io import check_output_file, json_with_keys

        inputs = [("--data", data), ("--model", model)]
        if report is not None:
            check_output_file(report, [*inputs, ("--out", out)], png_file, "PNG report", "--report")
        plan_owned = json_with_keys("schema_version", "planner", "cut", "rows")
        with file_output(out, [*inputs, ("--report", report)], plan_owned, "plan"):
            _plan(model, data, out, planner, text_column, label_column, max_length, batch_size, epochs, sample_size,
                  policy, tolerance, min_trainable_layers, k, max_backward_frac, max_train_memory_mb,
                  max_device_seconds, device_gflops, tuner, tuner_param, seed, report, quiet)  # fmt: skip


def _plan(model, data, out, planner, text_column, label_column, max_length, batch_size, epochs, sample_size,
          policy, tolerance, min_trainable_layers, k, max_backward_frac, max_train_memory_mb, max_device_seconds,
          device_gflops, tuner, tuner_param, seed, report, quiet) -> None:  # fmt: skip
    from edgetune.api import load_model, plan
    from edgetune.data import load_dataset
    from edgetune.planner import Budget, CostConfig
    from edgetune.report import plot_plan
    from edgetune_cli import console

    tuner, tuner_params = tuner_options(tuner, None, None, tuner_param)
    dataset = load_dataset(data, text_column, label_column)  # fail on bad data before loading the model
    budget = Budget(max_backward_frac, max_train_memory_mb, max_device_seconds)
    params: dict = {}
    if planner == "salf":
        params = {
            "sample_size": sample_size,
            "min_trainable_layers": min_trainable_layers,
            "policy": policy,
            "tolerance": tolerance,
        }
    elif planner == "random":
        params = {"min_trainable_layers": 1 if min_trainable_layers is None else min_trainable_layers}
    elif planner == "topk":
        params = {"k": k}
    backbone, encoder = load_model(model, max_length)
    cost = CostConfig(
        seq_len=encoder.max_length,
        batch_size=batch_size,
        num_examples=len(dataset),
        epochs=epochs,
        device_gflops=device_gflops,
    )
    result = plan(
        (backbone, encoder),
        dataset,
        planner=planner,
        budget=budget,
        cost=cost,
        planner_params=params,
        tuner=tuner,
        tuner_params=tuner_params,
        text_column=text_column,
        label_column=label_column,
        seed=seed,
        progress=not quiet,
    )
    result.save(out)
    if not quiet:
        print_plan_table(result)
    what = f"blocks {result.trainable_layers} + head" if result.trainable_layers else "the head only"
    loss = result.chosen.predicted_loss
    expected = f", predicted {loss:.2f} points below the best cut" if loss is not None else ""
    msg = (
        f"plan: cut {result.cut} -> train {what} ({result.chosen.backward_frac:.0%} of full backward FLOPs"
        f"{expected}); wrote {out} in {result.seconds:.1f}s"
    )
    if report is not None:
        plot_plan(result, report)
        msg += f"; report {report}"
    console.print(msg, highlight=False)
