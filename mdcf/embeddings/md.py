"""The mixed-dimension (MD) layer's structure and parameters (the paper's Algorithm 1).

An MD layer over ``n`` rows has ``k`` blocks; block ``i`` holds ``n_i`` rows, a
table ``E_i`` of shape ``[n_i, d_i]`` and a projection ``P_i`` of shape
``[d_i, d0]`` (none when ``d_i == d0``). Row ``x`` in block ``i`` (``t_i <= x < t_i + n_i``)
embeds as ``E_i[x - t_i] @ P_i``, so every row comes out with the base
dimension ``d0``. A uniform embedding is the one-block layer.

Rows are *block-ordered* ids (see :mod:`mdcf.blocking`): translate original
ids with ``blocking.position[ids]`` once, when preparing data.

Structure lives in :class:`MDSpec` (hashable, a valid ``jax.jit`` static
argument, JSON round-trip); parameters are an :class:`MDParams` pytree.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MDSpec",
    "MDParams",
    "num_params",
    "nbytes",
    "init",
    "check_ids",
    "as_rows",
    "block_capacities",
    "HEAD_ROWS_PER_SLOT",
    "head_blocks",
]


@dataclass(frozen=True)
class MDSpec:
    """The static structure of an MD layer.

    Attributes:
      sizes: rows per block ``n_i``.
      dims: dimension per block ``d_i``, each ``1 <= d_i <= base_dim``.
      base_dim: output dimension ``d0``.
      loads: optional expected share of lookups going to each block (a
        performance hint, never a change in results: :func:`lookup` sizes its
        per-block work from it). ``None`` means equal shares, which is what a
        frequency equipartition gives; for other blockings pass
        ``Blocking.probs``. Stored normalised to sum 1.
    """

    sizes: tuple[int, ...]
    dims: tuple[int, ...]
    base_dim: int
    loads: tuple[float, ...] | None = None

    def __post_init__(self):
        def whole(value) -> int:  # int(2.5) would silently give 2
            if isinstance(value, (bool, np.bool_)):
                raise TypeError
            try:
                return operator.index(value)
            except TypeError:
                if isinstance(value, (float, np.floating)) and float(value).is_integer():
                    return int(value)
                raise

        try:
            sizes = tuple(whole(s) for s in self.sizes)
            dims = tuple(whole(d) for d in self.dims)
            base_dim = whole(self.base_dim)
        except TypeError:
            raise TypeError(
                f"MDSpec needs integer sizes, dims and base_dim, got {self.sizes!r}, {self.dims!r}, {self.base_dim!r}"
            ) from None
        if not sizes or len(sizes) != len(dims):
            raise ValueError(f"MDSpec needs one dim per block: {len(sizes)} sizes, {len(dims)} dims")
        if min(sizes) < 1:
            raise ValueError(f"MDSpec block sizes must be >= 1, got {sizes}")
        if base_dim < 1:
            raise ValueError(f"MDSpec base_dim must be >= 1, got {base_dim}")
        bad = [(i, d) for i, d in enumerate(dims) if not 1 <= d <= base_dim]
        if bad:
            raise ValueError(
                f"MDSpec block dims must lie in [1, base_dim={base_dim}]; block {bad[0][0]} has {bad[0][1]}"
            )
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "base_dim", base_dim)
        if self.loads is not None:
            loads = tuple(float(x) for x in self.loads)
            if len(loads) != len(sizes) or min(loads) < 0 or not math.isfinite(sum(loads)) or sum(loads) <= 0:
                raise ValueError(f"MDSpec loads must give a non-negative share per block, got {self.loads!r}")
            total = sum(loads)
            if abs(total - 1.0) > 1e-9:  # normalise once; normalised loads are kept bit for bit
                loads = tuple(x / total for x in loads)
            object.__setattr__(self, "loads", loads)

    @classmethod
    def uniform(cls, n_rows: int, dim: int) -> "MDSpec":
        """A plain ``[n_rows, dim]`` table: the one-block layer."""
        return cls((n_rows,), (dim,), dim)

    @property
    def n_rows(self) -> int:
        return sum(self.sizes)

    @property
    def n_blocks(self) -> int:
        return len(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """First row of each block, ``t_i``."""
        out, total = [], 0
        for size in self.sizes:
            out.append(total)
            total += size
        return tuple(out)

    @property
    def projected(self) -> tuple[bool, ...]:
        """Whether each block has a projection (``d_i < d0``)."""
        return tuple(d < self.base_dim for d in self.dims)

    def with_loads(self, loads) -> "MDSpec":
        """The same layer with a different ``loads`` hint."""
        return MDSpec(self.sizes, self.dims, self.base_dim, None if loads is None else tuple(loads))

    def to_dict(self) -> dict[str, Any]:
        out = {"sizes": list(self.sizes), "dims": list(self.dims), "base_dim": self.base_dim}
        if self.loads is not None:
            out["loads"] = list(self.loads)
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "MDSpec":
        missing = {"sizes", "dims", "base_dim"} - set(value)
        if missing:
            raise ValueError(f"MDSpec.from_dict: missing keys {sorted(missing)} in {value!r}")
        loads = value.get("loads")
        return cls(tuple(value["sizes"]), tuple(value["dims"]), value["base_dim"], None if loads is None else tuple(loads))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "MDSpec":
        return cls.from_dict(json.loads(text))


class MDParams(NamedTuple):
    """Parameters of an MD layer: a pytree.

    Attributes:
      tables: ``E_i``, ``[n_i, d_i]`` each.
      projections: ``P_i``, ``[d_i, d0]``, or ``None`` for blocks with ``d_i == d0``.
    """

    tables: tuple[jax.Array, ...]
    projections: tuple[jax.Array | None, ...]


def num_params(spec: MDSpec) -> int:
    """Every parameter of the layer: ``sum_i n_i d_i`` plus ``d_i * d0`` per projected block."""
    return sum(n * d + (d * spec.base_dim if d < spec.base_dim else 0) for n, d in zip(spec.sizes, spec.dims))



def nbytes(spec: MDSpec, dtype=jnp.float32) -> int:
    """Bytes of every parameter of the layer stored as ``dtype``: ``num_params(spec)`` times its item size."""
    return num_params(spec) * jnp.dtype(dtype).itemsize


def init(key: jax.Array, spec: MDSpec, stddev: float = 0.1, dtype=jnp.float32) -> MDParams:
    """Random parameters whose embeddings have i.i.d. ``N(0, stddev**2)`` coordinates.

    Uniform blocks (``d_i == d0``) draw ``E_i ~ N(0, stddev**2)``. Projected blocks
    draw ``E_i ~ N(0, stddev**2)`` and ``P_i = sqrt(d0 / d_i) * Q`` with ``Q`` a
    random ``[d_i, d0]`` matrix with orthonormal rows, so that ``E_i[x] @ P_i``
    has the same per-coordinate variance as a uniform table's row and the
    projection is well conditioned (it scales every direction of ``E_i`` alike).
    Every layer, MD or uniform, therefore starts at the same scale.

    Args:
      key: a JAX PRNG key.
      spec: the structure.
      stddev: standard deviation of each output coordinate at initialisation.
      dtype: parameter dtype, a floating type. The draws and the orthonormal
        frames are computed in at least float32 and then cast, so a bfloat16 or
        float16 layer holds the float32 layer's values, rounded.
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"init: dtype must be a floating type, got {jnp.dtype(dtype)}")
    work = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32  # no half-precision QR on every backend
    # One random draw for every block, sliced: each draw of a new shape is a
    # separately compiled PRNG computation, which is slow to compile on a CPU.
    table_sizes = [n * d for n, d in zip(spec.sizes, spec.dims)]
    projection_sizes = [spec.base_dim * d if d < spec.base_dim else 0 for d in spec.dims]
    draws = jax.random.normal(key, (sum(table_sizes) + sum(projection_sizes),), work)
    tables, projections = [], []
    offset = 0
    for n, d, size in zip(spec.sizes, spec.dims, table_sizes):
        tables.append((stddev * draws[offset:offset + size].reshape(n, d)).astype(dtype))
        offset += size
    for d, size in zip(spec.dims, projection_sizes):
        if not size:
            projections.append(None)
            continue
        gaussian = draws[offset:offset + size].reshape(spec.base_dim, d)
        offset += size
        q, r = jnp.linalg.qr(gaussian)  # [d0, d] with orthonormal columns
        q = q * jnp.sign(jnp.diagonal(r))[None, :]  # a uniformly random orthonormal frame
        projections.append((q.T * jnp.asarray(math.sqrt(spec.base_dim / d), work)).astype(dtype))
    return MDParams(tuple(tables), tuple(projections))


