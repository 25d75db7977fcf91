"""SALF: semantic-aware layer freezing (Gu et al., ACL Findings 2025, arXiv 2406.11753).

Only the paper's abstract and figure are public; this is our documented
interpretation (see docs/methods.md for the derivation):

1. Traces: pooled h_0..h_L of the frozen model over a calibration sample.
   Decoders: the final norm is applied to every h_l before reading it
   (logit-lens convention: the readout was trained on normed states).
2. Semantic basis S (d x C), one column per label, shared by all layers:
   decoders with an LM head: s_c = pinv(W_U)[:, token(c)]; encoders: a linear
   probe W (C x d) on h_L, S = pinv(W). The probe is *cross-fitted* (fitted on
   one fold, read on the other, repeated over a few random splits) so that d_L
   is an honest held-out deviation rather than a training fit.
3. Deviation of latent space l: d_l = mean_i CE(softmax(tau * cos(h_l,i, S)), y_i),
   tau calibrated once by minimizing d_L (temperature scaling).
4. Gain of layer l: g_l = d_{l-1} - d_l. A scaling law d(x) = A x^-alpha + E is
   fitted on the deviation curve, x_l = 1 + (parameters of blocks 1..l) / (mean
   block parameters) (the model size, in block units, that produced h_l). The
   law's expected gain of layer l is g^_l = d(x_{l-1}) - d(x_l): what a layer of
   that size at that depth removes for an ordinary task. The *expected
   fine-tuning gain* is the excess G_l = g_l - g^_l: the task-specific transition
   the layer performs beyond its parameter count.
5. Choice. ``policy="argmax-gain"`` is the paper's rule: l* = argmax_l G_l over
   allowed cuts (freeze blocks 1..l*, where the task semantics are formed).
   ``policy="cheapest"`` (the default) predicts each cut's accuracy loss
   against the best cut and takes the cheapest cut within ``tolerance``
   points (:func:`predicted_losses`):

       A       = gamma * e_head + beta * max(0, e_head - min_{l<L} e_l)
       loss(k) = A * [(1 + u_k)^-alpha - (1 + L)^-alpha]

   e_l is the cross-validated error (in points) of a linear probe on the
   traces' pooled latent h_l; e_head = e_L is what training the head alone
   reaches on the sample. The second term is task information that a lower
   latent space holds and the frozen top discards: error that training the
   top blocks can win back (a task whose top latent is already its best one
   has only the gamma share to gain). u_k is the trained depth of cut k in
   block units (parameters of blocks k+1..L / mean block parameters), so the
   loss follows a power law in trained parameters, loss = A N^-alpha + E.
   gamma, beta and alpha were fitted once on the calibration tasks of
   ``benchmarks/planner_study.py`` and are reported on the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares, minimize_scalar

from edgetune.data import LabelMap, sample
from edgetune.planner.base import CutScores, Planner, PlanningInputs, allowed_cuts_mask
from edgetune.planner.plan import PlanError
from edgetune.tokenization import TextEncoder
from edgetune.traces import collect_traces

POLICIES = ("cheapest", "argmax-gain")
# Calibrated on the calibration tasks of benchmarks/planner_study.py (see docs/methods.md).
LOSS_SCALE = 0.05
LOSS_RECOVERABLE = 3.25
LOSS_ALPHA = 0.875


@dataclass
class SALFConfig:
    sample_size: int = 256
    batch_size: int = 32
    basis: str = "auto"  # auto | readout | probe
    temperature: float | None = None  # None: calibrate on d_L
    folds: int = 2
    repeats: int = 3
    min_trainable_layers: int | None = None  # None: 0 (head-only allowed) for "cheapest", 1 for "argmax-gain"
    probe_c: float = 1.0
    label_words: dict[str, str] | None = None
    policy: str = "cheapest"  # cheapest | argmax-gain
    tolerance: float = 1.0  # accuracy points the cheapest policy may give up against the best cut
    loss_scale: float = LOSS_SCALE  # gamma of predicted_losses
    loss_recoverable: float = LOSS_RECOVERABLE  # beta of predicted_losses
    loss_alpha: float = LOSS_ALPHA  # alpha of predicted_losses
    probe_folds: int = 5  # cross-validation folds of the head-only error e_head

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 accuracy points, got {self.tolerance}")
        if self.loss_scale < 0 or self.loss_recoverable < 0 or self.loss_alpha <= 0:
            raise ValueError(
                "loss_scale and loss_recoverable must be >= 0 and loss_alpha > 0, got "
                f"{self.loss_scale}, {self.loss_recoverable}, {self.loss_alpha}"
            )
        if self.probe_folds < 2:
            raise ValueError(f"probe_folds must be >= 2, got {self.probe_folds}")
        if self.basis not in ("auto", "readout", "probe"):
            raise ValueError(f"basis must be auto, readout or probe, got {self.basis!r}")
        if self.sample_size < 4:
            raise ValueError(f"sample_size must be >= 4, got {self.sample_size}")
        if self.folds < 1 or self.repeats < 1:
            raise ValueError(f"folds and repeats must be >= 1, got {self.folds}, {self.repeats}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


# -- the method's pieces (pure numpy, unit-tested) ------------------------------
def cosine_to_basis(hidden: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(n, d) x (d, C) -> (n, C) cosine similarities."""
    h = hidden / np.maximum(np.linalg.norm(hidden, axis=-1, keepdims=True), 1e-12)
    s = basis / np.maximum(np.linalg.norm(basis, axis=0, keepdims=True), 1e-12)
    return h @ s


