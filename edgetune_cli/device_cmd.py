"""``edgetune personalize`` and ``edgetune predict``: the device side, from a package (+ a personal state)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgetune.formatting import accuracy
from edgetune_cli.common import (
    LegacyBackendOption,
    PackageOption,
    QuietTablesOption,
    RuntimeOption,
    TrustOption,
    at_least_one,
    check_range,
    check_runtime,
    check_threads,
    deprecated_alias,
    file_output,
    positive,
    predictions_csv,
    trusting,
)
from edgetune_cli.config_options import ConfigOptions
from edgetune_cli.tuner_opts import (
    LoraAlphaOption,
    LoraROption,
    TunerOption,
    TunerParamOption,
    tuner_options,
)

# The PersonalizeConfig fields `personalize` takes as options (flag, type, default and help from the fields).
PERSONALIZE_SETTINGS = ConfigOptions(
    "device_sim.settings:PersonalizeConfig",
    fields=(
        "cut",
        "epochs",
        "batch_size",
        "lr",
        "head_lr",
        "guard_fraction",
        "guard_alpha",
        "val_fraction",
        "patience",
        "seed",
        "cache",
        "cache_dtype",
        "checkpoint_steps",
        "text_column",
        "label_column",
    ),
)
# Setting one of these on the command line fixes the job (no selection between candidates unless --select).
FIXING_FIELDS = {"cut", "lr", "head_lr"}

if TYPE_CHECKING:
    from device_sim.device import Prediction
    from device_sim.profiles import DeviceProfile

FORMATS = ("label", "jsonl")
TOKENIZERS = ("auto", "tokenizers", "onnx")  # device_sim.onnx_tokenizer.TOKENIZERS, without importing it here


# `personalize` without --profile: the smallest budget, so that a default job ends in seconds (it drops the
# candidates that train blocks when the cost model says they do not fit); the wider search is one flag away.
DEFAULT_PROFILE = "phone-low"
# --profile none: no budget at all, every candidate (minutes on a CPU for a few hundred texts).
NO_PROFILE = "none"


def resolve_profile(
    name: str | None, threads: int | None, memory_mb: float | None, time_budget_s: float | None, gflops: float | None
) -> DeviceProfile | None:
    """A named profile (:data:`DEFAULT_PROFILE` when none is named), refined by the flags; ``none`` is no budget,
    which the budget flags cannot refine."""
    from device_sim.profiles import get_profile

    if name == NO_PROFILE:
        if any(v is not None for v in (memory_mb, time_budget_s, gflops)):
            raise typer.BadParameter(
                "--memory-mb, --time-budget-s and --gflops refine a device profile: name one, not 'none'",
                param_hint="--profile",
            )
        return None
    name = DEFAULT_PROFILE if name is None else name
    return get_profile(name, threads=threads, memory_mb=memory_mb, time_budget_s=time_budget_s, gflops=gflops)


def _format(prediction: Prediction, fmt: str, text: str | None = None, logits: bool = False) -> str:
    from edgetune import strict_json

    if fmt == "label":
        return prediction.label
    row: dict[str, Any] = {"label": prediction.label, "confidence": round(prediction.confidence, 6)}
    if text is not None:
        row = {"text": text, **row}
    row["scores"] = {k: round(v, 6) for k, v in prediction.scores.items()}
    if logits:  # full precision (shortest repr of each float32 value), for parity checks against other readers
        row["logits"] = prediction.logits
    return strict_json.dumps(row, ensure_ascii=False)


def _write_predictions(out: Path, texts: list[str], predictions: list[Prediction]) -> None:
    import csv
    import io

    from edgetune.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["text", "label", "confidence"])
    writer.writerows((t, p.label, f"{p.confidence:.6f}") for t, p in zip(texts, predictions))
    atomic_write_text(out, buf.getvalue())


def personalize_summary(result: Any, out: Path) -> str:
    """What ``personalize`` did, in a few lines: the chosen configuration, the guard's verdict with both scores."""
    from device_sim.profiles import trains

    num_layers = int(result.manifest["package"]["num_layers"])
    s = result.seconds
    cand = result.candidate
    if cand is not None and "prior_shift" in cand.tuner:
        what = "moved the global head's bias to the user's label prior"
    else:
        what = f"trained {trains(cand.train_cut, num_layers)} with {cand.tuner['name']}" if cand is not None else "?"
    chosen = f"{what} (chosen among {len(result.selection['candidates'])} candidates: '{cand.name}')" if len(
        result.selection.get("candidates", [])) > 1 else what  # fmt: skip
    msg = (
        f"{chosen} on {result.num_train} examples ({result.num_val} validation, {result.num_guard} held "
        f"out for the guard) in {s['total']:.1f}s (trunk {s['trunk']:.1f}s, training {s['train']:.1f}s, "
        f"guard {s['guard']:.1f}s)"
    )
    backend = result.manifest.get("training", {}).get("backend", "torch")
    if backend != "torch":
        msg += f", trainer {backend}"
    if result.resumed:
        msg += ", resumed an interrupted run"
    if result.val_metrics:
        msg += f"; validation accuracy {accuracy(result.val_metrics['accuracy'])}"
    skipped = result.selection.get("skipped") or []
    if skipped:  # say what was left out and, when the budget left it out, how to get it
        profile = result.manifest.get("training", {}).get("profile") or {}
        msg += "\nskipped: " + ", ".join(f"{s['name']} ({s['reason']})" for s in skipped)
        if profile and any(s["reason"].startswith(("needs ~", "over the time budget")) for s in skipped):
            msg += f"; over profile {profile.get('name')}'s budget: --profile edge-box or none tries more"
    guard = result.manifest.get("guard", {})
    scores = ""
    if result.guard is not None:
        g = result.guard
        scores = (
            f"on {g.num_examples} held-out examples: personal {accuracy(g.personal_accuracy)}, global "
            f"{accuracy(g.global_accuracy)} ({g.wins} wins, {g.losses} losses, one-sided p = {g.p_value:.3g}, "
            f"alpha {g.alpha})"
        )
    if result.kept == "global":
        head = "KEPT THE GLOBAL MODEL: personalization would not reliably help this user"
        detail = f"; {scores}" if scores else ""
        return f"{msg}\n{head} ({guard.get('reason')}){detail}; wrote a kept-global state to {out}"
    detail = f"\nguard: kept the personal model, {scores}" if scores else ""
    return f"{msg}{detail}; wrote {out}"


