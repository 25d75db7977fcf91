"""``edgetune merge``: merge models fine-tuned from one base, without data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune_cli.common import locks_output

METHOD_CHOICES = {"rankmean": "rankmean", "average": "average", "task-arithmetic": "task_arithmetic"}


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("merge")(handle_errors(locks_output()(merge_command)))


def merge_command(
    base: Annotated[Path, typer.Option("--base", help="The pretrained model all the others were fine-tuned from.")],
    models: Annotated[
        list[Path],
        typer.Option(
            "--models",
            help="Fine-tuned checkpoints (edgetune train output) or .safetensors state files: --models A B ...",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Merged checkpoint directory (or .safetensors file).")],
    more_models: Annotated[
        list[Path] | None,
        typer.Argument(help="The models after the first one given to --models.", show_default=False),
    ] = None,
    method: Annotated[str, typer.Option(help="rankmean, average or task-arithmetic.")] = "rankmean",
    scale: Annotated[float, typer.Option(help="task-arithmetic: lambda in base + lambda * sum of deltas.")] = 1.0,
    granularity: Annotated[
        str, typer.Option(help="rankmean: rank whole blocks (layer), leaf modules (module) or tensors (tensor).")
    ] = "layer",
    head_from: Annotated[
        int, typer.Option(help="When the models' labels differ: keep the head of the N-th model (1-based).")
    ] = 1,
) -> None:
    """RankMean: per module, weight each model by the normalized rank of how much it changed that module;
    parameters outside the blocks are averaged. Refuses models of other bases or shapes."""
    from edgetune.merge import merge_files
    from edgetune_cli import console

    if method not in METHOD_CHOICES:
        raise typer.BadParameter(f"choose one of {', '.join(METHOD_CHOICES)}", param_hint="--method")
    check_merge_output(out, [("--base", base), *(("--models", m) for m in [*models, *(more_models or [])])])
    report = merge_files(
        base, [*models, *(more_models or [])], out, METHOD_CHOICES[method], scale, head_from - 1, granularity
    )
    changes = ", ".join(f"{c:.4f}" for c in report.relative_change)
    console.print(
        f"merge: {report.method} of {report.num_models} models ({report.layer_modules} block modules ranked, "
        f"{report.other_tensors} other tensors averaged; relative change from base: {changes}); wrote {out}",
        highlight=False,
    )


def check_merge_output(out: Path, inputs: list[tuple[str, Path]]) -> None:
    """Refuse an --out that is an input or that merge did not write: a state file or a checkpoint directory."""
    from edgetune.io import check_output_dir, check_output_file

    if out.suffix == ".safetensors":
        check_output_file(out, inputs, lambda p: p.suffix == ".safetensors", "merged state file")
    else:
        check_output_dir(out, inputs, ["edgetune.json"], "merged checkpoint")
