import pytest
import torch

import edgetune
from edgetune.api import load_model, plan
from edgetune.backbones import family_for
from edgetune.freeze import embedding_modules, trainable_summary
from edgetune.planner import PlanError
from tests.conftest import build_tokenizer, synthetic_rows, tiny_config


@pytest.fixture()
def make_plan(tiny_model_dir, train_csv, tmp_path):
    def make(family: str, k: int = 2, layers: int = 4):
        p = plan(
            load_model(tiny_model_dir(family, layers=layers), 16), train_csv, planner="topk", planner_params={"k": k}
        )
        return p.save(tmp_path / f"{family}-plan.json")

    return make


def _seq_cls(family: str, layers: int = 4):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = tiny_config(family, layers)
    config.num_labels = 3
    if family in ("gpt2", "llama"):
        config.pad_token_id = 0
    return AutoModelForSequenceClassification.from_config(config)


def _frozen_split(model, cut: int):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_for(base.config.model_type)
    frozen = [p for m in embedding_modules(family, base) for p in m.parameters()]
    frozen += [p for b in list(family.blocks(base))[:cut] for p in b.parameters()]
    ids = {id(p) for p in frozen}
    return frozen, [p for p in model.parameters() if id(p) not in ids]


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
def test_apply_plan_freezes_an_hf_classifier_in_place(family, make_plan):
    model = _seq_cls(family)
    model.requires_grad_(False)  # whatever state the user left: the plan decides
    assert edgetune.apply_plan(model, make_plan(family)) is model
    frozen, rest = _frozen_split(model, cut=2)
    assert all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in rest)  # blocks 3..4, pooler / classifier / score head
    counts = trainable_summary(model)
    assert 0 < counts["trainable"] < counts["total"]


def test_apply_plan_refuses_a_plan_for_another_architecture(make_plan):
    with pytest.raises(PlanError, match="4-layer bert"):
        edgetune.apply_plan(_seq_cls("bert", layers=3), make_plan("bert"))
    with pytest.raises(PlanError, match="llama"):
        edgetune.apply_plan(_seq_cls("bert"), make_plan("llama"))


def test_peft_lora_only_in_the_chosen_layers(make_plan):
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    plan_path = make_plan("bert", k=1)
    model = get_peft_model(_seq_cls("bert"), edgetune.lora_config(plan_path, r=4, task_type="SEQ_CLS"))
    edgetune.apply_plan(model, plan_path)
    blocks = model.get_base_model().bert.encoder.layer
    adapted = {i for i, b in enumerate(blocks) if any(isinstance(m, LoraLayer) for m in b.modules())}
    assert adapted == {3}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    with pytest.raises(PlanError, match="head only"):
        edgetune.lora_config(make_plan("bert", k=0))


def test_transformers_trainer_trains_only_what_the_plan_chose(make_plan, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _seq_cls("bert")
    edgetune.apply_plan(model, make_plan("bert"))
    tokenizer = build_tokenizer("bert")
    labels = {"alpha": 0, "beta": 1, "gamma": 2}
    rows = synthetic_rows(24)
    enc = tokenizer([t for t, _ in rows], padding="max_length", max_length=16, truncation=True)
    data = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[y]}
        for i, (_, y) in enumerate(rows)
    ]
    frozen, rest = _frozen_split(model, cut=2)
    before = [p.detach().clone() for p in frozen + rest]
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    after = frozen + rest
    assert all(torch.equal(b, a) for b, a in zip(before[: len(frozen)], after[: len(frozen)]))
    changed = [not torch.equal(b, a) for b, a in zip(before[len(frozen) :], after[len(frozen) :])]
    assert sum(changed) >= 0.9 * len(changed)
