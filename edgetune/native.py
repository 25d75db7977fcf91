"""The top's blocks in plain torch, for a device that cannot load transformers.

A package's top is rebuilt from its spec (``top.json``: the family, the
Hugging Face config as a dict) and its weights. On the server the blocks are
transformers' own classes; on a device, importing transformers costs ~220 MB
of memory (its model-loading machinery comes with any model class) for a few
matrix products. This module rebuilds the same blocks from the same config
dict with ``torch.nn`` only:

* the same parameter names and shapes as transformers' blocks (a state dict
  loads into either; a personal state trained on one applies to the other);
* the same call convention as the family adapter uses for transformers'
  blocks (:meth:`edgetune.families.base.Family.block_inputs`): an additive mask,
  and for rotary decoders ``position_embeddings = (cos, sin)``;
* attention through ``torch.nn.functional.scaled_dot_product_attention``
  with that additive mask (transformers' "sdpa" path; eager attention agrees
  to ~1e-6), dropout as transformers places it.

Covered: BERT / RoBERTa / DistilBERT encoders, GPT-2, and the Llama family
(Llama, Mistral, Qwen2, Qwen3) with the default rotary embedding. A spec this
module does not cover (another family, a rope scaling, an unknown
activation) is reported by :func:`native_support` and the caller falls back
to transformers' classes. Which block class a family's top gets, and what a
family's config must not ask for, the family says (:mod:`edgetune.families`).
Tests check parity against transformers on every covered family.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.families import FAMILIES, family_for


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "tanh": torch.tanh,
}


def native_support(spec: dict[str, Any]) -> str | None:
    """``None`` when this module rebuilds ``spec``'s top exactly, else why not (the caller uses transformers)."""
    model_type, cfg = spec.get("model_type"), spec.get("hf_config", {})
    family = FAMILIES.get(model_type)
    if family is None or not family.native_blocks:
        return f"no plain-torch blocks for model type {model_type!r}"
    act = cfg.get(family.activation_key)
    if act not in ACTIVATIONS:
        return f"activation {act!r} has no plain-torch equivalent here"
    return family.native_problem(cfg)


def config_namespace(cfg: dict[str, Any]) -> SimpleNamespace:
    """The config dict as attributes (what the family adapter reads from a config)."""
    return SimpleNamespace(**cfg)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float, scale: float | None = None
) -> torch.Tensor:
    """(B, H, S, D) heads -> (B, S, H*D); ``mask`` additive, broadcastable to (B, H, S, S)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
    b, h, s, d = out.shape
    return out.transpose(1, 2).reshape(b, s, h * d)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, _ = x.shape
    return x.view(b, s, heads, -1).transpose(1, 2)


# -- BERT / RoBERTa -------------------------------------------------------------
class _Named(nn.Module):
    """A container whose children carry transformers' attribute names."""

    def __init__(self, children: dict[str, nn.Module] | None = None, /, **named: nn.Module) -> None:
        super().__init__()
        for name, child in {**(children or {}), **named}.items():
            self.add_module(name, child)


