"""One embedding per field, each of its own scheme, over one stacked row space.

DLRM looks up one row per categorical field, and the compression schemes of the
literature work per field: dlrm's quotient-remainder tables and TT-Rec's tensor-train
cores replace each large field's table and keep the small ones plain. A
:class:`FieldsSpec` holds one spec per field (any registered scheme, one common base
dimension); field ``f``'s ids are the stacked rows ``offsets[f] .. offsets[f] + n_f``,
as in :func:`mdcf.blocking.stack`, and reach part ``f`` as local rows ``id - offsets[f]``.

The builders give every field the same rule at one setting, solved to a budget:
:func:`hashed` (buckets a common share of each field's rows), :func:`quotient_remainder`
(``m`` collisions in every field large enough to save by it), :func:`tensor_train`
(common TT ranks wherever the cores are smaller than the table). Per-field low-rank
tables are MD with one block per field, all of the same dimension
(:func:`low_rank_fields`), not a :class:`FieldsSpec`. A field where the scheme would
not save parameters is a plain table (a one-block :class:`~mdcf.embeddings.MDSpec`).

Lookups: ``lookup_columns`` (ids ``[..., F]`` whose column ``f`` holds field ``f``'s
rows, DLRM's batches) looks up each column in its part; :func:`lookup` takes any ids
and runs every part on all of them (``F`` times the work: for occasional use). Row-sparse
training composes the parts' own row-sparse members: each part trains its rows as its
scheme does.

Example:
  >>> import jax, jax.numpy as jnp
  >>> spec = quotient_remainder((1000, 3), dim=4, collisions=10)
  >>> [type(p).__name__ for p in spec.parts], num_params(spec)
  (['QRSpec', 'MDSpec'], 452)
  >>> params = init(jax.random.key(0), spec)
  >>> lookup_columns(params, spec, jnp.array([[5, 1001]])).shape
  (1, 2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_int
from .base import RowSparse, Scheme, row_heights as _row_heights, scheme, spec_from_dict
from .hashing import HashSpec
from .md import MDSpec
from .qr import QRSpec
from .tt import tt_spec

__all__ = ["FieldsSpec", "init", "lookup", "lookup_columns", "num_params", "nbytes", "hashed", "quotient_remainder",
           "tensor_train", "low_rank_fields", "plain", "FieldsPlan", "SCHEME"]


@dataclass(frozen=True)
class FieldsSpec:
    """Per-field embeddings over stacked rows.

    Attributes:
      parts: one spec per field, in field order (any registered scheme; every part has
        the same ``base_dim``). Part ``f`` covers ``parts[f].n_rows`` stacked rows.
    """

    SCHEME_NAME = "fields"
    parts: tuple

    def __post_init__(self):
        parts = tuple(self.parts)
        if not parts:
            raise ValueError("FieldsSpec: parts must hold one spec per field, got none")
        for f, part in enumerate(parts):
            scheme(part)  # a registered spec, or TypeError
            if isinstance(part, FieldsSpec):
                raise TypeError(f"FieldsSpec: part {f} is itself a FieldsSpec; give the fields' specs directly")
        dims = {part.base_dim for part in parts}
        if len(dims) != 1:
            raise ValueError(f"FieldsSpec: every part needs the same base_dim, got {[p.base_dim for p in parts]}")
        object.__setattr__(self, "parts", parts)

    @property
    def base_dim(self) -> int:
        return self.parts[0].base_dim

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows of each field."""
        return tuple(part.n_rows for part in self.parts)

    @property
    def n_rows(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> np.ndarray:
        """First stacked row of each field."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.SCHEME_NAME, "parts": [part.to_dict() for part in self.parts]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "FieldsSpec":
        return cls(tuple(spec_from_dict(part) for part in value["parts"]))


def num_params(spec: FieldsSpec) -> int:
    """Every parameter of every part."""
    return sum(scheme(part).num_params(part) for part in spec.parts)


def nbytes(spec: FieldsSpec, dtype=jnp.float32) -> int:
    """Every byte of every part's parameters stored as ``dtype``."""
    return sum(scheme(part).nbytes(part, dtype) for part in spec.parts)


def init(key: jax.Array, spec: FieldsSpec, stddev: float = 0.1, dtype=jnp.float32) -> tuple[tuple, tuple]:
    """``(tables, dense)``: per part, the table leaves and dense parameters of its scheme's
    ``init`` (one key each), already split (:func:`mdcf.embeddings.split`)."""
    keys = jax.random.split(key, len(spec.parts))
    pairs = [scheme(part).split(scheme(part).init(k, part, stddev, dtype)) for k, part in zip(keys, spec.parts)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _layers(params, spec: FieldsSpec) -> list:
    """Each part's parameters, joined as its scheme holds them."""
    tables, dense = params
    return [scheme(part).join(t, d) for part, t, d in zip(spec.parts, tables, dense)]


def _local(spec: FieldsSpec, ids: jax.Array, f: int) -> tuple[jax.Array, jax.Array]:
    """``(rows, inside)``: ids as part ``f``'s rows (0 outside it) and whether they are in it."""
    local = ids - int(spec.offsets[f])
    inside = (local >= 0) & (local < spec.sizes[f])
    return jnp.where(inside, local, 0), inside


def lookup(params, spec: FieldsSpec, ids, capacity="auto") -> jax.Array:
    """``[*ids.shape, d0]`` for stacked rows anywhere in ``[0, n_rows)``; ids outside give
    NaN. Every part looks up every id (``F`` times the work of one part): DLRM's batches,
    one column per field, take :func:`lookup_columns`."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    flat = ids.reshape(-1)
    out = jnp.zeros((flat.shape[0], spec.base_dim), jnp.float32)
    for f, (part, layer) in enumerate(zip(spec.parts, _layers(params, spec))):
        local, inside = _local(spec, flat, f)
        vectors = scheme(part).lookup(layer, part, local, capacity)
        out = out + jnp.where(inside[:, None], vectors, 0)
    valid = (flat >= 0) & (flat < spec.n_rows)
    return jnp.where(valid[:, None], out, jnp.nan).reshape(*ids.shape, spec.base_dim)


def lookup_columns(params, spec: FieldsSpec, ids) -> jax.Array:
    """``[..., F, d0]`` for ids ``[..., F]`` whose column ``f`` holds field ``f``'s stacked
    rows: each column looked up by its part alone. Ids outside their column's field give NaN."""
    ids = jnp.asarray(ids)
    if ids.shape[-1:] != (len(spec.parts),):
        raise ValueError(f"lookup_columns: ids of shape {ids.shape} need one column per field ({len(spec.parts)})")
    columns = []
    for f, (part, layer) in enumerate(zip(spec.parts, _layers(params, spec))):
        local, inside = _local(spec, ids[..., f], f)
        vectors = scheme(part).lookup(layer, part, local, "auto")
        columns.append(jnp.where(inside[..., None], vectors, jnp.nan))
    return jnp.stack(columns, axis=-2)


# --------------------------------------------------------------- row-sparse members
class FieldsPlan(NamedTuple):
    """Each part's row plan of one batch.

    Attributes:
      parts: per part, its scheme's plan of the batch's ids as its own rows (ids of
        other fields as padding), or of its column only (``columns``).
      columns: 0 for a plan of any ids, else the number of columns (fields) of a
        ``[B / columns, columns]`` batch (:func:`column_plan`).
      inside: for a plan of any ids, per part whether each id is in it (the parts'
        vectors are summed; a part need not give zeros for ids it treats as padding).
    """

    parts: tuple
    columns: int = 0
    inside: tuple = ()

    @property
    def fits(self):
        """Whether every part's plan fits; ``None`` when none can overflow."""
        fits = [p.fits for p in self.parts if p.fits is not None]
        if not fits:
            return None
        return fits[0] if len(fits) == 1 else jnp.all(jnp.stack(fits))


def _heights(spec: FieldsSpec, heights) -> list[tuple]:
    """``heights`` (every table leaf's rows, flat in the order of the tables' leaves) cut per part."""
    out, start = [], 0
    for part in spec.parts:
        count = len(jax.tree.leaves(_row_heights(part)))
        out.append(tuple(heights[start:start + count]))
        start += count
    return out


def _capacities(spec: FieldsSpec, batch: int, requested="auto") -> tuple:
    return tuple(scheme(part).rows.capacities(part, batch, "auto") for part in spec.parts)


def _check_capacities(spec: FieldsSpec, requested) -> str | None:
    return None if requested == "auto" else "'auto' (each field's part sizes its own slots)"


def _plan(spec: FieldsSpec, ids: jax.Array, slots, heights) -> FieldsPlan:
    parts, masks = [], []
    for f, (part, slot, height) in enumerate(zip(spec.parts, slots, _heights(spec, heights))):
        local, inside = _local(spec, ids, f)
        parts.append(scheme(part).rows.plan(part, jnp.where(inside, local, -1), slot, height))
        masks.append(inside)
    return FieldsPlan(tuple(parts), 0, tuple(masks))


def _column_plan(spec: FieldsSpec, ids: jax.Array, heights) -> FieldsPlan:
    batch, k = ids.shape
    if k != len(spec.parts):
        raise ValueError(f"column_plan: ids of shape {ids.shape} need one column per field ({len(spec.parts)})")
    parts = []
    for f, (part, height) in enumerate(zip(spec.parts, _heights(spec, heights))):
        rows = scheme(part).rows
        local, inside = _local(spec, ids[:, f], f)
        # The part's own plan of its column (an MD part's column plan is for one column per block).
        parts.append(rows.plan(part, jnp.where(inside, local, -1), rows.capacities(part, batch, "auto"), height))
    return FieldsPlan(tuple(parts), k)


def _overflow_plan(spec: FieldsSpec, planned: FieldsPlan) -> FieldsPlan:
    return planned._replace(parts=tuple(p if p.fits is None else scheme(part).rows.overflow_plan(part, p)
                                        for part, p in zip(spec.parts, planned.parts)))


def _gather(spec: FieldsSpec, tables: tuple, planned: FieldsPlan) -> tuple:
    return tuple(scheme(part).rows.gather(part, t, p) for part, t, p in zip(spec.parts, tables, planned.parts))


def _vectors(spec: FieldsSpec, leaves: tuple, dense: tuple, planned: FieldsPlan) -> jax.Array:
    parts = [scheme(part).rows.vectors(part, l, d, p)
             for part, l, d, p in zip(spec.parts, leaves, dense, planned.parts)]
    if planned.columns:  # [B, F, d0] in the batch's row-major order
        return jnp.stack(parts, axis=1).reshape(-1, spec.base_dim)
    return sum(jnp.where(inside[:, None], v, 0.0) for inside, v in zip(planned.inside, parts))  # one part per id


def _updated_rows(spec: FieldsSpec, planned: FieldsPlan):
    pairs = [scheme(part).rows.updated_rows(part, p) for part, p in zip(spec.parts, planned.parts)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


# --------------------------------------------------------------- builders at a budget
def plain(n_rows: int, dim: int) -> MDSpec:
    """A plain ``[n_rows, dim]`` table (a one-block MD spec)."""
    return MDSpec.uniform(int(n_rows), int(dim))


def _fields(field_rows) -> tuple[int, ...]:
    rows = tuple(field_rows)
    if not rows or not all(is_int(r) and r >= 1 for r in rows):
        raise ValueError(f"field_rows must be positive row counts, got {field_rows!r}")
    return tuple(int(r) for r in rows)


def _check(name: str, value, low: int = 1) -> int:
    if not (is_int(value) and value >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _largest(cost, low: int, high: int, budget: int):
    """The largest ``x`` in ``[low, high]`` with ``cost(x) <= budget`` (``cost`` non-decreasing), or None."""
    if cost(low) > budget:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= budget else (low, mid - 1)
    return low


def hashed(field_rows, budget: int, dim: int, *, seed: int = 0, signed: bool = False) -> FieldsSpec:
    """Each field hashed into ``min(n_f, ceil(n_f * s))`` buckets, one share ``s`` for all
    fields: the largest whose parameters fit ``budget`` (within about ``F * dim`` below
    it). A field whose share reaches its rows is a plain table; each hashed field has its
    own seed (``seed + f``).

    Raises:
      ValueError: the budget is below one bucket per field.
    """
    rows, dim, budget = _fields(field_rows), _check("dim", dim), _check("budget", budget)
    scale = 10**9

    def buckets(share: int) -> list[int]:
        return [min(n, max(1, -(-n * share // scale))) for n in rows]

    share = _largest(lambda s: dim * sum(buckets(s)), 0, scale, budget)
    if share is None:
        raise ValueError(f"hashed: budget {budget:,} is below one bucket per field ({len(rows)} fields of dim {dim}: "
                         f"{len(rows) * dim:,} parameters)")
    return FieldsSpec(tuple(plain(n, dim) if b >= n else HashSpec(n, b, dim, (seed + f) % 2**32, signed)
                            for f, (n, b) in enumerate(zip(rows, buckets(share)))))


def quotient_remainder(field_rows, dim: int, collisions: int, operation: str = "mult") -> FieldsSpec:
    """dlrm's per-table compositional embeddings: every field whose quotient and remainder
    tables (``ceil(n_f / m) + m`` rows) are smaller than its table takes them; the others
    stay plain."""
    rows, dim, m = _fields(field_rows), _check("dim", dim), _check("collisions", collisions)

    def part(n):
        spec = QRSpec(n, m, dim, operation)
        return spec if scheme(spec).num_params(spec) < n * dim else plain(n, dim)

    return FieldsSpec(tuple(part(n) for n in rows))


def tensor_train(field_rows, budget: int, dim: int) -> FieldsSpec:
    """TT-Rec's per-table tensor-train cores at common ranks ``(r, r)`` (each field's capped
    at its full ranks): the largest ``r`` whose parameters fit ``budget``, a field taking
    cores where they are smaller than its table and a plain table elsewhere. Ranks grow in
    steps, so the total can land well below the budget (the closest below).

    Raises:
      ValueError: the budget is below rank 1 (with plain tables where cores do not save).
    """
    rows, dim, budget = _fields(field_rows), _check("dim", dim), _check("budget", budget)

    def full(n):
        return tt_spec(n, dim, (1, 1)).full_ranks

    def part(n, r):
        full_ = full(n)
        spec = tt_spec(n, dim, (min(r, full_[0]), min(r, full_[1])))
        return spec if scheme(spec).num_params(spec) < n * dim else plain(n, dim)

    def cost(r):
        return sum(scheme(p).num_params(p) for p in (part(n, r) for n in rows))

    top = max(max(full(n)) for n in rows)
    rank = _largest(cost, 1, top, budget)
    if rank is None:
        raise ValueError(f"tensor_train: budget {budget:,} is below rank-1 cores ({cost(1):,} parameters at dim {dim})")
    return FieldsSpec(tuple(part(n, rank) for n in rows))


def low_rank_fields(field_rows, budget: int, dim: int) -> MDSpec:
    """Per-field low-rank tables ``[n_f, r] @ [r, dim]`` at one common rank: MD with one
    block per field, every block of dimension ``r`` (each with its projection), the largest
    ``r <= dim`` that fits ``budget``. At ``r == dim`` the projections are dropped: plain tables.

    Raises:
      ValueError: the budget is below rank 1.
    """
    rows, dim, budget = _fields(field_rows), _check("dim", dim), _check("budget", budget)

    def spec(r):
        if r == dim:
            return MDSpec.uniform(sum(rows), dim)
        return MDSpec(rows, (r,) * len(rows), dim)

    def cost(r):
        return scheme(spec(r)).num_params(spec(r))

    rank = _largest(cost, 1, dim, budget)
    if rank is None:
        raise ValueError(f"low_rank_fields: budget {budget:,} is below rank 1 ({cost(1):,} parameters)")
    return spec(rank)


SCHEME = Scheme(
    name="fields",
    init=init,
    lookup=lookup,
    num_params=num_params,
    nbytes=nbytes,
    split=lambda params: params,  # kept split: (per-part tables, per-part dense)
    join=lambda tables, dense: (tuple(tables), tuple(dense)),
    row_heights=lambda spec: tuple(_row_heights(part) for part in spec.parts),
    rows=RowSparse(_capacities, _check_capacities, _plan, _overflow_plan, _gather, _vectors, _updated_rows,
                   _column_plan),
    lookup_columns=lookup_columns,
)
