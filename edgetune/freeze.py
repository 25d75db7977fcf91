"""A plan applied to a plain Hugging Face model, for training loops edgetune does not own.

``apply_plan(model, plan)`` freezes the embeddings and blocks 1..cut of any
supported HF model in place: a headless ``AutoModel``, a ``...ForCausalLM``, a
``...ForSequenceClassification`` (its pooler / classifier / score head stays
trainable) or a PEFT model. Then ``transformers.Trainer`` (or any loop that
optimizes ``requires_grad`` parameters) trains exactly what the plan chose::

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    edgetune.apply_plan(model, "plan.json")

For PEFT, ``lora_config(plan)`` builds a ``peft.LoraConfig`` whose adapters sit
only in the chosen blocks (``layers_to_transform``); ``apply_plan`` on the
resulting PEFT model then also freezes anything PEFT left trainable below the
cut. On a PEFT model, parameters above the cut keep PEFT's choice (adapters
and ``modules_to_save`` train, base weights stay frozen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgetune.families import Family, family_for
from edgetune.planner.plan import Plan, PlanError


def _as_plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.load(plan)


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def embedding_modules(family: Family, model: nn.Module) -> list[nn.Module]:
    """Every module of the embedding map (the family knows them: GPT-2 keeps its positions apart from ``wte``)."""
    return family.embedding_modules(model)


def check_structure(plan: Plan, model_type: str, num_layers: int, hidden_size: int, where: str = "model") -> None:
    """A plan fits a model only if it was made for the same architecture and depth."""
    if family_for(model_type).name != family_for(plan.model_type).name or num_layers != plan.num_layers:
        raise PlanError(
            f"plan was made for a {plan.num_layers}-layer {plan.model_type} model, but the {where} is a "
            f"{num_layers}-layer {model_type}; re-run `edgetune plan` on this model"
        )
    if hidden_size != plan.hidden_size:
        raise PlanError(f"plan hidden size {plan.hidden_size} differs from the {where}'s {hidden_size}")


def apply_plan(model: nn.Module, plan: Plan | str | Path) -> nn.Module:
    """Freeze ``model`` in place as ``plan`` says and return it (see the module docstring)."""
    plan = _as_plan(plan)
    base = _base_model(model)
    config = base.config
    family = family_for(config.model_type)
    blocks = family.blocks(base)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or config.n_embd
    check_structure(plan, config.model_type, len(blocks), hidden)

    frozen_modules = [*embedding_modules(family, base), *list(blocks)[: plan.cut]]
    frozen = {id(p) for m in frozen_modules for p in m.parameters()}
    is_peft = base is not model or hasattr(model, "peft_config")
    for p in model.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
        elif not is_peft:
            p.requires_grad_(True)
    return model


def lora_config(plan: Plan | str | Path, r: int = 8, alpha: float = 16.0, dropout: float = 0.1, **peft_kwargs: Any):
    """A ``peft.LoraConfig`` with adapters only in the plan's trained blocks.

    ``target_modules`` defaults to peft's choice for the architecture; other
    keyword arguments (e.g. ``task_type="SEQ_CLS"``) go to ``peft.LoraConfig``.
    """
    from peft import LoraConfig as PeftLoraConfig

    from edgetune.tuners.lora import default_target_modules

    plan = _as_plan(plan)
    family = family_for(plan.model_type)
    layers = [layer - 1 for layer in plan.trainable_layers]
    if not layers:
        raise PlanError("the plan trains no block (head only); there is nowhere to put LoRA adapters")
    peft_kwargs.setdefault("target_modules", default_target_modules(plan.model_type))
    return PeftLoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        layers_to_transform=layers,
        layers_pattern=family.blocks_attr.rsplit(".", 1)[-1],
        **peft_kwargs,
    )


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (what ``apply_plan`` left trainable)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
