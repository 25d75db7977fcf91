"""PNG reports: where a person would rather look than read."""

from __future__ import annotations

import io
from pathlib import Path

from edgetune.formatting import display_name, stable_model_id
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
    """The plan on one page: what the traces say per layer (top left), the cost of every cut (top right) and, for
    a plan with predicted losses, each cut's predicted accuracy loss with its interval against its cost (bottom
    left) and how often resamples of the calibration sample chose each cut (bottom right)."""
    plt = pyplot()
    has_loss = any(r.predicted_loss is not None for r in plan.rows)
    fig, axes = plt.subplots(2 if has_loss else 1, 2, figsize=(13, 9.5 if has_loss else 4.8), squeeze=False)
    _plot_traces(axes[0][0], plan)
    _plot_costs(axes[0][1], plan)
    if has_loss:
        _plot_predicted_loss(axes[1][0], plan)
        _plot_confidence(axes[1][1], plan)
    fig.subplots_adjust(wspace=0.42, hspace=0.5)
    name = display_name(stable_model_id(plan.model_id))
    fig.suptitle(
        f"Where to fine-tune {name} ({plan.model_type}, {plan.num_layers} blocks) on "
        f"{len(plan.labels)} labels: {_chosen_words(plan)}",
        fontsize=11,
    )
    return save_figure(fig, path)


def _chosen_words(plan: Plan) -> str:
    what = f"train blocks {plan.cut + 1}-{plan.num_layers} + head" if plan.trainable_layers else "train the head only"
    sure = plan.confidence_text()
    return f"cut {plan.cut}, {what}" + (f" ({sure.split(': ', 1)[1]})" if sure else "")


def _plot_traces(ax, plan: Plan) -> None:
    """SALF's reading of the frozen model, in plain words; a baseline's score otherwise."""
    cuts = [r.cut for r in plan.rows]
    devs = [r.deviation for r in plan.rows]
    if any(d is not None for d in devs):
        ax.plot(cuts, [d if d is not None else float("nan") for d in devs], "o-", color="C0",
                label="distance to the task's labels after layer l (d_l)")  # fmt: skip
        ax.set_ylabel("distance to the labels (cross-entropy)")
        gain_ax = ax.twinx()
        width = 0.38
        gains = [r.gain if r.gain is not None else 0.0 for r in plan.rows]
        expected = [r.expected_gain if r.expected_gain is not None else 0.0 for r in plan.rows]
        gain_ax.bar([c - width / 2 for c in cuts], gains, width, color="C1", alpha=0.6,
                    label="how much layer l moves towards the labels (g_l)")  # fmt: skip
        gain_ax.bar([c + width / 2 for c in cuts], expected, width, color="C2", alpha=0.6,
                    label="... beyond what its size predicts (G_l)")  # fmt: skip
        gain_ax.axhline(0, color="grey", lw=0.5)
        gain_ax.set_ylabel("gain per layer")
        handles = [h for a in (ax, gain_ax) for h in a.get_legend_handles_labels()[0]]
    else:
        scores = [r.score if r.score is not None else float("nan") for r in plan.rows]
        ax.plot(cuts, scores, "o-", color="C2", label=f"{plan.planner} score per cut")
        handles = ax.get_legend_handles_labels()[0]
    handles.append(ax.axvline(plan.cut, color="red", ls="--", lw=1, label=f"chosen cut {plan.cut}"))
    ax.set_xlabel("latent space / layer l (0 = embeddings)")
    ax.set_title("what the frozen model's traces say", fontsize=10)
    ax.set_xticks(cuts)
    # below the axes, so that no legend covers the top layers
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=2)


