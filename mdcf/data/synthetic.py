"""Synthetic ratings from a ground-truth low-rank model with power-law popularity and spectrum.

The generator exists to test the method's theory (REFERENCE section 1.4): with
singular values ``sigma_k ~ k**-beta`` the best MD temperature is about
``alpha = 1 / (2 beta)``, and popularity-aware sizing should help most when
popularity is skewed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ratings import Ratings

__all__ = ["GroundTruth", "synthetic", "zipf_weights"]


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The model that generated synthetic ratings.

    ``score(u, i) = mean + sum_k singular_values[k] * user_factors[u, k] * item_factors[i, k]``;
    a rating is ``score + noise * N(0, 1)``, then rounded to ``step`` and clipped
    to ``scale`` when those are set. User and item codes equal their ids.

    Attributes:
      user_factors: float32 ``[n_users, rank]``, i.i.d. N(0, 1).
      item_factors: float32 ``[n_items, rank]``, i.i.d. N(0, 1).
      singular_values: float64 ``[rank]``, ``c * k**-spectrum_decay`` scaled so that
        the score's standard deviation is ``signal_std``.
      mean: the score's mean.
      noise: standard deviation of the additive noise.
      user_popularity: float64 ``[n_users]``, sampling probability of each user.
      item_popularity: float64 ``[n_items]``, sampling probability of each item.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    singular_values: np.ndarray
    mean: float
    noise: float
    user_popularity: np.ndarray
    item_popularity: np.ndarray

    def score(self, users: np.ndarray, items: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
        """Noise-free scores, float32 ``[n]``, for user and item codes (computed in chunks)."""
        users = np.asarray(users)
        items = np.asarray(items)
        out = np.empty(len(users), dtype=np.float32)
        weights = self.singular_values.astype(np.float32)
        for start in range(0, len(users), chunk):
            u = self.user_factors[users[start:start + chunk]]
            v = self.item_factors[items[start:start + chunk]]
            out[start:start + chunk] = self.mean + (u * v) @ weights
        return out


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Probabilities ``p_r ~ (r + 1) ** -exponent`` for ranks ``r = 0..n-1`` (0 gives uniform)."""
    if n < 1:
        raise ValueError(f"need at least one row, got n={n}")
    if exponent < 0:
        raise ValueError(f"a Zipf exponent must be >= 0, got {exponent}")
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(exponent)
    return weights / weights.sum()


def _distinct_pairs(
    rng: np.random.Generator, user_p: np.ndarray, item_p: np.ndarray, n_ratings: int
) -> np.ndarray:
    """``n_ratings`` distinct pair keys ``user * n_items + item``, sorted.

    Pairs are drawn with probability ``user_p[u] * item_p[i]`` and duplicates
    rejected; once popular cells saturate the realised popularity is flatter
    than the target, as in real data.
    """
    n_users, n_items = len(user_p), len(item_p)
    cells = n_users * n_items
    if n_ratings > cells:
        raise ValueError(f"n_ratings={n_ratings:,} exceeds the {cells:,} possible (user, item) pairs")
    if cells <= (1 << 22) or (cells <= 4 * n_ratings and cells <= (1 << 26)):
        # Dense regime: weighted sampling without replacement over all cells,
        # exactly, with the Gumbel top-k trick.
        log_p = np.log(np.outer(user_p, item_p).ravel())
        keys = log_p - np.log(-np.log(rng.random(cells)))
        chosen = np.argpartition(-keys, n_ratings - 1)[:n_ratings] if n_ratings < cells else np.arange(cells)
        return np.sort(chosen.astype(np.int64))
    keys = np.empty(0, dtype=np.int64)
    yield_rate = 1.0  # distinct new pairs per draw, learned from the previous round
    for _ in range(100):
        need = n_ratings - len(keys)
        draw = int(need / max(yield_rate, 0.01) * 1.05) + 1024
        # i.i.d. draws from user_p and item_p, paired at random: multinomial counts,
        # expanded, and one side shuffled (much faster than inverse-CDF search).
        users = np.repeat(np.arange(n_users, dtype=np.int64), rng.multinomial(draw, user_p))
        items = np.repeat(np.arange(n_items, dtype=np.int64), rng.multinomial(draw, item_p))
        rng.shuffle(items)
        fresh = np.sort(users * n_items + items)
        del users, items
        # Both parts are sorted: a stable sort (timsort) merges the two runs in linear time.
        merged = np.sort(np.concatenate([keys, fresh]), kind="stable")
        distinct = np.empty(len(merged), dtype=bool)
        distinct[:1] = True
        np.not_equal(merged[1:], merged[:-1], out=distinct[1:])
        before = len(keys)
        keys = merged[distinct]
        yield_rate = (len(keys) - before) / draw
        if len(keys) >= n_ratings:
            break
    else:
        raise ValueError(
            f"could not draw {n_ratings:,} distinct pairs from {n_users:,} x {n_items:,} with this "
            "popularity skew; lower the Zipf exponents or n_ratings"
        )
    if len(keys) > n_ratings:
        keys = keys[np.sort(rng.choice(len(keys), size=n_ratings, replace=False))]
    return keys


