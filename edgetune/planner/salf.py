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

       A       = gamma * q_head + beta * max(0, max_{l<L} (q_head - q_l))
       loss(k) = A * [(1 + u_k)^-alpha - (1 + L)^-alpha]

   q_l is the leave-one-out squared error (x100) of a ridge probe on the
   traces' pooled latent h_l, averaged over the sample, and the difference is
   taken example by example (edgetune/planner/evidence.py says why these are
   the stable choices). q_head = q_L is what the head alone leaves; the second
   term is task information that a lower latent space holds and the frozen top
   discards: error that training the top blocks can win back. u_k is the
   trained depth of cut k in block units (parameters of blocks k+1..L / mean
   block parameters), so the loss follows a power law in trained parameters.
   gamma, beta and alpha were fitted once on the calibration tasks of
   ``benchmarks/planner_study.py`` and are reported on the others.
6. Confidence. The sample is drawn by a keyed hash of each example (row order
   cannot change it); the bootstrap of its examples gives every number above a
   spread: each cut's loss interval and, per resample, the cut the policy would
   choose. The planner then traces a larger sample, doubling up to
   ``max_sample_size``, the whole training set, and ``plan_time_fraction`` of
   one full fine-tuning epoch (a trace is one forward pass, an epoch about
   three per example). With ``confidence`` < 1 it stops early once more than
   that share of the resamples agree; the default (1.0) never does, because
   early stops were measured to flip borderline tasks between adjacent cuts
   (at 80% agreement, and even on unanimous 256-example samples: a smaller
   sample can be sure of a cut the whole set does not choose). Reading the
   data whole makes the plan a function of the data alone. The plan records
   the share of resamples that chose its cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares, minimize_scalar

from edgetune.backbones import Backbone
from edgetune.data import LabelMap, order_invariant_sample
from edgetune.plan_config import MIN_SAMPLE_SIZE, POLICIES
from edgetune.planner.base import CutScores, Planner, PlanningInputs, allowed_cuts_mask, best_cut
from edgetune.planner.evidence import LayerEvidence, bootstrap_indices, layer_evidence
from edgetune.planner.plan import PlanError
from edgetune.tokenization import TextEncoder
from edgetune.traces import collect_traces

