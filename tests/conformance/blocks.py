"""The top's computation in numpy, written from docs/package-format.md ("What the top computes") alone.

A runtime that cannot run ``top.onnx`` runs the blocks itself; this module is such a runtime for every family
the project writes (BERT, RoBERTa, DistilBERT, MPNet, GPT-2, Llama, Mistral, Qwen2, Qwen3), from ``top.json``
and the top's tensors. It imports only numpy and the standard library; the conformance test checks it against
``top.onnx``, so the document's block conventions are checked too.
"""

from __future__ import annotations

import math

import numpy as np

NEG = np.float32(np.finfo(np.float32).min)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "gelu":
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return (0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))).astype(np.float32)
    if name == "relu":
        return np.maximum(x, 0)
    if name in ("silu", "swish"):
        return x / (1.0 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    raise ValueError(f"activation {name!r}")


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


class _Tensors:
    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        self.w, self.prefix = weights, prefix

    def __call__(self, name: str) -> np.ndarray:
        return self.w[self.prefix + name]

    def has(self, name: str) -> bool:
        return self.prefix + name in self.w

    def linear(self, name: str, x: np.ndarray, conv1d: bool = False) -> np.ndarray:
        """``x @ W.T + b`` ((out, in) weights) or GPT-2's ``x @ W + b`` ((in, out))."""
        y = x @ (self(name + ".weight") if conv1d else self(name + ".weight").T)
        return y + self(name + ".bias") if self.has(name + ".bias") else y


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    b, s, _ = x.shape
    return x.reshape(b, s, n, -1).transpose(0, 2, 1, 3)  # (B, n, S, D)


def _attention(q, k, v, mask, scale, bias=None) -> np.ndarray:
    """q (B, H, S, D), k/v (B, K, S, D), additive mask broadcastable to (B, H, S, S)."""
    h, kv = q.shape[1], k.shape[1]
    if kv != h:
        k, v = (np.repeat(t, h // kv, axis=1) for t in (k, v))
    a = q @ k.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        a = a + bias
    a = a + mask
    a = np.exp(a - a.max(-1, keepdims=True))
    o = (a / a.sum(-1, keepdims=True)) @ v
    b, _, s, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def _mpnet_bucket(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    n = i - j
    bucket = np.where(n < 0, 16, 0)
    n = np.abs(n)
    with np.errstate(divide="ignore"):
        large = 8 + np.floor(
            np.log(n.astype(np.float32) / np.float32(8)) / np.float32(math.log(128 / 8)) * np.float32(8)
        )
    large = np.minimum(np.nan_to_num(large, neginf=0), 15).astype(np.int64)
    return bucket + np.where(n < 8, n, large)


def top_logits(spec: dict, weights: dict[str, np.ndarray], hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits of the top described by ``spec`` (``top.json``) with ``weights`` on the trunk's output."""
    t, cfg = spec["model_type"], spec["hf_config"]
    x = hidden.astype(np.float32)
    keep = mask.astype(bool)
    s = x.shape[1]
    decoder = t in ("gpt2", "llama", "mistral", "qwen2", "qwen3")
    if decoder:
        allowed = np.tril(np.ones((s, s), bool))[None, None] & keep[:, None, None, :]
    else:
        allowed = np.broadcast_to(keep[:, None, None, :], (x.shape[0], 1, s, s))
    m = np.where(allowed, np.float32(0), NEG).astype(np.float32)
    for position, number in enumerate(spec["blocks"]):
        p = _Tensors(weights, f"blocks.{position}.")
        x = _block(t, cfg, p, x, m, number, weights).astype(np.float32)
    top = _Tensors(weights, "")
    if t == "gpt2":
        x = _layer_norm(x, top("norm.weight"), top("norm.bias"), cfg.get("layer_norm_epsilon", 1e-5))
    elif decoder:
        x = _rms_norm(x, top("norm.weight"), cfg.get("rms_norm_eps", 1e-6))
    if spec["pooling"] == "mean":
        w = keep[..., None].astype(np.float32)
        pooled = (x * w).sum(1) / np.maximum(w.sum(1), 1.0)
    else:
        last = np.maximum(keep.sum(1) - 1, 0)
        pooled = x[np.arange(x.shape[0]), last]
    return top.linear("head", pooled)


def _block(t, cfg, p: _Tensors, x, m, number: int, weights) -> np.ndarray:
    if t in ("bert", "roberta", "electra", "mpnet"):
        d, h = cfg["hidden_size"], cfg["num_attention_heads"]
        eps, act = cfg.get("layer_norm_eps", 1e-12), cfg.get("hidden_act", "gelu")
        names = ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o")
        if t != "mpnet":
            names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
        q, k, v = (_heads(p.linear(n, x), h) for n in names[:3])
        bias = None
        if t == "mpnet":
            i, j = np.meshgrid(np.arange(x.shape[1]), np.arange(x.shape[1]), indexing="ij")
            bias = weights["rotary.weight"][_mpnet_bucket(i, j)].transpose(2, 0, 1)[None]
        o = p.linear(names[3], _attention(q, k, v, m, 1 / math.sqrt(d // h), bias))
        ln = "attention.LayerNorm" if t == "mpnet" else "attention.output.LayerNorm"
        a = _layer_norm(x + o, p(ln + ".weight"), p(ln + ".bias"), eps)
        y = p.linear("output.dense", _act(act, p.linear("intermediate.dense", a)))
        return _layer_norm(a + y, p("output.LayerNorm.weight"), p("output.LayerNorm.bias"), eps)
    if t == "distilbert":
        d, h, act = cfg["dim"], cfg["n_heads"], cfg.get("activation", "gelu")
        q, k, v = (_heads(p.linear(f"attention.{n}", x), h) for n in ("q_lin", "k_lin", "v_lin"))
        o = p.linear("attention.out_lin", _attention(q, k, v, m, 1 / math.sqrt(d // h)))
        a = _layer_norm(x + o, p("sa_layer_norm.weight"), p("sa_layer_norm.bias"), 1e-12)
        y = p.linear("ffn.lin2", _act(act, p.linear("ffn.lin1", a)))
        return _layer_norm(a + y, p("output_layer_norm.weight"), p("output_layer_norm.bias"), 1e-12)
    if t == "gpt2":
        d, h, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
        scale = 1 / math.sqrt(d // h) if cfg.get("scale_attn_weights", True) else 1.0
        if cfg.get("scale_attn_by_inverse_layer_idx", False):
            scale /= number
        z = _layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
        q, k, v = np.split(p.linear("attn.c_attn", z, conv1d=True), 3, axis=-1)
        o = _attention(_heads(q, h), _heads(k, h), _heads(v, h), m, scale)
        x = x + p.linear("attn.c_proj", o, conv1d=True)
        z = _layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
        act = cfg.get("activation_function", "gelu_new")
        return x + p.linear("mlp.c_proj", _act(act, p.linear("mlp.c_fc", z, conv1d=True)), conv1d=True)
    # Llama family
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kv, eps = cfg.get("num_key_value_heads") or h, cfg.get("rms_norm_eps", 1e-6)
    dh = cfg.get("head_dim") or d // h
    z = _rms_norm(x, p("input_layernorm.weight"), eps)
    q, k = _heads(p.linear("self_attn.q_proj", z), h), _heads(p.linear("self_attn.k_proj", z), kv)
    v = _heads(p.linear("self_attn.v_proj", z), kv)
    if p.has("self_attn.q_norm.weight"):
        q, k = _rms_norm(q, p("self_attn.q_norm.weight"), eps), _rms_norm(k, p("self_attn.k_norm.weight"), eps)
    theta = float(cfg.get("rope_theta", 10000.0))
    freqs = theta ** -(np.arange(0, dh, 2, dtype=np.float32) / dh)
    angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * freqs
    angles = np.concatenate([angles, angles], -1)
    cos, sin = np.cos(angles), np.sin(angles)

    def rotate(u):
        half = u.shape[-1] // 2
        return u * cos + np.concatenate([-u[..., half:], u[..., :half]], -1) * sin

    o = _attention(rotate(q), rotate(k), v, m, dh**-0.5)
    x = x + p.linear("self_attn.o_proj", o)
    z = _rms_norm(x, p("post_attention_layernorm.weight"), eps)
    act = cfg.get("hidden_act", "silu")
    return x + p.linear("mlp.down_proj", _act(act, p.linear("mlp.gate_proj", z)) * p.linear("mlp.up_proj", z))
