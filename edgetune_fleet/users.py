"""Simulated users: non-IID personal datasets cut from a labelled corpus.

A fleet needs users whose data differ from the server's and from each other,
or personalization has nothing to learn. Each user gets:

* a label mix drawn from a Dirichlet(alpha) over the labels (small alpha:
  a user reads mostly one or two topics; large alpha: close to the corpus mix);
* optionally a *personal preference*: a permutation of two labels (this user
  files "tech" stories under "business"), applied to the user's train and test
  data alike, so a global model is systematically wrong for this user;
* optionally label noise: a fraction of the user's training labels replaced by
  a uniformly drawn other label (test labels stay clean);
* a held-out test split of their own data.

Users sample from the pool without replacement inside a user; different users
may share documents (people read the same news). Everything is deterministic
given the seed.

Simulated label swaps are easy wins for any training. :func:`natural_users`
draws users whose difference from the server is natural (:data:`USER_KINDS`):

* ``prior``: skewed label priors only: one label makes up a ``majority`` share
  (drawn uniformly from a range) of the user's texts, the others share the
  rest evenly; texts are drawn at random within each label, labels are the
  corpus's own;
* ``domain``: the user's own domain or style: all their texts come from one
  group of the corpus (a source, an author, or, without such metadata, a
  topic cluster of it, :func:`topic_clusters`), with whatever labels that
  group has;
* ``dirichlet``: Dirichlet(alpha) label mixes, no swap; ``swap``: the same
  with a personal swap of two labels (the simulated kind above).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from edgetune.data import TextDataset


@dataclass(frozen=True)
class UserConfig:
    num_users: int = 10
    examples_per_user: int = 200
    alpha: float = 0.5
    test_fraction: float = 0.3
    preference_fraction: float = 0.5  # share of users with a personal label swap
    label_noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.examples_per_user < 2:
            raise ValueError("need num_users >= 1 and examples_per_user >= 2")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("preference_fraction", "label_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass
class SimulatedUser:
    user_id: str
    train: TextDataset
    test: TextDataset
    label_mix: dict[str, float]
    preference: dict[str, str] = field(default_factory=dict)  # label -> the label this user uses instead
    noisy_labels: int = 0
    kind: str = "dirichlet"  # see USER_KINDS
    groups: list[int] = field(default_factory=list)  # domain users: the corpus groups their texts come from


USER_KINDS = ("dirichlet", "swap", "prior", "domain")


def _draw_counts(rng: np.random.Generator, mix: np.ndarray, available: np.ndarray, n: int) -> np.ndarray:
    """Multinomial draw of n examples over labels, capped by what the pool holds."""
    counts = rng.multinomial(n, mix)
    overflow = int(np.maximum(counts - available, 0).sum())
    counts = np.minimum(counts, available)
    while overflow > 0:  # give the excess to labels that still have documents, by their mix weight
        room = available - counts
        weights = np.where(room > 0, mix + 1e-12, 0.0)
        i = int(rng.choice(len(mix), p=weights / weights.sum()))
        counts[i] += 1
        overflow -= 1
    return counts


def simulate_users(pool: TextDataset, config: UserConfig | None = None) -> list[SimulatedUser]:
    """Cut ``config.num_users`` non-IID personal datasets out of ``pool``."""
    cfg = config or UserConfig()
    if cfg.examples_per_user > len(pool):
        raise ValueError(f"examples_per_user={cfg.examples_per_user} exceeds the pool ({len(pool)} documents)")
    labels = np.array(pool.labels)
    names = sorted(set(pool.labels))
    by_label = {name: np.flatnonzero(labels == name) for name in names}
    available = np.array([len(by_label[n]) for n in names])
    rng = np.random.default_rng(cfg.seed)
    users = []
    for u in range(cfg.num_users):
        mix = rng.dirichlet(np.full(len(names), cfg.alpha))
        counts = _draw_counts(rng, mix, available, cfg.examples_per_user)
        idx = np.concatenate([rng.choice(by_label[n], size=c, replace=False) for n, c in zip(names, counts)])
        rng.shuffle(idx)
        user_labels = labels[idx].tolist()
        preference: dict[str, str] = {}
        present = [n for n, c in zip(names, counts) if c > 0]
        if len(present) >= 2 and rng.random() < cfg.preference_fraction:
            a, b = rng.choice(present, size=2, replace=False)
            preference = {str(a): str(b), str(b): str(a)}
            user_labels = [preference.get(y, y) for y in user_labels]
        texts = [pool.texts[i] for i in idx]
        rows = [pool.rows[i] for i in idx]
        n_test = max(1, round(cfg.test_fraction * len(idx)))
        test = TextDataset(texts[:n_test], user_labels[:n_test], f"user{u:03d}/test", rows[:n_test])
        train_labels = user_labels[n_test:]
        noisy = 0
        if cfg.label_noise > 0 and len(names) > 1:
            flip = rng.random(len(train_labels)) < cfg.label_noise
            for i in np.flatnonzero(flip):
                train_labels[i] = str(rng.choice([n for n in names if n != train_labels[i]]))
            noisy = int(flip.sum())
        train = TextDataset(texts[n_test:], train_labels, f"user{u:03d}/train", rows[n_test:])
        users.append(
            SimulatedUser(
                user_id=f"user{u:03d}",
                train=train,
                test=test,
                label_mix={n: float(m) for n, m in zip(names, mix)},
                preference=preference,
                noisy_labels=noisy,
                kind="swap" if preference else "dirichlet",
            )
        )
    return users


def topic_clusters(texts: list[str], k: int, seed: int = 0) -> np.ndarray:
    """A topic cluster id per text: k-means (scikit-learn) on TF-IDF vectors (English stop words removed,
    sublinear term frequency), L2-normed, so the clusters follow vocabulary, i.e. topic and style."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not 1 <= k <= len(texts):
        raise ValueError(f"k must be in 1..{len(texts)}, got {k}")
    vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=2, max_features=20000).fit_transform(
        texts
    )
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors).astype(np.int64)


