"""BERT (MiniLM included) and RoBERTa: post-norm encoders, ``encoder.layer`` blocks, learned positions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.families.base import Family

if TYPE_CHECKING:
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices


class BertFamily(Family):
    def attention_heads(self, block: nn.Module) -> HeadSlices:
        from edgetune import native
        from edgetune.tuners.dsee.heads import HeadSlices

        if isinstance(block, native.BertBlock):  # heads on the block, no prune_heads: heads are masked
            s = block.attention.self
            return HeadSlices(
                block.attention, [(s.query, 0)], [(s.key, 0), (s.value, 0)], block.attention.output.dense,
                block.heads, s.query.out_features // block.heads, False,
            )  # fmt: skip
        att = block.attention
        s = att.self
        heads, dim = s.num_attention_heads, s.attention_head_size
        return HeadSlices(att, [(s.query, 0)], [(s.key, 0), (s.value, 0)], att.output.dense, heads, dim, True)

    def build_native_block(self, cfg: dict[str, Any], layer_idx: int, model_type: str) -> nn.Module:
        from edgetune.native import BertBlock

        return BertBlock(cfg)


BERT = BertFamily(
    name="bert",
    model_types=("bert",),
    description="BERT incl. MiniLM",
    is_decoder=False,
    base_attr="bert",
    embeddings_attr="embeddings",
    blocks_attr="encoder.layer",
    native_blocks=True,
)

ROBERTA = BertFamily(
    name="roberta",
    model_types=("roberta",),
    description="RoBERTa",
    is_decoder=False,
    base_attr="roberta",
    embeddings_attr="embeddings",
    blocks_attr="encoder.layer",
    positions_after_padding=True,
    native_blocks=True,
)
