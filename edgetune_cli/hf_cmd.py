"""``edgetune export-personal``: a package + a personal state -> a Hugging Face ONNX model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune_cli.common import PackageOption, TrustOption, check_threads, locks_output, trusting


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("export-personal")(handle_errors(locks_output()(export_personal_command)))


def export_personal_command(
    package: PackageOption,
    personal: Annotated[
        Path, typer.Option("--personal", help="Personal state from `edgetune personalize` (or `swap`).")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Model directory to write (model.onnx, config.json, tokenizer files)."),
    ],
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the runtimes' choice).")] = None,
    trust: TrustOption = None,
) -> None:
    """Write the personalized model (the package's trunk and top with the personal state merged) as one ONNX
    model directory that optimum's ORTModelForSequenceClassification.from_pretrained(OUT) loads and
    transformers.pipeline("text-classification", model=..., tokenizer=...) runs; pass truncation=True to the
    pipeline to cut texts where the package does. The graph is checked against `edgetune predict` before it is
    written (max abs logit difference <= 1e-4, or nothing is written)."""
    from edgetune_cli import console
    from exporters.personal_model import export_personal_model

    check_threads(threads)
    for flag, path in (("--package", package), ("--personal", personal)):
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist", param_hint=flag)
    with trusting(trust):
        result = export_personal_model(package, personal, out, threads=threads)
    console.print(
        f"export-personal: {result.what}; logits match predict within {result.max_abs_diff:.2g} on "
        f"{result.num_texts} texts; wrote {out} ({', '.join(result.files)}) in {result.seconds:.1f}s",
        highlight=False,
    )
