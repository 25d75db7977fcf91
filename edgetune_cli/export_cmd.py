"""``edgetune export`` (model + plan -> device package) and ``edgetune inspect`` (verify and describe one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from edgetune.formatting import accuracy, device_trains, human
from edgetune_cli.common import TrustOption, trusting
from edgetune_cli.config_options import ConfigOptions

# The ExportOptions fields `export` takes as options (flag, type, default and help from the fields themselves).
EXPORT_SETTINGS = ConfigOptions(
    "exporters.options:ExportOptions",
    fields=(
        "int8",
        "optimize",
        "top_onnx",
        "executorch_max_batch",
        "executorch_train_batch",
        "tar",
        "val_fraction",
        "text_column",
        "label_column",
        "opset",
        "atol",
        "threads",
        "batch_size",
        "seed",
        "skip_budget",
        "sign",
        "release",
        "release_version",
    ),
    flags={"int8": "--int8", "tar": "--tar"},  # switches: no --no-int8, --no-tar
    # The command numbers a named release from 1; the options leave a package without a release unnumbered.
    defaults={"release_version": 1},
    panel="Export settings",
)

# The options of `export` whose declarations take more than a line.
ModelCheckpointOption = Annotated[
    Path,
    typer.Option(
        "--model",
        help="An edgetune classifier checkpoint (directory with edgetune.json) or a plain Hugging Face "
        "model directory (its head is then fitted on --data, or zero-initialized).",
    ),
]
PackageOutOption = Annotated[
    Path,
    typer.Option("--out", help="Package directory to write (replaced atomically if it is already a package)."),
]
# ExportOptions.targets, by hand: repeated or comma-separated, onnx always included
TargetsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "--targets",
        help="What the package carries: onnx (always: trunk.onnx + top safetensors) and executorch "
        "(top_train.pte: the top's joint forward + backward for on-device training; top.pte: inference). "
        "Repeat or comma-separate: --targets onnx,executorch.",
        rich_help_panel=EXPORT_SETTINGS.panel,
    ),
]
ExportDataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Labelled CSV/JSONL. Fits the head probe of a plain model (minus a --val-fraction held out "
        "for validation); validates a checkpoint. Its texts also serve the parity check.",
    ),
]
ValDataOption = Annotated[
    Path | None,
    typer.Option("--val-data", help="Labelled validation CSV/JSONL (instead of holding out part of --data)."),
]
# ExportOptions.int8_config (an exporters.quantize.Int8Config), by hand
PerChannelOption = Annotated[
    bool,
    typer.Option(
        help="int8: one scale per weight column (more accurate than one per tensor).",
        rich_help_panel=EXPORT_SETTINGS.panel,
    ),
]
ReduceRangeOption = Annotated[
    bool,
    typer.Option(
        help="int8: 7-bit weights, for x86 CPUs without VNNI (avoids u8s8 saturation).",
        rich_help_panel=EXPORT_SETTINGS.panel,
    ),
]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("export", cls=EXPORT_SETTINGS.command_class())(handle_errors(export_command))
    app.command("inspect")(handle_errors(inspect_command))


def export_command(
    ctx: typer.Context,
    model: ModelCheckpointOption,
    plan: Annotated[Path, typer.Option("--plan", help="plan.json from `edgetune plan` for this very model.")],
    out: PackageOutOption,
    targets: TargetsOption = None,
    data: ExportDataOption = None,
    val_data: ValDataOption = None,
    per_channel: PerChannelOption = True,
    reduce_range: ReduceRangeOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or step lines.")] = False,
) -> None:
    """Write a verified device package: ONNX trunk (embeddings + blocks 1..cut), top layers + head
    (safetensors), tokenizer and a manifest with every file's sha256."""
    from exporters.export import export_package
    from exporters.options import Int8Config

    release = EXPORT_SETTINGS.values(ctx)["release"]
    options = EXPORT_SETTINGS.build(  # checks every setting: a refusal is shown under its flag
        ctx,
        targets=export_targets(targets),
        int8_config=Int8Config(per_channel=per_channel, reduce_range=reduce_range),
        **({} if release else {"release_version": None}),  # a release's version; none without a release
    )
    result = export_package(model, plan, out, data, val_data, options, log=step_log(quiet), progress=not quiet)
    report_export(result)


def export_targets(targets: list[str] | None) -> tuple[str, ...]:
    """The ``--target`` values, repeated or comma-separated, as :class:`~exporters.export.ExportOptions` takes them:
    onnx first, each once. The options check them, with every other setting."""
    chosen = ["onnx"] + [t.strip() for v in (targets or []) for t in v.split(",") if t.strip()]
    return tuple(dict.fromkeys(chosen))


def step_log(quiet: bool) -> Callable[[str], None]:
    """Where the export reports each step as it goes: the console, or nowhere with --quiet."""
    from edgetune_cli import console

    def log(msg: str) -> None:
        if not quiet:
            console.print(msg, highlight=False, soft_wrap=True)

    return log


def report_export(result: Any) -> None:
    """The export's warnings (in yellow, on stderr) and a one-line summary of the package."""
    from edgetune_cli import console, err_console

    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    m = result.manifest
    size = sum(f["size"] for f in m["files"].values())
    console.print(
        f"package: {result.path} ({human(size, 'B')}, {len(m['files'])} files), trunk = embeddings + blocks "
        f"1..{m['cut']}, device trains {device_trains(m['trainable_layers'])}; {result.seconds:.1f}s",
        highlight=False,
    )