# The options of `personalize` whose declarations take more than a line.
PersonalOutOption = Annotated[
    Path, typer.Option("--out", help="Personal state directory (replaced atomically; an interrupted run resumes).")
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        help="Device profile, the job's memory, time and thread budget: phone-low (the default: seconds; "
        "candidates that train blocks are dropped when they do not fit), phone-high, edge-box, or none (no "
        "budget: every candidate, minutes on a CPU)."
    ),
]
# PersonalizeConfig.select, by hand: unset, the command decides it from the other flags
SelectOption = Annotated[
    bool | None,
    typer.Option(
        "--select/--no-select",
        help="Let the device choose between head only, LoRA and the plan's blocks at a few learning rates "
        "on an inner validation split (default: on, unless --cut, --tuner, --lr or --head-lr fix the job).",
        rich_help_panel=PERSONALIZE_SETTINGS.panel,
    ),
]
# PersonalizeConfig.precision, by hand: a switch
CacheInt8Option = Annotated[
    bool,
    typer.Option("--int8", help="Cache the features of the int8 trunk.", rich_help_panel=PERSONALIZE_SETTINGS.panel),
]
TrainerOption = Annotated[
    str,
    typer.Option(
        "--trainer",
        help="Who trains the top: torch (every tuner, resumable), executorch (the package's top_train.pte in "
        "ExecuTorch's Python runtime) or executorch-cpp (the whole job in libedgetune_device, the C library an "
        "app embeds; this process never imports torch). The executorch trainers need a package exported with "
        "--target executorch.",
    ),
]


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("personalize", cls=PERSONALIZE_SETTINGS.command_class())(handle_errors(personalize_command))
    app.command("predict")(handle_errors(predict_command))


