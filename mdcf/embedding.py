"""The mixed-dimension embedding layer (the paper's Algorithm 1), as pure JAX functions.

An MD layer over ``n`` rows has ``k`` blocks; block ``i`` holds ``n_i`` rows, a
table ``E_i`` of shape ``[n_i, d_i]`` and a projection ``P_i`` of shape
``[d_i, d0]`` (none when ``d_i == d0``). Row ``x`` in block ``i`` (``t_i <= x < t_i + n_i``)
embeds as ``E_i[x - t_i] @ P_i``, so every row comes out with the base
dimension ``d0``. A uniform embedding is the one-block layer.

Rows are *block-ordered* ids (see :mod:`mdcf.blocking`): translate original
ids with ``blocking.position[ids]`` once, when preparing data.

Structure lives in :class:`MDSpec` (hashable, a valid ``jax.jit`` static
argument, JSON round-trip); parameters are an :class:`MDParams` pytree::

    spec = MDSpec(sizes=(100, 900), dims=(32, 8), base_dim=32)
    params = init(jax.random.key(0), spec)
    vectors = lookup(params, spec, ids)          # [..., 32]

Out-of-range ids: :func:`lookup` raises ``IndexError`` when ``ids`` are concrete
(outside ``jit``). Under ``jit`` (traced ids) it cannot raise: such ids embed as
NaN vectors, so a bad id poisons the loss loudly instead of silently reading
another row, and they receive no gradient.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MDSpec",
    "MDParams",
    "num_params",
    "init",
    "lookup",
    "lookup_bag",
    "materialize",
    "check_ids",
    "block_capacities",
    "Routing",
    "route",
    "assemble",
    "take_rows",
    "scatter_rows",
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


class Routing(NamedTuple):
    """Where each id of a batch goes on the grouped path (see :func:`route`).

    Attributes:
      rows: per block, ``[capacity_i]`` local rows of the ids routed to it, in
        batch order; unused slots hold ``n_i`` (one past the block's last row).
      slot: ``[B]`` index of each id in the stacked block outputs
        (``sum(capacities)`` for ids without a slot).
      fits: scalar bool, True when every in-range id got a slot.
      positions: per block, ``[capacity_i]`` batch positions of the ids in its
        slots (the inverse of ``slot``); unused slots hold ``B``, one past the
        batch. ``None``: :func:`assemble` uses ``slot`` instead.
    """

    rows: tuple[jax.Array, ...]
    slot: jax.Array
    fits: jax.Array
    positions: tuple[jax.Array, ...] | None = None


def route(spec: MDSpec, ids: jax.Array, capacities: tuple[int, ...]) -> Routing:
    """Group a flat batch of ids by block, ``capacities[i]`` slots for block ``i``.

    Out-of-range ids, and ids beyond a block's capacity, get no slot; ``fits``
    says whether the latter happened. Pure integer work, no gradients. Every
    per-id step is elementwise (a select per block, no gathers, which are slow
    per element on a CPU) but for one scatter that places the ids' rows and
    batch positions in their slots.
    """
    k = spec.n_blocks
    flat = as_rows(ids.reshape(-1), spec.n_rows)
    batch = flat.shape[0]
    total = int(sum(capacities))
    starts = np.concatenate([[0], np.cumsum(capacities)[:-1]]).astype(np.int64)
    # One pass over the blocks: each id's block, its block's first row, and one past its
    # block's last slot (0 for ids out of range: they get no slot).
    block = jnp.full(flat.shape, k, jnp.int32)  # k: no block (out of range)
    first = jnp.zeros(flat.shape, flat.dtype)
    end = jnp.zeros(flat.shape, flat.dtype)
    for i, (offset, size, capacity) in enumerate(zip(spec.offsets, spec.sizes, capacities)):
        inside = (flat >= offset) & (flat < offset + size)
        block = jnp.where(inside, i, block)
        first = jnp.where(inside, offset, first)
        end = jnp.where(inside, int(starts[i]) + capacity, end)
    position, counts = _ranks(block, k, start=starts)  # the id's slot, if its block has room
    slot = jnp.where(position < end, position, total).astype(flat.dtype)
    local = jnp.where(block < k, flat - first, -1)
    fits = jnp.all(counts <= np.asarray(capacities, np.int32))  # every in-range id got a slot
    unset = jnp.broadcast_to(jnp.asarray([-1, batch], flat.dtype), (total, 2))  # [local row, batch position]
    placed = unset.at[slot].set(jnp.stack([local, jnp.arange(batch, dtype=flat.dtype)], axis=1),
                                mode="drop", unique_indices=True, wrap_negative_indices=False)
    rows = tuple(
        jnp.where(part < 0, size, part)
        for part, size in zip(jnp.split(placed[:, 0], starts[1:].tolist()), spec.sizes)
    )
    positions = tuple(jnp.split(placed[:, 1], starts[1:].tolist()))
    return Routing(rows, slot, fits, positions)


def _ranks(values: jax.Array, k: int, chunk: int = 32, start=None) -> tuple[jax.Array, jax.Array]:
    """For each entry of ``values`` with a value ``v`` in ``[0, k)``, how many earlier
    entries hold the same value: its rank within its group, in order, plus
    ``start[v]`` when ``start`` (``k`` integers) is given. Entries with other values
    get 0 and count for nothing. Also returns the ``[k]`` count of each value.

    Exact integer counting by small matrix products, which a CPU runs far faster
    than a cumulative sum (XLA runs one as a loop per output element over a
    window): the batch is cut into chunks of ``chunk`` entries, and within a
    chunk the running counts of several groups share one float32 word, each in
    a field of ``chunk.bit_length()`` bits (a count within a chunk is at most
    ``chunk``), 24 bits per word in all, so every sum is an integer below 2**24
    and exact. One product with an upper-triangular ``[chunk, chunk]`` matrix of
    ones gives every entry's running counts within its chunk; the chunks' totals
    (a small ``[B / chunk, k]`` matrix) give each chunk's start. ``precision``
    is the highest, so that no backend rounds the products. Per entry, the work
    is a select of its word, a shift, and a select of its group's start.
    """
    size = values.shape[0]
    bits = chunk.bit_length()
    per_word = 24 // bits
    words = -(-k // per_word)
    values = values.astype(jnp.int32)
    pad = (-size) % chunk
    if pad:
        values = jnp.concatenate([values, jnp.full(pad, k, jnp.int32)])
    n_chunks = values.shape[0] // chunk
    grid = values.reshape(n_chunks, chunk)
    valid = (grid >= 0) & (grid < k)
    # lax.div and lax.rem truncate, which is floor division for these non-negative values,
    # without the sign corrections of // and %.
    word = jnp.where(valid, jax.lax.div(grid, np.int32(per_word)), -1)
    field = jnp.where(valid, jax.lax.rem(grid, np.int32(per_word)) * bits, 0)
    word_ids = jnp.arange(words, dtype=jnp.int32)[:, None, None]
    ones = jnp.where(word == word_ids, jnp.left_shift(1, field), 0).astype(jnp.float32)
    upper = jnp.triu(jnp.ones((chunk, chunk), jnp.float32))
    inner = jnp.dot(ones.reshape(words * n_chunks, chunk), upper, precision=jax.lax.Precision.HIGHEST)
    inner = inner.astype(jnp.int32).reshape(words, n_chunks, chunk)  # running counts within each chunk, packed
    mask = (1 << bits) - 1
    totals = jnp.stack([
        jnp.right_shift(inner[group // per_word, :, -1], bits * (group % per_word)) & mask for group in range(k)
    ], axis=1)  # [n_chunks, k]
    # Entries of each group in the chunks before, less one.
    before = jnp.cumsum(totals, axis=0, dtype=jnp.int32) - totals - 1
    if start is not None:
        before = before + jnp.asarray(np.asarray(start), jnp.int32)
    packed = inner[0]
    for w in range(1, words):
        packed = jnp.where(word == w, inner[w], packed)
    out = jnp.right_shift(packed, field) & mask  # running count within the chunk, this entry included
    base = jnp.zeros((n_chunks, chunk), jnp.int32)
    for group in range(k):
        base = jnp.where(grid == group, before[:, group:group + 1], base)
    out = jnp.where(valid, out + base, 0)
    return out.reshape(-1)[:size], jnp.sum(totals, axis=0, dtype=jnp.int32)


def assemble(spec: MDSpec, block_vectors, routing: Routing, fill: float = float("nan"),
             start: jax.Array | None = None) -> jax.Array:
    """Batch-ordered ``[B, d0]`` vectors from per-block ``[capacity_i, d0]`` outputs.

    Ids without a slot get ``fill``; with ``start`` (``[B, d0]``, needs
    ``routing.positions``), the blocks' vectors are added to it instead.

    Each block's vectors are scatter-added into their batch positions
    (``routing.positions``; slots are distinct, so nothing collides): on a CPU
    this is cheaper than stacking the blocks and gathering, and its transpose is
    one gather per block instead of a scatter into a zero-filled stack.
    :func:`lookup` stacks the routed vectors after its projected head instead and
    gathers once (:func:`_stacked_gather`): with a head the batch needs that gather
    anyway; with none the two arrangements timed alike (10^5 rows of equal
    popularity, k=8 and 16: 2.00x and 1.49x the uniform step stacked, 2.03x and
    1.45x scattered).
    """
    if routing.positions is None:
        return take_rows(jnp.concatenate(block_vectors, axis=0), routing.slot, fill, unique_indices=True)
    batch = routing.slot.shape[0]
    dtype = block_vectors[0].dtype
    if start is not None:
        out = start
    elif fill == 0:
        out = jnp.zeros((batch, spec.base_dim), dtype)
    else:  # ids without a slot start at (and keep) fill; the others at 0
        total = sum(v.shape[0] for v in block_vectors)
        start = jnp.where((routing.slot < total)[:, None], jnp.zeros((), dtype), jnp.asarray(fill, dtype))
        out = jnp.broadcast_to(start, (batch, spec.base_dim))
    for vectors, positions in zip(block_vectors, routing.positions):
        out = scatter_rows(out, positions, vectors, "add", unique_indices=True)
    return out


def _row_view(table: jax.Array) -> tuple[int, ...] | None:
    """The shape through which rows of a 2-D table are gathered and scattered fastest.

    The result is the same; only the loops XLA emits differ. ``None``: use the
    table as it is. XLA's CPU code for a gather of whole rows ``[d]`` runs a few
    times faster when each row is seen as ``[a, b]`` with a short ``b`` than as one
    slice of ``d`` (d=64, 32,768 rows of a 138k-row table: about 0.9 ms as
    ``[16, 4]`` instead of 2.8 ms on a 2-core CPU). Filling a gradient table with
    zeros (what the gradient of a gather starts from) is faster still in some views
    than in others, by 2-3x: at about 160 GB/s (in the caches) when ``a`` is a power
    of two and ``b`` at most 8, or the table is ``[n, d]`` with ``d`` at most 8, and
    at about 65 GB/s in other shapes (``[n, 12]``, ``[n, 3, 4]``, ``[n, 6, 2]``,
    ``[n, 3, 2]``). So (:func:`_view_width`) a row of ``d`` up to 8 is used as it is,
    and a longer row as ``[a, b]`` with ``a`` a power of two and ``b`` at most 8 where
    ``d`` has that form (``b`` = 4 where it can be, else the largest such ``b``), else
    as ``[d / 2, 2]`` (``d`` even) or as it is. Zero fill and scatter of 4,096 rows
    into a 50,000-row table on a 2-core CPU: d=6 22 µs as ``[6]``, 54 µs as
    ``[3, 2]``; d=12 44 µs as ``[2, 6]``, 64 µs as ``[3, 4]``; d=48 82 µs as
    ``[8, 6]``, 204 µs as ``[12, 4]``. Gathers of the same rows, and scatters into a
    table in place, mostly took about as long or less; the worst change was d=48's
    gather, 27 µs as ``[8, 6]`` against 22 µs as ``[12, 4]``. In whole forward and
    backward steps timed as in ``benchmarks/bench_embedding.py`` (one process, against
    the earlier rule of ``b`` = 4, else 2), MD with 8x fewer parameters than the
    uniform table at 10^5 rows, batch 4,096 and k=8 went from 0.95x to 0.89x the
    uniform time; of 20 ratios (10 configurations, 10^4-10^6 rows), none rose by more
    than 0.01.

    CPU only: on a GPU the view makes XLA copy the whole table on every
    scatter (H100, uniform row-sparse SGD, 1.4M x 267k-row tables: 41 M
    ratings/s with the view, 299 M/s without), so other backends use the table
    as it is.
    """
    if table.ndim != 2 or jax.default_backend() != "cpu":
        return None
    width = _view_width(table.shape[1])
    return None if width is None else (table.shape[0], table.shape[1] // width, width)


def _view_width(d: int) -> int | None:
    """The ``b`` of :func:`_row_view`'s ``[d / b, b]`` view of a row of ``d``, or ``None``."""
    if d <= 8:
        return None
    for width in (4, 8, 7, 6, 5):
        count, rest = divmod(d, width)
        if rest == 0 and count >= 2 and count & (count - 1) == 0:  # d / width: a power of two
            return width
    return 2 if d % 2 == 0 else None


def take_rows(table: jax.Array, rows: jax.Array, fill_value=0, unique_indices: bool = False) -> jax.Array:
    """``table[rows]`` for a batch of row ids ``[B]``; ids outside ``[0, n)`` (negative
    ones included) give ``fill_value``. Differentiable; the fast form of the gather
    (see :func:`_row_view`).

    ``fill_value=None``: ids outside ``[0, n)`` read the nearest row (clamped), for
    callers that never use the values of such ids. Cheaper on a CPU: XLA then
    checks no bounds per element, and the consumers of the rows need no select
    (row-sparse uniform MF SGD, 1M ratings, 138k x 26.7k tables: about 1.1-1.2x the
    epoch throughput).
    """
    view = _row_view(table)
    source = table if view is None else table.reshape(view)
    if fill_value is None:
        out = source.at[rows].get(mode="clip", unique_indices=unique_indices, wrap_negative_indices=False)
    else:
        out = source.at[rows].get(mode="fill", fill_value=fill_value, unique_indices=unique_indices,
                                  wrap_negative_indices=False)
    return out if view is None else out.reshape(rows.shape[0], table.shape[1])


def scatter_rows(table: jax.Array, rows: jax.Array, values: jax.Array, op: str = "add",
                 unique_indices: bool = False) -> jax.Array:
    """``table.at[rows].add(values)`` (``op="add"``) or ``.set(values)`` (``op="set"``);
    ids outside ``[0, n)`` (negative ones included) are dropped. The same view of
    the rows as :func:`take_rows`."""
    view = _row_view(table)
    target = table if view is None else table.reshape(view)
    update = values if view is None else values.reshape((values.shape[0],) + view[1:])
    ref = target.at[rows]
    if op == "add":
        out = ref.add(update, mode="drop", unique_indices=unique_indices, wrap_negative_indices=False)
    elif op == "set":
        out = ref.set(update, mode="drop", unique_indices=unique_indices, wrap_negative_indices=False)
    else:
        raise ValueError(f"op must be 'add' or 'set', got {op!r}")
    return out if view is None else out.reshape(table.shape)


@jax.custom_jvp
def project(vectors: jax.Array, projection: jax.Array) -> jax.Array:
    """``vectors @ projection`` (``[m, d_i] @ [d_i, d0]``), whose projection gradient
    ``vectors.T @ g`` runs as a plain product on a CPU.

    Left to itself, XLA's CPU backend hands a product that contracts the first axis
    of both operands (``vectors.T @ g``, the projection's gradient) to Eigen, which
    runs these skinny shapes slowly, while the products of the forward pass and of
    the vectors' gradient go to a faster library. Here, under differentiation on a
    CPU, ``vectors.T`` is first laid out in memory (an optimisation barrier keeps XLA
    from folding the transpose back into the product), and the gradient is an
    ordinary product of it with ``g``: for a block of 215 rows and 11 columns
    (d0=64), 2.6 us instead of 4.3 us. Timed against the plain product in one
    process on a 2-core CPU: forward and backward of an MD layer as in
    ``benchmarks/bench_embedding.py`` (d0=64, three copies each; MD time / uniform
    time, at the same d0 and with 8x fewer parameters), 10^4 rows, batch 4,096,
    k=16: 2.31x and 2.45x instead of 2.78x and 2.90x; 10^5 rows, batch 4,096, k=16:
    0.85x and 0.96x instead of 1.05x and 1.21x; of 14 configurations timed from
    10^4 to 10^6 rows, 13 faster on both and one mixed (10^4 rows, batch 65,536, k=8:
    1.10x and 1.13x against 1.10x and 1.07x). Epochs of MF with MD embeddings
    (d0=64, 8 blocks, 1M ratings, batch 4,096): row-sparse SGD 5.4 instead of 4.1 M
    ratings/s, lazy Adam 3.3 instead of 2.7. The same values, through every
    transformation (a custom JVP whose tangent is linear in plain products).
    """
    return vectors @ projection


@project.defjvp
def _project_jvp(primals, tangents):
    vectors, projection = primals
    d_vectors, d_projection = tangents
    if jax.default_backend() == "cpu":
        # Transposing ``transposed.T @ d_projection`` for reverse mode gives ``transposed @ g``.
        transposed = jax.lax.optimization_barrier(vectors.T)
        d_out = transposed.T @ d_projection
    else:  # other backends' libraries take transposed operands as they are
        d_out = vectors @ d_projection
    return vectors @ projection, d_vectors @ projection + d_out


def _block_vectors(params: MDParams, block: int, rows: jax.Array, project_table: bool) -> jax.Array:
    """``E_i[rows] @ P_i``; with ``project_table``, ``(E_i @ P_i)[rows]`` (cheaper when the
    block has fewer rows than lookups). Rows outside the block give zero vectors."""
    table = params.tables[block]
    projection = params.projections[block]
    if projection is not None and project_table:
        table, projection = project(table, projection), None
    vectors = take_rows(table, rows)
    return vectors if projection is None else project(vectors, projection)


def _lookup_masked(params: MDParams, spec: MDSpec, flat: jax.Array) -> jax.Array:
    """Every block for every id, masked: exact for any id distribution."""
    batch = flat.shape[0]
    out = None
    for block, (offset, size) in enumerate(zip(spec.offsets, spec.sizes)):
        local = flat - offset
        inside = (local >= 0) & (local < size)
        vectors = _block_vectors(params, block, jnp.where(inside, local, 0), size <= batch)
        vectors = jnp.where(inside[:, None], vectors, 0)
        out = vectors if out is None else out + vectors
    valid = (flat >= 0) & (flat < spec.n_rows)
    return jnp.where(valid[:, None], out, jnp.nan)


def _lookup_grouped(params: MDParams, spec: MDSpec, flat: jax.Array, capacities: tuple[int, ...],
                    fill: float = float("nan")) -> jax.Array:
    """Ids grouped by block (:func:`route`); block ``i`` gathers and projects its
    ``capacities[i]`` slots, and :func:`assemble` restores the batch order.

    Exact only when ``route(...).fits``. Blocks with no more rows than slots are
    projected whole, then gathered. Out-of-range ids give ``fill``.
    """
    routing = route(spec, flat, capacities)
    return assemble(spec, _slot_vectors(params, spec, routing.rows, capacities), routing, fill)


def _slot_vectors(params: MDParams, spec: MDSpec, rows: tuple[jax.Array, ...], capacities: tuple[int, ...],
                  first: int = 0) -> list[jax.Array]:
    """``[capacity_j, d0]`` vectors of routed blocks ``first + j``, one per slot
    (``rows[j]``, local to the block); blocks with no more rows than slots are
    projected whole, then gathered."""
    return [
        _block_vectors(params, first + j, block_rows, spec.sizes[first + j] <= capacity)
        for j, (block_rows, capacity) in enumerate(zip(rows, capacities))
    ]


# A block joins the head when it has at most this many rows per slot: projecting its
# whole table then costs about as much as projecting its slots, and its ids need no
# routing, gather and scatter of their own (see head_blocks).
HEAD_ROWS_PER_SLOT = 1.75


def head_blocks(spec: MDSpec, capacities: tuple[int, ...], rows_per_slot: float | None = None) -> int:
    """How many leading (most popular) blocks :func:`lookup` serves from one stacked,
    pre-projected table: the longest prefix of blocks with at most
    ``rows_per_slot`` rows per slot (default ``HEAD_ROWS_PER_SLOT``; the
    row-sparse train step, whose routed rows cost more, passes its own limit).

    Popular blocks are small: a block of ``n_i`` rows gets a ``1 / k`` share of a
    batch's ids, so once ``n_i`` is about its slots' count, projecting the whole
    block (``n_i * d_i * d0`` multiply-adds) costs no more than projecting each
    slot, and all of the head's ids are then served by one gather (and its
    gradient by one scatter), with no routing. Timed as in
    ``benchmarks/bench_embedding.py`` on a 2-core CPU (d0=64, forward and
    backward, projections changing every step, MD time / uniform time): at 100k
    rows and batch 65,536, 1.45x (k=8) and 1.24x (k=16) with every block routed,
    1.20x and 0.66x with the head; at batch 16,384 and k=8, 1.01x and 0.79x.

    The limit is below two rows per slot: each head row costs several passes over
    a ``d0``-wide row (its projection, the stacking, its gradient's share of the
    head's gradient table and two gradient products), which outweighs routing its
    ids once the block nears two rows per slot. At 100k rows, batch 65,536, k=8,
    the seventh block (17,195 rows, 1.97 rows per slot) in the head gave 1.08x
    (MD) and 1.17x (MD with 8x fewer parameters), routed 0.71x and 0.93x; blocks
    of 1.59 and 1.64 rows per slot (100k rows, batch 4,096 and k=16; batch 16,384
    and k=8) were faster in the head.
    """
    limit = HEAD_ROWS_PER_SLOT if rows_per_slot is None else rows_per_slot
    head = 0
    while head < spec.n_blocks and spec.sizes[head] <= limit * capacities[head]:
        head += 1
    return head


def _head_lookup(params: MDParams, spec: MDSpec, head: int, flat: jax.Array) -> jax.Array:
    """``[B, d0]``: ids in the first ``head`` blocks embedded from those blocks'
    projected tables, stacked (one gather); ids in later blocks give zeros and
    out-of-range ids NaN."""
    if head == 0:
        valid = (flat >= 0) & (flat < spec.n_rows)
        dtype = params.tables[0].dtype
        start = jnp.where(valid[:, None], jnp.zeros((), dtype), jnp.asarray(jnp.nan, dtype))
        return jnp.broadcast_to(start, (flat.shape[0], spec.base_dim))
    return head_gather(_projected_blocks(params, spec, head), spec, flat, jnp.nan)


def head_gather(blocks: list[jax.Array], spec: MDSpec, ids: jax.Array, fill: float) -> jax.Array:
    """``[B, d0]`` from the projected head ``blocks`` (``[n_i, d0]`` each, the first
    ``len(blocks)`` blocks of ``spec``), stacked and gathered at once: ids in the head
    read their row, ids in later blocks zeros, ids outside ``[0, n_rows)`` ``fill``.
    Shared by :func:`lookup` and the row-sparse train step."""
    head = len(blocks)
    end = spec.offsets[head] if head < spec.n_blocks else spec.n_rows
    valid = (ids >= 0) & (ids < spec.n_rows)
    stacked = jnp.concatenate(blocks + [jnp.zeros((1, spec.base_dim), blocks[0].dtype)], axis=0)  # row `end`: zeros
    index = jnp.where(ids < end, ids, jnp.where(valid, end, -1))  # negative ids stay negative: fill
    return take_rows(stacked, index, fill)


def route_tail(spec: MDSpec, ids: jax.Array, capacities: tuple[int, ...], head: int) -> Routing:
    """:func:`route` over the blocks after the first ``head`` (ids in the head, and
    out-of-range ids, get no slot); block ``j`` of the result is block ``head + j``,
    with ``capacities[head + j]`` slots and rows local to it."""
    tail = MDSpec(spec.sizes[head:], spec.dims[head:], spec.base_dim)
    return route(tail, ids - spec.offsets[head], tuple(capacities)[head:])


def _head_and_tail(spec: MDSpec, capacities: tuple[int, ...]):
    """The grouped lookup's parts, ``(route_tail, routed, piece, chunk)``: the head's
    ids come from its stacked table (:func:`head_blocks`), the others are routed
    (``route_tail(flat)``) to their blocks' slots. ``routed(params, routing, flat)``
    is exact when every block's ids fit its slots. ``piece(params, ids)`` embeds
    ``chunk`` ids with ``chunk`` slots per block, which cannot overflow: exact for
    any ids. Needs at least one block after the head."""
    head = head_blocks(spec, capacities)
    shift = spec.offsets[head]
    tail_spec = MDSpec(spec.sizes[head:], spec.dims[head:], spec.base_dim)
    tail_capacities = capacities[head:]
    chunk = min(tail_capacities)

    def tail_params(params):
        return MDParams(params.tables[head:], params.projections[head:])

    def routed(params, routing, flat):
        # The head's projected tables and the routed blocks' slot vectors, stacked: one
        # gather serves the whole batch, and its gradient is one scatter (see _stacked_gather).
        tail = _slot_vectors(params, spec, routing.rows, tail_capacities, head)
        return _stacked_gather(_projected_blocks(params, spec, head), tail, spec, routing, flat)

    def piece(params, ids):
        return _head_lookup(params, spec, head, ids) + _lookup_grouped(
            tail_params(params), tail_spec, ids - shift, (chunk,) * tail_spec.n_blocks, fill=0.0)

    return lambda flat: route_tail(spec, flat, capacities, head), routed, piece, chunk


def _stacked_gather(head: list[jax.Array], tail: list[jax.Array], spec: MDSpec, routing: Routing,
                    ids: jax.Array) -> jax.Array:
    """``[B, d0]`` from the projected ``head`` blocks (``[n_i, d0]`` each, the first
    ``len(head)`` blocks of ``spec``) and the routed blocks' slot vectors ``tail``
    (``[capacity_j, d0]`` each, the blocks after the head, slots as in ``routing``,
    :func:`route_tail`), stacked into one table and gathered once: an id in the head
    reads its row, a routed id its slot, and an id outside ``[0, n_rows)`` or without
    a slot (its block overflowed; the caller replaces it) NaN.

    One gather of the batch and, for the gradient, one scatter, instead of a gather
    from the head, a scatter of each routed block's vectors into the batch and, for the
    gradient, a scatter into the head and a gather per routed block. Timed against
    that arrangement in one process on a 2-core CPU (forward and backward as in
    ``benchmarks/bench_embedding.py``, d0=64, three copies each; MD time / uniform
    time, at the same d0 and with 8x fewer parameters): at 10^5 rows, batch 65,536 and
    k=8, 1.18x and 1.36x instead of 1.37x and 1.40x; batch 16,384 and k=16, 1.14x and
    1.29x instead of 1.21x and 1.35x; no slower in the other 10^5-row configurations, at
    10^6 rows 0.40x and 0.63x instead of 0.52x and 0.67x (batch 65,536, k=8); at 10^4
    rows no change beyond the noise.
    """
    end = spec.offsets[len(head)]
    total = sum(vectors.shape[0] for vectors in tail)
    # Negative ids stay negative (fill); ids past the last row got no slot (route).
    index = jnp.where(ids < end, ids, jnp.where(routing.slot < total, end + routing.slot, -1))
    return take_rows(jnp.concatenate(head + tail, axis=0), index, jnp.nan)


def _unless_fits(fits: jax.Array, value, batch: int, chunk: int, update: Callable):
    """``value`` when ``fits``; else ``value`` rewritten chunk by chunk, exactly.

    The fallback is a loop over the ``ceil(batch / chunk)`` chunks of the batch
    that runs no iteration when ``fits``: iteration ``c`` calls
    ``update(c, start, value)``, which covers batch entries ``[start, start +
    chunk)`` with ``start = min(c * chunk, batch - chunk)`` (the last chunk
    overlaps the one before it instead of running past the batch) and owns the
    entries from ``c * chunk`` on. The common case runs outside any branch, and the
    loop keeps only one chunk's temporaries: the compiled step needs no more
    memory for it than for the grouped path itself. Forward and backward of an
    MD layer of 100k rows (alpha 0.3, k=16, d0=64) at batch 65,536 compile to
    26 MB of temporary buffers, against 57 MB when the fallback built a second
    result for the whole batch. On a CPU this matters for speed too: a
    step's temporaries are allocated, and their pages touched, on every call.
    """
    trips = jnp.where(fits, 0, -(-batch // chunk))

    def body(carry):
        c, value = carry
        return c + 1, update(c, jnp.minimum(c * chunk, batch - chunk), value)

    return jax.lax.while_loop(lambda carry: carry[0] < trips, body, (jnp.zeros((), jnp.int32), value))[1]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lookup_grouped_exact(params: MDParams, flat: jax.Array, spec: MDSpec, capacities: tuple[int, ...]):
    """The grouped path when every block's load fits its capacity, else the same
    lookup chunk by chunk (:func:`_unless_fits`).

    A custom VJP keeps the choice cheap to differentiate: the forward pass stores
    only its inputs and the routing (integers, a few per id), and the backward
    pass takes the VJP of the path that ran with that routing, so the ids are
    routed once per step.
    """
    return _lookup_grouped_exact_fwd(params, flat, spec, capacities)[0]


def _lookup_grouped_exact_fwd(params, flat, spec, capacities):
    route_tail, routed, piece, chunk = _head_and_tail(spec, capacities)
    routing = route_tail(flat)

    def update(c, start, out):  # rows [start, start + chunk) embedded afresh
        ids = jax.lax.dynamic_slice_in_dim(flat, start, chunk)
        return jax.lax.dynamic_update_slice_in_dim(out, piece(params, ids).astype(out.dtype), start, axis=0)

    out = _unless_fits(routing.fits, routed(params, routing, flat), flat.shape[0], chunk, update)
    return out, (params, flat, routing)


def _lookup_grouped_exact_bwd(spec, capacities, residuals, cotangent):
    params, flat, routing = residuals
    _, routed, piece, chunk = _head_and_tail(spec, capacities)
    grads = jax.vjp(lambda p: routed(p, routing, flat), params)[1](cotangent)[0]

    def update(c, start, total):  # chunk c's gradients; the first chunk replaces the routed ones
        ids = jax.lax.dynamic_slice_in_dim(flat, start, chunk)
        owned = start + jnp.arange(chunk, dtype=jnp.int32) >= c * chunk  # entries of the chunk before: not again
        rows = jnp.where(owned[:, None], jax.lax.dynamic_slice_in_dim(cotangent, start, chunk), 0)
        part = jax.vjp(lambda p: piece(p, ids), params)[1](rows)[0]
        return jax.tree.map(lambda t, g: jnp.where(c == 0, g, t + g), total, part)

    param_grads = _unless_fits(routing.fits, grads, flat.shape[0], chunk, update)
    return param_grads, np.zeros(flat.shape, dtype=jax.dtypes.float0)  # ids: no gradient


_lookup_grouped_exact.defvjp(_lookup_grouped_exact_fwd, _lookup_grouped_exact_bwd)


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


def lookup(params: MDParams, spec: MDSpec, ids, capacity: int | str | None = "auto") -> jax.Array:
    """Embeddings of block-ordered row ids (Algorithm 1).

    Args:
      params: the layer's parameters.
      spec: its structure (static).
      ids: integer array of any shape, rows in ``[0, spec.n_rows)``.
      capacity: performance knob, never a change in results. ``"auto"``
        (default) picks the cheapest exact strategy: when the layer has at most
        as many rows as the batch, every block is projected once and the
        ids gathered from the result. Otherwise the head (the leading, popular
        blocks with at most 1.75 rows per slot, :func:`head_blocks`) is projected
        whole and its ids gathered from it at once, and the other ids are
        grouped by block: block ``i`` gathers and projects only
        ``block_capacities(spec, batch)[i]`` slots. A batch that
        overflows a block's slots is processed in chunks that cannot overflow
        (exact, slower). An int sets every block's slots; ``None`` always takes
        the plain path that runs every block on every id.

    Returns:
      ``[*ids.shape, base_dim]``. Differentiable in every table and projection.
      Out-of-range ids give NaN vectors under ``jit`` and raise ``IndexError``
      outside it.

    Differentiation: the grouped path (taken by ``"auto"`` and an int whenever
    some block is not projected whole) has a custom VJP, so it supports
    reverse mode to first order (``jax.grad``, ``jax.vjp``,
    ``jax.value_and_grad``: what training needs) and not forward mode
    (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``, ``jax.linearize``) or
    reverse over reverse (a Hessian-vector product as the gradient of a
    gradient). For those pass ``capacity=None``: the same values, from plain
    JAX operations that every transformation, to any order, goes through
    (slower: every block runs on every id)::

        hvp = jax.jvp(jax.grad(lambda p: loss(lookup(p, spec, ids, capacity=None))), (params,), (v,))[1]
    """
    check_ids(spec, ids)
    ids = jnp.asarray(ids)
    flat = as_rows(ids.reshape(-1), spec.n_rows)
    batch = flat.shape[0]
    if capacity == "auto":
        capacities = block_capacities(spec, batch)
    elif capacity is None:
        capacities = None
    elif isinstance(capacity, (int, np.integer)) and capacity >= 1:
        capacities = (min(int(capacity), batch),) * spec.n_blocks
    else:
        raise ValueError(f"capacity must be 'auto', None or a positive integer, got {capacity!r}")
    if batch == 0:  # nothing to look up (every path below needs at least one slot)
        out = jnp.zeros((0, spec.base_dim), params.tables[0].dtype)
    elif spec.n_blocks == 1:
        # Rows past spec.n_rows (a table padded for row sharding) are out of range too.
        valid = (flat >= 0) & (flat < spec.n_rows)
        if params.projections[0] is None:
            out = take_rows(params.tables[0], jnp.where(valid, flat, -1), jnp.nan)
        else:  # NaN after the projection: NaN rows would give NaN projection gradients
            out = jnp.where(valid[:, None], _block_vectors(params, 0, flat, False), jnp.nan)
    elif capacities is None:
        out = _lookup_masked(params, spec, flat)
    elif (capacity == "auto" and spec.n_rows <= batch) or head_blocks(spec, capacities) == spec.n_blocks:
        out = _head_lookup(params, spec, spec.n_blocks, flat)  # every block projected whole
    else:
        out = _lookup_grouped_exact(params, flat, spec, capacities)
    return out.reshape(*ids.shape, spec.base_dim)


def lookup_bag(
    params: MDParams,
    spec: MDSpec,
    ids,
    weights=None,
    mode: str = "sum",
    capacity: int | str | None = "auto",
) -> jax.Array:
    """Multi-hot lookups reduced over the last axis (an embedding bag).

    Args:
      params, spec: the layer.
      ids: ``[..., bag]`` integer rows; negative ids are padding and contribute nothing.
      weights: optional ``[..., bag]`` per-id weights (ignored for padding).
      mode: ``"sum"`` (weighted sum) or ``"mean"`` (weighted sum divided by the
        total weight of the non-padding ids; an all-padding bag gives zeros).
      capacity: see :func:`lookup`.

    Returns:
      ``[..., base_dim]``.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if not isinstance(ids, jax.core.Tracer):
        values = np.asarray(ids)
        if values.ndim < 1:
            raise ValueError("lookup_bag needs ids with a bag axis (last axis)")
        check_ids(spec, np.where(values < 0, 0, values))
    ids = jnp.asarray(ids)
    present = ids >= 0
    vectors = lookup(params, spec, jnp.where(present, ids, 0), capacity)
    weight = present.astype(vectors.dtype)
    if weights is not None:
        weights = jnp.asarray(weights, vectors.dtype)
        if weights.shape != ids.shape:
            raise ValueError(f"weights have shape {weights.shape}, ids {ids.shape}")
        weight = jnp.where(present, weights, 0)  # a select, not a product: NaN weights of padding stay out
    # Padding reads row 0: selected out rather than multiplied by 0, which a non-finite row would survive.
    total = jnp.sum(jnp.where(present[..., None], vectors * weight[..., None], 0), axis=-2)
    if mode == "mean":
        norm = jnp.sum(weight, axis=-1, keepdims=True)
        total = total / jnp.where(norm == 0, 1, norm)
    return total


def materialize(params: MDParams, spec: MDSpec) -> jax.Array:
    """The full ``[n_rows, base_dim]`` table: every block's ``E_i @ P_i``, stacked.

    Useful for inference (one gather per lookup) and for inspection. Gather from it
    with :func:`take_rows` (``take_rows(table, ids)``): on a CPU that is about
    1.1-2x faster than ``table[ids]`` (``benchmarks/bench_embedding.py``, d0=64).
    """
    return jnp.concatenate(_projected_blocks(params, spec, spec.n_blocks), axis=0)


def _projected_blocks(params: MDParams, spec: MDSpec, count: int) -> list[jax.Array]:
    """``E_i @ P_i`` (``[n_i, d0]``) of the first ``count`` blocks."""
    return [
        # [:size]: tables padded for row sharding (mdcf.sharding) carry unused rows at the end.
        table[:size] if projection is None else project(table[:size], projection)
        for table, projection, size in zip(params.tables[:count], params.projections[:count], spec.sizes[:count])
    ]