def _plot_costs(ax, plan: Plan) -> None:
    cuts = [r.cut for r in plan.rows]
    fracs = [100 * r.backward_frac for r in plan.rows]
    colors = ["red" if r.cut == plan.cut else ("C0" if r.fits_budget else "lightgrey") for r in plan.rows]
    ax.bar(cuts, fracs, color=colors)
    for r, frac in zip(plan.rows, fracs):  # a head-only cut is ~0%: say so instead of drawing nothing
        ax.annotate(f"{frac:.0f}%" if frac >= 0.5 else "<1%", (r.cut, frac), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=8, color="red" if r.cut == plan.cut else "black")  # fmt: skip
    ax.set_ylabel("backward FLOPs, % of full fine-tuning")
    ax.set_xlabel("cut (train blocks cut+1..L and the head)")
    ax.set_xticks(cuts)
    ax.set_ylim(0, 112)
    mem_ax = ax.twinx()
    mem_ax.plot(cuts, [r.train_memory_mb for r in plan.rows], "s-", color="black", label="estimated train memory (MB)")
    mem_ax.set_ylabel("estimated train memory (MB)")
    over = [r.cut for r in plan.rows if not r.fits_budget]
    note = f"; grey: over budget (cuts {over})" if over else ""
    mem_ax.legend(loc="upper right", fontsize=8)
    chosen = plan.chosen
    ax.set_title(f"cost per cut; chosen (red): {chosen.backward_frac:.0%} of the FLOPs, "
                 f"{chosen.train_memory_mb:.0f} MB{note}", fontsize=10)  # fmt: skip


def _plot_predicted_loss(ax, plan: Plan) -> None:
    """Predicted accuracy loss of each cut (with its 5-95% interval over resamples) against its backward FLOPs;
    the tolerance line; the pick in red."""
    rows = [r for r in plan.rows if r.predicted_loss is not None]
    fracs = [100 * r.backward_frac for r in rows]
    losses = [r.predicted_loss for r in rows]
    if all(r.predicted_loss_low is not None and r.predicted_loss_high is not None for r in rows):
        low = [max(0.0, r.predicted_loss - r.predicted_loss_low) for r in rows]
        high = [max(0.0, r.predicted_loss_high - r.predicted_loss) for r in rows]
        ax.errorbar(fracs, losses, yerr=[low, high], fmt="o-", color="C0", capsize=3,
                    label="predicted loss (bars: 5-95% over resamples)")  # fmt: skip
    else:
        ax.plot(fracs, losses, "o-", color="C0", label="predicted loss")
    for r, x, y in zip(rows, fracs, losses):
        ax.annotate("head" if r.cut == plan.num_layers else str(r.cut), (x, y), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)  # fmt: skip
    chosen = plan.chosen
    if chosen.predicted_loss is not None:
        ax.plot([100 * chosen.backward_frac], [chosen.predicted_loss], "o", color="red", ms=10, label="chosen cut")
    tolerance = plan.planner_params.get("tolerance")
    if tolerance is not None and plan.planner_params.get("policy", "cheapest") == "cheapest":
        unit = "point" if tolerance == 1 else "points"
        ax.axhline(tolerance, color="grey", ls="--", lw=1, label=f"tolerance {tolerance:g} {unit}")
    ax.set_xlabel("backward FLOPs, % of full fine-tuning")
    ax.set_ylabel("predicted accuracy loss vs the best cut (points)")
    ax.set_title("predicted loss vs cost: the cheapest cut under the line wins", fontsize=10)
    ax.legend(fontsize=8)


def _plot_confidence(ax, plan: Plan) -> None:
    """Share of the bootstrap resamples of the calibration sample whose plan chose each cut."""
    cuts = [r.cut for r in plan.rows]
    shares = [100 * (r.chosen_share or 0.0) for r in plan.rows]
    ax.bar(cuts, shares, color=["red" if c == plan.cut else "C0" for c in cuts])
    for c, share in zip(cuts, shares):
        if share > 0:
            ax.annotate(f"{share:.0f}%", (c, share), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(cuts)
    ax.set_ylim(0, 112)
    ax.set_xlabel("cut")
    ax.set_ylabel("resamples choosing the cut (%)")
    sure = plan.confidence_text()
    ax.set_title(sure or "how sure: no resampling for this planner", fontsize=10)
