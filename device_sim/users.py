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
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
            )
        )
    return users
