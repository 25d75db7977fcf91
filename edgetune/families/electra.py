"""ELECTRA (the discriminators: electra-small's 14M parameters suit a phone): BERT's blocks under ``electra``,
with embeddings of their own width (``embedding_size``) projected to the blocks' width by ``embeddings_project``
when the two differ."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgetune.families.bert import BertFamily

if TYPE_CHECKING:
    import torch
    from torch import nn


class ElectraFamily(BertFamily):
    def _projection(self, model: nn.Module) -> nn.Module | None:
        return getattr(self.base(model), "embeddings_project", None)

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        # the projection belongs to the embedding map: frozen with the trunk, counted as embedding parameters
        projection = self._projection(model)
        return [self.embeddings(model)] + ([projection] if projection is not None else [])

    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(model)(input_ids)
        projection = self._projection(model)
        return projection(hidden) if projection is not None else hidden


ELECTRA = ElectraFamily(
    name="electra",
    model_types=("electra",),
    description="ELECTRA discriminators",
    is_decoder=False,
    base_attr="electra",
    embeddings_attr="embeddings",
    blocks_attr="encoder.layer",
    attn_implementation="eager",  # transformers has no SDPA attention for ELECTRA
    native_blocks=True,
)
