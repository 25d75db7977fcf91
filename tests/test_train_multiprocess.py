"""Server training on two CPU processes (gloo): the same model as one process, resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgetune.api import load_model, plan
from edgetune.checkpoint import load_checkpoint
from edgetune.finetune import finetune
from edgetune.train import TrainConfig
from tests.conftest import Crash, build_model, build_tokenizer, crash_at, synthetic_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_single_process_model_and_resume_its_checkpoint(tmp_path):
    """A single-process run crashes after step 3; `accelerate launch` resumes it on 2 processes (each cache built
    by both, in shards, gathered, written by the main process and mapped by the other; validation and test
    predictions gathered; checkpoints and outputs by the main process).
    The result equals an uninterrupted single-process run with the same global batch. No dropout in the model:
    each process draws its own masks, so only a model without dropout can match one process exactly."""
    model = build_model("bert", layers=3, seed=4)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(tmp_path / "model")
    build_tokenizer("bert").save_pretrained(tmp_path / "model")
    train = write_csv(tmp_path / "train.csv", synthetic_rows(75, seed=2))  # 60 + 15 validation: odd last batches
    test = write_csv(tmp_path / "test.csv", synthetic_rows(31, seed=3))
    p = plan(load_model(tmp_path / "model", 16), train, planner="topk", planner_params={"k": 2}, progress=False)
    p.save(tmp_path / "plan.json")
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-3, val_fraction=0.2, device="cpu", progress=False)
    reference = finetune(tmp_path / "model", tmp_path / "plan.json", train, tmp_path / "ref", config, eval_data=test)

    out = tmp_path / "run"
    crashed = TrainConfig(**{**config.__dict__, "checkpoint_steps": 2, "cache": "memory"})
    with pytest.raises(Crash):
        finetune(tmp_path / "model", tmp_path / "plan.json", train, out, crashed, callbacks=[crash_at(3)])
    assert load_checkpoint(out / "checkpoint").state.global_step == 2

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), "-m", "edgetune_cli", "train"]
    args = ["--model", str(tmp_path / "model"), "--plan", str(tmp_path / "plan.json"), "--data", str(train)]
    args += ["--out", str(out), "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--val-fraction", "0.2"]
    args += ["--device", "cpu", "--cache", "mmap", "--eval-data", str(test), "--checkpoint-steps", "2"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(OMP_NUM_THREADS="1", EDGETUNE_NO_PROGRESS="1")
    done = subprocess.run([*launch, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("trained blocks") == 1  # the main process alone prints

    saved = json.loads((out / "train.json").read_text())
    expected = json.loads((tmp_path / "ref" / "train.json").read_text())
    assert saved["processes"] == 2 and expected["processes"] == 1
    assert [h["resumed"] for h in saved["history"]] == [True, False, False]
    assert np.allclose([h["loss"] for h in saved["history"][1:]], [h["loss"] for h in expected["history"][1:]],
                       atol=1e-5)  # fmt: skip
    assert [h["val_accuracy"] for h in saved["history"]] == [h["val_accuracy"] for h in expected["history"]]
    assert saved["metrics"]["accuracy"] == expected["metrics"]["accuracy"] == reference.metrics["accuracy"]
    ours, theirs = load_file(str(out / "delta.safetensors")), load_file(str(tmp_path / "ref" / "delta.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5), name
    assert not (out / "checkpoint").exists() and not list(out.glob(".*"))  # finished: no checkpoint, no leftovers
