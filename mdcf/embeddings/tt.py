"""Tensor-train embeddings (TT-Rec, Yin et al., MLSys 2021): a table as three small cores.

Row ``x`` of an ``n x d`` table is written as a triple ``(i1, i2, i3)`` (``x = (i1 * n2
+ i2) * n3 + i3``, with ``n1 * n2 * n3 >= n``) and its ``d = d1 * d2 * d3`` coordinates as
``(a, b, c)``; the layer stores three cores and computes each row on the fly::

    e[x][a, b, c] = sum_{p, q} G1[i1][a, p] * G2[i2][p, b, q] * G3[i3][q, c]

``G1`` is ``[n1, d1, r1]``, ``G2`` ``[n2, r1, d2, r2]``, ``G3`` ``[n3, r2, d3]``, each
stored as a 2-D table whose rows are indexed by ``i1``, ``i2`` or ``i3``, so that the
cores train row-sparse through the common step. The ranks ``(r1, r2)`` set the size:
``n1 d1 r1 + n2 r1 d2 r2 + n3 r2 d3`` parameters. With full ranks
(:attr:`TTSpec.full_ranks`) the cores reproduce any table exactly: :func:`from_table`
decomposes one (TT-SVD, truncated to the spec's ranks otherwise).

Example:
  >>> import jax
  >>> spec = tt_spec(10_000, 16, ranks=(8, 8))
  >>> spec.row_factors, spec.dim_factors, num_params(spec)
  ((22, 22, 21), (2, 2, 4), 3840)
  >>> lookup(init(jax.random.key(0), spec), spec, jax.numpy.arange(5)).shape
  (5, 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_int
from ._kernels import take_rows
from .base import Scheme, TaggedSpec, slotless_rows

__all__ = ["TTSpec", "tt_spec", "uses_pairs", "factor_rows", "factor_dim", "init", "lookup", "num_params", "nbytes",
           "for_budget", "from_table", "RowPlan", "plan", "gather", "vectors", "updated_rows", "SCHEME"]


@dataclass(frozen=True)
class TTSpec(TaggedSpec):
    """A three-core tensor-train layer over ``n_rows`` ids of dimension ``dim``.

    Attributes:
      n_rows: ids in ``[0, n_rows)``.
      dim: the output dimension (``base_dim``), ``prod(dim_factors)``.
      row_factors: ``(n1, n2, n3)`` with ``n1 * n2 * n3 >= n_rows``.
      dim_factors: ``(d1, d2, d3)`` with ``d1 * d2 * d3 == dim``.
      ranks: ``(r1, r2)``, the TT ranks.
    """

    SCHEME_NAME = "tt"
    n_rows: int
    dim: int
    row_factors: tuple[int, int, int]
    dim_factors: tuple[int, int, int]
    ranks: tuple[int, int]

    def __post_init__(self):
        for name in ("n_rows", "dim"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise ValueError(f"TTSpec: {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, length in (("row_factors", 3), ("dim_factors", 3), ("ranks", 2)):
            value = getattr(self, name)
            try:
                ok = len(value) == length and all(is_int(v) and v >= 1 for v in value)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"TTSpec: {name} must be {length} integers >= 1, got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if math.prod(self.row_factors) < self.n_rows:
            raise ValueError(f"TTSpec: row_factors {self.row_factors} cover {math.prod(self.row_factors):,} rows, "
                             f"fewer than n_rows={self.n_rows:,}")
        if math.prod(self.dim_factors) != self.dim:
            raise ValueError(f"TTSpec: dim_factors {self.dim_factors} multiply to {math.prod(self.dim_factors)}, "
                             f"not dim={self.dim}")

    @property
    def base_dim(self) -> int:
        return self.dim

    @property
    def core_widths(self) -> tuple[int, int, int]:
        """Widths of the three stored cores: ``d1 r1``, ``r1 d2 r2``, ``r2 d3``."""
        (d1, d2, d3), (r1, r2) = self.dim_factors, self.ranks
        return d1 * r1, r1 * d2 * r2, r2 * d3

    @property
    def full_ranks(self) -> tuple[int, int]:
        """The ranks at which the cores can hold any ``n1 n2 n3 x dim`` table."""
        (n1, n2, n3), (d1, d2, d3) = self.row_factors, self.dim_factors
        r1 = min(n1 * d1, n2 * d2 * n3 * d3)
        return r1, min(r1 * n2 * d2, n3 * d3)


def factor_rows(n_rows: int) -> tuple[int, int, int]:
    """``(n1, n2, n3)``, near-equal, with ``n1 * n2 * n3 >= n_rows`` and as little padding
    as that allows: ``n1 = n2 = ceil(cbrt(n))``, ``n3 = ceil(n / (n1 n2))``."""
    if not (is_int(n_rows) and n_rows >= 1):
        raise ValueError(f"factor_rows: n_rows must be an integer >= 1, got {n_rows!r}")
    n1 = 1
    while n1**3 < n_rows:
        n1 += 1
    return n1, n1, -(-n_rows // (n1 * n1))


def factor_dim(dim: int) -> tuple[int, int, int]:
    """``(d1, d2, d3)`` with ``d1 * d2 * d3 == dim``, the most balanced (smallest largest
    factor, then the largest smallest one), in increasing order: 64 -> (4, 4, 4), 16 -> (2, 2, 4)."""
    if not (is_int(dim) and dim >= 1):
        raise ValueError(f"factor_dim: dim must be an integer >= 1, got {dim!r}")
    best = None
    for d1 in range(1, dim + 1):
        if dim % d1:
            continue
        for d2 in range(d1, dim // d1 + 1):
            if (dim // d1) % d2:
                continue
            d3 = dim // d1 // d2
            if d3 < d2:
                continue
            if best is None or (d3, -d1) < (best[2], -best[0]):
                best = (d1, d2, d3)
    return best


def tt_spec(n_rows: int, dim: int, ranks: tuple[int, int]) -> TTSpec:
    """A :class:`TTSpec` with :func:`factor_rows` and :func:`factor_dim` factors."""
    return TTSpec(n_rows, dim, factor_rows(n_rows), factor_dim(dim), tuple(ranks))


def num_params(spec: TTSpec) -> int:
    """``n1 d1 r1 + n2 r1 d2 r2 + n3 r2 d3``: the three cores, every parameter."""
    return sum(n * w for n, w in zip(spec.row_factors, spec.core_widths))


def nbytes(spec: TTSpec, dtype=jnp.float32) -> int:
    """Bytes of the three cores stored as ``dtype``."""
    return num_params(spec) * jnp.dtype(dtype).itemsize


def init(key: jax.Array, spec: TTSpec, stddev: float = 0.1, dtype=jnp.float32) -> tuple[jax.Array, ...]:
    """Three cores of i.i.d. ``N(0, s**2)`` entries with ``s = (stddev**2 / (r1 r2)) ** (1/6)``:
    each coordinate of a row, a sum of ``r1 r2`` products of three entries, then has
    variance ``stddev**2``, as a plain table's ``N(0, stddev**2)`` rows."""
    r1, r2 = spec.ranks
    scale = (stddev**2 / (r1 * r2)) ** (1 / 6)
    keys = jax.random.split(key, 3)
    return tuple((scale * jax.random.normal(k, (n, w), jnp.float32)).astype(dtype)
                 for k, n, w in zip(keys, spec.row_factors, spec.core_widths))