def personalize_command(
    ctx: typer.Context,
    package: PackageOption,
    data: Annotated[Path, typer.Option("--data", help="The user's labelled texts: CSV with a header, or JSONL.")],
    out: PersonalOutOption,
    profile: ProfileOption = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the profile's).")] = None,
    memory_mb: Annotated[float | None, typer.Option(help="Override the profile's memory budget (MB).")] = None,
    time_budget_s: Annotated[float | None, typer.Option(help="Override the profile's time budget (s).")] = None,
    gflops: Annotated[float | None, typer.Option(help="Override the profile's sustained GFLOP/s.")] = None,
    tuner: TunerOption = None,
    lora_r: LoraROption = None,
    lora_alpha: LoraAlphaOption = None,
    tuner_param: TunerParamOption = None,
    select: SelectOption = None,
    int8: CacheInt8Option = False,
    trainer: TrainerOption = "torch",
    quiet: QuietTablesOption = False,
    legacy_backend: LegacyBackendOption = None,
    trust: TrustOption = None,
) -> None:
    """Train the package's top layers on the user's data (trunk once in onnxruntime, top in torch or
    ExecuTorch) and write the personal state."""
    backend = deprecated_alias("--backend", legacy_backend, "--trainer", trainer, "torch")
    check_personalize_flags(ctx, backend, threads, memory_mb, time_budget_s, gflops)
    tuner_name, tuner_params = tuner_options(tuner, lora_r, lora_alpha, tuner_param)
    device_profile = resolve_profile(profile, threads, memory_mb, time_budget_s, gflops)
    config = personalize_config(ctx, select, tuner_name, tuner_params, int8, quiet)
    check_not_an_input(out, [("--data", data), ("--package", package)])
    with trusting(trust):
        result = run_personalize(package, data, out, device_profile, threads, config, backend)
    report_personalize(result, out, quiet)


def check_personalize_flags(
    ctx: typer.Context,
    backend: str,
    threads: int | None,
    memory_mb: float | None,
    time_budget_s: float | None,
    gflops: float | None,
) -> None:
    """Refuse an out-of-range number or an unknown trainer before the package is opened."""
    from device_sim.backends import backend_names

    if backend not in backend_names():
        raise typer.BadParameter(f"choose one of {', '.join(backend_names())}", param_hint="--trainer")
    s = PERSONALIZE_SETTINGS.values(ctx)
    check_threads(threads)
    positive(memory_mb=memory_mb, time_budget_s=time_budget_s, gflops=gflops)  # epochs, lr...: TrainingConfig checks
    check_range("--cut", s["cut"], 0)


