"""Model families: one module per architecture family, registered here by model type.

Each module holds one :class:`~edgetune.families.base.Family` (BERT and RoBERTa share a class) that answers what
the backbones, the plain-torch top, the adapters, the cost model, the fused export and the numpy apply need to
know; nothing else in edgetune branches on a model type. Adding a family is a module here plus one line in
``_BUILT_IN`` (docs/architecture.md, "Adding a model family"). Nothing here imports torch at module level.
"""

from __future__ import annotations

from edgetune.families.base import Family, UnsupportedModelError
from edgetune.families.bert import BERT, ROBERTA
from edgetune.families.distilbert import DISTILBERT
from edgetune.families.electra import ELECTRA
from edgetune.families.gpt2 import GPT2
from edgetune.families.llama import LLAMA
from edgetune.families.mpnet import MPNET

# model type (a Hugging Face config's ``model_type``) -> its family
FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` answer for each of its model types; a model type already taken by another family is an
    error (two families for one model type would make the answer depend on import order)."""
    taken = {t: FAMILIES[t].name for t in family.model_types if t in FAMILIES and FAMILIES[t] is not family}
    if taken:
        raise ValueError(f"model types already registered: {taken}")
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


def unregister(family: Family) -> None:
    """Forget ``family``'s model types (a family registered at run time, for a test or an experiment)."""
    for model_type in family.model_types:
        if FAMILIES.get(model_type) is family:
            del FAMILIES[model_type]


def all_families() -> list[Family]:
    """Each registered family once, in registration order."""
    return list({id(f): f for f in FAMILIES.values()}.values())


def supported_model_types() -> tuple[str, ...]:
    return tuple(FAMILIES)


def family_for(model_type: str) -> Family:
    """The family of ``model_type``; an unsupported one is an :class:`UnsupportedModelError` naming the others."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        described = ", ".join(f.description for f in all_families())
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}; edgetune supports model_type in: "
            f"{', '.join(FAMILIES)} ({described})"
        ) from None


_BUILT_IN = (BERT, ROBERTA, DISTILBERT, ELECTRA, MPNET, GPT2, LLAMA)
for _family in _BUILT_IN:
    register(_family)

__all__ = [
    "FAMILIES",
    "Family",
    "UnsupportedModelError",
    "all_families",
    "family_for",
    "register",
    "supported_model_types",
    "unregister",
]
