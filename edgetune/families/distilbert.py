"""DistilBERT: a BERT-like encoder with its own names (``transformer.layer``, ``q_lin``, ``dim``, ``activation``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices


class DistilBertFamily(Family):
    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        # DistilBERT's eager attention takes the 0/1 (B, S) mask and builds its own; SDPA takes an additive one
        if getattr(config, "_attn_implementation", "eager") == "eager":
            return {"attn_mask": attention_mask}
        from edgetune.families.masks import padding_mask

        return {"attn_mask": padding_mask(attention_mask, hidden.dtype)}

    def attention_heads(self, block: nn.Module) -> HeadSlices:
        from edgetune import native
        from edgetune.tuners.dsee.heads import HeadSlices

        att = block.attention
        if isinstance(block, native.DistilBertBlock):  # heads on the block, no prune_heads: heads are masked
            return HeadSlices(att, [(att.q_lin, 0)], [(att.k_lin, 0), (att.v_lin, 0)], att.out_lin, block.heads,
                              att.q_lin.out_features // block.heads, False)  # fmt: skip
        heads = att.n_heads
        dim = att.q_lin.out_features // heads
        return HeadSlices(att, [(att.q_lin, 0)], [(att.k_lin, 0), (att.v_lin, 0)], att.out_lin, heads, dim, True)

    def build_native_block(self, cfg: dict[str, Any], layer_idx: int, model_type: str) -> nn.Module:
        from edgetune.native import DistilBertBlock

        return DistilBertBlock(cfg)


DISTILBERT = DistilBertFamily(
    name="distilbert",
    model_types=("distilbert",),
    description="DistilBERT",
    is_decoder=False,
    base_attr="distilbert",
    embeddings_attr="embeddings",
    blocks_attr="transformer.layer",
    lora_targets=("q_lin", "v_lin"),  # peft has no default for DistilBERT
    activation_counts=(8.0, 1.0, 2.0),
    activation_key="activation",
    native_blocks=True,
)
