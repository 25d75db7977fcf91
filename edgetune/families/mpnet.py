"""MPNet: a BERT-like encoder whose attention adds a relative-position bias.

MPNet keeps one table of relative-position biases (``encoder.relative_attention_bias``, ``buckets x heads``) in
its encoder, not in its blocks: the encoder computes the bias once per forward and hands it to every block. The
family treats that table the way it treats a decoder's rotary embedding: a module beside the blocks
(``rotary_attr``) from which :meth:`MpnetFamily.block_inputs` builds each block's ``position_bias``. The trunk
bakes its copy into the ONNX graph; the top carries its own copy (``rotary.weight`` in ``top.safetensors``), so
blocks above the cut see the same bias without the encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.families.base import Family, import_class

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices


def mpnet_position_bias(table: nn.Embedding, hidden: torch.Tensor) -> torch.Tensor:
    """MPNet's relative position bias ``(1, heads, S, S)`` for a sequence of ``hidden``'s length, as
    ``MPNetEncoder.compute_position_bias`` computes it (32 buckets, max distance 128; positions ``0..S-1``,
    whatever the padding), broadcast over the batch instead of copied per example."""
    import torch
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    positions = torch.arange(hidden.shape[1], dtype=torch.long, device=hidden.device)
    relative = positions[None, :] - positions[:, None]  # memory - context
    buckets = MPNetEncoder.relative_position_bucket(relative, num_buckets=32)
    return table(buckets).permute(2, 0, 1).unsqueeze(0).to(hidden.dtype)


class MpnetFamily(Family):
    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        from edgetune.families.masks import padding_mask

        if rotary is None:
            raise ValueError("an MPNet block needs the encoder's relative_attention_bias table")
        return {
            "attention_mask": padding_mask(attention_mask, hidden.dtype),
            "position_bias": mpnet_position_bias(rotary, hidden),
        }

    def build_rotary(self, rotary_class: str | None, config: Any) -> nn.Module | None:
        if rotary_class is None:
            return None
        return import_class(rotary_class)(config.relative_attention_num_buckets, config.num_attention_heads)

    def attention_heads(self, block: nn.Module) -> HeadSlices:
        from edgetune.tuners.dsee.heads import HeadSlices

        att = block.attention
        s = att.attn
        heads, dim = s.num_attention_heads, s.attention_head_size
        # not prunable: the relative-position bias has one row per head, so heads are masked, not removed
        return HeadSlices(att, [(s.q, 0)], [(s.k, 0), (s.v, 0)], s.o, heads, dim, False)


MPNET = MpnetFamily(
    name="mpnet",
    model_types=("mpnet",),
    description="MPNet",
    is_decoder=False,
    base_attr="mpnet",
    embeddings_attr="embeddings",
    blocks_attr="encoder.layer",
    rotary_attr="encoder.relative_attention_bias",
    attn_implementation="eager",  # transformers' MPNet has no SDPA attention
    lora_targets=("q", "v"),  # peft has no default for MPNet
    positions_after_padding=True,
)