def check_ids(spec: MDSpec, ids) -> None:
    """Raise ``IndexError`` if concrete ``ids`` fall outside ``[0, n_rows)``, and ``TypeError``
    if ``ids`` (concrete or traced) are not integers."""
    if isinstance(ids, jax.core.Tracer):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        return
    values = np.asarray(ids)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {values.dtype}")
    if values.size == 0:
        return
    bad = (values < 0) | (values >= spec.n_rows)
    if bad.any():
        raise IndexError(
            f"{int(bad.sum())} ids outside [0, {spec.n_rows}) (the layer's rows), e.g. "
            f"{values[bad].ravel()[:5].tolist()}; ids are block-ordered rows (blocking.position[original])"
        )


def as_rows(ids: jax.Array, n_rows: int) -> jax.Array:
    """``ids`` (any integer dtype) as int32 rows. Narrower dtypes convert exactly;
    ids of 32 bits or more (int64 under ``jax_enable_x64``, uint32) outside
    ``[0, n_rows)`` become -1, so that none wraps into a valid row when narrowed."""
    if ids.dtype == jnp.int32:
        return ids
    if jnp.iinfo(ids.dtype).bits < 32:  # every value fits: exact
        return ids.astype(jnp.int32)
    return jnp.where((ids >= 0) & (ids < n_rows), ids.astype(jnp.int32), -1)


