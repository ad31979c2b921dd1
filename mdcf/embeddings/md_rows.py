"""The MD layer's members of the row-sparse interface (see :mod:`mdcf.embeddings.base`).

A row-sparse train step differentiates the loss with respect to the rows a batch
gathers, not whole tables. For an MD layer a batch's ids are planned once
(:func:`plan`): the *head* (the leading, popular blocks, :func:`head_size`) is
differentiated whole, projected and gathered from at once; the other blocks'
ids are routed to a fixed number of slots per block
(:func:`~mdcf.embeddings.routing.route_tail`), and a routed block with no more
rows than its slots is differentiated whole too. :func:`gather` takes the
differentiable leaves, :func:`vectors` turns them into ``[B, d0]`` batch vectors,
and :func:`updated_rows` says which rows each leaf's gradient belongs to.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._checks import is_int
from ._kernels import project, take_rows
from .md import MDSpec, block_capacities, head_blocks
from .routing import Routing, assemble, head_gather, route_tail

__all__ = [
    "TRAIN_HEAD_ROWS_PER_SLOT",
    "RowPlan",
    "capacities",
    "check_capacities",
    "head_size",
    "plan",
    "column_plan",
    "overflow_plan",
    "gather",
    "vectors",
    "updated_rows",
]

# The row-sparse step's head takes blocks up to this many rows per slot, more than
# lookup's HEAD_ROWS_PER_SLOT: a routed block's rows cost more in training (their
# optimiser update is gathered and scattered row by row), a head block is updated whole.
TRAIN_HEAD_ROWS_PER_SLOT = 2.0


class RowPlan(NamedTuple):
    """How one batch's ids reach an MD layer's blocks (static choices and traced arrays).

    Attributes:
      ids: ``[B]`` int32 rows; negative for padding (no slot, no gradient).
      head: how many leading blocks are served from their stacked projected tables.
      routing: the routing of the ids to the blocks after the head (``None`` when
        every block is in the head); for a one-block layer the batch's rows in
        batch order (``slot`` is ``None``).
      whole: per block, whether it is differentiated as a whole table (static).
      slots: per block, the routed rows (``None`` for the head's blocks).
      heights: per block, the table's row count (tables padded for row sharding included).
      columns: 0, or for a :func:`column_plan` the number of columns (= blocks) of
        the ``[B / columns, columns]`` batch.
    """

    ids: jax.Array
    head: int
    routing: Routing | None
    whole: tuple[bool, ...]
    slots: tuple
    heights: tuple[int, ...]
    columns: int = 0

    @property
    def fits(self) -> jax.Array | None:
        """Whether every routed id got a slot; ``None`` when nothing is routed (cannot overflow)."""
        if self.routing is None or self.routing.slot is None:
            return None
        return self.routing.fits


def capacities(spec: MDSpec, batch: int, requested="auto") -> tuple[int, ...]:
    """Slots per block for a batch of ``batch`` ids: :func:`~mdcf.embeddings.md.block_capacities`
    for ``"auto"``, else the requested per-block counts, capped at the batch."""
    if requested == "auto":
        return block_capacities(spec, batch)
    return tuple(min(int(c), batch) for c in requested)


def check_capacities(spec: MDSpec, requested) -> str | None:
    """``None`` when ``requested`` is ``"auto"`` or one positive slot count per block;
    else what is expected, for an error message."""
    if requested == "auto":
        return None
    try:
        ok = len(requested) == spec.n_blocks and all(is_int(c) and c >= 1 for c in requested)
    except TypeError:
        ok = False
    return None if ok else f"one positive slot count per block ({spec.n_blocks} blocks)"


def head_size(spec: MDSpec, capacities_: tuple[int, ...]) -> int:
    """Leading blocks in the step's head (:func:`~mdcf.embeddings.md.head_blocks` with
    :data:`TRAIN_HEAD_ROWS_PER_SLOT`); 0 for a one-block layer."""
    return 0 if spec.n_blocks == 1 else head_blocks(spec, capacities_, TRAIN_HEAD_ROWS_PER_SLOT)


def _routing(spec: MDSpec, ids: jax.Array, capacities_, head: int) -> Routing | None:
    if spec.n_blocks == 1:  # rows in batch order; padding and out-of-range ids one past the table
        valid = (ids >= 0) & (ids < spec.n_rows)
        return Routing((jnp.where(valid, ids, spec.n_rows),), None, jnp.ones((), bool))
    return None if head == spec.n_blocks else route_tail(spec, ids, capacities_, head)


def _plan(spec: MDSpec, ids: jax.Array, capacities_, heights: tuple[int, ...], head: int) -> RowPlan:
    routing = _routing(spec, ids, capacities_, head)
    tail = () if routing is None else routing.rows
    if spec.n_blocks == 1:
        whole = (False,)
    else:  # a routed block with no more rows than slots is cheaper projected whole
        whole = (True,) * head + tuple(h <= r.shape[0] for h, r in zip(heights[head:], tail))
    return RowPlan(ids, head, routing, whole, (None,) * head + tuple(tail), tuple(heights))


def plan(spec: MDSpec, ids: jax.Array, capacities_: tuple[int, ...], heights: tuple[int, ...]) -> RowPlan:
    """Plan a batch: ``ids`` ``[B]`` int32 rows (negative: padding), ``capacities_`` the
    slots per block (:func:`capacities`), ``heights`` the tables' row counts."""
    return _plan(spec, ids, capacities_, heights, head_size(spec, capacities_))


