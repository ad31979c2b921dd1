"""Dimensions per block: popularity-based sizing (the paper's Algorithm 3) and exact budgets.

* :func:`popularity_dims`: ``d_i = lambda * p_i ** alpha`` for per-row block
  probabilities ``p_i`` and temperature ``alpha``, with ``lambda`` set by the
  base dimension (the most popular block gets exactly ``base_dim``) or by an
  embedding-table budget (``sum_i n_i d_i = budget`` before rounding).
* :func:`md_solver`: facebookresearch/dlrm's solver, reproduced exactly
  (including its float32 arithmetic, clamp-then-round and log-domain
  power-of-two rounding), for comparison and for CTR-style tables.
* :func:`solve_budget`: integer dimensions whose *exact* parameter count,
  projections included (:func:`num_params`), is at most a budget and within a
  tolerance (default 1%) of it. :func:`uniform_dim_for_budget` gives the
  uniform baseline. Together they make "equal parameter budgets" honest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._checks import is_int, is_real
from .embeddings import MDSpec, num_params

__all__ = ["popularity_dims", "md_solver", "solve_budget", "uniform_dim_for_budget", "num_params"]


def _check_probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array (one per block), got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any() or probs.max() <= 0:
        raise ValueError(f"probs must be finite, non-negative and not all zero, got {probs}")
    return probs


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha (the temperature) must be >= 0, got {alpha}")
    return alpha


def _relative_popularity(probs: np.ndarray, alpha: float) -> np.ndarray:
    """``(p_i / max p) ** alpha``, with ``0 ** 0 = 1`` (alpha 0 is uniform)."""
    ratio = probs / probs.max()
    if alpha == 0:
        return np.ones_like(ratio)
    return ratio**alpha


def _round(values: np.ndarray, round_pow2: bool, min_dim: int, max_dim: int | None) -> tuple[int, ...]:
    values = np.maximum(values, min_dim)
    if round_pow2:
        values = 2.0 ** np.rint(np.log2(values))
    dims = np.rint(values).astype(np.int64)
    dims = np.maximum(dims, min_dim)
    if max_dim is not None:
        dims = np.minimum(dims, max_dim)
    return tuple(int(d) for d in dims)


def popularity_dims(
    probs: Sequence[float] | np.ndarray,
    alpha: float,
    base_dim: int | None = None,
    budget: float | None = None,
    sizes: Sequence[int] | None = None,
    round_pow2: bool = False,
    min_dim: int = 1,
) -> tuple[int, ...]:
    """Popularity-based block dimensions, ``d_i = lambda * p_i ** alpha`` (Algorithm 3).

    Args:
      probs: ``[k]`` per-row probability of each block, ``a_i / (tau n_i)``
        (:attr:`mdcf.blocking.Blocking.row_probs`). Only ratios matter.
      alpha: temperature ``>= 0``; 0 gives uniform dimensions, larger values give
        popular blocks more dimensions.
      base_dim: lambda from the base dimension: the most popular block gets
        exactly ``base_dim`` and no block more.
      budget: lambda from an embedding-table budget: ``sum_i n_i d_i = budget``
        before rounding (projections not counted; see :func:`solve_budget` for
        exact totals). Needs ``sizes``.
      sizes: ``[k]`` rows per block, for ``budget``.
      round_pow2: round to the nearest power of two (in the log domain) instead of
        the nearest integer.
      min_dim: smallest dimension (rounding never goes below it).

    Returns:
      ``k`` integer dimensions, non-increasing as popularity falls.

    Example:
      >>> popularity_dims([0.04, 0.01, 0.0025], alpha=0.5, base_dim=32)
      (32, 16, 8)
    """
    probs = _check_probs(probs)
    alpha = _check_alpha(alpha)
    if int(min_dim) != min_dim or min_dim < 1:
        raise ValueError(f"min_dim must be a positive integer, got {min_dim}")
    if (base_dim is None) == (budget is None):
        raise ValueError("give exactly one of base_dim (lambda from the base dimension) or budget")
    relative = _relative_popularity(probs, alpha)
    if base_dim is not None:
        if int(base_dim) != base_dim or base_dim < min_dim:
            raise ValueError(f"base_dim must be an integer >= min_dim={min_dim}, got {base_dim}")
        return _round(base_dim * relative, round_pow2, min_dim, int(base_dim))
    if sizes is None:
        raise ValueError("budget needs sizes (rows per block)")
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape != probs.shape or (sizes < 1).any():
        raise ValueError(f"sizes must give a positive row count per block ({len(probs)}), got {sizes}")
    if not (is_real(budget) and budget > 0):
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    scale = float(budget) / float(np.sum(sizes * relative))
    return _round(scale * relative, round_pow2, min_dim, None)


def md_solver(
    n: Sequence[int] | np.ndarray,
    alpha: float,
    d0: float | None = None,
    B: float | None = None,
    round_dim: bool = True,
    k: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """facebookresearch/dlrm's ``md_solver``, reproduced exactly (REFERENCE section 2).

    Tables are sorted ascending by ``n`` (the smallest table is taken as the most
    popular) and valued ``v = n / k``. With ``d0``: ``d = d0 * (v_0 / v) ** alpha``
    and the first (sorted) entry is forced to ``d0`` (so, as in dlrm, a larger
    table with a smaller ``v`` gets more than ``d0``); else with ``B``:
    ``d = B * v ** -alpha / sum(v ** (1 - alpha))``.
    Every other entry is clamped below at 1 and rounded half to even; with
    ``round_dim`` the result is then rounded to a power of two in the log domain
    (a double rounding: 5.6 -> 6 -> 8). Arithmetic is float32, as in dlrm. Unlike
    dlrm, the result is an integer array (dlrm returns floats after power-of-two
    rounding, which its own layer rejects).

    Note the budget is only approximate after rounding, and projection
    parameters are not counted; :func:`solve_budget` gives exact budgets.

    Args:
      n: rows of each table.
      alpha: temperature.
      d0: base dimension (takes precedence over ``B``).
      B: embedding budget.
      round_dim: power-of-two rounding.
      k: average lookups per example of each table (default 1).

    Returns:
      int64 dimensions in the input order.
    """
    n = np.asarray(n, dtype=np.int64)
    if n.ndim != 1 or n.size == 0 or (n < 1).any():
        raise ValueError(f"n must be positive table sizes, got {n}")
    order = np.argsort(n, kind="stable")
    n_sorted = n[order]
    if k is None:
        k_sorted = np.ones(len(n), dtype=np.float32)
    else:
        try:
            k_values = np.asarray(k, dtype=np.float32)
        except (TypeError, ValueError):
            k_values = np.asarray(np.nan)
        if k_values.shape != n.shape or not (np.isfinite(k_values) & (k_values > 0)).all():
            raise ValueError(f"k must give a positive average number of lookups per example for each of the "
                             f"{len(n)} tables, got {k!r}")
        k_sorted = k_values[order]
    for name, value in (("d0", d0), ("B", B)):
        if value is not None and not (is_real(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    v = n_sorted.astype(np.float32) / k_sorted
    a = np.float32(alpha)
    if d0 is not None:
        lamb = np.float32(d0) * v[0] ** a
    elif B is not None:
        lamb = np.float32(B) / np.sum(v ** (np.float32(1) - a), dtype=np.float32)
    else:
        raise ValueError("Must specify either d0 or B")
    d = (np.ones(len(v), dtype=np.float32) * lamb * v ** (-a)).astype(np.float32)
    for i in range(len(d)):
        if i == 0 and d0 is not None:
            d[i] = d0
        else:
            d[i] = 1 if d[i] < 1 else d[i]
    dims = np.round(d).astype(np.int64)  # numpy rounds half to even, like torch.round
    if round_dim:
        dims = (2 ** np.round(np.log2(dims.astype(np.float32)))).astype(np.int64)
    undo = np.empty_like(order)
    undo[order] = np.arange(len(order))
    return dims[undo]


def _total(sizes: np.ndarray, dims: np.ndarray, base_dim: int) -> np.ndarray:
    """Exact parameter counts of one or many dims configurations (last axis = blocks)."""
    return (dims * sizes).sum(-1) + np.where(dims < base_dim, dims * base_dim, 0).sum(-1)


def _moves(k: int) -> np.ndarray:
    """Step patterns over ``k`` blocks: +1 on one block; -1 on one and +1 on another;
    -1 on one and +1 on two others (each a unit step of that block's dimension)."""
    eye = np.eye(k, dtype=np.int64)
    moves = [eye]
    if k > 1:
        pairs = (eye[:, None, :] * -1 + eye[None, :, :]).reshape(-1, k)
        moves.append(pairs[np.abs(pairs).sum(1) == 2])
    if 2 < k <= 24:
        a, b, c = np.meshgrid(np.arange(k), np.arange(k), np.arange(k), indexing="ij")
        keep = (a != b) & (a != c) & (b < c)
        triples = -eye[a[keep]] + eye[b[keep]] + eye[c[keep]]
        moves.append(triples)
    return np.concatenate(moves)


def _search_near(index, target, levels, sizes, popular_first, base_dim, budget, floor_total, max_configs=600_000):
    """Every allowed configuration within a few steps of ``index`` (as many as fit in
    ``max_configs``): among those whose total lands in ``[floor_total, budget]``, the one
    closest to the rule's continuous ``target`` (row-weighted squared distance). None if
    there is none."""
    k = len(index)
    radius = 0
    while (2 * (radius + 1) + 1) ** k <= max_configs and radius < 4:
        radius += 1
    if radius == 0:
        return None
    steps = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(*([steps] * k), indexing="ij"), axis=-1).reshape(-1, k)
    candidates = index[None, :] + offsets
    candidates = candidates[((candidates >= 0) & (candidates < len(levels))).all(1)]
    candidates = candidates[(np.diff(candidates[:, popular_first], axis=1) <= 0).all(1)]
    dims = levels[candidates]
    totals = _total(sizes, dims, base_dim)
    fits = (totals >= floor_total) & (totals <= budget)
    if not fits.any():
        return None
    distance = (((dims[fits] - target[None, :]) ** 2) * sizes[None, :]).sum(1)
    best = np.flatnonzero(fits)[np.argmin(distance)]
    return dims[best], int(totals[best])