# Chosen on the calibration tasks of benchmarks/planner_study.py (tweets, TREC): the cheapest pick with zero regret
# against the oracle on every stored run; docs/methods.md says why not the least-squares fit of `--fit`.
LOSS_SCALE = 0.05
LOSS_RECOVERABLE = 1.5
LOSS_ALPHA = 0.875
RECOVERABLE_MARGIN = 1.0


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
    recoverable_margin: float = RECOVERABLE_MARGIN  # standard errors taken off the recoverable gap (evidence.py)
    resamples: int = 200  # bootstrap resamples of the calibration sample (the plan's confidence)
    confidence: float = 1.0  # stop growing the sample early only when more than this share of resamples agree
    max_sample_size: int = 2048  # the largest calibration sample the planner grows to
    plan_time_fraction: float = 0.35  # ... and at most this share of one full fine-tuning epoch's compute

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
        if self.basis not in ("auto", "readout", "probe"):
            raise ValueError(f"basis must be auto, readout or probe, got {self.basis!r}")
        if self.sample_size < MIN_SAMPLE_SIZE:
            raise ValueError(f"sample_size must be >= {MIN_SAMPLE_SIZE}, got {self.sample_size}")
        if self.max_sample_size < self.sample_size:
            raise ValueError(f"max_sample_size ({self.max_sample_size}) must be >= sample_size ({self.sample_size})")
        if self.folds < 1 or self.repeats < 1:
            raise ValueError(f"folds and repeats must be >= 1, got {self.folds}, {self.repeats}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.resamples < 0:
            raise ValueError(f"resamples must be >= 0, got {self.resamples}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")
        if self.plan_time_fraction <= 0:
            raise ValueError(f"plan_time_fraction must be > 0, got {self.plan_time_fraction}")

    def sample_limit(self, num_examples: int) -> int:
        """The largest sample the planner may trace for a training set of ``num_examples``.

        A trace is one forward pass per example and an epoch of full fine-tuning about three (forward and
        backward), so ``plan_time_fraction`` of an epoch affords about ``3 * fraction * N`` traces; never less
        than ``sample_size``.
        """
        by_time = int(3 * self.plan_time_fraction * num_examples)
        return min(num_examples, max(self.sample_size, min(self.max_sample_size, by_time)))


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


def loss_amplitude(head_points: float, recoverable_points: float, scale: float, recoverable: float) -> float:
    """A of :func:`predicted_losses`: the head-only cut's predicted loss against full depth (before the law's shape).

    ``head_points`` is the head-only probe's squared error (x100), ``recoverable_points`` how much lower the best
    lower layer's is (:class:`edgetune.planner.evidence.LayerEvidence`).
    """
    return scale * head_points + recoverable * max(0.0, recoverable_points)


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
        x = block_units(backbone.block_param_counts())
        units = x[-1] - x
        allowed = self._allowed_cuts(backbone.num_layers)
        traces = self._trace_store(inputs)
        limit = cfg.sample_limit(len(inputs.dataset))
        size, tried = min(cfg.sample_size, len(inputs.dataset)), []
        while True:  # module docstring, step 6: a larger sample while the choice is uncertain
            calib = order_invariant_sample(inputs.dataset, size, seed=inputs.seed)
            labels = calib.encoded_labels(inputs.label_map)
            pooled = traces.pooled(calib.texts)
            t0 = time.perf_counter()
            evidence = layer_evidence(pooled, labels, len(inputs.label_map))
            losses, resampled = self._losses(evidence, units, inputs.seed)
            scores = cheapest_within(losses, cfg.tolerance, allowed)
            resampled_scores = np.stack([cheapest_within(r, cfg.tolerance, allowed) for r in resampled])
            share = agreement(scores, resampled_scores)
            tried.append({"sample_size": len(calib), "agreement": share})
            if cfg.policy != "cheapest" or share > cfg.confidence or size >= limit:
                break
            size = min(2 * size, limit)

        devs, gains, expected, deviation_info = self._deviations(inputs, pooled, labels)
        if cfg.policy == "argmax-gain":
            scores = np.where(allowed, expected, np.nan)
            scores[0] = np.nan  # l* is a layer (1..L); full fine-tuning is the "full" planner
            resampled_scores = None  # the paper's rule: no resampling of the deviation curve
        head = evidence.head_points()
        recoverable = evidence.recoverable_points(margin=cfg.recoverable_margin)
        diagnostics = {
            "policy": cfg.policy,
            "tolerance": cfg.tolerance,
            "head_only_error": float(evidence.error_points()[-1]),
            "probe_errors": [float(e) for e in evidence.error_points()],
            "head_sq_error": head,
            "recoverable": recoverable,
            "ridge_penalties": evidence.penalties,
            "loss_law": {"gamma": cfg.loss_scale, "beta": cfg.loss_recoverable, "alpha": cfg.loss_alpha},
            "loss_amplitude": loss_amplitude(head, recoverable, cfg.loss_scale, cfg.loss_recoverable),
            **deviation_info,
            "block_units": x.tolist(),
            "sample_size": len(calib),
            "sample_limit": limit,
            "samples_tried": tried,
            "trace_seconds": traces.seconds,
            "analysis_seconds": time.perf_counter() - t0,
        }
        interval = np.percentile(resampled, [5, 95], axis=0) if len(resampled) else None
        return CutScores(
            scores, devs, gains, expected, diagnostics, predicted_loss=losses,
            resampled_scores=resampled_scores, loss_interval=interval,
        )  # fmt: skip

    def _trace_store(self, inputs: PlanningInputs) -> _TraceStore:
        """The traces of this backbone and tokenizer so far: planning again (another seed, budget or tolerance)
        traces only texts it has not seen."""
        store = getattr(self, "_traces", None)
        if store is None or store.backbone is not inputs.backbone or store.encoder is not inputs.encoder:
            store = self._traces = _TraceStore(inputs.backbone, inputs.encoder, self.config.batch_size, inputs.progress)
        store.seconds = 0.0
        return store

    def _allowed_cuts(self, num_layers: int) -> np.ndarray:
        cfg: SALFConfig = self.config
        default = 1 if cfg.policy == "argmax-gain" else 0
        return allowed_cuts_mask(num_layers, default if cfg.min_trainable_layers is None else cfg.min_trainable_layers)

    def _losses(self, evidence: LayerEvidence, units: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Predicted losses of every cut on the sample, and on each bootstrap resample of it ``(B, L + 1)``."""
        cfg: SALFConfig = self.config
        margin = cfg.recoverable_margin
        amplitude = loss_amplitude(
            evidence.head_points(), evidence.recoverable_points(margin=margin), cfg.loss_scale, cfg.loss_recoverable
        )
        point = predicted_losses(amplitude, units, cfg.loss_alpha)
        resampled = [
            predicted_losses(
                loss_amplitude(evidence.head_points(idx), evidence.recoverable_points(idx, margin), cfg.loss_scale,
                               cfg.loss_recoverable),
                units, cfg.loss_alpha,
            )
            for idx in bootstrap_indices(evidence.num_examples, cfg.resamples, seed)
        ]  # fmt: skip
        return point, np.array(resampled).reshape(len(resampled), len(units))

    def _deviations(
        self, inputs: PlanningInputs, pooled: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """The paper's deviation curve d_0..d_L, raw gains g_l and expected fine-tuning gains G_l (steps 2-4)."""
        cfg: SALFConfig = self.config
        backbone = inputs.backbone
        readout = backbone.readout_weight()
        use_readout = cfg.basis == "readout" or (cfg.basis == "auto" and readout is not None)
        if use_readout:
            if readout is None:
                raise PlanError(f"{backbone.model_id}: basis='readout' needs a model with an LM head")
            tokens = label_tokens(inputs.encoder, inputs.label_map, cfg.label_words)
            basis = readout_basis(readout.detach().float().cpu().numpy(), tokens)
            cos_sets = [np.stack([cosine_to_basis(p, basis) for p in pooled])]
            info: dict = {"basis": "readout", "label_tokens": tokens}
        else:
            cos_sets = self._cross_fitted_cosines(pooled, labels, len(inputs.label_map), inputs.seed)
            info = {"basis": "probe", "folds": cfg.folds, "repeats": len(cos_sets)}
        taus, curves = [], []
        for cos in cos_sets:
            tau = cfg.temperature or calibrate_temperature(cos[-1], labels)
            taus.append(tau)
            curves.append([deviation(cos[layer], labels, tau) for layer in range(len(cos))])
        devs = np.mean(curves, axis=0)
        gains, expected, law = expected_gains(devs, block_units(backbone.block_param_counts()))
        info |= {
            "temperature": float(np.mean(taus)),
            "law": {"A": law.a, "alpha": law.alpha, "E": law.e, "converged": law.ok},
        }
        return devs, gains, expected, info

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


def agreement(scores: np.ndarray, resampled_scores: np.ndarray) -> float:
    """Share of the resampled score rows whose best cut (ties to the cheaper cut) is the one ``scores`` picks."""
    if len(resampled_scores) == 0:
        return 1.0
    picks = [best_cut(row) for row in resampled_scores]
    return float(np.mean(np.array(picks) == best_cut(scores)))


class _TraceStore:
    """Pooled traces of the texts traced so far: a larger sample traces only the texts it adds."""

    def __init__(self, backbone: Backbone, encoder: TextEncoder, batch_size: int, progress: bool) -> None:
        self.backbone, self.encoder, self.batch_size, self.progress = backbone, encoder, batch_size, progress
        self.rows: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def pooled(self, texts: list[str]) -> np.ndarray:
        """``(L + 1, n, d)`` pooled traces of ``texts`` (the final norm applied for decoders, as in step 1)."""
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            traced = collect_traces(self.backbone, self.encoder, new, self.batch_size, self.progress)
            self.seconds += traced.seconds
            pooled = traced.pooled
            if self.backbone.is_decoder and self.backbone.final_norm is not None:
                with torch.inference_mode():
                    pooled = self.backbone.final_norm(torch.from_numpy(pooled)).numpy()
            for i, text in enumerate(new):
                self.rows[text] = pooled[:, i]
        return np.stack([self.rows[t] for t in texts], axis=1)
