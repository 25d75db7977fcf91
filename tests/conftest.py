"""Tiny random-config models and a synthetic labelled corpus; no downloads, ever."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EDGETUNE_NO_PROGRESS", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

LABELS = ("alpha", "beta", "gamma")
TOPIC_WORDS = {
    "alpha": ["apple", "orange", "pear", "fruit", "juice"],
    "beta": ["goal", "match", "team", "score", "league"],
    "gamma": ["vote", "party", "minister", "law", "election"],
}
FILLER = ["the", "a", "of", "and", "today", "said", "new", "big", "report", "after", "city", "year"]
VOCAB = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(FILLER) | set(LABELS))
FAMILIES = ("bert", "roberta", "distilbert", "electra", "mpnet", "gpt2", "llama", "qwen2", "mistral")


class Crash(RuntimeError):
    """A simulated crash inside a training loop (raised by :func:`crash_at`)."""


def crash_at(step: int):
    """A step callback that crashes the run right after global step ``step``."""

    def callback(event):
        if event.global_step == step:
            raise Crash(f"simulated crash after step {step}")

    return callback


def kill_at_marker(proc: subprocess.Popen, marker: Path, what: str = "the process", timeout: float = 180) -> None:
    """SIGKILL ``proc`` once it has written ``marker``: the crash tests kill a child at one chosen point of its work.
    Fails, with the child's stderr, if it exits first; fails if it has not got there within ``timeout`` seconds."""
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"{what} never reached its marker"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def synthetic_rows(n: int, seed: int = 0, labels: tuple[str, ...] = LABELS) -> list[tuple[str, str]]:
    """Texts whose topic words reveal their label, padded with filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
        words += [rng.choice(TOPIC_WORDS[label]) for _ in range(rng.randint(1, 3))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def strict_json(path: Path) -> object:
    """``path`` parsed by a strict reader: NaN, Infinity and -Infinity are refused, as most parsers do."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"{path}: non-standard JSON constant {constant}")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def build_tokenizer(family: str):
    """A word-level fast tokenizer over the synthetic vocabulary, with the family's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    decoder = family in ("gpt2", "llama", "qwen2", "mistral")
    if family == "mpnet":  # MPNet's embeddings take the padding id 1 as fixed (position ids count from it)
        return _mpnet_tokenizer(tokenizers_module())
    specials = ["<pad>", "<unk>", "<s>", "</s>"] if decoder else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
        )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tokenizers_module():
    import tokenizers

    return tokenizers


def _mpnet_tokenizer(tk):
    """MPNet's special tokens in all-mpnet-base-v2's order: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + VOCAB)}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )  # fmt: skip


def tiny_config(family: str, layers: int = 3, hidden: int = 32):
    import transformers as tf

    vocab = len(VOCAB) + 8
    common = {"vocab_size": vocab}
    bert_like = {  # config class, positions (RoBERTa and MPNet offset theirs by the pad id + 1), pad id
        "bert": (tf.BertConfig, 64, 0),
        "roberta": (tf.RobertaConfig, 70, 0),
        "mpnet": (tf.MPNetConfig, 70, 1),
    }
    if family in bert_like:
        cls, positions, pad = bert_like[family]
        return cls(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=positions,
            pad_token_id=pad,
            **common,
        )
    if family == "distilbert":
        return tf.DistilBertConfig(
            dim=hidden,
            n_layers=layers,
            n_heads=2,
            hidden_dim=2 * hidden,
            max_position_embeddings=64,
            pad_token_id=0,
            **common,
        )
    if family == "electra":  # embeddings narrower than the blocks: the projection between them is exercised
        return tf.ElectraConfig(
            embedding_size=hidden // 2,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            pad_token_id=0,
            **common,
        )
    if family == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=64, **common)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
    return cls(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        **common,
    )


def build_model(family: str, layers: int = 3, hidden: int = 32, seed: int = 0):
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, layers, hidden)
    auto = AutoModelForCausalLM if family in ("gpt2", "llama", "qwen2", "mistral") else AutoModel
    from edgetune.families import family_for

    attn = family_for(family).attn_implementation  # "eager" where transformers has no SDPA attention
    return auto.from_config(config, attn_implementation=attn).eval()