def personalize_config(
    ctx: typer.Context,
    select: bool | None,
    tuner_name: str | None,
    tuner_params: dict[str, Any] | None,
    int8: bool,
    quiet: bool,
) -> Any:
    """The PersonalizeConfig of the flags; a job fixed by hand (--cut, --tuner, --lr ...) is trained as asked."""
    if select is None:
        select = tuner_name is None and not FIXING_FIELDS & PERSONALIZE_SETTINGS.given(ctx)
    try:
        return PERSONALIZE_SETTINGS.build(
            ctx,
            select=select,
            tuner=tuner_name,
            tuner_params=tuner_params,
            precision="int8" if int8 else "fp32",
            progress=not quiet,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def check_not_an_input(out: Path, inputs: list[tuple[str, Path]]) -> None:
    """Refuse an --out that is one of the command's inputs (replacing it would destroy that input)."""
    from edgetune.io import same_file

    for flag, path in inputs:
        if same_file(out, path):
            raise typer.BadParameter(f"{out} is also the command's {flag}", param_hint="--out")


def run_personalize(
    package: Path, data: Path, out: Path, profile: DeviceProfile | None, threads: int | None, config: Any, backend: str
) -> Any:
    """Personalize on the device with --out locked; a cut over budget names the one to run with, and Ctrl-C
    says the run can be resumed (exit 130)."""
    from device_sim.device import Device
    from device_sim.profiles import ProfileError

    with Device(package, profile, threads) as device:  # the job locks --out (device_sim.personalize)
        try:
            return device.personalize(data, out, config, backend=backend)
        except ProfileError as err:
            if err.suggested_cut is None:
                raise
            raise ProfileError(f"{err}; run again with --cut {err.suggested_cut}", err.suggested_cut) from None
        except KeyboardInterrupt:
            from edgetune.io import stop_requested
            from edgetune_cli import err_console

            err_console.print(f"interrupted; {out} is unchanged. Run the same command again to resume.")
            raise typer.Exit(code=128 + (stop_requested() or 2)) from None


def report_personalize(result: Any, out: Path, quiet: bool) -> None:
    """The training table (unless --quiet) and the summary of what personalize did."""
    from edgetune_cli import console
    from edgetune_cli.train_cmd import print_history

    if not quiet and result.history:
        print_history(result.history)
    console.print(personalize_summary(result, out), highlight=False)


def predict_command(
    package: PackageOption,
    personal: Annotated[
        Path | None, typer.Option("--personal", help="Personal state from `edgetune personalize`.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Texts to label: CSV with a header, or JSONL (labels ignored).")
    ] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to label (repeatable).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of --data (default: the plan's).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write text,label,confidence CSV here (with --data).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="label: one label per line; jsonl: with scores.")] = "label",
    logits: Annotated[
        bool, typer.Option("--logits", help="With --format jsonl: add the raw logits at full precision.")
    ] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Run the int8 trunk (if the package has one).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the runtimes' choice).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass (with --data).")] = 32,
    runtime: RuntimeOption = "auto",
    legacy_backend: LegacyBackendOption = None,
    trust: TrustOption = None,
    tokenizer: Annotated[
        str,
        typer.Option(
            help="How texts become token ids: tokenizers (the library), onnx (the package's tokenizer as an "
            "onnxruntime-extensions graph: text -> labels in onnxruntime alone; WordPiece/BERT-style tokenizers), "
            "or auto (tokenizers when installed, else onnx)."
        ),
    ] = "auto",
) -> None:
    """Label texts with the package (and a personal state): from --data, from --text, or streamed from stdin,
    one text per line, each answered as soon as it is read."""
    from device_sim.device import Device

    runtime = deprecated_alias("--backend", legacy_backend, "--runtime", runtime, "auto")
    check_predict_flags(fmt, threads, batch_size, data, text, out, logits)
    if tokenizer not in TOKENIZERS:
        raise typer.BadParameter(f"choose one of {', '.join(TOKENIZERS)}, got {tokenizer!r}", param_hint="--tokenizer")
    precision = "int8" if int8 else "fp32"
    inputs = [("--data", data), ("--package", package), ("--personal", personal)]
    with (
        trusting(trust),
        file_output(out, inputs, predictions_csv, "predictions CSV"),
        Device(package, threads=threads, tokenizer=tokenizer) as device,
    ):
        predictor = device.predictor(personal, precision, check_runtime(runtime))
        if data is not None:
            column = text_column or device.package.plan.text_column
            predict_file(predictor, data, column, out, fmt, logits, batch_size)
        elif text:
            for t, p in zip(text, predictor.predict(text, batch_size)):
                typer.echo(_format(p, fmt, t, logits))
        else:
            predict_stdin(predictor, fmt, logits)


def check_predict_flags(
    fmt: str,
    threads: int | None,
    batch_size: int,
    data: Path | None,
    text: list[str] | None,
    out: Path | None,
    logits: bool,
) -> None:
    """Refuse flags that contradict each other (or a number out of range) before the package is opened."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    check_threads(threads)
    at_least_one(batch_size=batch_size)
    if data is not None and text:
        raise typer.BadParameter("give either --data or --text (or neither, to read stdin)", param_hint="--text")
    if out is not None and data is None:
        raise typer.BadParameter("--out writes the predictions of --data", param_hint="--out")
    if logits and fmt != "jsonl":
        raise typer.BadParameter("--logits adds a field to --format jsonl", param_hint="--logits")


def predict_file(
    predictor: Any, data: Path, column: str, out: Path | None, fmt: str, logits: bool, batch_size: int
) -> None:
    """Label every text of --data in batches: to the --out CSV, else one line each on stdout."""
    from edgetune.data import load_dataset

    texts = load_dataset(data, column, None).texts
    predictions = predictor.predict(texts, batch_size)
    if out is not None:
        _write_predictions(out, texts, predictions)
        typer.echo(f"wrote {len(predictions)} predictions to {out}", err=True)
        return
    for t, p in zip(texts, predictions):
        typer.echo(_format(p, fmt, t, logits))


def predict_stdin(predictor: Any, fmt: str, logits: bool) -> None:
    """Answer each non-blank line of stdin before reading the next (a stream, not a batch).

    Lines are read as bytes and decoded one by one: a line that is not UTF-8 is named on stderr and skipped
    (the others are still answered), and the command then exits 2 so a pipeline sees that some were not."""
    stream = getattr(sys.stdin, "buffer", None)
    bad = 0
    for number, raw in enumerate(stream if stream is not None else sys.stdin, start=1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad += 1
                byte = raw[err.start]
                typer.echo(f"error: stdin line {number}: not valid UTF-8 (byte 0x{byte:02x}); skipped", err=True)
                continue
        else:
            line = raw
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        typer.echo(_format(predictor(line), fmt, line, logits))
        sys.stdout.flush()
    if bad:
        typer.echo(f"error: {bad} line(s) of stdin were not valid UTF-8 and got no answer", err=True)
        raise typer.Exit(code=2)
