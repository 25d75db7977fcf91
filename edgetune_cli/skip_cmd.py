"""``edgetune skip``: fine-tune with HadSkip gates for an inference budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune_cli.common import at_least_one, check_range, locks_output


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    @app.command("skip")
    @handle_errors
    @locks_output()
    def skip_command(
        model: Annotated[Path, typer.Option("--model", help="Hugging Face model directory (or hub id).")],
        data: Annotated[Path, typer.Option("--data", help="Labelled training data (CSV with a header, or JSONL).")],
        out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write (atomically).")],
        budget: Annotated[
            float, typer.Option(help="Target fraction of blocks executed at inference, in (0, 1].")
        ] = 0.5,
        epochs: Annotated[int, typer.Option(help="Training epochs.")] = 2,
        lr: Annotated[float, typer.Option(help="Learning rate of the blocks.")] = 5e-5,
        head_lr: Annotated[float, typer.Option(help="Learning rate of the task head.")] = 1e-3,
        gate_lr: Annotated[float, typer.Option(help="Learning rate of the gates.")] = 5e-2,
        penalty: Annotated[float, typer.Option(help="Weight of the budget penalty (mean gate - budget)^2.")] = 10.0,
        adaptive: Annotated[
            bool, typer.Option(help="Gates also read each block's input (per-example skipping while training).")
        ] = True,
        batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 16,
        max_length: Annotated[int, typer.Option(help="Tokens per example (truncation).")] = 128,
        text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
        label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
        eval_data: Annotated[
            Path | None, typer.Option(help="Labelled held-out data: accuracy of the saved (static-skip) model.")
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed.")] = 0,
        overwrite: Annotated[
            bool, typer.Option(help="Replace a finished model in --out, or start its interrupted run over.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    ) -> None:
        """Fine-tune the whole model jointly with a learnable gate before each block, under a budget of
        executed blocks (HadSkip); save it skipping the blocks its gates turn off for the task. It trains on
        the same loop as `edgetune train` (warm-up and decay, clipping, a GPU when there is one); an interrupted
        run started again with the same flags resumes from --out/checkpoint."""
        from rich.table import Table

        from edgetune.data import load_dataset
        from edgetune.evaluation import evaluate_classifier
        from edgetune.skip import HadSkipConfig, hadskip_finetune
        from edgetune_cli import console

        if not 0 < budget <= 1:
            raise typer.BadParameter("must be in (0, 1]", param_hint="--budget")
        at_least_one(epochs=epochs, batch_size=batch_size)
        from edgetune.io import check_output_dir

        inputs = [("--model", model), ("--data", data), ("--eval-data", eval_data)]
        check_output_dir(out, inputs, ["edgetune.json", "checkpoint"], "checkpoint")
        check_range("--max-length", max_length, 2, 1 << 16)
        dataset = load_dataset(data, text_column, label_column)  # bad data fails before the model loads
        held_out = load_dataset(eval_data, text_column, label_column) if eval_data is not None else None
        if held_out is not None:
            held_out.encoded_labels(dataset.label_map())
        cfg = HadSkipConfig(
            budget=budget,
            penalty=penalty,
            adaptive=adaptive,
            epochs=epochs,
            lr=lr,
            head_lr=head_lr,
            gate_lr=gate_lr,
            batch_size=batch_size,
            seed=seed,
        )
        clf, encoder, result = hadskip_finetune(
            model, dataset, out, cfg, max_length, text_column, label_column, progress=not quiet, overwrite=overwrite
        )
        if not quiet:
            table = Table(title=f"HadSkip gates (budget {budget:.2f})")
            for col in ("block", "importance", "mean gate", "exported"):
                table.add_column(col, justify="right")
            for i, (imp, g) in enumerate(zip(result.importance, result.mean_gate)):
                kept = i in result.keep
                table.add_row(
                    str(i + 1), f"{imp:.4f}", f"{g:.3f}", "run" if kept else "skip", style="" if kept else "dim"
                )
            console.print(table)
        msg = (
            f"skip: executed fraction {result.executed_fraction:.2f} (target {budget:.2f}); "
            f"saved {out} running blocks {[i + 1 for i in result.keep]}"
        )
        if held_out is not None:
            metrics = evaluate_classifier(clf, encoder, held_out, progress=not quiet)
            msg += f"; held-out accuracy {metrics['accuracy']:.4f}"
        console.print(msg, highlight=False)
