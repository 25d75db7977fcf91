import numpy as np
import pytest

from edgetune.data import TextDataset
from edgetune_fleet.users import UserConfig, simulate_users
from tests.conftest import synthetic_rows


@pytest.fixture()
def pool():
    rows = synthetic_rows(300)
    return TextDataset([f"{t} #{i}" for i, (t, _) in enumerate(rows)], [y for _, y in rows])


def test_users_are_deterministic_and_sized(pool):
    cfg = UserConfig(num_users=5, examples_per_user=40, alpha=0.3, seed=3)
    a = simulate_users(pool, cfg)
    b = simulate_users(pool, cfg)
    assert [u.train.texts for u in a] == [u.train.texts for u in b]
    assert [u.test.labels for u in a] == [u.test.labels for u in b]
    for u in a:
        assert len(u.train) + len(u.test) == 40 and len(u.test) == 12
        assert len(set(u.train.texts + u.test.texts)) == 40  # no duplicates within a user
    c = simulate_users(pool, UserConfig(num_users=5, examples_per_user=40, alpha=0.3, seed=4))
    assert [u.train.texts for u in a] != [u.train.texts for u in c]


def test_small_alpha_is_more_non_iid(pool):
    def concentration(alpha):
        users = simulate_users(
            pool, UserConfig(num_users=20, examples_per_user=30, alpha=alpha, seed=0, preference_fraction=0)
        )
        return np.mean([max(np.unique(u.train.labels + u.test.labels, return_counts=True)[1]) / 30 for u in users])

    assert concentration(0.1) > concentration(100.0) + 0.2


def test_preferences_swap_labels_consistently(pool):
    users = simulate_users(pool, UserConfig(num_users=8, examples_per_user=30, preference_fraction=1.0, seed=1))
    truth = dict(zip(pool.texts, pool.labels))
    for u in users:
        assert len(u.preference) == 2
        a, b = list(u.preference)
        assert u.preference[a] == b and u.preference[b] == a
        for text, label in zip(u.train.texts + u.test.texts, u.train.labels + u.test.labels):
            assert label == u.preference.get(truth[text], truth[text])


def test_label_noise_only_in_train(pool):
    users = simulate_users(
        pool, UserConfig(num_users=3, examples_per_user=60, label_noise=0.5, preference_fraction=0, seed=2)
    )
    truth = dict(zip(pool.texts, pool.labels))
    for u in users:
        wrong = sum(truth[t] != y for t, y in zip(u.train.texts, u.train.labels))
        assert wrong == u.noisy_labels > 0
        assert all(truth[t] == y for t, y in zip(u.test.texts, u.test.labels))


def test_bad_configs(pool):
    with pytest.raises(ValueError, match="exceeds the pool"):
        simulate_users(pool, UserConfig(examples_per_user=1000))
    with pytest.raises(ValueError):
        UserConfig(alpha=0)
    with pytest.raises(ValueError):
        UserConfig(test_fraction=1.0)


def test_prior_users_differ_only_in_their_label_prior(pool):
    from edgetune_fleet.users import natural_users

    cfg = UserConfig(num_users=6, examples_per_user=40, seed=5)
    users = natural_users(pool, "prior", cfg, majority=(0.6, 0.8))
    assert users == natural_users(pool, "prior", cfg, majority=(0.6, 0.8))  # deterministic
    truth = dict(zip(pool.texts, pool.labels))
    for u in users:
        labels = u.train.labels + u.test.labels
        assert len(labels) == 40 and len(set(u.train.texts + u.test.texts)) == 40
        assert all(truth[t] == y for t, y in zip(u.train.texts + u.test.texts, labels))  # the corpus's own labels
        top = max(set(labels), key=labels.count)
        assert 0.6 <= labels.count(top) / 40 <= 0.8 and u.kind == "prior" and not u.preference
        assert u.user_id.startswith("prior") and u.train.source == f"{u.user_id}/train"


def test_domain_users_take_their_texts_from_one_group(pool):
    from edgetune_fleet.users import natural_users, topic_clusters

    groups = topic_clusters(pool.texts, 3, seed=0)
    assert set(groups.tolist()) == {0, 1, 2}
    users = natural_users(pool, "domain", UserConfig(num_users=5, examples_per_user=30, seed=1), groups=groups)
    index = {t: i for i, t in enumerate(pool.texts)}
    truth = dict(zip(pool.texts, pool.labels))
    for u in users:
        texts = u.train.texts + u.test.texts
        assert u.kind == "domain" and len(u.groups) >= 1
        assert {int(groups[index[t]]) for t in texts} <= set(u.groups)
        assert all(truth[t] == y for t, y in zip(texts, u.train.labels + u.test.labels))
    # a group too small for a user: the smallest union of groups that is large enough
    tiny = np.arange(len(pool)) % 30  # 30 groups of 10 documents
    user = natural_users(pool, "domain", UserConfig(num_users=1, examples_per_user=25, seed=0), groups=tiny)[0]
    assert len(user.groups) == 3
    with pytest.raises(ValueError, match="need the group"):
        natural_users(pool, "domain", UserConfig(num_users=1, examples_per_user=25))
    with pytest.raises(ValueError, match="unknown user kind"):
        natural_users(pool, "authors")


def test_swap_and_dirichlet_kinds(pool):
    from edgetune_fleet.users import natural_users

    cfg = UserConfig(num_users=4, examples_per_user=30, seed=2)
    assert all(u.preference and u.kind == "swap" for u in natural_users(pool, "swap", cfg))
    assert all(not u.preference and u.kind == "dirichlet" for u in natural_users(pool, "dirichlet", cfg))
