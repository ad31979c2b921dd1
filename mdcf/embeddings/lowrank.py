"""Low-rank embeddings: an ``n x r`` table times a shared ``r x d0`` matrix.

A low-rank layer *is* the MD layer with one block of dimension ``r`` and its
projection (``MDSpec((n,), (r,), d0)``): :func:`low_rank` builds that spec, so it
trains, counts, shards and checkpoints through the MD member unchanged. With ``r = d0``
it is a plain table (MD keeps no projection for a block at the base dimension).
:func:`for_budget` finds the rank for a budget in parameters or bytes.

Example:
  >>> spec = low_rank(10_000, 4, 32)
  >>> spec.sizes, spec.dims, spec.base_dim, num_params(spec)  # 10,000 * 4 + 4 * 32
  ((10000,), (4,), 32, 40128)
"""

from __future__ import annotations

import jax.numpy as jnp

from .._checks import is_int
from .md import MDSpec, num_params

__all__ = ["low_rank", "for_budget"]


def low_rank(n_rows: int, rank: int, dim: int) -> MDSpec:
    """The ``[n_rows, rank] @ [rank, dim]`` layer, as a one-block MD spec."""
    for name, value in (("n_rows", n_rows), ("rank", rank), ("dim", dim)):
        if not (is_int(value) and value >= 1):
            raise ValueError(f"low_rank: {name} must be a positive integer, got {value!r}")
    if rank > dim:
        raise ValueError(f"low_rank: rank must be at most dim={dim} (a larger rank adds parameters, not "
                         f"expressiveness), got {rank}")
    return MDSpec((int(n_rows),), (int(rank),), int(dim))


def for_budget(budget: int, n_rows: int, dim: int, *, unit: str = "params", dtype=jnp.float32,
               tolerance: float = 0.01) -> MDSpec:
    """The largest-rank low-rank layer whose parameters (``unit="params"``) or bytes
    (``unit="bytes"``) are at most ``budget`` and within ``tolerance`` of it.

    Raises:
      ValueError: the budget is below rank 1, or no rank lands within the tolerance
        (each rank step costs ``n_rows + dim`` parameters); the message gives the
        nearest totals.
    """
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    if not (is_int(budget) and budget >= 1):
        raise ValueError(f"for_budget: budget must be a whole number >= 1, got {budget!r}")
    scale = jnp.dtype(dtype).itemsize if unit == "bytes" else 1
    cost = lambda r: num_params(low_rank(n_rows, r, dim)) * scale  # noqa: E731
    if cost(1) > budget:
        raise ValueError(f"for_budget: budget {budget:,} {unit} is below the rank-1 layer of {n_rows:,} rows and "
                         f"dim {dim} ({cost(1):,} {unit})")
    rank = max(r for r in range(1, dim + 1) if cost(r) <= budget)
    if cost(rank) < (1 - tolerance) * budget:
        above = f", rank {rank + 1} gives {cost(rank + 1):,}" if rank < dim else f" (rank {dim} is a full table)"
        raise ValueError(f"for_budget: no rank lands within {tolerance:.1%} below {budget:,} {unit}: rank {rank} "
                         f"gives {cost(rank):,}{above}; change the budget or the tolerance")
    return low_rank(n_rows, rank, dim)