def _indices(spec: TTSpec, ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each id's ``(i1, i2, i3)``; ids outside ``[0, n_rows)`` get rows past every core."""
    n1, n2, n3 = spec.row_factors
    valid = (ids >= 0) & (ids < spec.n_rows)
    safe = jnp.where(valid, ids, 0)
    return (jnp.where(valid, safe // (n2 * n3), n1), jnp.where(valid, safe // n3 % n2, n2),
            jnp.where(valid, safe % n3, n3))


def _contract(spec: TTSpec, g1: jax.Array, g2: jax.Array, g3: jax.Array) -> jax.Array:
    """``[B, dim]`` rows from the ``[B, width]`` core rows of each id."""
    (d1, d2, d3), (r1, r2) = spec.dim_factors, spec.ranks
    batch = g1.shape[0]
    left = jnp.einsum("bap,bpcq->bacq", g1.reshape(batch, d1, r1), g2.reshape(batch, r1, d2, r2))
    return jnp.einsum("bacq,bqe->bace", left, g3.reshape(batch, r2, d3)).reshape(batch, spec.dim)


def _pairs(spec: TTSpec, first: jax.Array, second: jax.Array) -> jax.Array:
    """``[n1 n2, d1 d2 r2]``: the first two cores contracted for every ``(i1, i2)`` pair, in
    one product of ``[n1 d1, r1]`` by ``[r1, n2 d2 r2]``."""
    (n1, n2, _), (d1, d2, _), (r1, r2) = spec.row_factors, spec.dim_factors, spec.ranks
    pairs = jnp.einsum("iap,jpx->ijax", first.reshape(n1, d1, r1), second.reshape(n2, r1, d2 * r2))
    return pairs.reshape(n1 * n2, d1 * d2 * r2)


def lookup(params, spec: TTSpec, ids, capacity=None) -> jax.Array:
    """``[*ids.shape, dim]``; ids outside ``[0, n_rows)`` give NaN (``capacity`` is unused).

    When a batch holds at least as many ids as there are ``(i1, i2)`` pairs (``n1 n2``),
    the first two cores are contracted once for every pair in one large product and each
    id gathers its pair, instead of one small product per id: the same rows, fewer and
    larger operations (at batch 4,096, tables of up to about 260,000 rows: ``n1 n2 <= 4096``)."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    flat = ids.reshape(-1)
    rows = _indices(spec, flat)
    (n1, n2, _), (d1, d2, d3), (_, r2) = spec.row_factors, spec.dim_factors, spec.ranks
    if n1 * n2 > flat.shape[0]:
        cores = [take_rows(core, row, jnp.nan) for core, row in zip(params, rows)]
        return _contract(spec, *cores).reshape(*ids.shape, spec.dim)
    pair = jnp.where(rows[0] < n1, rows[0] * n2 + rows[1], n1 * n2)  # out of range: NaN rows
    left = take_rows(_pairs(spec, params[0], params[1]), pair, jnp.nan).reshape(-1, d1 * d2, r2)
    out = jnp.einsum("bxq,bqe->bxe", left, take_rows(params[2], rows[2], jnp.nan).reshape(-1, r2, d3))
    return out.reshape(*ids.shape, spec.dim)


def from_table(table, spec: TTSpec) -> tuple[jax.Array, ...]:
    """The cores of ``table`` (``[n_rows, dim]``) by TT-SVD, truncated to ``spec.ranks``
    (the best rank-``r1`` fit of the first unfolding, then of the remainder's). At
    :attr:`TTSpec.full_ranks` or above the cores reproduce the table up to float rounding;
    ranks above the unfoldings' own are padded with zeros."""
    table = np.asarray(table, np.float64)
    if table.shape != (spec.n_rows, spec.dim):
        raise ValueError(f"from_table: the table must be [{spec.n_rows}, {spec.dim}] for this spec, "
                         f"got {list(table.shape)}")
    (n1, n2, n3), (d1, d2, d3), (r1, r2) = spec.row_factors, spec.dim_factors, spec.ranks
    full = np.zeros((n1 * n2 * n3, spec.dim))
    full[: spec.n_rows] = table
    # [i1, i2, i3, a, b, c] -> [(i1, a), (i2, b, i3, c)]
    tensor = full.reshape(n1, n2, n3, d1, d2, d3).transpose(0, 3, 1, 4, 2, 5)

    def truncated(matrix, rank):
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        keep = min(rank, len(s))
        left = np.zeros((matrix.shape[0], rank))
        right = np.zeros((rank, matrix.shape[1]))
        left[:, :keep], right[:keep] = u[:, :keep], s[:keep, None] * vt[:keep]
        return left, right

    u1, rest = truncated(tensor.reshape(n1 * d1, n2 * d2 * n3 * d3), r1)
    u2, v2 = truncated(rest.reshape(r1 * n2 * d2, n3 * d3), r2)
    g1 = u1.reshape(n1, d1 * r1)
    g2 = u2.reshape(r1, n2, d2, r2).transpose(1, 0, 2, 3).reshape(n2, r1 * d2 * r2)
    g3 = v2.reshape(r2, n3, d3).transpose(1, 0, 2).reshape(n3, r2 * d3)
    return tuple(jnp.asarray(g, jnp.float32) for g in (g1, g2, g3))


def for_budget(budget: int, n_rows: int, dim: int, *, unit: str = "params", dtype=jnp.float32,
               tolerance: float = 0.01) -> TTSpec:
    """The TT layer (:func:`tt_spec` factors) whose parameter count (``unit="params"``) or byte
    count (``unit="bytes"``) is at most ``budget`` and within ``tolerance`` of it, with the
    most balanced ranks (TT-Rec's equal ranks where a pair lands there), then the largest
    total. Ranks stay at or below the full ranks.

    Raises:
      ValueError: the budget is below ranks (1, 1), or no pair of ranks lands within the
        tolerance; the message gives the nearest total found.
    """
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    if not (is_int(budget) and budget >= 1):
        raise ValueError(f"for_budget: budget must be a whole number >= 1, got {budget!r}")
    scale = jnp.dtype(dtype).itemsize if unit == "bytes" else 1
    base = tt_spec(n_rows, dim, (1, 1))
    (n1, n2, n3), (d1, d2, d3) = base.row_factors, base.dim_factors
    full1 = base.full_ranks[0]
    smallest = num_params(base) * scale
    if smallest > budget:
        raise ValueError(f"for_budget: budget {budget:,} {unit} is below the TT layer of {n_rows:,} rows and dim "
                         f"{dim} at ranks (1, 1) ({smallest:,} {unit})")
    candidates = []  # (cost, r1, r2): per r1, the largest r2 within budget
    for r1 in range(1, full1 + 1):
        cap2 = min(r1 * n2 * d2, n3 * d3)
        per_r2 = (n2 * d2 * r1 + n3 * d3) * scale
        r2 = min(cap2, (budget - n1 * d1 * r1 * scale) // per_r2)
        if r2 < 1:
            break
        candidates.append((num_params(tt_spec(n_rows, dim, (r1, r2))) * scale, r1, r2))
    inside = [c for c in candidates if c[0] >= (1 - tolerance) * budget]
    if not inside:
        cost, r1, r2 = max(candidates)
        raise ValueError(f"for_budget: no TT ranks land within {tolerance:.1%} below {budget:,} {unit}: the "
                         f"closest, ranks ({r1}, {r2}), give {cost:,} (full ranks {base.full_ranks} cap the layer); "
                         "change the budget or the tolerance")
    _, _, r1, r2 = min((abs(r1 - r2), -cost, r1, r2) for cost, r1, r2 in inside)
    return tt_spec(n_rows, dim, (r1, r2))


# --------------------------------------------------------------- row-sparse members
class RowPlan(NamedTuple):
    first: jax.Array
    second: jax.Array
    third: jax.Array
    heights: tuple[int, int, int]  # the cores' stored row counts (padded on a mesh)
    fits: None = None  # a TT plan cannot overflow


def uses_pairs(spec: TTSpec, batch: int) -> bool:
    """Whether a batch of ``batch`` ids contracts the first two cores for every pair (at
    least as many ids as ``(i1, i2)`` pairs) rather than per id."""
    return spec.row_factors[0] * spec.row_factors[1] <= batch


def plan(spec: TTSpec, ids: jax.Array, slots, heights) -> RowPlan:
    """Each id's rows of the three cores (padding, negative ids: out of range)."""
    return RowPlan(*_indices(spec, ids), tuple(int(h) for h in heights))


def gather(spec: TTSpec, tables: tuple, planned: RowPlan) -> tuple:
    """The differentiable leaves: the batch's rows of each core (clamped for padding; its
    vectors are zeroed), or with :func:`uses_pairs` the first two cores whole."""
    if uses_pairs(spec, planned.first.shape[0]):
        return tables[0], tables[1], take_rows(tables[2], planned.third, None)
    return tuple(take_rows(core, rows, None) for core, rows in zip(tables, planned[:3]))


def vectors(spec: TTSpec, leaves: tuple, dense, planned: RowPlan) -> jax.Array:
    """``[B, dim]`` rows computed from the cores, zeros for padding."""
    valid = planned.first < spec.row_factors[0]
    if not uses_pairs(spec, planned.first.shape[0]):
        return jnp.where(valid[:, None], _contract(spec, *leaves), 0)
    (n1, n2, _), (d1, d2, d3), (_, r2) = spec.row_factors, spec.dim_factors, spec.ranks
    pairs = _pairs(spec, leaves[0][:n1], leaves[1][:n2])
    left = take_rows(pairs, jnp.where(valid, planned.first * n2 + planned.second, 0), None).reshape(-1, d1 * d2, r2)
    out = jnp.einsum("bxq,bqe->bxe", left, leaves[2].reshape(-1, r2, d3)).reshape(-1, spec.dim)
    return jnp.where(valid[:, None], out, 0)


def _touched(n: int, rows: jax.Array) -> jax.Array:
    """``[n]``: ``j`` where row ``j`` appears in ``rows``, ``n`` (out of range) elsewhere."""
    touched = jnp.zeros(n, bool).at[rows].set(True, mode="drop")
    return jnp.where(touched, jnp.arange(n, dtype=rows.dtype), n)


def updated_rows(spec: TTSpec, planned: RowPlan):
    """One gradient row per batch entry in each core (repeats summed by the step); with
    :func:`uses_pairs`, the first two cores' gradients whole, marking the rows the batch
    touched."""
    if uses_pairs(spec, planned.first.shape[0]):
        return ((_touched(planned.heights[0], planned.first), _touched(planned.heights[1], planned.second),
                 planned.third), ("whole", "whole", "rows"))
    return tuple(planned[:3]), ("rows", "rows", "rows")


SCHEME = Scheme(
    name="tt",
    init=init,
    lookup=lookup,
    num_params=num_params,
    nbytes=nbytes,
    split=lambda params: (tuple(params), ()),
    join=lambda tables, dense: tuple(tables),
    row_heights=lambda spec: spec.row_factors,
    rows=slotless_rows(plan, gather, vectors, updated_rows, "a TT layer"),
)
