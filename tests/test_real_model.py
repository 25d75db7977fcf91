"""Sanity checks on the real all-MiniLM-L6-v2 and BBC news (installed by the 'examples' extra).

Kept fast: a small calibration sample and short sequences.
"""

import numpy as np
import pytest

from edgetune.api import load_model, plan
from edgetune.data import stratified_split
from edgetune.datasets import bbc_news, minilm_path


@pytest.fixture(scope="module")
def minilm():
    return load_model(minilm_path(), max_length=64)


@pytest.fixture(scope="module")
def bbc_train():
    train, _ = stratified_split(bbc_news(), 0.2, seed=0)
    return train


def test_bbc_news_corpus():
    ds = bbc_news()
    assert len(ds) == 2225
    assert ds.label_map().labels == ("business", "entertainment", "politics", "sports", "tech")


def test_deviation_decreases_through_the_real_model(minilm, bbc_train):
    p = plan(minilm, bbc_train, planner_params={"sample_size": 96}, progress=False)
    devs = np.array([r.deviation for r in p.rows])
    assert len(devs) == 7
    assert devs[-1] < 0.6 * devs[0]
    # a clear downward trend with depth (rank correlation), not a flat or rising curve
    ranks = np.argsort(np.argsort(devs))
    rho = np.corrcoef(ranks, np.arange(7))[0, 1]
    assert rho < -0.8
    assert 1 <= p.cut <= 5
    assert p.planner_params["fitted"]["basis"] == "probe"