def save_tiny_model(directory: Path, family: str, layers: int = 3, hidden: int = 32, seed: int = 0) -> Path:
    model = build_model(family, layers, hidden, seed)
    model.save_pretrained(directory)
    build_tokenizer(family).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family)`` -> a saved model + tokenizer directory (cached per session)."""
    cache: dict[tuple, Path] = {}

    def make(family: str = "bert", layers: int = 3, hidden: int = 32, seed: int = 0) -> Path:
        key = (family, layers, hidden, seed)
        if key not in cache:
            cache[key] = save_tiny_model(tmp_path_factory.mktemp(f"{family}{layers}"), family, layers, hidden, seed)
        return cache[key]

    return make


@pytest.fixture()
def train_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "train.csv", synthetic_rows(90))


@pytest.fixture(scope="session")
def device_packages(tiny_model_dir, tmp_path_factory):
    """Two probe-headed packages of different tiny BERT models (cut 1 of 3, with ``top.onnx``): ``main`` and
    ``other``."""
    from tests.devices import export_probe_package

    root = tmp_path_factory.mktemp("device-packages")
    return {
        "main": export_probe_package(tiny_model_dir("bert"), root / "main", top_onnx=True),
        "other": export_probe_package(tiny_model_dir("bert", seed=1), root / "other", top_onnx=True),
    }


@pytest.fixture(scope="session")
def swap_packages(tiny_model_dir, tmp_path_factory):
    """The two packages of a backbone swap, exported once for every swap test: ``old`` (BERT, hidden 32) and
    ``new`` (GPT-2, hidden 48), so d_old != d_new (probe heads, cut 1 of 3, no ``top.onnx``)."""
    from tests.devices import export_probe_package

    root = tmp_path_factory.mktemp("swap-packages")
    return {
        "old": export_probe_package(tiny_model_dir("bert"), root / "old"),
        "new": export_probe_package(tiny_model_dir("gpt2", hidden=48), root / "new"),
    }


@pytest.fixture(scope="session")
def executorch_package(tmp_path_factory):
    """A tiny BERT without dropout (so every backend trains the same way), exported with the executorch target
    as well (cut 1 of 3, probe head)."""
    from tests.devices import export_executorch_package

    root = tmp_path_factory.mktemp("et-package")
    model = build_model("bert", seed=2)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(root / "model")
    build_tokenizer("bert").save_pretrained(root / "model")
    return export_executorch_package(root / "model", root / "pkg")


def _wordpiece_package(root, int8: bool):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from edgetune.datasets import minilm_path
    from exporters.export import ExportOptions, export_package
    from tests.packages import dataset, make_checkpoint, make_plan

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the same weights in every session: tests do not hang on a draw
        torch.manual_seed(0)
        BertModel(config).save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(root / "model")
    checkpoint = make_checkpoint(root / "model", root / "ckpt")
    options = ExportOptions(threads=1, targets=("onnx", "executorch"), int8=int8)
    plan = make_plan(root / "model", k=2)
    return export_package(checkpoint, plan, root / "pkg", data=dataset(90, seed=5), options=options).path


@pytest.fixture(scope="session")
def wordpiece_executorch_package(tmp_path_factory):
    """A tiny BERT (3 blocks, hidden 32, no dropout) with MiniLM's real WordPiece tokenizer, exported with the
    executorch target (cut 1, probe head): what libedgetune_device tokenizes, predicts with and trains."""
    return _wordpiece_package(tmp_path_factory.mktemp("wordpiece-et"), int8=False)


@pytest.fixture(scope="session")
def wordpiece_int8_package(tmp_path_factory):
    """The same tiny BERT exported with --int8 as well: trunk.int8.pte beside trunk.pte."""
    return _wordpiece_package(tmp_path_factory.mktemp("wordpiece-int8"), int8=True)


@pytest.fixture(scope="session")
def native_library(tmp_path_factory):
    """libedgetune_device (with its driver and example app), built once per session with the documented CMake
    command (really built: never skipped) and named by $EDGETUNE_DEVICE_LIB while the session runs."""
    from device_sim.native import build_library

    path = build_library(tmp_path_factory.mktemp("native-build"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETUNE_DEVICE_LIB", str(path))
        yield path


# -- test tiers ------------------------------------------------------------------------------------------------
# `python -m pytest -m "not slow"` is the quick tier (a couple of minutes on 2 cores); the full suite runs them all.
# Slow = end to end through real exports of several families, subprocesses, kills, Ray, the C++ build, or a
# whole training run: a module listed here is slow as a whole; otherwise the tests named (every parameter).
SLOW_MODULES = {
    "test_backends",  # ExecuTorch export + the C library's build
    "test_cli_device",  # packages + personalization through the command line
    "test_cli_export",
    "test_cli_skip_merge",
    "test_cli_train",
    "test_conformance",  # packages of every family, every personal-state kind
    "test_executorch_export",
    "test_export_atomicity",  # kill -9 mid-export
    "test_fala_residual",
    "test_faults",  # kill -9, locks, recovery
    "test_fleet",
    "test_fleet_scale",  # Ray
    "test_hf_export",  # export-personal end to end: package + states, optimum's exporter, pipelines
    "test_mpnet",
    "test_onnx_top",
    "test_package",  # packages of several families
    "test_real_export",  # the bundled MiniLM
    "test_real_model",
    "test_report_to",  # train and skip runs through the command line
    "test_swap",
    "test_train_multiprocess",
    "test_tuners_train",
}
SLOW_TESTS = {
    "test_budget_is_respected",
    "test_checkpoint_of_a_different_run_is_refused",
    "test_output_directory_rules",
    "test_search_keeps_the_best_candidate_on_validation",
    "test_selection_tries_every_candidate_and_keeps_a_better_one",
    "test_a_crash_while_writing_keeps_the_previous_checkpoint",
    "test_a_killed_job_keeps_the_previous_state_and_resumes",
    "test_an_interrupted_job_of_other_data_is_discarded",
    "test_autofreeze_runs_on_a_copy_and_freezes_a_converged_prefix",
    "test_early_stopping_keeps_the_best_epoch",
    "test_gates_respect_the_budget_after_training",
    "test_memory_mapped_and_fp16_caches",
    "test_naive_and_cached_modes_train_the_same_model",
    "test_parity_failure_is_loud_and_names_the_diff",
    "test_personalization_learns_the_users_labels",
    "test_profile_refuses_a_job_that_does_not_fit_and_a_higher_cut_runs",
    "test_released_trunk_frees_its_weights_and_comes_back_bit_for_bit",
    "test_resume_after_a_crash_matches_an_uninterrupted_run",
    "test_salf_plans_every_family",
    "test_same_seed_same_plan",
    "test_sparse_delta_round_trip_is_exact_and_smaller",
    "test_training_learns_the_task",
    "test_trunk_at_the_edges",
    "test_trunk_parity_every_family",
    "test_external_weights_file",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
