"""Tables and formatting shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # the device commands must not load the planner
    from edgetune.planner.plan import Plan


def display_name(model_id: str) -> str:
    """A short name for a model path: its directory name (the parent's, for a generic ``model`` folder)."""
    p = Path(model_id)
    return f"{p.parent.name}/{p.name}" if p.name in ("model", "backbone") else p.name


def human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_plan_table(plan: Plan) -> None:
    from edgetune.cli import console

    has_gains = any(r.expected_gain is not None for r in plan.rows)
    has_budget = any(v is not None for v in plan.budget.values())
    has_loss = any(r.predicted_loss is not None for r in plan.rows)
    columns = ["cut", "trains", *(("dev", "gain", "G") if has_gains else ("score",))]
    columns += [*(("pred. loss",) if has_loss else ()), "bwd", "params", "MB", "est s"]
    if has_budget:
        columns.append("budget")
    table = Table(title=f"{plan.planner} cost-benefit per cut ({plan.num_layers} layers)")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in plan.rows:
        trains = f"{r.cut + 1}..{plan.num_layers}" if r.cut < plan.num_layers else "head"
        style = "bold green" if r.cut == plan.cut else ("dim" if not r.fits_budget else "")
        method = (_fmt(r.deviation), _fmt(r.gain), _fmt(r.expected_gain)) if has_gains else (_fmt(r.score, ".2f"),)
        loss = (_fmt(r.predicted_loss, ".2f"),) if has_loss else ()
        cells = [str(r.cut), trains, *method, *loss, f"{r.backward_frac:.0%}", human(r.trainable_params)]
        cells += [f"{r.train_memory_mb:.0f}", f"{r.device_seconds:.0f}"]
        if has_budget:
            cells.append("ok" if r.fits_budget else "over")
        table.add_row(*cells, style=style)
    console.print(table)
