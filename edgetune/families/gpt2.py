"""GPT-2: a pre-norm decoder with learned positions (``wpe``) beside its token embeddings and ``Conv1D`` projections
(weight stored (in, out)), one fused ``c_attn`` for queries, keys and values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.families.base import Family, import_class

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices


class Gpt2Family(Family):
    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        return [self.embeddings(model), self.base(model).wpe]  # the position table sits apart from ``wte``

    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import torch

        base = self.base(model)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        return base.drop(base.wte(input_ids) + base.wpe(positions))

    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        from edgetune.families.masks import causal_padding_mask

        return {"attention_mask": causal_padding_mask(attention_mask, hidden.dtype)}

    def build_norm(self, norm_class: str | None, config: Any) -> nn.Module | None:
        if norm_class is None:
            return None
        return import_class(norm_class)(config.n_embd, eps=config.layer_norm_epsilon)

    def attention_heads(self, block: nn.Module) -> HeadSlices:
        from edgetune import native
        from edgetune.tuners.dsee.heads import HeadSlices

        a = block.attn
        if isinstance(block, native.GPT2Block):  # heads on the block, no prune_heads: heads are masked
            split = a.c_proj.weight.shape[-1]  # Conv1D(d, d): weight (in, out)
            return HeadSlices(a, [(a.c_attn, 0)], [(a.c_attn, split), (a.c_attn, 2 * split)], a.c_proj,
                              block.heads, split // block.heads, False)  # fmt: skip
        split = a.split_size
        return HeadSlices(
            a, [(a.c_attn, 0)], [(a.c_attn, split), (a.c_attn, 2 * split)], a.c_proj, a.num_heads, a.head_dim, True
        )

    def native_problem(self, cfg: dict[str, Any]) -> str | None:
        if cfg.get("reorder_and_upcast_attn"):
            return "GPT-2's reorder_and_upcast_attn is not covered"
        return None

    def build_native_block(self, cfg: dict[str, Any], layer_idx: int, model_type: str) -> nn.Module:
        from edgetune.native import GPT2Block

        return GPT2Block(cfg, layer_idx)

    def build_native_norm(self, cfg: dict[str, Any]) -> nn.Module:
        from torch import nn

        return nn.LayerNorm(cfg["n_embd"], eps=cfg.get("layer_norm_epsilon", 1e-5))


GPT2 = Gpt2Family(
    name="gpt2",
    model_types=("gpt2",),
    description="GPT-2",
    is_decoder=True,
    base_attr="transformer",
    embeddings_attr="wte",
    blocks_attr="h",
    norm_attr="ln_f",
    readout_attr="lm_head",
    lora_targets=("c_attn",),
    conv1d_projections=True,
    activation_counts=(10.0, 2.0, 5.0),
    ort_optimizer_type="gpt2",
    activation_key="activation_function",
    native_blocks=True,
)
