"""The ``--tuner`` options shared by the commands that train (plan prices the tuner, train and personalize use it)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

LORA_FAMILY = ("lora", "roselora", "dsee")  # tuners built on LoRA: --lora-r / --lora-alpha apply


def tuner_names() -> tuple[str, ...]:
    from edgetune.tuners import TUNERS

    return tuple(TUNERS)


def parse_tuner_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["target_density=0.1", "prune_scope=global"]`` -> ``{"target_density": 0.1, "prune_scope": "global"}``.

    Values are read as JSON when they parse (numbers, lists, booleans), else kept as strings.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--tuner-param")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def tuner_options(
    tuner: str | None, lora_r: int | None, lora_alpha: float | None, pairs: list[str] | None = None
) -> tuple[str | None, dict[str, Any] | None]:
    """Check ``--tuner`` and its options; returns (name, params), params ``None`` when none were given."""
    names = tuner_names()
    if tuner is not None and tuner not in names:
        raise typer.BadParameter(f"choose one of {', '.join(names)}", param_hint="--tuner")
    params = {k: v for k, v in (("r", lora_r), ("alpha", lora_alpha)) if v is not None}
    if params and tuner not in LORA_FAMILY:
        raise typer.BadParameter(
            f"LoRA options need --tuner {', '.join(LORA_FAMILY[:-1])} or {LORA_FAMILY[-1]}",
            param_hint="--lora-r/--lora-alpha",
        )
    extra = parse_tuner_params(pairs)
    if extra and tuner is None:
        raise typer.BadParameter("tuner parameters need --tuner", param_hint="--tuner-param")
    params.update(extra)
    if tuner is not None:
        from edgetune.tuners import get_tuner

        try:
            get_tuner(tuner, **params)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--tuner-param") from None
    return tuner, (params or None)


TUNER_PARAM_HELP = (
    "Tuner setting KEY=VALUE (repeatable), e.g. target_density=0.1 (roselora), sparse_n=64 or prune_ratio=0.5 (dsee)."
)


# The option types shared by `train` and `personalize` (one definition, one help text).
TunerOption = Annotated[str | None, typer.Option(help="full, lora, roselora or dsee (default: the plan's tuner).")]
LoraROption = Annotated[int | None, typer.Option(help="LoRA rank (with --tuner lora, roselora or dsee).")]
LoraAlphaOption = Annotated[float | None, typer.Option(help="LoRA alpha (with --tuner lora, roselora or dsee).")]
TunerParamOption = Annotated[list[str] | None, typer.Option(help=TUNER_PARAM_HELP)]
