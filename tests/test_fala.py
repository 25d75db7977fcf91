import numpy as np
import pytest
import torch

from edgetune.fala import (
    PersonalMatrix,
    SelectionConfig,
    allocate_per_label,
    choose_k_by_silhouette,
    cluster_medoids,
    correlation_distance,
    random_examples,
    select_examples,
)


def _blobs(seed=0, n_per=20, d=16, centers=3):
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((centers, d)) * 3
    x = np.concatenate([protos[c] + 0.3 * rng.standard_normal((n_per, d)) for c in range(centers)])
    return x, np.repeat(np.arange(centers), n_per)


def test_correlation_distance_matches_pearson():
    x, _ = _blobs()
    d = correlation_distance(x)
    assert d[0, 1] == pytest.approx(1 - np.corrcoef(x[0], x[1])[0, 1])
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    # correlation ignores scale and offset of an embedding
    y = x.copy()
    y[1] = 5 * x[1] + 2
    assert correlation_distance(y)[0, 1] == pytest.approx(d[0, 1])
    const = np.vstack([x[:2], np.ones(16)])
    assert correlation_distance(const)[2, 0] == pytest.approx(1.0)


def test_one_medoid_per_cluster():
    x, y = _blobs()
    picked = cluster_medoids(x, 3)
    assert sorted(y[picked].tolist()) == [0, 1, 2]
    assert cluster_medoids(x, 100) == list(range(60))  # k larger than the data: everything
    with pytest.raises(ValueError):
        cluster_medoids(x, 0)


def test_silhouette_finds_the_number_of_blobs():
    x, _ = _blobs(centers=4)
    assert choose_k_by_silhouette(x, [2, 3, 4, 5, 6]) == 4


def test_allocation_per_label():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    assert allocate_per_label(labels, 10) == {0: 5, 1: 3, 2: 2}
    assert allocate_per_label(labels, 2) == {0: 1, 1: 1, 2: 0}
    assert allocate_per_label(np.array([0, 0, 1]), 10) == {0: 2, 1: 1}
    assert sum(allocate_per_label(labels, 7).values()) == 7


def test_selection_covers_labels_and_handles_degenerate_data():
    x, y = _blobs()
    sel = select_examples(x, y, SelectionConfig(k=6))
    assert len(sel) == 6 and sorted(set(y[sel])) == [0, 1, 2]
    one_label = select_examples(x, np.zeros(60, dtype=int), SelectionConfig(k=4))
    assert len(one_label) == 4
    assert select_examples(x[:3], y[:3], SelectionConfig(k=50)) == [0, 1, 2]
    assert len(select_examples(x, y, SelectionConfig(fraction=0.1))) == 6
    rnd = random_examples(60, 6, y, seed=1)
    assert len(rnd) == 6 and sorted(set(y[rnd])) == [0, 1, 2]
    assert rnd == random_examples(60, 6, y, seed=1)


@pytest.mark.parametrize("d_new,d_old", [(16, 16), (24, 10), (8, 32)])
def test_personal_matrix_recovers_a_linear_map(d_new, d_old):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((d_new, d_old))
    new = rng.standard_normal((200, d_new))
    old = new @ w + 0.5
    matrix = PersonalMatrix.fit(new, old, alpha=1e-6)
    with torch.no_grad():
        pred = matrix(torch.as_tensor(new, dtype=torch.float32)).numpy()
    assert pred.shape == (200, d_old)
    assert np.abs(pred - old).max() < 1e-3
    with pytest.raises(ValueError):
        PersonalMatrix.fit(new[:3], old[:2])