def deviation(cos: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy of softmax(temperature * cos) against the true labels."""
    logits = temperature * cos
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def calibrate_temperature(cos: np.ndarray, labels: np.ndarray, low: float = 0.1, high: float = 1000.0) -> float:
    res = minimize_scalar(
        lambda t: deviation(cos, labels, float(np.exp(t))), bounds=(np.log(low), np.log(high)), method="bounded"
    )
    return float(np.exp(res.x))


def readout_basis(readout: np.ndarray, token_ids: list[int]) -> np.ndarray:
    """Columns of pinv(W_U) for the label tokens, W_U: (V, d) -> (d, C).

    pinv(W)[:, t] = (W^T W)^+ W[t]^T, computed through the d x d Gram matrix so
    the V x d pseudo-inverse is never formed.
    """
    w = readout.astype(np.float64)
    gram = w.T @ w
    return (np.linalg.pinv(gram, rcond=1e-10, hermitian=True) @ w[token_ids].T).astype(np.float64)


def probe_basis(features: np.ndarray, labels: np.ndarray, num_labels: int, c: float, seed: int) -> np.ndarray:
    """S = pinv(W) of a multinomial logistic probe W (C x d) fitted on ``features``."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    probe.fit(features, labels)
    w = np.zeros((num_labels, features.shape[1]))
    w[probe.classes_] = (
        probe.coef_
        if probe.coef_.shape[0] == len(probe.classes_)
        else np.vstack([-probe.coef_[0] / 2, probe.coef_[0] / 2])
    )
    # The multinomial coefficients sum to ~0 over classes, so W is numerically rank C-1; the cutoff
    # drops that near-null direction, which would otherwise dominate every column of pinv(W).
    return np.linalg.pinv(w, rcond=1e-6)


@dataclass
class ScalingLaw:
    a: float
    alpha: float
    e: float
    ok: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.a * np.power(x, -self.alpha) + self.e


def fit_scaling_law(x: np.ndarray, d: np.ndarray) -> ScalingLaw:
    """Least-squares fit of d = A x^-alpha + E with A >= 0, alpha in [1e-3, 5], 0 <= E <= min d."""
    d = np.asarray(d, dtype=np.float64)
    lo_e = 0.0
    hi_e = max(float(d.min()), 1e-9)
    a0 = max(float(d[0] - d.min()), 1e-3)
    x0 = np.array([a0, 0.5, 0.5 * hi_e])
    try:
        res = least_squares(
            lambda p: p[0] * np.power(x, -p[1]) + p[2] - d,
            x0,
            bounds=([0.0, 1e-3, lo_e], [np.inf, 5.0, hi_e]),
        )
        return ScalingLaw(float(res.x[0]), float(res.x[1]), float(res.x[2]), bool(res.success))
    except (ValueError, np.linalg.LinAlgError):
        return ScalingLaw(0.0, 1.0, float(d.mean()), False)


def block_units(block_params: list[int]) -> np.ndarray:
    """x_l = 1 + cumulative block parameters / mean block parameters, l = 0..L."""
    p = np.asarray(block_params, dtype=np.float64)
    return 1.0 + np.concatenate([[0.0], np.cumsum(p)]) / p.mean()


def expected_gains(deviations: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, ScalingLaw]:
    """(raw gains g, expected fine-tuning gains G, law); index k is layer k, NaN at k = 0."""
    law = fit_scaling_law(x, deviations)
    g = np.full(len(deviations), np.nan)
    g[1:] = deviations[:-1] - deviations[1:]
    fitted = law(x)
    law_gain = np.full(len(deviations), np.nan)
    law_gain[1:] = fitted[:-1] - fitted[1:]
    return g, g - law_gain, law


def probe_error(features: np.ndarray, labels: np.ndarray, folds: int, c: float, seed: int) -> float:
    """Cross-validated error, in accuracy points, of a logistic probe on ``features`` (on h_L: the head-only cut)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    counts = np.bincount(labels)
    if np.count_nonzero(counts) < 2 or len(labels) < 4:
        return float("nan")
    stratify = int(counts[counts > 0].min()) >= folds
    # A label rarer than the folds cannot be stratified: plain shuffled folds still estimate the error.
    cv = (StratifiedKFold if stratify else KFold)(folds, shuffle=True, random_state=seed)
    x = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-6)
    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    try:
        pred = cross_val_predict(probe, x, labels, cv=cv)
    except ValueError:  # a training fold with a single label
        return float("nan")
    return float(100.0 * np.mean(pred != labels))


def loss_amplitude(layer_errors: np.ndarray, scale: float, recoverable: float) -> float:
    """A of :func:`predicted_losses`: the head-only cut's predicted loss against full depth (before the law's shape).

    ``layer_errors[l]`` is the probe error (points) on latent space l = 0..L.
    """
    e = np.asarray(layer_errors, dtype=np.float64)
    e_head = float(e[-1])
    below = float(np.nanmin(e[:-1])) if len(e) > 1 and np.isfinite(e[:-1]).any() else e_head
    return scale * e_head + recoverable * max(0.0, e_head - below)


def predicted_losses(amplitude: float, trained_units: np.ndarray, alpha: float) -> np.ndarray:
    """Predicted accuracy loss (points) of every cut against training every block (module docstring, step 5).

    ``trained_units[k]`` is the trained depth of cut k in block units (L at cut 0, 0 for the head alone).
    """
    u = np.asarray(trained_units, dtype=np.float64)
    curve = amplitude * np.power(1.0 + u, -alpha)
    return np.maximum(curve - curve[np.argmax(u)], 0.0)


def cheapest_within(losses: np.ndarray, tolerance: float, allowed: np.ndarray) -> np.ndarray:
    """Scores for :func:`choose_cut`: 0 within ``tolerance``, minus the loss beyond it, NaN where not allowed.

    :func:`choose_cut` takes the best score that fits the budget and breaks ties towards the higher
    (cheaper) cut, so this picks the cheapest cut within tolerance, or the least lossy one that fits.
    """
    scores = np.where(losses <= tolerance + 1e-9, 0.0, -losses)
    return np.where(allowed, scores, np.nan)


def label_tokens(encoder: TextEncoder, label_map: LabelMap, label_words: dict[str, str] | None) -> list[int]:
    """First token of each label's word (with a leading space, as it appears mid-text)."""
    words = label_words or {}
    tokens = []
    for label in label_map.labels:
        word = words.get(label, label)
        ids = encoder.token_ids(" " + word) or encoder.token_ids(word)
        if not ids:
            raise PlanError(f"label {label!r} maps to no token; pass label_words")
        tokens.append(ids[0])
    if len(set(tokens)) != len(tokens):
        raise PlanError(
            "two labels share their first token for the readout basis; pass distinct label_words "
            f"(labels {list(label_map.labels)} -> tokens {tokens}) or use basis='probe'"
        )
    return tokens