def block_capacities(spec: MDSpec, batch: int) -> tuple[int, ...]:
    """Slots per block on the grouped path: each block's expected load plus six standard deviations.

    A block's load in a shuffled batch is about ``Binomial(batch, loads[i])``
    (equal shares when ``spec.loads`` is None); exceeding this capacity is
    rarer than one batch in a hundred million, and even then :func:`lookup`
    stays exact (it takes a slower path).
    """
    loads = spec.loads or (1.0 / spec.n_blocks,) * spec.n_blocks
    out = []
    for share in loads:
        mean = batch * share
        out.append(min(batch, int(math.ceil(mean + 6.0 * math.sqrt(mean * (1.0 - share)))) + 8))
    return tuple(out)


# A block joins the head when it has at most this many rows per slot: projecting its
# whole table then costs about as much as projecting its slots (docs/performance.md).
HEAD_ROWS_PER_SLOT = 1.75


def head_blocks(spec: MDSpec, capacities: tuple[int, ...], rows_per_slot: float | None = None) -> int:
    """How many leading (most popular) blocks are served from one stacked, pre-projected
    table instead of being routed: the longest prefix of blocks with at most
    ``rows_per_slot`` rows per slot (default :data:`HEAD_ROWS_PER_SLOT`).

    A block of ``n_i`` rows gets about a ``1 / k`` share of a batch's ids, so once
    ``n_i`` is about its slots' count, projecting it whole costs no more than
    projecting each slot, and its ids need no routing.
    """
    limit = HEAD_ROWS_PER_SLOT if rows_per_slot is None else rows_per_slot
    head = 0
    while head < spec.n_blocks and spec.sizes[head] <= limit * capacities[head]:
        head += 1
    return head
