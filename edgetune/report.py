"""PNG reports: where a person would rather look than read."""

from __future__ import annotations

import io
from pathlib import Path

from edgetune.formatting import display_name
from edgetune.io import atomic_write_bytes
from edgetune.planner.plan import Plan


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display is needed or opened)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Render to memory, then write atomically (no half-written PNG on a crash)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """Deviation and gain per layer (left), cost per cut with the chosen cut marked (middle) and, for a plan
    with predicted losses, predicted accuracy loss against backward cost with the tolerance (right)."""
    plt = pyplot()
    has_loss = any(r.predicted_loss is not None for r in plan.rows)
    fig, axes = plt.subplots(1, 3 if has_loss else 2, figsize=(18 if has_loss else 12, 4.5))
    ax_dev, ax_cost = axes[0], axes[1]
    cuts = [r.cut for r in plan.rows]

    devs = [r.deviation for r in plan.rows]
    if any(d is not None for d in devs):
        ax_dev.plot(cuts, [d if d is not None else float("nan") for d in devs], "o-", color="C0", label="deviation d_l")
        ax_dev.set_ylabel("deviation (cross-entropy to the semantic basis)")
        gain_ax = ax_dev.twinx()
        width = 0.38
        gains = [r.gain if r.gain is not None else 0.0 for r in plan.rows]
        expected = [r.expected_gain if r.expected_gain is not None else 0.0 for r in plan.rows]
        gain_ax.bar([c - width / 2 for c in cuts], gains, width, color="C1", alpha=0.6, label="gain g_l")
        gain_ax.bar([c + width / 2 for c in cuts], expected, width, color="C2", alpha=0.6, label="expected gain G_l")
        gain_ax.axhline(0, color="grey", lw=0.5)
        gain_ax.set_ylabel("gain")
        lines = ax_dev.get_legend_handles_labels()
        bars = gain_ax.get_legend_handles_labels()
        ax_dev.legend(lines[0] + bars[0], lines[1] + bars[1], loc="upper right", fontsize=8)
    else:
        scores = [r.score if r.score is not None else float("nan") for r in plan.rows]
        ax_dev.plot(cuts, scores, "o-", color="C2", label=f"{plan.planner} score")
        ax_dev.legend(fontsize=8)
    ax_dev.axvline(plan.cut, color="red", ls="--", lw=1)
    ax_dev.set_xlabel("latent space / layer l (0 = embeddings)")
    ax_dev.set_title(f"{plan.planner}: where to fine-tune")
    ax_dev.set_xticks(cuts)

    fracs = [100 * r.backward_frac for r in plan.rows]
    colors = ["red" if r.cut == plan.cut else ("C0" if r.fits_budget else "lightgrey") for r in plan.rows]
    ax_cost.bar(cuts, fracs, color=colors)
    ax_cost.set_ylabel("backward FLOPs, % of full fine-tuning")
    ax_cost.set_xlabel("cut l* (train blocks l*+1..L and the head)")
    ax_cost.set_xticks(cuts)
    mem_ax = ax_cost.twinx()
    mem_ax.plot(cuts, [r.train_memory_mb for r in plan.rows], "s-", color="black", label="train memory (MB)")
    mem_ax.set_ylabel("estimated train memory (MB)")
    mem_ax.legend(loc="upper right", fontsize=8)
    chosen = plan.chosen
    ax_cost.set_title(
        f"chosen cut {plan.cut}: {chosen.backward_frac:.0%} backward FLOPs, {chosen.train_memory_mb:.0f} MB "
        "(grey: over budget)",
        fontsize=10,
    )
    if has_loss:
        _plot_predicted_loss(axes[2], plan)
    fig.subplots_adjust(wspace=0.45)
    fig.suptitle(
        f"{display_name(plan.model_id)} ({plan.model_type}, {plan.num_layers} layers), {len(plan.labels)} labels"
    )
    return save_figure(fig, path)


def _plot_predicted_loss(ax, plan: Plan) -> None:
    """Predicted accuracy loss of each cut against its backward FLOPs; the tolerance line; the pick in red."""
    rows = [r for r in plan.rows if r.predicted_loss is not None]
    fracs = [100 * r.backward_frac for r in rows]
    losses = [r.predicted_loss for r in rows]
    ax.plot(fracs, losses, "o-", color="C0")
    for r, x, y in zip(rows, fracs, losses):
        ax.annotate(
            "head" if r.cut == plan.num_layers else str(r.cut),
            (x, y),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    chosen = plan.chosen
    if chosen.predicted_loss is not None:
        ax.plot([100 * chosen.backward_frac], [chosen.predicted_loss], "o", color="red", ms=10, label="chosen cut")
    tolerance = plan.planner_params.get("tolerance")
    if tolerance is not None and plan.planner_params.get("policy", "cheapest") == "cheapest":
        ax.axhline(tolerance, color="grey", ls="--", lw=1, label=f"tolerance {tolerance:g} points")
    ax.set_xlabel("backward FLOPs, % of full fine-tuning")
    ax.set_ylabel("predicted accuracy loss vs the best cut (points)")
    ax.set_title("predicted loss vs cost", fontsize=10)
    ax.legend(fontsize=8)