def column_plan(spec: MDSpec, ids: jax.Array, heights: tuple[int, ...]) -> RowPlan:
    """Plan a batch ``ids`` ``[B, k]`` whose column ``i`` holds rows of block ``i`` only,
    as DLRM's stacked fields with one block per field: no routing, each block reads its
    column, and nothing can overflow (``fits`` is None). Ids outside their column's block
    (negative ones: padding) are padding: no value, no gradient; callers skip such
    entries (a train step flags them, ``DLRMConfig.id_bounds``). A block with no more
    rows than the batch is differentiated whole."""
    batch, k = ids.shape
    if k != spec.n_blocks:
        raise ValueError(f"column_plan: ids of shape {ids.shape} need one column per block ({spec.n_blocks})")
    local = ids - jnp.asarray(spec.offsets[:k], ids.dtype)
    inside = (local >= 0) & (local < jnp.asarray(spec.sizes, ids.dtype))
    rows = tuple(jnp.where(inside[:, i], local[:, i], heights[i]) for i in range(k))
    whole = tuple(h <= batch for h in heights)
    return RowPlan(ids.reshape(-1), 0, Routing(rows, None, jnp.ones((), bool)), whole, rows, tuple(heights), k)


def overflow_plan(spec: MDSpec, planned: RowPlan) -> RowPlan:
    """The same batch with a slot per batch entry in every block (the same head): exact
    whatever the batch, for a step redone after ``planned.fits`` came out False."""
    batch = planned.ids.shape[0]
    return _plan(spec, planned.ids, (batch,) * spec.n_blocks, planned.heights, planned.head)


def gather(spec: MDSpec, tables: tuple[jax.Array, ...], planned: RowPlan) -> tuple[jax.Array, ...]:
    """The differentiable leaves: per block the whole table, or its routed rows. Rows of
    unused slots read a clamped row; their values never reach the batch's vectors."""
    return tuple(block if entire else take_rows(block, rows, None)
                 for block, rows, entire in zip(tables, planned.slots, planned.whole))


def vectors(spec: MDSpec, gathered: tuple[jax.Array, ...], projections: tuple, planned: RowPlan) -> jax.Array:
    """``[B, d0]`` vectors of the batch from :func:`gather`'s leaves and the projections;
    padding gets zeros."""
    projected = [values if projection is None else project(values, projection)
                 for values, projection in zip(gathered, projections)]
    if spec.n_blocks == 1:  # one block: rows are in batch order already
        return projected[0]
    if planned.columns:  # block i gives column i: [B, k, d0] in batch order, padding zeros
        columns = [take_rows(values, rows, None) if entire else values
                   for values, rows, entire in zip(projected, planned.slots, planned.whole)]
        inside = jnp.stack([rows < height for rows, height in zip(planned.slots, planned.heights)], axis=1)
        out = jnp.where(inside[..., None], jnp.stack(columns, axis=1), 0.0)
        return out.reshape(-1, spec.base_dim)
    head = planned.head
    start = None
    if head:  # ids past the head, and padding (-1), read zeros
        start = head_gather([v[:size] for v, size in zip(projected[:head], spec.sizes)], spec, planned.ids, 0.0)
    if planned.routing is None:
        return start
    outputs = [take_rows(values, rows, None) if entire else values
               for values, rows, entire in zip(projected[head:], planned.slots[head:], planned.whole[head:])]
    # Scattered into the head's vectors (not stacked after the head and gathered at once, as
    # lookup does): faster in training (docs/performance.md).
    return assemble(spec, outputs, planned.routing, fill=0.0, start=start)


def _touched(n: int, rows: jax.Array) -> jax.Array:
    """``[n]``: ``j`` where row ``j`` appears in ``rows``, ``n`` (out of range) elsewhere."""
    touched = jnp.zeros(n, bool).at[rows].set(True, mode="drop")
    return jnp.where(touched, jnp.arange(n, dtype=rows.dtype), n)


def _head_rows(spec: MDSpec, block: int, ids: jax.Array, n: int) -> jax.Array:
    """Block-local rows of the ids in ``block``; ``n`` (out of range) for the others."""
    local = ids - spec.offsets[block]
    return jnp.where((local >= 0) & (local < spec.sizes[block]), local, n)


def updated_rows(spec: MDSpec, planned: RowPlan) -> tuple[tuple[jax.Array, ...], tuple[str, ...]]:
    """``(rows, kinds)`` per block: the rows its gradient belongs to, and how.

    ``"whole"``: the gradient is the whole table's, already summed per row; ``rows``
    is ``[n]`` with ``j`` for the rows the batch touched and ``n`` elsewhere.
    ``"batch"``: one gradient row per batch entry, ``rows`` the batch's rows (``n`` for
    padding), shared with any other table of the same height indexed by the same ids.
    ``"rows"``: one gradient row per slot, ``rows`` the slots' rows (``n`` unused).
    """
    if spec.n_blocks == 1:
        return (planned.slots[0],), ("batch",)
    rows, kinds = [], []
    for block, (height, slot_rows, entire) in enumerate(zip(planned.heights, planned.slots, planned.whole)):
        if entire:
            local = _head_rows(spec, block, planned.ids, height) if slot_rows is None else slot_rows
            rows.append(_touched(height, local))
            kinds.append("whole")
        else:
            rows.append(slot_rows)
            kinds.append("rows")
    return tuple(rows), tuple(kinds)
