import numpy as np
import pytest
import torch

from edgetune.api import load_model
from edgetune.features import FeatureCache, batch_width
from edgetune.modeling import SequenceClassifier

TEXTS = [
    "apple",
    "goal match team score league the a of",
    "vote party",
    "pear juice fruit today said new big report after city",
    "law",
]


@pytest.fixture()
def trunk(tiny_model_dir):
    backbone, encoder = load_model(tiny_model_dir("gpt2"), max_length=12)
    clf = SequenceClassifier(backbone, 3).eval()
    ids, mask = encoder(TEXTS)
    return (lambda i, m: clf.trunk_forward(i, m, 2)), ids, mask, encoder


def test_cache_holds_the_trunk_output_and_zero_padding(trunk):
    fn, ids, mask, encoder = trunk
    cache = FeatureCache.build(fn, ids, mask, batch_size=2, progress=False)
    assert cache.in_memory and len(cache) == 5 and cache.features.dtype == np.float32
    assert np.all(cache.features[mask == 0] == 0)
    for i, text in enumerate(TEXTS):
        one_ids, one_mask = encoder([text])
        with torch.no_grad():
            expected = fn(torch.from_numpy(one_ids), torch.from_numpy(one_mask))[0].numpy()
        assert np.allclose(cache.features[i, : one_mask.sum()], expected, atol=1e-5)
    # a batch is as wide as the tokenizer pads those texts, so the top sees the naive shapes
    hidden, batch_mask = cache.batch([0, 2])
    assert hidden.shape[1] == encoder([TEXTS[0], TEXTS[2]])[0].shape[1] == batch_width(mask[[0, 2]])
    assert batch_mask.dtype == torch.int64 and hidden.dtype == torch.float32


def test_memory_mapped_cache_reopens_only_with_its_key(trunk, tmp_path):
    fn, ids, mask, _ = trunk
    path = tmp_path / "cache"
    built = FeatureCache.build(fn, ids, mask, path=path, key={"cut": 2}, dtype="float16", progress=False)
    assert isinstance(built.features, np.memmap) and built.features.dtype == np.float16
    again = FeatureCache.open(path, expect={"cut": 2, "data": built.key["data"]})
    assert again is not None and np.array_equal(np.asarray(again.features), np.asarray(built.features))
    assert FeatureCache.open(path, expect={"cut": 3}) is None
    assert FeatureCache.open(tmp_path / "absent") is None
    (path / "mask.npy").unlink()
    assert FeatureCache.open(path) is None


def test_a_crash_while_caching_leaves_no_cache(trunk, tmp_path):
    fn, ids, mask, _ = trunk
    calls = []

    def failing(i, m):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return fn(i, m)

    with pytest.raises(RuntimeError):
        FeatureCache.build(failing, ids, mask, batch_size=2, path=tmp_path / "cache", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache.build(fn, ids, mask, dtype="int8", progress=False)


def test_encoder_tokenizes_in_chunks_with_the_same_result(tiny_model_dir):
    from tests.conftest import synthetic_rows

    _, encoder = load_model(tiny_model_dir("bert"), max_length=12)
    texts = [t for t, _ in synthetic_rows(600)] + ["apple " * 40]
    ids, mask = encoder(texts)
    assert ids.shape == (601, 12) and mask[-1].sum() == 12
    for i in (0, 255, 256, 599):  # rows on both sides of a chunk boundary match one-by-one encoding
        one_ids, one_mask = encoder([texts[i]])
        n = one_mask.sum()
        assert np.array_equal(ids[i, :n], one_ids[0, :n]) and mask[i].sum() == n
    assert np.array_equal(encoder.lengths(texts), mask.sum(axis=1))