def _split_user(
    pool: TextDataset, idx: np.ndarray, user_id: str, test_fraction: float
) -> tuple[TextDataset, TextDataset]:
    texts = [pool.texts[i] for i in idx]
    labels = [pool.labels[i] for i in idx]
    rows = [pool.rows[i] for i in idx] if pool.rows else list(range(1, len(idx) + 1))
    n_test = max(1, round(test_fraction * len(idx)))
    test = TextDataset(texts[:n_test], labels[:n_test], f"{user_id}/test", rows[:n_test])
    train = TextDataset(texts[n_test:], labels[n_test:], f"{user_id}/train", rows[n_test:])
    return train, test


def _label_users(pool: TextDataset, kind: str, cfg: UserConfig) -> list[SimulatedUser]:
    """``dirichlet`` and ``swap`` users: :func:`simulate_users` with every user or none filing two labels swapped."""
    fraction = 1.0 if kind == "swap" else 0.0
    users = simulate_users(pool, replace(cfg, preference_fraction=fraction))
    for u in users:
        u.user_id = u.user_id.replace("user", kind)
        u.train.source, u.test.source = f"{u.user_id}/train", f"{u.user_id}/test"
    return users


def _prior_draw(
    rng: np.random.Generator, labels: np.ndarray, names: list[str], size: int, majority: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A prior user's documents and label mix: one random label takes a share drawn from ``majority``, exactly."""
    lo, hi = majority
    if not 0 < lo <= hi < 1:
        raise ValueError(f"majority must be a range inside (0, 1), got {majority}")
    top = int(rng.integers(len(names)))
    share = float(rng.uniform(lo, hi))
    mix = np.full(len(names), (1 - share) / max(1, len(names) - 1))
    mix[top] = share if len(names) > 1 else 1.0
    by_label = {n: np.flatnonzero(labels == n) for n in names}
    available = np.array([len(by_label[n]) for n in names])
    n_top = min(int(round(share * size)), int(available[top]))  # the top share exactly
    rest_mix = np.where(np.arange(len(names)) == top, 0.0, mix)
    rest_available = np.where(np.arange(len(names)) == top, 0, available)
    if rest_mix.sum() > 0:
        counts = _draw_counts(rng, rest_mix / rest_mix.sum(), rest_available, size - n_top)
    else:
        counts = np.zeros(len(names), dtype=np.int64)
    counts[top] += n_top
    idx = np.concatenate([rng.choice(by_label[n], size=c, replace=False) for n, c in zip(names, counts)])
    return idx, mix


def _domain_draw(
    rng: np.random.Generator, groups: np.ndarray | list[int] | None, labels: np.ndarray, names: list[str], size: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A domain user's documents, label mix and groups: one random group large enough, else a union of groups."""
    if groups is None:
        raise ValueError("domain users need the group (source, author or topic cluster) of every document")
    g = np.asarray(groups)
    if len(g) != len(labels):
        raise ValueError(f"groups has {len(g)} entries for {len(labels)} documents")
    ids = np.unique(g)
    order = rng.permutation(ids)
    big = [i for i in order if (g == i).sum() >= size]
    chosen = [int(big[0])] if big else []
    for i in order:  # no group is large enough alone: the smallest union of random groups that is
        if chosen and np.isin(g, chosen).sum() >= size:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    members = np.flatnonzero(np.isin(g, chosen))
    idx = rng.choice(members, size=size, replace=False)
    counts = np.array([(labels[idx] == n).sum() for n in names])
    return idx, counts / counts.sum(), chosen


def natural_users(
    pool: TextDataset,
    kind: str,
    config: UserConfig | None = None,
    *,
    groups: np.ndarray | list[int] | None = None,
    majority: tuple[float, float] = (0.5, 0.85),
) -> list[SimulatedUser]:
    """``config.num_users`` users of one :data:`USER_KINDS` kind (see the module docstring).

    ``groups`` (domain users): the group of every pool document (its source, author or topic cluster); each
    user takes its texts from one group drawn at random among those large enough (or from the smallest union
    of random groups that is). ``majority`` (prior users): the range of the top label's share. User ids are
    ``<kind>NNN``; everything is deterministic given ``config.seed``."""
    cfg = config or UserConfig()
    if kind not in USER_KINDS:
        raise ValueError(f"unknown user kind {kind!r}; choose one of {', '.join(USER_KINDS)}")
    if kind in ("dirichlet", "swap"):
        return _label_users(pool, kind, cfg)
    if cfg.examples_per_user > len(pool):
        raise ValueError(f"examples_per_user={cfg.examples_per_user} exceeds the pool ({len(pool)} documents)")
    labels = np.array(pool.labels)
    names = sorted(set(pool.labels))
    rng = np.random.default_rng(cfg.seed)
    users = []
    for u in range(cfg.num_users):
        user_id = f"{kind}{u:03d}"
        chosen: list[int] = []
        if kind == "prior":
            idx, mix = _prior_draw(rng, labels, names, cfg.examples_per_user, majority)
        else:
            idx, mix, chosen = _domain_draw(rng, groups, labels, names, cfg.examples_per_user)
        rng.shuffle(idx)
        train, test = _split_user(pool, idx, user_id, cfg.test_fraction)
        users.append(
            SimulatedUser(
                user_id=user_id,
                train=train,
                test=test,
                label_mix={n: float(m) for n, m in zip(names, mix)},
                kind=kind,
                groups=sorted(chosen),
            )
        )
    return users
