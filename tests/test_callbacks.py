"""The training loop's callback hooks (edgetune.callbacks): order, loss terms, own parameters, checkpointed state."""

from __future__ import annotations

import pytest
import torch

from edgetune.api import load_model
from edgetune.callbacks import StepEvent, TrainerCallback, as_callbacks, join_state, split_state
from edgetune.data import load_dataset
from edgetune.train import TrainConfig, Trainer
from edgetune.tuners import get_tuner
from tests.conftest import synthetic_rows, write_csv


class Recorder(TrainerCallback):
    """Logs every hook call; trains one scalar of its own, pulled to 3.0 by its loss term."""

    def __init__(self, weight: float = 1.0) -> None:
        self.calls: list[str] = []
        self.scalar = torch.nn.Parameter(torch.zeros(()))
        self.weight = weight

    def setup(self, device: torch.device) -> list[dict]:
        self.calls.append("setup")
        return [{"params": [self.scalar], "lr": 0.1, "weight_decay": 0.0}]

    def on_step_begin(self, step: int, total_steps: int) -> None:
        self.calls.append(f"begin {step}/{total_steps}")

    def loss(self) -> torch.Tensor:
        self.calls.append("loss")
        return self.weight * (self.scalar - 3.0) ** 2

    def on_step_end(self, event: StepEvent) -> None:
        self.calls.append(f"end {event.global_step}")

    def on_epoch_end(self, row: dict) -> None:
        self.calls.append("epoch")
        row["scalar"] = float(self.scalar.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scalar": self.scalar.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.scalar.copy_(state["scalar"])


@pytest.fixture()
def trainer_parts(tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert", layers=2)
    data = load_dataset(write_csv(tmp_path / "train.csv", synthetic_rows(24)))

    def make(callbacks=(), checkpoint_dir=None) -> Trainer:
        backbone, encoder = load_model(model, 12)
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2, progress=False, device="cpu")
        tuner = get_tuner("full")
        return Trainer(backbone, encoder, 1, data.label_map(), tuner, config, checkpoint_dir, None, callbacks)

    return make, data


def test_hooks_run_in_order_and_train_the_callbacks_own_parameters(trainer_parts):
    make, data = trainer_parts
    recorder = Recorder()
    result = make([recorder]).fit(data)
    steps = 3  # 24 examples, batch 8
    expected = ["setup"]
    for epoch in range(2):
        for step in range(epoch * steps, (epoch + 1) * steps):
            expected += [f"begin {step}/6", "loss", f"end {step + 1}"]
        expected.append("epoch")
    assert recorder.calls == expected
    assert 0.0 < result.history[0]["scalar"] < result.history[1]["scalar"] < 3.0  # its loss term moved it
    assert "scalar" not in result.delta  # the callback's parameters are its own, not the top's


def test_a_loss_term_changes_the_gradients_of_the_top(trainer_parts):
    """A term that depends only on the callback's scalar leaves the top's training as it was; the recorded loss is
    the task's cross-entropy either way."""
    make, data = trainer_parts
    plain = make().fit(data)
    with_term = make([Recorder(weight=5.0)]).fit(data)
    assert [h["loss"] for h in plain.history] == pytest.approx([h["loss"] for h in with_term.history], abs=1e-6)


def test_callback_state_is_checkpointed_and_restored(trainer_parts, tmp_path):
    make, data = trainer_parts
    first = Recorder()
    make([first], tmp_path / "ckpt").fit(data)
    second = Recorder()
    trainer = make([lambda event: None, second], tmp_path / "ckpt")  # another stateless callback: still found
    trainer.fit(data)  # the finished run resumes at its end: nothing trains, the state is loaded
    assert float(second.scalar.detach()) == pytest.approx(float(first.scalar.detach()))
    assert "setup" in second.calls and not any(c.startswith("begin") for c in second.calls)


def test_state_keys_and_refusals():
    recorder = Recorder()
    joined = join_state({"tuner.x": torch.ones(1)}, [StepFunctionless(), recorder])
    assert sorted(joined) == ["callback.Recorder.scalar", "tuner.x"]
    own, parts = split_state(joined, [recorder])
    assert list(own) == ["tuner.x"] and list(parts[0]) == ["scalar"]
    with pytest.raises(ValueError, match="Recorder callback"):
        split_state(joined, [])  # a run without the callback cannot take its state
    with pytest.raises(ValueError, match="two callbacks of one class"):
        join_state({}, [Recorder(), Recorder()])
    with pytest.raises(TypeError, match="TrainerCallback"):
        as_callbacks([42])
    with pytest.raises(ValueError, match="keeps no state"):
        TrainerCallback().load_state_dict({"x": torch.zeros(1)})


class StepFunctionless(TrainerCallback):
    """A callback with no state: adds no key."""
