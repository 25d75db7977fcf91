"""The cost model, re-exported from :mod:`edgetune.costs` (its home since the device stopped importing the
planner: this package's ``__init__`` loads SALF, the device needs only the formulas)."""

from edgetune.costs import (  # noqa: F401
    MB,
    ArchSummary,
    Budget,
    CostConfig,
    CutCost,
    TunerCost,
    activation_bytes_per_block,
    activation_profile,
    block_backward_flops,
    block_forward_flops,
    estimate_all,
    estimate_cut,
    skipped_input_grad,
    top_extra_activations,
)
