"""The hashing trick: ``n_rows`` ids share a table of ``n_buckets`` rows through a fixed, seeded hash.

Id ``x`` embeds as ``s(x) * E[h(x)]`` with ``h(x)`` in ``[0, n_buckets)`` and, when
``signed``, a sign ``s(x)`` in ``{-1, +1}`` from the same hash (Weinberger et al.,
2009); otherwise ``s(x) = 1``. The hash is a murmur3-style 32-bit finaliser of
``x`` mixed with the seed, computed on the fly: nothing per id is stored.

Example:
  >>> import jax
  >>> spec = HashSpec(n_rows=1_000, n_buckets=100, dim=8, seed=0)
  >>> num_params(spec), nbytes(spec)
  (800, 3200)
  >>> lookup(init(jax.random.key(0), spec), spec, jax.numpy.arange(5)).shape
  (5, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_int
from ._kernels import take_rows
from .base import Scheme, TaggedSpec, slotless_rows

__all__ = ["HashSpec", "buckets", "init", "lookup", "num_params", "nbytes", "for_budget", "RowPlan", "plan",
           "gather", "vectors", "updated_rows", "SCHEME"]


@dataclass(frozen=True)
class HashSpec(TaggedSpec):
    """A hashed embedding: ``n_rows`` ids, ``n_buckets`` shared rows of ``dim``.

    Attributes:
      n_rows: ids in ``[0, n_rows)``.
      n_buckets: rows of the shared table.
      dim: the output dimension (``base_dim``).
      seed: seed of the hash, an integer in ``[0, 2**32)``.
      signed: multiply each id's row by a hashed sign.
    """

    SCHEME_NAME = "hash"
    n_rows: int
    n_buckets: int
    dim: int
    seed: int = 0
    signed: bool = False

    def __post_init__(self):
        for name, low in (("n_rows", 1), ("n_buckets", 1), ("dim", 1), ("seed", 0)):
            value = getattr(self, name)
            if not (is_int(value) and value >= low) or (name == "seed" and value >= 2**32):
                raise ValueError(f"HashSpec: {name} must be an integer >= {low}"
                                 f"{' and < 2**32' if name == 'seed' else ''}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"HashSpec: signed must be True or False, got {self.signed!r}")
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def base_dim(self) -> int:
        return self.dim


def _mix(ids: jax.Array, seed: int) -> jax.Array:
    """A uint32 murmur3 finaliser of ``ids`` xor a seed-derived constant."""
    x = ids.astype(jnp.uint32) ^ jnp.uint32((seed * 0x9E3779B9 + 0x7F4A7C15) % 2**32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def buckets(spec: HashSpec, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(rows, signs)``: each id's shared row (int32) and sign (float32, all ones unless
    ``signed``). Ids outside ``[0, n_rows)`` get row ``n_buckets`` (out of range)."""
    ids = jnp.asarray(ids)
    mixed = _mix(ids, spec.seed)
    rows = (mixed % jnp.uint32(spec.n_buckets)).astype(jnp.int32)
    rows = jnp.where((ids >= 0) & (ids < spec.n_rows), rows, spec.n_buckets)
    signs = (1 - 2 * ((mixed >> 31) & 1).astype(jnp.int32)).astype(jnp.float32) if spec.signed else \
        jnp.ones(ids.shape, jnp.float32)
    return rows, signs


def num_params(spec: HashSpec) -> int:
    """``n_buckets * dim``: the shared table is every parameter."""
    return spec.n_buckets * spec.dim


def nbytes(spec: HashSpec, dtype=jnp.float32) -> int:
    """Bytes of the shared table stored as ``dtype`` (the hash stores nothing)."""
    return num_params(spec) * jnp.dtype(dtype).itemsize


def init(key: jax.Array, spec: HashSpec, stddev: float = 0.1, dtype=jnp.float32) -> jax.Array:
    """The shared ``[n_buckets, dim]`` table, ``N(0, stddev**2)`` coordinates."""
    return (stddev * jax.random.normal(key, (spec.n_buckets, spec.dim), jnp.float32)).astype(dtype)


def lookup(params: jax.Array, spec: HashSpec, ids, capacity=None) -> jax.Array:
    """``[*ids.shape, dim]``: ``s(x) * E[h(x)]``; ids outside ``[0, n_rows)`` give NaN
    (``capacity`` is accepted for the interface and unused)."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    rows, signs = buckets(spec, ids.reshape(-1))
    out = take_rows(params, rows, jnp.nan) * signs[:, None]
    return out.reshape(*ids.shape, spec.dim)


def for_budget(budget: int, n_rows: int, dim: int, *, unit: str = "params", dtype=jnp.float32, seed: int = 0,
               signed: bool = False) -> HashSpec:
    """The hashed layer with the most buckets whose parameters (``unit="params"``) or bytes
    (``unit="bytes"``) are at most ``budget``: within ``dim`` parameters below it."""
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    per_row = dim * (jnp.dtype(dtype).itemsize if unit == "bytes" else 1)
    if not (is_int(budget) and budget >= per_row):
        raise ValueError(f"for_budget: budget must be a whole number >= one row ({per_row} {unit}), got {budget!r}")
    return HashSpec(n_rows, int(budget) // per_row, dim, seed, signed)


# --------------------------------------------------------------- row-sparse members
class RowPlan(NamedTuple):
    rows: jax.Array
    signs: jax.Array
    fits: None = None  # a plan of a hashed layer cannot overflow


def plan(spec: HashSpec, ids: jax.Array, slots, heights) -> RowPlan:
    """Each id's shared row (padding, negative ids: out of range) and sign."""
    rows, signs = buckets(spec, ids)
    return RowPlan(rows, signs)


def gather(spec: HashSpec, tables: tuple, planned: RowPlan) -> tuple:
    """The batch's shared rows (clamped for padding; its vectors are zeroed)."""
    return (take_rows(tables[0], planned.rows, None),)


def vectors(spec: HashSpec, leaves: tuple, dense, planned: RowPlan) -> jax.Array:
    """``[B, dim]``: signed rows, zeros for padding."""
    return jnp.where((planned.rows < spec.n_buckets)[:, None], leaves[0] * planned.signs[:, None], 0)


def updated_rows(spec: HashSpec, planned: RowPlan):
    """One gradient row per batch entry, at its shared row (repeats summed by the step)."""
    return (planned.rows,), ("rows",)


SCHEME = Scheme(
    name="hash",
    init=init,
    lookup=lookup,
    num_params=num_params,
    nbytes=nbytes,
    split=lambda params: ((params,), ()),
    join=lambda tables, dense: tables[0],
    row_heights=lambda spec: (spec.n_buckets,),
    rows=slotless_rows(plan, gather, vectors, updated_rows, "a hashed layer"),
)
