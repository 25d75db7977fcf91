"""Llama-style decoders (Llama, Mistral, Qwen2, Qwen3): pre-RMSNorm, rotary positions, grouped-query attention,
a gated MLP. The model types differ in details the plain-torch blocks must reproduce (see the constants)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.families.base import Family, import_class

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices

# Qwen2 puts biases on its query, key and value projections, never on o_proj, whatever attention_bias says.
QKV_BIAS_ONLY = ("qwen2",)
# Qwen3 normalizes each head's queries and keys (q_norm, k_norm) before the rotary embedding.
QK_NORM = ("qwen3",)


class LlamaFamily(Family):
    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        import torch

        from edgetune.families.masks import causal_padding_mask

        kwargs: dict[str, Any] = {"attention_mask": causal_padding_mask(attention_mask, hidden.dtype)}
        if rotary is not None:
            positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
            kwargs["position_ids"] = positions
            kwargs["position_embeddings"] = rotary(hidden, positions)
        return kwargs

    def build_norm(self, norm_class: str | None, config: Any) -> nn.Module | None:
        if norm_class is None:
            return None
        return import_class(norm_class)(config.hidden_size, eps=config.rms_norm_eps)

    def attention_heads(self, block: nn.Module) -> HeadSlices:
        from edgetune import native
        from edgetune.tuners.dsee.heads import HeadSlices

        att = block.self_attn
        if isinstance(block, native.LlamaBlock):  # heads on the block, no prune_heads
            heads, kv_heads, dim = block.heads, block.kv_heads, block.head_dim
        else:
            heads = att.config.num_attention_heads
            kv_heads = getattr(att.config, "num_key_value_heads", None) or heads
            dim = att.head_dim
        # shared K/V heads (GQA) are not scored or removed: only the head's Q rows and O columns
        kv = [(att.k_proj, 0), (att.v_proj, 0)] if kv_heads == heads else []
        # no prune_heads on Llama-style attention: heads are masked
        return HeadSlices(att, [(att.q_proj, 0)], kv, att.o_proj, heads, dim, False)

    def native_problem(self, cfg: dict[str, Any]) -> str | None:
        scaling = cfg.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            return f"rope scaling {scaling!r} is not covered"
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            return "partial rotary embeddings are not covered"
        return None

    def build_native_block(self, cfg: dict[str, Any], layer_idx: int, model_type: str) -> nn.Module:
        from edgetune.native import LlamaBlock

        bias = bool(cfg.get("attention_bias", False))
        qkv_bias, o_bias = (True, False) if model_type in QKV_BIAS_ONLY else (bias, bias)
        return LlamaBlock(cfg, qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=model_type in QK_NORM)

    def build_native_norm(self, cfg: dict[str, Any]) -> nn.Module:
        from edgetune.native import RMSNorm

        return RMSNorm(cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6))


LLAMA = LlamaFamily(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    description="Llama / Mistral / Qwen2 / Qwen3 decoders",
    is_decoder=True,
    base_attr="model",
    embeddings_attr="embed_tokens",
    blocks_attr="layers",
    norm_attr="norm",
    readout_attr="lm_head",
    rotary_attr="rotary_emb",
    lora_targets=("q_proj", "v_proj"),
    activation_counts=(12.0, 0.0, 4.0),
    gated_mlp=True,
    ort_optimizer_type=None,  # onnxruntime's optimizer has no fusion patterns for rotary GQA attention
    learned_positions=False,
    native_blocks=True,
)
