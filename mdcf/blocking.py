"""Rows into blocks: the frequency equipartition (the paper's Algorithm 2) and table stacking.

A :class:`Blocking` maps the rows of an embedding table to a *block order*:
rows sorted by training frequency, most frequent first, and cut into
contiguous blocks. The MD layer (:mod:`mdcf.embeddings`) works on block-ordered
row ids ``0..n-1``, where block ``i`` holds rows ``offsets[i] .. offsets[i] + sizes[i] - 1``;
translate original rows with ``blocking.position[rows]``.

Notation (REFERENCE section 1): block ``i`` holds ``n_i`` rows with total
frequency ``a_i`` (its *mass*), ``tau = sum_i a_i``; ``p_i = a_i / tau`` is the
block probability and ``a_i / (tau n_i)`` the average probability of one of its
rows, which is what popularity-based sizing (:mod:`mdcf.sizing`) consumes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Blocking", "equipartition", "stack"]


@dataclass(frozen=True, eq=False)
class Blocking:
    """A partition of table rows into contiguous blocks of a re-indexed table.

    Attributes:
      order: int64 ``[n]``; ``order[j]`` is the original row at block-ordered position ``j``.
      position: int64 ``[n]``; ``position[r]`` is the block-ordered position of original
        row ``r`` (the inverse permutation of ``order``).
      sizes: rows per block, ``n_i``.
      mass: total frequency per block, ``a_i``.
    """

    order: np.ndarray
    position: np.ndarray
    sizes: tuple[int, ...]
    mass: tuple[float, ...]

    @property
    def n_rows(self) -> int:
        return len(self.order)

    @property
    def n_blocks(self) -> int:
        return len(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """First block-ordered row of each block, ``t_i = n_0 + ... + n_{i-1}``."""
        return tuple(int(t) for t in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))

    @property
    def total(self) -> float:
        """Total frequency mass ``tau``."""
        return float(sum(self.mass))

    @property
    def probs(self) -> np.ndarray:
        """float64 ``[k]``: block probabilities ``p_i = a_i / tau``."""
        return np.asarray(self.mass, dtype=np.float64) / self.total

    @property
    def row_probs(self) -> np.ndarray:
        """float64 ``[k]``: average probability of one row of each block, ``a_i / (tau n_i)``."""
        return self.probs / np.asarray(self.sizes, dtype=np.float64)

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """Block index of original rows."""
        bounds = np.cumsum(self.sizes)
        return np.searchsorted(bounds, self.position[np.asarray(rows)], side="right")

    def __repr__(self) -> str:
        return f"Blocking(n_rows={self.n_rows}, sizes={self.sizes}, mass={tuple(round(m, 3) for m in self.mass)})"


def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array of row frequencies, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.number) or np.issubdtype(counts.dtype, np.complexfloating):
        raise TypeError(f"counts must be real numbers, got dtype {counts.dtype}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative")
    return counts


def equipartition(counts: Sequence[float] | np.ndarray, k: int) -> Blocking:
    """Cut rows, sorted by frequency, into ``k`` blocks of equal popularity mass (Algorithm 2).

    Rows are sorted by ``counts``, most frequent first, ties broken by row id.
    Boundary ``m`` is placed after the last sorted row whose cumulative mass does
    not exceed ``m * tau / k``, so popular rows end in small blocks and rare
    ones in large blocks. On ml-100k with ``k = 8`` this cuts the 1,682 items
    after rank 31, 78, 138, 214, 315, 458 and 686.

    Edge cases:

    * Rows never seen (count 0) sort last, into the rarest block. With fewer
      than ``k - 1`` rows seen, some blocks before the last hold unseen rows
      only, since no block is left empty.
    * ``k`` larger than the number of rows: ``n`` blocks of one row (with a warning).
    * Blocks are never empty: when one row holds most of the mass, boundaries are
      pushed apart so that every block keeps at least one row.
    * All-zero counts are treated as all-equal counts.
    * When no row holds more than ``tau / k``, every block's mass differs from
      ``tau / k`` by less than the mass of the largest row next to its boundaries.

    Args:
      counts: ``[n]`` training frequency of each row (e.g. ``ratings.item_counts()``).
      k: number of blocks (the paper found 8 to 16 enough).

    Returns:
      The :class:`Blocking`.

    Example:
      >>> b = equipartition([1, 10, 1, 3, 5], k=2)
      >>> b.sizes, b.mass, b.order.tolist()
      ((1, 4), (10.0, 10.0), [1, 4, 3, 0, 2])
    """
    counts = _check_counts(counts)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = len(counts)
    if k > n:
        warnings.warn(f"equipartition: k={k} exceeds the {n} rows; using {n} blocks of one row", stacklevel=2)
        k = n
    order = np.lexsort((np.arange(n), -counts.astype(np.float64)))
    weights = counts[order].astype(np.float64)
    if weights.sum() == 0:
        weights = np.ones(n)
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])
    total = cumulative[-1]
    targets = total * np.arange(1, k) / k
    # Cut m after the last sorted row whose cumulative mass does not exceed m * tau / k.
    cuts = np.searchsorted(cumulative, targets, side="right") - 1
    # No empty blocks: cut m lies in [m, n - k + m] and strictly after cut m - 1.
    cuts = np.clip(cuts, np.arange(1, k), n - k + np.arange(1, k))
    for m in range(1, len(cuts)):
        cuts[m] = max(cuts[m], cuts[m - 1] + 1)
    bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    sizes = tuple(int(s) for s in np.diff(bounds))
    mass = tuple(float(a) for a in np.diff(cumulative[bounds]))
    if counts.sum() == 0:
        mass = tuple(float(s) for s in sizes)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    return Blocking(order=order.astype(np.int64), position=position, sizes=sizes, mass=mass)


def stack(table_sizes: Sequence[int], queries: Sequence[float] | None = None) -> Blocking:
    """The CTR blocking: each feature table is one block, stacked in the given order.

    Every table is queried ``queries[i]`` times per example (default once), so
    its mass is ``queries[i]`` and one of its rows has probability proportional
    to ``queries[i] / n_i``: the assumption of facebookresearch/dlrm's sizing.

    Args:
      table_sizes: rows of each table.
      queries: average lookups per example in each table (default all 1).

    Example:
      >>> stack([10, 1000]).row_probs.round(4).tolist()
      [0.05, 0.0005]
    """
    sizes = tuple(int(s) for s in table_sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"table_sizes must be positive row counts, got {tuple(table_sizes)}")
    if queries is None:
        queries = [1.0] * len(sizes)
    queries = [float(q) for q in queries]
    if len(queries) != len(sizes) or min(queries) <= 0:
        raise ValueError(f"queries must give one positive value per table, got {queries}")
    n = sum(sizes)
    identity = np.arange(n, dtype=np.int64)
    return Blocking(order=identity, position=identity.copy(), sizes=sizes, mass=tuple(queries))