class BertBlock(nn.Module):
    """``BertLayer`` (also RoBERTa's): post-norm self-attention + GELU feed-forward."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.heads = cfg["num_attention_heads"]
        self.p_attn = cfg.get("attention_probs_dropout_prob", 0.0)
        self.act = ACTIVATIONS[cfg.get("hidden_act", "gelu")]
        self.attention = _Named(
            {"self": _Named(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d))},
            output=_Named(dense=nn.Linear(d, d), LayerNorm=nn.LayerNorm(d, eps=eps)),
        )
        self.intermediate = _Named(dense=nn.Linear(d, cfg["intermediate_size"]))
        self.output = _Named(dense=nn.Linear(cfg["intermediate_size"], d), LayerNorm=nn.LayerNorm(d, eps=eps))
        self.dropout = nn.Dropout(cfg.get("hidden_dropout_prob", 0.0))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        sa, ao = self.attention.self, self.attention.output
        q, k, v = (_heads(m(hidden), self.heads) for m in (sa.query, sa.key, sa.value))
        ctx = _attention(q, k, v, attention_mask, self.p_attn if self.training else 0.0)
        attended = ao.LayerNorm(self.dropout(ao.dense(ctx)) + hidden)
        inner = self.act(self.intermediate.dense(attended))
        return self.output.LayerNorm(self.dropout(self.output.dense(inner)) + attended)


# -- DistilBERT -------------------------------------------------------------------
class DistilBertBlock(nn.Module):
    """DistilBERT's ``TransformerBlock``; takes its mask as 0/1 (B, S) or additive (B, 1, 1, S)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d, hidden = cfg["dim"], cfg["hidden_dim"]
        self.heads = cfg["n_heads"]
        self.p_attn = cfg.get("attention_dropout", 0.0)
        self.act = ACTIVATIONS[cfg.get("activation", "gelu")]
        self.attention = _Named(
            q_lin=nn.Linear(d, d), k_lin=nn.Linear(d, d), v_lin=nn.Linear(d, d), out_lin=nn.Linear(d, d)
        )
        self.sa_layer_norm = nn.LayerNorm(d, eps=1e-12)
        self.ffn = _Named(lin1=nn.Linear(d, hidden), lin2=nn.Linear(hidden, d))
        self.output_layer_norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(cfg.get("dropout", 0.0))

    def forward(self, hidden: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        mask = attn_mask
        if mask is not None and mask.dim() == 2:  # 0/1 keep mask -> additive
            keep = mask[:, None, None, :].to(hidden.dtype)
            mask = (1.0 - keep) * torch.finfo(hidden.dtype).min
        a = self.attention
        q, k, v = (_heads(m(hidden), self.heads) for m in (a.q_lin, a.k_lin, a.v_lin))
        ctx = a.out_lin(_attention(q, k, v, mask, self.p_attn if self.training else 0.0))
        attended = self.sa_layer_norm(ctx + hidden)
        ffn = self.dropout(self.ffn.lin2(self.act(self.ffn.lin1(attended))))
        return self.output_layer_norm(ffn + attended)


# -- GPT-2 --------------------------------------------------------------------------
class Conv1D(nn.Module):
    """GPT-2's projection: ``weight`` stored (in, out), ``y = x @ weight + bias``."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.nf = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class GPT2Block(nn.Module):
    """``GPT2Block``: pre-norm causal self-attention + MLP."""

    def __init__(self, cfg: dict[str, Any], layer_idx: int = 0) -> None:
        super().__init__()
        d, eps = cfg["n_embd"], cfg.get("layer_norm_epsilon", 1e-5)
        inner = cfg.get("n_inner") or 4 * d
        self.heads = cfg["n_head"]
        self.p_attn = cfg.get("attn_pdrop", 0.0)
        scale = 1.0 / math.sqrt(d // self.heads) if cfg.get("scale_attn_weights", True) else 1.0
        if cfg.get("scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        self.scale = scale
        self.act = ACTIVATIONS[cfg.get("activation_function", "gelu_new")]
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = _Named(c_attn=Conv1D(3 * d, d), c_proj=Conv1D(d, d))
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _Named(c_fc=Conv1D(inner, d), c_proj=Conv1D(d, inner))
        self.dropout = nn.Dropout(cfg.get("resid_pdrop", 0.0))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        q, k, v = self.attn.c_attn(self.ln_1(hidden)).split(hidden.shape[-1], dim=2)
        q, k, v = (_heads(t, self.heads) for t in (q, k, v))
        ctx = _attention(q, k, v, attention_mask, self.p_attn if self.training else 0.0, self.scale)
        hidden = hidden + self.dropout(self.attn.c_proj(ctx))
        return hidden + self.dropout(self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(hidden)))))


# -- Llama family -------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``LlamaRMSNorm``: normalized in float32, scaled by ``weight``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def head_dim(cfg: dict[str, Any]) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


class RotaryEmbedding(nn.Module):
    """The default rotary embedding: ``(cos, sin)`` of ``positions * inv_freq``, duplicated over the head."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, theta = head_dim(cfg), float(cfg.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, S, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaBlock(nn.Module):
    """``LlamaDecoderLayer`` (and Mistral's, Qwen2's, Qwen3's): pre-RMSNorm, rotary GQA attention, gated MLP.

    Which projections carry biases and whether queries and keys are normalized per head differ by model type;
    the Llama family says which (:mod:`edgetune.families.llama`)."""

    def __init__(
        self, cfg: dict[str, Any], qkv_bias: bool = False, o_bias: bool = False, qk_norm: bool = False
    ) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6)
        self.heads, self.kv_heads = (
            cfg["num_attention_heads"],
            cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        )
        self.head_dim = head_dim(cfg)
        self.p_attn = cfg.get("attention_dropout", 0.0)
        self.act = ACTIVATIONS[cfg.get("hidden_act", "silu")]
        attn = {
            "q_proj": nn.Linear(d, self.heads * self.head_dim, bias=qkv_bias),
            "k_proj": nn.Linear(d, self.kv_heads * self.head_dim, bias=qkv_bias),
            "v_proj": nn.Linear(d, self.kv_heads * self.head_dim, bias=qkv_bias),
            "o_proj": nn.Linear(self.heads * self.head_dim, d, bias=o_bias),
        }
        if qk_norm:
            attn.update(q_norm=RMSNorm(self.head_dim, eps), k_norm=RMSNorm(self.head_dim, eps))
        self.self_attn = _Named(attn)
        mlp_bias, inner = bool(cfg.get("mlp_bias", False)), cfg["intermediate_size"]
        self.mlp = _Named(
            gate_proj=nn.Linear(d, inner, bias=mlp_bias),
            up_proj=nn.Linear(d, inner, bias=mlp_bias),
            down_proj=nn.Linear(inner, d, bias=mlp_bias),
        )
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        a = self.self_attn
        x = self.input_layernorm(hidden)
        q, k, v = (
            _heads(a.q_proj(x), self.heads),
            _heads(a.k_proj(x), self.kv_heads),
            _heads(a.v_proj(x), self.kv_heads),
        )
        if hasattr(a, "q_norm"):
            q, k = a.q_norm(q), a.k_norm(k)
        if position_embeddings is not None:
            cos, sin = (t.unsqueeze(1) for t in position_embeddings)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if self.kv_heads != self.heads:
            k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        ctx = _attention(q, k, v, attention_mask, self.p_attn if self.training else 0.0, self.head_dim**-0.5)
        hidden = hidden + a.o_proj(ctx)
        x = self.post_attention_layernorm(hidden)
        return hidden + self.mlp.down_proj(self.act(self.mlp.gate_proj(x)) * self.mlp.up_proj(x))


# -- builders used by TopModel.from_spec: the family picks the class ---------------------
def build_block(spec: dict[str, Any], layer_idx: int) -> nn.Module:
    return family_for(spec["model_type"]).build_native_block(spec["hf_config"], layer_idx, spec["model_type"])


def build_norm(spec: dict[str, Any]) -> nn.Module | None:
    if spec.get("norm_class") is None:
        return None
    return family_for(spec["model_type"]).build_native_norm(spec["hf_config"])


def build_rotary(spec: dict[str, Any]) -> nn.Module | None:
    if spec.get("rotary_class") is None:
        return None
    return RotaryEmbedding(spec["hf_config"])
