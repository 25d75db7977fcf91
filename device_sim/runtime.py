"""Running an exported trunk (onnxruntime) and top (torch) on texts.

The exporter uses these functions to measure what it wrote (parity, int8
accuracy) and the device loader uses the same ones to predict, so a number in
the manifest was produced by the code path a device runs.

Texts are encoded in batches of similar length (less padding, same result:
every consumer of the trunk output masks the padding positions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetune.progress import progress_bar

if TYPE_CHECKING:
    import onnxruntime as ort

    from edgetune.modeling import TopModel
    from edgetune.tokenization import TextEncoder

TRUNK_INPUTS = ("input_ids", "attention_mask")
TRUNK_OUTPUTS = ("hidden_state", "attention_mask_out")
TOP_INPUTS = ("hidden_state", "attention_mask")
TOP_OUTPUTS = ("logits",)


MAX_THREADS = 256  # onnxruntime aborts the process when asked for tens of thousands of threads


def check_threads(threads: int | None) -> None:
    """A thread count a runtime can use: ``None`` (the runtime's choice) or 1..:data:`MAX_THREADS`."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in 1..{MAX_THREADS} (or None), got {threads!r}")


def ort_session(
    model: str | Path | bytes,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session with an explicit thread count (``None``: onnxruntime's default).

    Devices share their cores with everything else, so the thread count is a
    caller's decision, not onnxruntime's guess. ``arena=False``: no CPU memory
    arena (tensors are allocated and freed per run; the arena keeps its peak
    size for the session's life, ~50 MB on MiniLM's trunk at 4 texts).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    check_threads(threads)
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar token length, deterministic (stable sort)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_trunk(session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Hidden state at the cut, ``(batch, sequence, hidden)`` float32."""
    feeds = {TRUNK_INPUTS[0]: input_ids.astype(np.int64), TRUNK_INPUTS[1]: attention_mask.astype(np.int64)}
    return session.run([TRUNK_OUTPUTS[0]], feeds)[0]


def map_batches(
    encoder: TextEncoder,
    texts: Sequence[str],
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch_size: int = 32,
    progress: bool = False,
    description: str = "predict",
) -> np.ndarray:
    """``fn(ids, mask) -> (b, k)`` over ``texts`` in length-sorted batches; rows in input order."""
    if not len(texts):
        raise ValueError("no texts given")
    batches = length_batches(encoder.lengths(texts), batch_size)
    out: np.ndarray | None = None
    with progress_bar(description, len(texts), enabled=progress) as advance:
        for idx in batches:
            ids, mask = encoder([texts[i] for i in idx])
            rows = np.asarray(fn(ids, mask))
            if out is None:
                out = np.zeros((len(texts), *rows.shape[1:]), dtype=rows.dtype)
            out[idx] = rows
            advance(len(idx))
    assert out is not None
    return out


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (a device shares its cores), then restore the old count; torch
    is imported only when a count is given."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torch_top_fn(top: TopModel, trunk: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., Any]:
    """``(ids, mask) -> logits``: ``trunk`` (e.g. onnxruntime) then the torch top model."""
    import torch

    top.eval()

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = trunk(ids, mask)
        with torch.inference_mode():
            logits = top(torch.from_numpy(np.ascontiguousarray(hidden)), torch.from_numpy(mask))
        return logits.float().numpy()

    return fn


class OnnxTop:
    """``(hidden, mask) -> logits`` through the package's ONNX top, whose tensors are graph inputs: ``tensors``
    (the package's, or a personal state applied to them, :func:`device_sim.apply.apply_state`) are fed with the
    features on every call."""

    def __init__(self, session: ort.InferenceSession, tensors: dict[str, np.ndarray]) -> None:
        self.session = session
        names = [i.name for i in session.get_inputs()][len(TOP_INPUTS) :]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"the ONNX top needs tensors {missing[:3]} that the top's weights do not hold")
        self.feeds = {n: np.ascontiguousarray(tensors[n], np.float32) for n in names}

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {TOP_INPUTS[0]: np.ascontiguousarray(hidden, np.float32), TOP_INPUTS[1]: mask.astype(np.int64)}
        return self.session.run([TOP_OUTPUTS[0]], {**feeds, **self.feeds})[0]


def onnx_top_fn(top: OnnxTop, trunk: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., Any]:
    """``(ids, mask) -> logits`` entirely in onnxruntime (inference-only devices)."""

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return top(trunk(ids, mask), mask)

    return fn


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