def synthetic(
    n_users: int = 1_000,
    n_items: int = 500,
    n_ratings: int = 20_000,
    rank: int = 16,
    user_zipf: float = 1.0,
    item_zipf: float = 1.0,
    spectrum_decay: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    *,
    mean: float = 3.5,
    signal_std: float = 1.0,
    scale: tuple[float, float] | None = (1.0, 5.0),
    step: float | None = 1.0,
    shuffle_ids: bool = True,
    timestamps: bool = True,
) -> tuple[Ratings, GroundTruth]:
    """Ratings drawn from a ground-truth low-rank model with Zipf popularity.

    Users and items are drawn with Zipf probabilities (``user_zipf``,
    ``item_zipf``; 0 is uniform), each (user, item) pair at most once. With
    ``shuffle_ids`` popularity rank and id are unrelated, as in real data.
    Scores follow :class:`GroundTruth` with singular values ``~ k**-spectrum_decay``.

    Args:
      n_users, n_items: table sizes; every id ``0..n-1`` is a code, even if unrated.
      n_ratings: number of distinct (user, item) ratings.
      rank: rank of the ground truth.
      user_zipf, item_zipf: popularity exponents.
      spectrum_decay: the ``beta`` of ``sigma_k ~ k**-beta``.
      noise: standard deviation of the observation noise.
      seed: everything is a deterministic function of the seed.
      mean, signal_std: mean and standard deviation of the noise-free score.
      scale: ratings are clipped to ``(low, high)``; None leaves them unbounded.
      step: ratings are rounded to multiples of ``step`` (1 gives 1..5 stars,
        0.5 half stars); None keeps them continuous.
      shuffle_ids: decouple popularity from id order.
      timestamps: attach uniformly random timestamps (so temporal splits work).

    Returns:
      ``(ratings, truth)``; ratings are sorted by user, then item.

    Example:
      >>> ratings, truth = synthetic(200, 100, 2_000, rank=4, seed=1)
      >>> len(ratings), ratings.n_users
      (2000, 200)
    """
    for label, value in (("n_users", n_users), ("n_items", n_items), ("n_ratings", n_ratings), ("rank", rank)):
        if int(value) != value or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if noise < 0 or signal_std < 0:
        raise ValueError(f"noise and signal_std must be >= 0, got {noise}, {signal_std}")
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive or None, got {step}")
    rng = np.random.default_rng(seed)
    user_p = zipf_weights(n_users, user_zipf)
    item_p = zipf_weights(n_items, item_zipf)
    if shuffle_ids:
        user_p = user_p[rng.permutation(n_users)]
        item_p = item_p[rng.permutation(n_items)]
    keys = _distinct_pairs(rng, user_p, item_p, n_ratings)
    users = (keys // n_items).astype(np.int32)
    items = (keys % n_items).astype(np.int32)
    del keys

    sigma = np.arange(1, rank + 1, dtype=np.float64) ** -float(spectrum_decay)
    sigma *= signal_std / np.sqrt(np.sum(sigma**2))
    truth = GroundTruth(
        user_factors=rng.standard_normal((n_users, rank), dtype=np.float32),
        item_factors=rng.standard_normal((n_items, rank), dtype=np.float32),
        singular_values=sigma,
        mean=float(mean),
        noise=float(noise),
        user_popularity=user_p,
        item_popularity=item_p,
    )
    values = truth.score(users, items)
    values += np.float32(noise) * rng.standard_normal(n_ratings, dtype=np.float32)
    if step is not None:
        values = np.round(values / np.float32(step)) * np.float32(step)
    if scale is not None:
        np.clip(values, scale[0], scale[1], out=values)
    times = None
    if timestamps:
        times = rng.integers(946_684_800, 1_704_067_200, size=n_ratings, dtype=np.int64)  # 2000..2024
    ratings = Ratings(
        users=users,
        items=items,
        ratings=values,
        timestamps=times,
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
        scale=None if scale is None else (float(scale[0]), float(scale[1])),
        name="synthetic",
        source=(
            f"synthetic(n_users={n_users}, n_items={n_items}, n_ratings={n_ratings}, rank={rank}, "
            f"user_zipf={user_zipf}, item_zipf={item_zipf}, spectrum_decay={spectrum_decay}, "
            f"noise={noise}, seed={seed})"
        ),
    )
    return ratings, truth