def _improve(dims, sizes, popular_first, base_dim, min_dim, budget, round_pow2):
    """Hill-climb the exact total towards the budget with small moves that keep every
    dimension allowed and dimensions non-increasing from the most to the least popular block."""
    if round_pow2:
        levels = sorted({2**e for e in range(int(np.log2(base_dim)) + 1) if 2**e >= min_dim} | {base_dim})
    else:
        levels = list(range(min_dim, base_dim + 1))
    levels = np.asarray(levels, dtype=np.int64)
    index = np.searchsorted(levels, dims)  # dims are allowed levels
    moves = _moves(len(dims))
    total = int(_total(sizes, levels[index], base_dim))
    for _ in range(100_000):
        if total == budget:
            break
        candidates = index[None, :] + moves
        ok = (candidates >= 0).all(1) & (candidates < len(levels)).all(1)
        candidates = candidates[ok]
        ordered = candidates[:, popular_first]
        candidates = candidates[(np.diff(ordered, axis=1) <= 0).all(1)]
        if not len(candidates):
            break
        totals = _total(sizes, levels[candidates], base_dim)
        better = (totals <= budget) & (totals > total)
        if not better.any():
            break
        best = np.flatnonzero(better)[np.argmax(totals[better])]
        index, total = candidates[best], int(totals[best])
    return levels[index], total


