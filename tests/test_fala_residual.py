"""FaLA's residual form: the new global head + the user's difference from the old global head, carried by W."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from device_sim.device import Device
from device_sim.swap import SwapConfig, head_backward_flops, swap
from edgetune.fala import FalaHead, PersonalMatrix, as_linear, compose
from edgetune_format.personal import read_personal_state
from tests.devices import export_probe_package, fast, user_data


def _residual(d_new=48, d_old=32, c=3, seed=0) -> FalaHead:
    torch.manual_seed(seed)
    return compose(PersonalMatrix(d_new, d_old), torch.nn.Linear(d_old, c), torch.nn.Linear(d_new, c),
                   torch.nn.Linear(d_old, c))  # fmt: skip


def test_residual_head_computes_base_plus_personal_difference_and_round_trips():
    head = _residual()
    x = torch.randn(5, 48)
    with torch.no_grad():
        z = head.matrix(x)
        assert torch.allclose(head(x), head.base(x) + head.head(z) - head.reference(z), atol=1e-6)
        rebuilt = FalaHead.from_state(head.state_dict())
        assert rebuilt.residual and torch.allclose(rebuilt(x), head(x), atol=1e-6)
    assert not any(p.requires_grad for p in head.reference.parameters())  # the old global head stays frozen
    # when the personal head equals the old global head, the residual head is the new global head exactly
    same = compose(head.matrix, head.reference, head.base, head.reference)
    with torch.no_grad():
        assert torch.allclose(same(x), head.base(x), atol=1e-5)


def test_a_residual_head_folds_exactly_into_one_linear_layer_for_a_later_swap():
    head = _residual()
    x = torch.randn(6, 48)
    linear = as_linear(head, 48)
    with torch.no_grad():
        assert torch.allclose(linear(x), head(x), atol=1e-5)
    second = compose(PersonalMatrix(40, 48), head)  # a second swap: 40-wide features -> the 48-wide package
    assert not second.residual and second.head.in_features == 48
    y = torch.randn(4, 40)
    with torch.no_grad():
        assert torch.allclose(second(y), head(second.matrix(y)), atol=1e-5)


def test_residual_backward_flops_match_the_counter():
    head = _residual(c=5)
    x = torch.randn(8, 48)  # cached features: no gradient
    loss = torch.nn.functional.cross_entropy(head(x), torch.zeros(8, dtype=torch.long))
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(8 * head_backward_flops(48, 32, 5, residual=True), rel=0.01)


def test_residual_swap_writes_a_state_the_new_package_predicts_with(tiny_model_dir, tmp_path):
    old = export_probe_package(tiny_model_dir("bert"), tmp_path / "old")
    new = export_probe_package(tiny_model_dir("mpnet", hidden=48), tmp_path / "new")
    data, test = user_data(120, seed=3), user_data(60, seed=4)
    with Device(old, threads=1) as device:
        device.personalize(data, tmp_path / "personal", fast())
    config = SwapConfig(fraction=0.2, tune_lr=1e-2, form="residual")
    result = swap(old, new, tmp_path / "personal", data, tmp_path / "fala", config, threads=1)
    state = read_personal_state(tmp_path / "fala")
    assert state.kind == "fala" and {"base.weight", "reference.weight"} <= set(state.tensors)
    assert result.details["form"] == "residual"
    assert result.backward_flops == pytest.approx(
        head_backward_flops(48, 32, 3, residual=True) * result.examples_used * result.details["tune_steps"]
    )
    with Device(new, threads=1) as device:
        features = torch.as_tensor(device.features(test.texts[:8]))
        logits = torch.as_tensor(device.predict_logits(test.texts[:8], tmp_path / "fala"))
        assert torch.allclose(FalaHead.from_state(state.tensors)(features), logits, atol=1e-4)
        assert device.evaluate(test, tmp_path / "fala")["accuracy"] > device.evaluate(test)["accuracy"] + 0.15
    with pytest.raises(ValueError, match="form must be one of"):
        SwapConfig(form="other")
