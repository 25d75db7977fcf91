import pytest
import torch
from safetensors.torch import save

from edgetune.backbones import Backbone
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.tuners import LoraTuner, get_tuner
from edgetune.tuners.roselora import RoseLoraTuner, density_at, keep_count
from tests.conftest import build_model


def _clf(family: str, layers: int = 3) -> SequenceClassifier:
    return SequenceClassifier(Backbone(build_model(family, layers=layers)), num_labels=3)


def _data(clf: SequenceClassifier, cut: int, n: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (n, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0
    labels = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        hidden = clf.trunk_forward(ids, mask, cut)
    return hidden, mask, labels


def _train(tuner, top, hidden, mask, labels, steps: int, check=None):
    """The trainer's step order: backward, before_step, optimizer step, after_step."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(tuner.trainable_parameters(top).values(), lr=2e-2)
    top.train()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(top(hidden, mask), labels)
        loss.backward()
        tuner.before_step(top, step, steps)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tuner.after_step(top, step, steps)
        if check is not None:
            check(step)
    top.eval()


def test_density_schedule_is_cubic_between_warmup_and_final():
    total, target = 100, 0.1
    at = [density_at(s, total, target, warmup=0.1, final=0.2) for s in range(total)]
    assert at[:11] == [1.0] * 11  # warm-up (steps 0..9) and the first pruning step
    assert at[45] == pytest.approx(target + (1 - target) * 0.5**3)  # half-way through steps 10..80
    assert at[79] == pytest.approx(target + (1 - target) * (1 / 70) ** 3)
    assert at[80:] == [target] * 20  # final phase
    assert all(a >= b for a, b in zip(at, at[1:]))
    assert density_at(0, 10, 0.5, warmup=0.0, final=0.0) == 1.0
    assert density_at(9, 10, 0.5, warmup=0.0, final=0.0) == pytest.approx(0.5 + 0.5 * 0.1**3)
    assert keep_count(0.3, 10) == 3 and keep_count(0.31, 10) == 4
    assert keep_count(1e-4, 10) == 1 and keep_count(1.0, 7) == 7


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"target_density": 0.0}, "target_density"),
        ({"target_density": 1.5}, "target_density"),
        ({"r": 0}, "rank"),
        ({"warmup": 0.6, "final": 0.4}, "warmup"),
        ({"ema": 1.0}, "ema"),
    ],
)
def test_bad_settings_are_clear_errors(params, match):
    with pytest.raises(ValueError, match=match):
        get_tuner("roselora", **params)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_every_row_of_a_and_column_of_b_keeps_the_scheduled_count(family):
    clf = _clf(family)
    tuner = get_tuner("roselora", r=4, target_density=0.25, warmup=0.2, final=0.2, dropout=0.0)
    top = tuner.prepare(clf, cut=1)
    hidden, mask, labels = _data(clf, 1)
    steps, seen = 20, []

    def check(step: int) -> None:
        rho = tuner.density_at(step, steps)
        if rho >= 1.0:
            return
        seen.append(step)
        pairs = {}
        for name, (p, dim) in tuner.factors(top).items():
            nnz = (p != 0).sum(dim=dim)
            assert (nnz == keep_count(rho, p.shape[dim])).all(), (name, step, nnz.tolist())
            # kept entries are the most important ones along their row / column
            imp = tuner.importance[name]
            kept_min = imp.masked_fill(p == 0, float("inf")).amin(dim=dim)
            dropped_max = imp.masked_fill(p != 0, float("-inf")).amax(dim=dim)
            assert (kept_min >= dropped_max).all()
            pairs.setdefault(name.split(".lora_")[0], {})[name.split(".lora_")[1][0]] = p.detach()
        for factors in pairs.values():
            a, b = factors["A"], factors["B"]  # (r, in), (out, r)
            update = b @ a
            bound = sum(int((b[:, j] != 0).sum()) * int((a[j] != 0).sum()) for j in range(a.shape[0]))
            assert int((update != 0).sum()) <= bound
            if rho == tuner.config.target_density:  # r * (0.25 * 32)^2 = 256 of 1024 entries at most
                assert bound <= update.numel() // 4
            assert not update[(b != 0).sum(dim=1) == 0].any()  # rows outside every B column's support
            assert not update[:, (a != 0).sum(dim=0) == 0].any()  # columns outside every A row's support

    _train(tuner, top, hidden, mask, labels, steps, check)
    assert seen == list(range(5, 20))  # warm-up of 4 steps, then the first pruning step keeps everything
    assert tuner.nonzero_adapter_params(top) < sum(p.numel() for p, _ in tuner.factors(top).values()) / 3


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_sparse_delta_round_trip_is_exact_and_smaller(family, tmp_path):
    clf = SequenceClassifier(Backbone(build_model(family, layers=3, hidden=64)), num_labels=3).eval()
    clf.detached_top(1).save(tmp_path)
    tuner = get_tuner("roselora", r=4, target_density=0.2, warmup=0.1, final=0.3)
    top = tuner.prepare(clf, cut=1)
    hidden, mask, labels = _data(clf, 1)
    _train(tuner, top, hidden, mask, labels, 15)
    delta = tuner.delta_state(top)
    dense = LoraTuner.delta_state(tuner, top)
    assert any(k.endswith(".indices") for k in delta) and not any(".lora_" in k and k in dense for k in delta)
    assert len(save(delta)) < 0.6 * len(save(dense))

    device_top = TopModel.load(tmp_path, native=False).eval()  # transformers' blocks: bit-exact
    device = get_tuner("roselora", **tuner.config.to_dict())
    device.prepare(device_top)
    device.load_delta(device_top, delta)
    loaded = device.trainable_parameters(device_top)
    for name, p in tuner.trainable_parameters(top).items():
        assert torch.equal(loaded[name], p), name
    assert set(device.masks) == set(tuner.masks) and all(
        torch.equal(device.masks[k], tuner.masks[k]) for k in device.masks
    )
    with torch.no_grad():
        assert torch.equal(device_top(hidden, mask), top(hidden, mask))
    assert device.delta_state(device_top).keys() == delta.keys()  # a loaded delta is written back the same way
    plain_top = TopModel.load(tmp_path).eval()  # the device's plain-torch blocks: equal up to float rounding
    plain = get_tuner("roselora", **tuner.config.to_dict())
    plain.prepare(plain_top)
    plain.load_delta(plain_top, delta)
    with torch.no_grad():
        assert torch.allclose(plain_top(hidden, mask), top(hidden, mask), atol=1e-5)

    key = next(k for k in delta if k.endswith(".indices"))
    with pytest.raises(ValueError, match="has no"):
        device.load_delta(device_top, {k: v for k, v in delta.items() if k != key})
    repeated = dict(delta)
    repeated[key] = delta[key].clone()
    repeated[key].view(-1)[1] = repeated[key].view(-1)[0]
    with pytest.raises(ValueError, match="repeats"):
        device.load_delta(device_top, repeated)
    bad_shape = dict(delta)
    bad_shape[key.replace(".indices", ".values")] = delta[key.replace(".indices", ".values")][:, :1]
    with pytest.raises(ValueError, match="does not fit"):
        device.load_delta(device_top, bad_shape)


def test_merged_model_equals_the_adapted_one():
    clf = _clf("llama").eval()
    tuner = get_tuner("roselora", r=4, target_density=0.3)
    top = tuner.prepare(clf, cut=1)
    hidden, mask, labels = _data(clf, 1)
    _train(tuner, top, hidden, mask, labels, 12)
    with torch.no_grad():
        before = top(hidden, mask)
        tuner.merge(top)
        assert torch.allclose(top(hidden, mask), before, atol=1e-5)
    assert isinstance(tuner, RoseLoraTuner) and not tuner.factors(top)