def inspect_command(
    package: Annotated[Path, typer.Argument(help="Package directory or .tar to verify and describe.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
    trust: TrustOption = None,
) -> None:
    """Verify a package (schema, integrity seal, every file's size and sha256) and summarize it.
    Exit code 2 when verification fails (like every other refusal)."""
    import json

    from rich.markup import escape

    from device_sim.package import verify_package
    from edgetune_cli import console

    with trusting(trust):
        result = verify_package(package)
        if result.ok:
            result.problems.extend(_load_problems(package))
    if as_json and result.manifest is not None:
        console.print_json(json.dumps(result.manifest))
    elif result.manifest is not None:
        _print_summary(result.manifest)
    _print_files(result)
    if not result.ok:
        for problem in result.problems:
            console.print(f"[bold red]FAILED:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    if result.signer is not None:
        how = "checked against the trusted keys" if result.trusted else "not checked: no --trust or EDGETUNE_TRUST"
        console.print(f"signed by key {result.signer} ({how})", highlight=False)
    console.print(f"[bold green]verified:[/] {package}", highlight=False)


def _load_problems(package: Path) -> list[str]:
    """What loading the package for a job would refuse beyond verification (a graph or tensor file that matches
    the manifest yet does not load): ``inspect`` says "verified" only where ``predict`` would run."""
    from device_sim.package import load_package
    from edgetune_format.errors import PackageError

    try:
        with load_package(package, record=False) as loaded:  # inspect checks; only a job's load is recorded
            loaded.check_runnable()
    except PackageError as err:
        return [str(err)]
    return []


def _fmt_io(entries: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['name']} {e['dtype']}[{', '.join(str(s) for s in e['shape'])}]" for e in entries)


def _plan_words(plan: dict[str, Any]) -> str:
    """Who chose the cut and how sure it was: "salf (cheapest within 1 point), chosen in 190 of 200 resamples"."""
    params = plan.get("planner_params") or {}
    words = str(plan.get("planner", "?"))
    if params.get("policy"):
        within = f" within {params['tolerance']:g} points" if "tolerance" in params else ""
        words += f" ({params['policy']}{within})"
    confidence = plan.get("confidence") or {}
    if confidence.get("resamples"):
        share = confidence["chosen"] / confidence["resamples"]
        words += f", chosen in {confidence['chosen']} of {confidence['resamples']} resamples ({share:.0%})"
    return words


def _print_summary(m: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgetune_cli import console
    from edgetune_format.manifest import training_call_rows

    b, trunk = m["backbone"], m["trunk"]
    trainable = m.get("trainable_layers")
    table = Table(title="device package", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("format", f"{m['format']} v{m['schema_version']}, created {m.get('created_at', '?')}"),
        ("backbone", f"{b['id']} ({b['model_type']}, {b['num_layers']} layers, hidden {b['hidden_size']})"),
        ("weights hash", f"{b['hash'][:16]} (plan made for {b['plan_hash'][:16]})"),
        ("cut", f"trunk = embeddings + blocks 1..{m['cut']}; device trains {device_trains(trainable)}"),
        ("plan", _plan_words(m.get("plan") or {})),
        ("labels", ", ".join(m["labels"])),
        ("head", str((m.get("head") or {}).get("init"))),
        ("trunk", f"{trunk['file']} opset {trunk['opset']}, parity {trunk['parity']['max_abs_diff']:.2e}"),
        ("trunk in", _fmt_io(trunk["inputs"])),
        ("trunk out", _fmt_io(trunk["outputs"])),
        ("top", f"{m['top']['weights']} + {m['top']['spec']}: {_fmt_io(m['top']['outputs'])}"),
    ]
    if m.get("validation"):
        v = m["validation"]
        rows.append(("validation", f"accuracy {accuracy(v['accuracy'])} on {v['num_examples']} examples"))
    q = m.get("trunk_int8")
    if q:
        line = f"{q['file']} {q['size_ratio']:.2f}x fp32 size"
        if q.get("accuracy"):
            a = q["accuracy"]
            line += f", accuracy {accuracy(a['fp32'])} -> {accuracy(a['int8'])} ({a['delta_points']:+.2f} points)"
        rows.append(("int8", line))
    if m.get("executorch"):
        e = m["executorch"]
        p = e["parity"]["max_abs_diff"]
        rows.append(
            (
                "executorch",
                f"{e['train']['file']} (train, {training_call_rows(e, e['train'])} rows per call) + "
                f"{e['inference']['file']} (batch <= {e['max_batch']}), parity loss "
                f"{p['loss']:.2e}, gradients {p['gradients']:.2e}",
            )
        )
        if e.get("trunk_int8"):
            q8 = e["trunk_int8"]
            error = q8["parity"]["relative_error"]
            line = f"{q8['file']} {q8['size_ratio']:.2f}x trunk.pte size, relative error {error:.2e}"
            if q8.get("accuracy"):
                a = q8["accuracy"]
                line += f", accuracy {accuracy(a['fp32'])} -> {accuracy(a['int8'])} ({a['delta_points']:+.2f} points)"
            rows.append(("int8 program", line))
    if m.get("top_onnx"):
        rows.append(("top onnx", f"{m['top_onnx']['file']}, parity {m['top_onnx']['parity']['max_abs_diff']:.2e}"))
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


def _print_files(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgetune_cli import console

    if not result.files:
        return
    table = Table(title="files")
    for col in ("file", "size", "status"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for f in result.files:
        status = "[green]ok[/]" if f.ok else f"[red]{escape(f.problem)}[/]"
        table.add_row(f.name, human(f.size, "B"), status)
    console.print(table)