class SALFPlanner(Planner):
    name = "salf"
    Config = SALFConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        cfg: SALFConfig = self.config
        backbone = inputs.backbone
        calib = sample(inputs.dataset, cfg.sample_size, seed=inputs.seed)
        labels = calib.encoded_labels(inputs.label_map)
        traces = collect_traces(backbone, inputs.encoder, calib.texts, cfg.batch_size, inputs.progress)
        pooled = traces.pooled
        if backbone.is_decoder and backbone.final_norm is not None:
            with torch.inference_mode():
                pooled = backbone.final_norm(torch.from_numpy(pooled)).numpy()

        t0 = time.perf_counter()
        readout = backbone.readout_weight()
        use_readout = cfg.basis == "readout" or (cfg.basis == "auto" and readout is not None)
        if use_readout:
            if readout is None:
                raise PlanError(f"{backbone.model_id}: basis='readout' needs a model with an LM head")
            tokens = label_tokens(inputs.encoder, inputs.label_map, cfg.label_words)
            basis = readout_basis(readout.detach().float().cpu().numpy(), tokens)
            cos_sets = [np.stack([cosine_to_basis(p, basis) for p in pooled])]
            basis_info = {"basis": "readout", "label_tokens": tokens}
        else:
            cos_sets = self._cross_fitted_cosines(pooled, labels, len(inputs.label_map), inputs.seed)
            basis_info = {"basis": "probe", "folds": cfg.folds, "repeats": len(cos_sets)}

        taus, curves = [], []
        for cos in cos_sets:
            tau = cfg.temperature or calibrate_temperature(cos[-1], labels)
            taus.append(tau)
            curves.append([deviation(cos[layer], labels, tau) for layer in range(len(cos))])
        devs = np.mean(curves, axis=0)
        tau = float(np.mean(taus))
        x = block_units(backbone.block_param_counts())
        gains, expected, law = expected_gains(devs, x)
        errors = np.array([probe_error(p, labels, cfg.probe_folds, cfg.probe_c, inputs.seed) for p in pooled])
        if not np.isfinite(errors[-1]):
            errors[-1] = 100.0 * (1.0 - 1.0 / len(inputs.label_map))  # no estimate: assume chance, nothing is cheap
        amplitude = loss_amplitude(errors, cfg.loss_scale, cfg.loss_recoverable)
        losses = predicted_losses(amplitude, x[-1] - x, cfg.loss_alpha)
        min_layers = cfg.min_trainable_layers
        if cfg.policy == "argmax-gain":
            allowed = allowed_cuts_mask(backbone.num_layers, 1 if min_layers is None else min_layers)
            scores = np.where(allowed, expected, np.nan)
            scores[0] = np.nan  # l* is a layer (1..L); full fine-tuning is the "full" planner
        else:
            allowed = allowed_cuts_mask(backbone.num_layers, 0 if min_layers is None else min_layers)
            scores = cheapest_within(losses, cfg.tolerance, allowed)
        diagnostics = {
            "policy": cfg.policy,
            "tolerance": cfg.tolerance,
            "head_only_error": float(errors[-1]),
            "probe_errors": [float(e) for e in errors],
            "loss_law": {"gamma": cfg.loss_scale, "beta": cfg.loss_recoverable, "alpha": cfg.loss_alpha},
            "loss_amplitude": amplitude,
            **basis_info,
            "temperature": tau,
            "law": {"A": law.a, "alpha": law.alpha, "E": law.e, "converged": law.ok},
            "block_units": x.tolist(),
            "sample_size": len(calib),
            "trace_seconds": traces.seconds,
            "analysis_seconds": time.perf_counter() - t0,
        }
        return CutScores(scores, devs, gains, expected, diagnostics, predicted_loss=losses)

    def _cross_fitted_cosines(
        self, pooled: np.ndarray, labels: np.ndarray, num_labels: int, seed: int
    ) -> list[np.ndarray]:
        """cos(h_l, S) with S from a probe that never saw the example it is applied to.

        One (L+1, n, C) array per repetition of the k-fold split: averaging the
        deviation curves over repetitions lowers the variance of the split.
        """
        from sklearn.model_selection import RepeatedStratifiedKFold

        cfg: SALFConfig = self.config
        counts = np.bincount(labels, minlength=num_labels)
        folds = min(cfg.folds, int(counts[counts > 0].min()))
        if folds < 2:  # a label with a single example: cross-fitting is impossible, fit in-sample
            basis = probe_basis(pooled[-1], labels, num_labels, cfg.probe_c, seed)
            return [np.stack([cosine_to_basis(p, basis) for p in pooled])]
        splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=cfg.repeats, random_state=seed)
        out: list[np.ndarray] = []
        for i, (fit_idx, read_idx) in enumerate(splitter.split(pooled[-1], labels)):
            if i % folds == 0:
                out.append(np.zeros((pooled.shape[0], pooled.shape[1], num_labels)))
            basis = probe_basis(pooled[-1][fit_idx], labels[fit_idx], num_labels, cfg.probe_c, seed)
            for layer in range(pooled.shape[0]):
                out[-1][layer, read_idx] = cosine_to_basis(pooled[layer][read_idx], basis)
        return out