def solve_budget(
    budget: int,
    sizes: Sequence[int],
    probs: Sequence[float] | np.ndarray,
    base_dim: int,
    alpha: float,
    round_pow2: bool = False,
    min_dim: int = 1,
    tolerance: float = 0.01,
) -> MDSpec:
    """An MD layer whose exact parameter count (projections included) meets a budget.

    Dimensions follow the popularity rule ``d_i ~ p_i ** alpha`` capped at
    ``base_dim``: the continuous rule is scaled to the budget, rounded down to
    allowed dimensions, and topped up block by block (largest remainder first)
    while the total fits. Only if that stays short of the tolerance do small
    moves (one block up a step, or one down and one or two others up) trade
    dimensions between blocks. Dimensions stay non-increasing with popularity.

    Args:
      budget: total parameters allowed: ``sum_i n_i d_i`` plus ``d_i * base_dim``
        for every projected block (:func:`num_params`).
      sizes: rows per block.
      probs: per-row probability of each block (``Blocking.row_probs``).
      base_dim: the output dimension ``d0``; no block exceeds it.
      alpha: temperature ``>= 0`` (0 gives a uniform allocation).
      round_pow2: only powers of two (and ``base_dim``) as dimensions.
      min_dim: smallest dimension.
      tolerance: the result's total lies in ``[(1 - tolerance) * budget, budget]``.

    Returns:
      The :class:`~mdcf.embeddings.MDSpec`.

    Raises:
      ValueError: the budget is unreachable: below the smallest layer (every
        block at ``min_dim``, projections counted), above the largest (every row
        at ``base_dim``), or no allowed dimensions land within the tolerance;
        the message gives the numbers and what to change.

    Example:
      >>> spec = solve_budget(20_000, sizes=(50, 950), probs=(0.01, 0.0005), base_dim=32, alpha=0.5)
      >>> spec.dims, num_params(spec)
      ((28, 18), 19972)
    """
    probs = _check_probs(probs)
    alpha = _check_alpha(alpha)
    sizes_array = np.asarray([int(s) for s in sizes], dtype=np.int64)
    if sizes_array.shape != probs.shape or (sizes_array < 1).any():
        raise ValueError(f"sizes must give a positive row count per block ({len(probs)}), got {tuple(sizes)}")
    if int(base_dim) != base_dim or not 1 <= min_dim <= base_dim:
        raise ValueError(f"need integers 1 <= min_dim <= base_dim, got min_dim={min_dim}, base_dim={base_dim}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance}")
    base_dim = int(base_dim)
    budget = _whole_budget(budget, "solve_budget")
    floor_total = int((1 - tolerance) * budget + 0.999999)  # smallest acceptable total
    layout = f"{len(sizes_array)} blocks of {sizes_array.sum():,} rows, base_dim={base_dim}"
    smallest = int(_total(sizes_array, np.full(len(sizes_array), min_dim), base_dim))
    largest = int(sizes_array.sum() * base_dim)
    if smallest > budget:
        raise ValueError(
            f"budget {budget:,} is below the smallest MD layer with {layout}: every block at "
            f"min_dim={min_dim} already needs {smallest:,} parameters (projections included); "
            "use fewer blocks, a smaller base_dim or a larger budget"
        )
    if largest < floor_total:
        raise ValueError(
            f"budget {budget:,} exceeds the largest layer with {layout} ({largest:,} parameters, every "
            "row at base_dim); raise base_dim or lower the budget"
        )
    relative = _relative_popularity(probs, alpha)
    popular_first = np.argsort(-relative, kind="stable")

    if round_pow2:
        levels = sorted({2**e for e in range(int(np.log2(base_dim)) + 1) if 2**e >= min_dim} | {base_dim})
    else:
        levels = list(range(min_dim, base_dim + 1))
    levels = np.asarray(levels, dtype=np.int64)

    # The continuous rule at the largest scale whose total fits the budget ...
    def continuous_total(scale):
        dims = np.clip(scale * relative, min_dim, base_dim)
        return float(_total(sizes_array, dims, base_dim))

    low, high = 0.0, float(base_dim) / max(float(relative.min()), 1e-12) * 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if continuous_total(middle) <= budget else (low, middle)
    target = np.clip(low * relative, min_dim, base_dim)
    # ... rounded down to allowed dimensions, then topped up by largest remainder:
    # the block furthest below its target (in steps) grows first, while the total fits
    # and dimensions stay non-increasing from the most to the least popular block.
    index = np.maximum(np.searchsorted(levels, target, side="right") - 1, 0)
    dims = levels[index]
    for rank in range(1, len(popular_first)):  # rounding down can break monotonicity at ties
        prev, block = popular_first[rank - 1], popular_first[rank]
        index[block] = min(index[block], index[prev])
    dims = levels[index]
    total = int(_total(sizes_array, dims, base_dim))
    while True:
        best, best_gap = None, -np.inf
        for rank, block in enumerate(popular_first):
            if index[block] + 1 >= len(levels):
                continue
            if rank > 0 and index[popular_first[rank - 1]] <= index[block]:
                continue
            trial = dims.copy()
            trial[block] = levels[index[block] + 1]
            if int(_total(sizes_array, trial, base_dim)) > budget:
                continue
            gap = (target[block] - dims[block]) / (levels[index[block] + 1] - dims[block])
            if gap > best_gap:
                best, best_gap = block, gap
        if best is None:
            break
        index[best] += 1
        dims = levels[index]
        total = int(_total(sizes_array, dims, base_dim))
    if total < floor_total:  # the rule's shape cannot fill the budget: trade steps between blocks
        found = _search_near(index, target, levels, sizes_array, popular_first, base_dim, budget, floor_total)
        if found is not None:
            dims, total = found
        else:
            dims, total = _improve(dims, sizes_array, popular_first, base_dim, min_dim, budget, round_pow2)
    if total < floor_total:
        costs = []
        for b in popular_first:  # the exact change in the total when block b grows to its next level
            grown = levels[levels > dims[b]]
            if not len(grown):
                costs.append("-")
                continue
            trial = dims.copy()
            trial[b] = grown[0]
            costs.append(f"{int(_total(sizes_array, trial, base_dim)) - total:+,}")
        raise ValueError(
            f"found no {'power-of-two ' if round_pow2 else ''}dimensions for {layout} and alpha={alpha} that land "
            f"within {tolerance:.1%} below budget {budget:,}: the closest total found is {total:,} "
            f"({1 - total / budget:.2%} below), dims {tuple(int(d) for d in dims)}; growing a block to its next "
            f"allowed dimension changes the total by {', '.join(costs)} parameters (most popular block first, "
            "projections included; '-' for a block at base_dim). Use fewer or smaller "
            "blocks, a smaller base_dim, no power-of-two rounding, a larger budget or a larger tolerance"
        )
    return MDSpec(tuple(int(s) for s in sizes_array), tuple(int(d) for d in dims), base_dim)


def _whole_budget(budget, where: str) -> int:
    """A parameter budget as an int: whole numbers only (NaN, infinities, 2.5 and strings are refused)."""
    if is_int(budget) or (is_real(budget) and float(budget).is_integer()):
        return int(budget)
    raise ValueError(f"{where}: budget must be a whole number of parameters, got {budget!r}")


def uniform_dim_for_budget(budget: int, n_rows: int) -> int:
    """The uniform baseline for a budget: the largest ``d`` with ``n_rows * d <= budget``.

    The uniform layer is ``MDSpec.uniform(n_rows, d)`` with exactly ``n_rows * d``
    parameters; budgets of the form ``n_rows * d`` are met exactly.

    Raises:
      ValueError: the budget is below one dimension per row.
    """
    if not is_int(n_rows) or n_rows < 1:
        raise ValueError(f"n_rows must be a positive integer, got {n_rows!r}")
    d = _whole_budget(budget, "uniform_dim_for_budget") // int(n_rows)
    if d < 1:
        raise ValueError(f"budget {budget:,} is below one dimension per row ({n_rows:,} rows)")
    return d
