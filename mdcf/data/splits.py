"""Train/test splits: random, per-user, temporal, k-fold and the official ml-100k splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .._checks import is_int, is_real
from .movielens import MOVIELENS, DatasetUnavailableError, movielens_archive
from .ratings import Ratings
from .readers import read_ratings

__all__ = ["Split", "SPLIT_METHODS", "split", "kfold", "official_split", "OFFICIAL_SPLITS"]

SPLIT_METHODS = ("random", "user", "temporal", "user_temporal")
OFFICIAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


@dataclass(frozen=True, repr=False)
class Split:
    """A train/test pair over the same code space, with cold-start counts.

    Unpacks as ``train, test = split(...)``.

    Attributes:
      train, test: disjoint :class:`Ratings` covering the parent.
      method: how the split was made.
      cold_users: distinct test users with no training rating.
      cold_items: distinct test items with no training rating.
      cold_ratings: test ratings whose user or item has no training rating (a
        model can only fall back to biases for these at predict time).
    """

    train: Ratings
    test: Ratings
    method: str
    cold_users: int
    cold_items: int
    cold_ratings: int

    def __iter__(self) -> Iterator[Ratings]:
        return iter((self.train, self.test))

    def summary(self) -> str:
        return (
            f"{self.method} split: {len(self.train):,} train / {len(self.test):,} test ratings; "
            f"cold start in test: {self.cold_users:,} users, {self.cold_items:,} items, "
            f"{self.cold_ratings:,} ratings"
        )

    __repr__ = summary


def _make_split(ratings: Ratings, test_mask: np.ndarray, method: str) -> Split:
    train = ratings.subset(~test_mask, name=f"{ratings.name} train")
    test = ratings.subset(test_mask, name=f"{ratings.name} test")
    user_seen = train.user_counts() > 0
    item_seen = train.item_counts() > 0
    cold_users = np.unique(test.users[~user_seen[test.users]])
    cold_items = np.unique(test.items[~item_seen[test.items]])
    cold = ~user_seen[test.users] | ~item_seen[test.items]
    return Split(train, test, method, len(cold_users), len(cold_items), int(cold.sum()))


def _check_fraction(test_fraction: float, n: int) -> int:
    if not (is_real(test_fraction) and 0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if n < 2:
        raise ValueError(f"a split needs at least 2 ratings, got {n}")
    return int(min(max(round(test_fraction * n), 1), n - 1))


def _rank_within_user(users: np.ndarray, order: np.ndarray, n_users: int) -> np.ndarray:
    """For ratings listed in ``order`` (grouped by user), each one's 0-based rank in its group."""
    counts = np.bincount(users, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[users[order]]
    return rank


def _per_user_test_count(users: np.ndarray, n_users: int, test_fraction: float) -> np.ndarray:
    counts = np.bincount(users, minlength=n_users)
    # Round half to even, and always leave at least one training rating per user.
    return np.minimum(np.rint(test_fraction * counts).astype(np.int64), np.maximum(counts - 1, 0))


def split(ratings: Ratings, method: str = "random", test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split ratings into disjoint train and test sets that cover all of them.

    Methods:

    * ``"random"``: a uniformly random ``test_fraction`` of the ratings.
    * ``"user"``: per-user holdout: each user's test share is
      ``round(test_fraction * n_u)`` random ratings, capped so that every user
      keeps at least one training rating (users with one rating keep it).
    * ``"temporal"``: a global time cut: the latest ``test_fraction`` of the
      ratings (ties at the cut broken by position) go to test, so no test rating
      is older than a training one.
    * ``"user_temporal"``: each user's latest ratings, with the per-user counts of ``"user"``.

    The same ``seed`` gives the same split. To carve a validation set, split the
    training part again: ``fit_part, val = split(train, ...)``.

    Args:
      ratings: the data.
      method: one of :data:`SPLIT_METHODS`.
      test_fraction: share of ratings held out, in (0, 1).
      seed: seed of the random choices (unused by ``"temporal"``): an integer >= 0.
        ``None`` is refused: a split must be reproducible.

    Returns:
      A :class:`Split`; its ``cold_*`` counts report users and items of test
      that never occur in training.
    """
    n = len(ratings)
    n_test = _check_fraction(test_fraction, n)
    rng = np.random.default_rng(_check_seed(seed, "split"))
    test = np.zeros(n, dtype=bool)
    if method == "random":
        test[rng.permutation(n)[:n_test]] = True
    elif method in ("temporal", "user_temporal"):
        if ratings.timestamps is None:
            raise ValueError(f"method={method!r} needs timestamps, and {ratings.name} has none")
        position = np.arange(n)
        if method == "temporal":
            order = np.lexsort((position, ratings.timestamps))
            test[order[n - n_test:]] = True
        else:
            order = np.lexsort((-position, -ratings.timestamps, ratings.users))  # latest first per user
            rank = _rank_within_user(ratings.users, order, ratings.n_users)
            test = rank < _per_user_test_count(ratings.users, ratings.n_users, test_fraction)[ratings.users]
    elif method == "user":
        order = np.lexsort((rng.random(n), ratings.users))
        rank = _rank_within_user(ratings.users, order, ratings.n_users)
        test = rank < _per_user_test_count(ratings.users, ratings.n_users, test_fraction)[ratings.users]
    else:
        raise ValueError(f"method must be one of {SPLIT_METHODS}, got {method!r}")
    return _make_split(ratings, test, method)


def _check_seed(seed, where: str) -> int:
    if not (is_int(seed) and seed >= 0):
        raise ValueError(f"{where}: seed must be an integer >= 0 (the same seed gives the same split), got {seed!r}")
    return int(seed)


def kfold(ratings: Ratings, k: int = 5, seed: int = 0) -> list[Split]:
    """``k`` random folds: split ``i`` tests on fold ``i`` and trains on the rest (``seed``:
    an integer >= 0).

    The test sets are disjoint and together cover every rating exactly once.
    """
    n = len(ratings)
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
        raise ValueError(f"k must be an integer in [2, {n}] (the number of ratings), got {k!r}")
    folds = np.array_split(np.random.default_rng(_check_seed(seed, "kfold")).permutation(n), k)
    splits = []
    for i, fold in enumerate(folds):
        test = np.zeros(n, dtype=bool)
        test[fold] = True
        splits.append(_make_split(ratings, test, f"fold {i + 1}/{k}"))
    return splits


def official_split(
    which: str = "u1",
    *,
    archive: os.PathLike | str | None = None,
    data_dir: os.PathLike | str | None = None,
    download: bool = True,
    verbose: bool = True,
) -> Split:
    """One of ml-100k's official splits (``u1``..``u5`` five-fold, ``ua``/``ub`` ten per user).

    The split files exist only in the GroupLens archive ``ml-100k.zip``; the
    package-index fallback of :func:`~mdcf.data.load_movielens` carries u.data alone.

    Args:
      which: one of :data:`OFFICIAL_SPLITS`.
      archive: path to an ``ml-100k.zip`` to read (used as given, without a
        checksum). By default the MD5-verified archive in the data folder,
        downloaded if needed and allowed.
      data_dir, download, verbose: as for :func:`~mdcf.data.load_movielens`.

    Returns:
      A :class:`Split` in the code space of the whole of u.data.

    Raises:
      DatasetUnavailableError: the archive is not available; the message says where to put it.
    """
    if which not in OFFICIAL_SPLITS:
        raise ValueError(f"which must be one of {OFFICIAL_SPLITS}, got {which!r}")
    if archive is None:
        try:
            archive = movielens_archive("ml-100k", data_dir, download=download, verbose=verbose)
        except DatasetUnavailableError as err:
            raise DatasetUnavailableError(
                f"the official ml-100k splits need the GroupLens archive ml-100k.zip (the package-index "
                f"fallback has only u.data): {err}"
            ) from None
    archive = Path(archive)
    scale = MOVIELENS["ml-100k"].scale
    full = read_ratings(archive, member="u.data", scale=scale, name="ml-100k")
    parts = [read_ratings(archive, member=f"{which}.{part}", scale=scale, duplicates="error") for part in ("base", "test")]
    key_of_full = full.users.astype(np.int64) * full.n_items + full.items
    order = np.argsort(key_of_full)
    test = np.zeros(len(full), dtype=bool)
    covered = np.zeros(len(full), dtype=bool)
    for part, is_test in zip(parts, (False, True)):
        users = part.user_ids[part.users]
        items = part.item_ids[part.items]
        user_codes = np.searchsorted(full.user_ids, users)
        item_codes = np.searchsorted(full.item_ids, items)
        ok = (user_codes < full.n_users) & (item_codes < full.n_items)
        ok &= (full.user_ids[np.minimum(user_codes, full.n_users - 1)] == users)
        ok &= (full.item_ids[np.minimum(item_codes, full.n_items - 1)] == items)
        key = user_codes.astype(np.int64) * full.n_items + item_codes
        where = order[np.minimum(np.searchsorted(key_of_full, key, sorter=order), len(order) - 1)]
        ok &= key_of_full[where] == key
        if not ok.all():
            raise ValueError(f"{archive}:{which}.{'test' if is_test else 'base'} has ratings not in u.data")
        covered[where] = True
        test[where] = is_test
    if not covered.all() or len(parts[0]) + len(parts[1]) != len(full):
        raise ValueError(f"{archive}: {which}.base and {which}.test do not partition u.data")
    return _make_split(full, test, f"official ml-100k {which}")
