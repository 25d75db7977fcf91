"""Rich tables of a plan and of a simulated fleet, shared by the command line, the examples and the benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.table import Table

from edgetune.formatting import accuracy, human

if TYPE_CHECKING:  # the device commands must not load the planner
    from edgetune.planner.plan import Plan


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def plan_table(plan: Plan) -> Table:
    """The plan's cost-benefit table: one row per cut, the chosen cut in bold green, cuts over budget dimmed."""
    has_gains = any(r.expected_gain is not None for r in plan.rows)
    has_budget = any(v is not None for v in plan.budget.values())
    has_loss = any(r.predicted_loss is not None for r in plan.rows)
    has_interval = any(r.predicted_loss_high is not None for r in plan.rows)
    has_share = any(r.chosen_share is not None for r in plan.rows)
    columns = ["cut", "trains", *(("dev", "gain", "G") if has_gains else ("score",))]
    columns += [*(("pred. loss",) if has_loss else ()), *(("90% interval",) if has_interval else ())]
    columns += [*(("chosen by",) if has_share else ()), "bwd", "params", "MB", "est s"]
    if has_budget:
        columns.append("budget")
    sure = plan.confidence_text()
    caption = f"{sure} of the calibration sample" if sure else None
    table = Table(title=f"{plan.planner} cost-benefit per cut ({plan.num_layers} layers)", caption=caption)
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in plan.rows:
        trains = f"{r.cut + 1}..{plan.num_layers}" if r.cut < plan.num_layers else "head"
        style = "bold green" if r.cut == plan.cut else ("dim" if not r.fits_budget else "")
        method = (_fmt(r.deviation), _fmt(r.gain), _fmt(r.expected_gain)) if has_gains else (_fmt(r.score, ".2f"),)
        loss = (_fmt(r.predicted_loss, ".2f"),) if has_loss else ()
        if has_interval:
            loss += (f"{_fmt(r.predicted_loss_low, '.2f')}-{_fmt(r.predicted_loss_high, '.2f')}",)
        if has_share:
            loss += ("-" if r.chosen_share is None else f"{r.chosen_share:.0%}",)
        cells = [str(r.cut), trains, *method, *loss, f"{r.backward_frac:.0%}", human(r.trainable_params)]
        cells += [f"{r.train_memory_mb:.0f}", f"{r.device_seconds:.0f}"]
        if has_budget:
            cells.append("ok" if r.fits_budget else "over")
        table.add_row(*cells, style=style)
    return table


def fleet_summary(results: dict) -> list[RenderableType]:
    """A simulated fleet's summary: per method accuracy, examples, backward FLOPs and time, then the cost per user."""
    summary = results["summary"]
    table = Table(title=f"backbone swap, {len(results['users'])} users")
    for column in ("method", "accuracy (mean ± std)", "examples used", "backward FLOPs", "vs full re-training", "s"):
        table.add_column(column, justify="right" if column != "method" else "left")
    before = summary["before_personal"]
    table.add_row("before (old + personal)", f"{accuracy(before['mean'])} ± {accuracy(before['std'])}", "", "", "", "")
    for name, m in summary["methods"].items():
        reduction = m.get("flops_reduction", {}).get("mean")
        table.add_row(
            name,
            f"{accuracy(m['accuracy']['mean'])} ± {accuracy(m['accuracy']['std'])}",
            f"{m['examples_used']['mean']:.0f}",
            f"{m['backward_flops']['mean']:.3g}",
            f"{reduction:,.0f}x less" if reduction else ("nothing trained" if not m["backward_flops"]["mean"] else "-"),
            f"{m['seconds']['mean']:.1f}",
        )
    out: list[RenderableType] = [table]
    cost = summary.get("cost_per_user")
    if cost:
        parts = ", ".join(
            f"{part} {cost[part]['seconds']['mean']:.1f}s ({cost[part]['backward_flops']['mean']:.3g} backward FLOPs)"
            for part in ("trunk", "training", "swap")
        )
        out.append(
            f"cost per user (mean): {parts}; evaluation {cost['evaluation']['seconds']['mean']:.1f}s; "
            f"total {cost['total_seconds']['mean']:.1f}s"
        )
    if "fala_over_retrain" in summary:
        f = summary["fala_over_retrain"]
        out.append(
            f"FaLA reaches {f['of_mean_accuracy']:.1%} of re-training's accuracy with "
            f"{f['examples_fraction']:.1%} of the examples"
        )
    if "cluster_minus_random" in summary:
        c = summary["cluster_minus_random"]
        out.append(
            f"clustered - random selection: {100 * c['mean']:+.1f} ± {100 * c['std']:.1f} accuracy points "
            f"({c['pairs']} user x draw pairs)"
        )
    return out
