"""FaLA's map fitted on all the user's (unlabelled) texts, clustering over either backbone, distillation."""

import numpy as np
import pytest
import torch

from device_sim.device import Device
from device_sim.swap import SwapConfig, curated_examples, swap, tune_fala_head
from edgetune.fala import FalaHead, PersonalMatrix, compose, correlation_distance, joint_features
from edgetune_format.personal import read_personal_state
from tests.devices import fast, user_data


@pytest.fixture(scope="module")
def pair(swap_packages, tmp_path_factory):
    """The swap packages (conftest.swap_packages) and a personal state on the old one."""
    root = tmp_path_factory.mktemp("swap-unlabelled")
    old, new = swap_packages["old"], swap_packages["new"]
    data = user_data(60, seed=3)
    with Device(old, threads=1) as device:
        device.personalize(data, root / "personal", fast())
    return {"old": old, "new": new, "personal": root / "personal", "data": data}


def test_defaults_fit_the_map_on_all_texts_and_draw_the_labelled_examples_at_random():
    config = SwapConfig()
    assert config.map_on == "all" and config.selection == "random" and config.cluster_on == "new"
    assert config.distill == 0.0
    for bad in ({"map_on": "labelled"}, {"cluster_on": "neither"}, {"distill": -1.0}):
        with pytest.raises(ValueError):
            SwapConfig(**bad)


def test_the_map_is_the_ridge_fit_on_every_text(pair, tmp_path):
    """map_on=all: W is the ridge map over all the user's texts (no labels), not over the k curated ones."""
    config = SwapConfig(fraction=0.1, tune_epochs=0, ridge_alpha=1.0)
    result = swap(pair["old"], pair["new"], pair["personal"], pair["data"], tmp_path / "all", config, threads=1)
    assert result.examples_used == 6 and result.details["map_examples"] == 60
    with Device(pair["old"], threads=1) as old, Device(pair["new"], threads=1) as new:
        personal = old.load_personal(pair["personal"])
        old_all = old.features(pair["data"].texts, personal)
        new_all = new.features(pair["data"].texts)
    expected = PersonalMatrix.fit(new_all, old_all, 1.0)
    curated = PersonalMatrix.fit(new_all[result.selected], old_all[result.selected], 1.0)
    w = read_personal_state(tmp_path / "all").tensors["matrix.linear.weight"]
    assert torch.allclose(w, expected.linear.weight, atol=1e-4)
    assert not torch.allclose(w, curated.linear.weight, atol=1e-3)
    # the abstract's reading: the k curated examples alone
    config = SwapConfig(fraction=0.1, tune_epochs=0, ridge_alpha=1.0, map_on="curated")
    result = swap(pair["old"], pair["new"], pair["personal"], pair["data"], tmp_path / "cur", config, threads=1)
    assert result.details["map_examples"] == 6
    w = read_personal_state(tmp_path / "cur").tensors["matrix.linear.weight"]
    assert torch.allclose(w, curated.linear.weight, atol=1e-4)


def test_clustering_over_old_or_both_features(pair, tmp_path):
    rng = np.random.default_rng(0)
    new, old = rng.normal(size=(40, 12)), rng.normal(size=(40, 6))
    labels = np.repeat([0, 1], 20)
    clustered = {on: SwapConfig(fraction=0.2, selection="cluster", cluster_on=on) for on in ("new", "old")}
    picks = {on: curated_examples(new, labels, config, old) for on, config in clustered.items()}
    assert all(len(p) == 8 for p in picks.values()) and picks["new"] != picks["old"]
    with pytest.raises(ValueError, match="old features"):
        curated_examples(new, labels, SwapConfig(selection="cluster", cluster_on="both"))
    # joined features: the correlation of two rows is the mean of their per-backbone correlations
    joint = correlation_distance(joint_features(new, old))
    assert np.allclose(joint, (correlation_distance(new) + correlation_distance(old)) / 2, atol=1e-9)
    # and a whole swap (FaLA and head-only) runs with it
    for method in ("fala", "head-only"):
        config = SwapConfig(method=method, fraction=0.1, selection="cluster", cluster_on="both", tune_epochs=5)
        result = swap(pair["old"], pair["new"], pair["personal"], pair["data"], tmp_path / method, config, threads=1)
        assert result.examples_used == 6


def test_distillation_keeps_the_unlabelled_predictions_near_the_teacher():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    new_all = rng.normal(size=(50, 8)).astype(np.float32)
    old_all = (new_all @ rng.normal(size=(8, 4))).astype(np.float32)
    teacher_head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        teacher = teacher_head(torch.as_tensor(old_all)).numpy()
    labels = rng.integers(0, 3, size=5)  # five labels that contradict the teacher

    def tuned(distill: float) -> FalaHead:
        head = compose(PersonalMatrix.fit(new_all, old_all, 1.0), teacher_head)
        tune_fala_head(head, new_all[:5], labels, 200, 3e-2, unlabelled=new_all, teacher=teacher, distill=distill)
        return head

    def agreement(head: FalaHead) -> float:
        with torch.no_grad():
            return float((head(torch.as_tensor(new_all)).argmax(1).numpy() == teacher.argmax(1)).mean())

    assert agreement(tuned(5.0)) > agreement(tuned(0.0))


def test_a_distilled_swap_counts_the_distilled_texts(pair, tmp_path):
    base = SwapConfig(fraction=0.1, tune_epochs=3)
    plain = swap(pair["old"], pair["new"], pair["personal"], pair["data"], tmp_path / "a", base, threads=1)
    config = SwapConfig(fraction=0.1, tune_epochs=3, distill=1.0)
    distilled = swap(pair["old"], pair["new"], pair["personal"], pair["data"], tmp_path / "b", config, threads=1)
    assert distilled.backward_flops == pytest.approx(plain.backward_flops * (6 + 60) / 6)
    with Device(pair["new"], threads=1) as device:  # the state reads back through the new package
        assert device.evaluate(pair["data"], tmp_path / "b")["accuracy"] >= 0.0


def test_the_swap_command_takes_the_levers(pair, tmp_path):
    from typer.testing import CliRunner

    from edgetune_cli import app
    from tests.conftest import write_csv

    data = pair["data"]
    user = write_csv(tmp_path / "user.csv", list(zip(data.texts, data.labels)))
    swap_args = ["swap", "--old", str(pair["old"]), "--new", str(pair["new"]), "--personal", str(pair["personal"]),
                 "--data", str(user), "--tune-epochs", "2"]  # fmt: skip
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [*swap_args, "--out", str(out), "--map-on", "curated", "--distill", "1",
                                      "--cluster-on", "both"])  # fmt: skip
    assert result.exit_code == 0, result.output
    training = read_personal_state(out).manifest["training"]
    assert (training["map_on"], training["cluster_on"], training["distill"]) == ("curated", "both", 1.0)
    result = CliRunner().invoke(app, [*swap_args, "--out", str(tmp_path / "bad"), "--map-on", "labels"])
    assert result.exit_code != 0 and "map_on" in result.output and not (tmp_path / "bad").exists()
