"""FaLA's personal state behind the tuner interface: prepare / load_delta / merge like every other kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_sim.apply import fala_head
from edgetune.fala import FalaHead, PersonalMatrix, compose
from edgetune.tuners import STATE_TUNERS, TUNERS, FalaTuner, tuner_from_dict
from tests.test_tuners import _batch, _clf


def _state(d: int, labels: int, residual: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    matrix, head = PersonalMatrix(d, d + 3), torch.nn.Linear(d + 3, labels)
    for p in [*matrix.parameters(), *head.parameters()]:
        p.data = torch.randn(p.shape, generator=g)
    if not residual:
        return compose(matrix, head).state_dict()
    base, reference = torch.nn.Linear(d, labels), torch.nn.Linear(d + 3, labels)
    return compose(matrix, head, base=base, reference=reference).state_dict()


@pytest.mark.parametrize("residual", [False, True])
def test_load_then_merge_keeps_the_outputs_and_leaves_one_linear_head(residual):
    top = _clf().top(2)
    _, mask = _batch()
    hidden = torch.randn(*mask.shape, top.head.in_features, generator=torch.Generator().manual_seed(1))
    state = _state(top.head.in_features, top.head.out_features, residual)
    tuner = tuner_from_dict({"name": "fala", "params": {"form": "residual" if residual else "plain", "k": 5}})
    assert isinstance(tuner, FalaTuner) and tuner.config.settings == {"k": 5}
    tuner.prepare(top)
    tuner.load_delta(top, state)
    assert isinstance(top.head, FalaHead) and top.head.residual == residual
    with torch.no_grad():
        before = top(hidden, mask)
        tuner.merge(top)
        after = top(hidden, mask)
    assert isinstance(top.head, torch.nn.Linear)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # the torch-free fold of the ONNX path gives the same head
    weight, bias = fala_head({k: v.numpy() for k, v in state.items()}, top.head.in_features, "state")
    np.testing.assert_allclose(weight, top.head.weight.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(bias, top.head.bias.detach().numpy(), atol=1e-4)


def test_a_head_for_other_features_or_another_form_is_refused():
    top = _clf().top(2)
    tuner = FalaTuner(form="plain")
    tuner.prepare(top)
    with pytest.raises(ValueError, match="reads 7 features"):
        tuner.load_delta(top, _state(7, top.head.out_features, residual=False))
    with pytest.raises(ValueError, match="residual FaLA head"):
        tuner.load_delta(top, _state(top.head.in_features, top.head.out_features, residual=True))
    with pytest.raises(ValueError, match="missing"):
        tuner.load_delta(top, {"head.weight": torch.zeros(2, 2)})


def test_fala_reads_states_but_no_training_loop_offers_it():
    assert "fala" in STATE_TUNERS and "fala" not in TUNERS
    with pytest.raises(ValueError, match="form"):
        FalaTuner(form="diagonal")
    assert FalaTuner(form="residual", k=3).to_dict() == {"name": "fala", "params": {"k": 3, "form": "residual"}}
