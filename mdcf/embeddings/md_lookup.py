"""Looking rows up in an MD layer: :func:`lookup`, :func:`lookup_bag`, :func:`materialize`.

Out-of-range ids: :func:`lookup` raises ``IndexError`` when ``ids`` are concrete
(outside ``jit``). Under ``jit`` (traced ids) it cannot raise: such ids embed as
NaN vectors, so a bad id poisons the loss loudly instead of silently reading
another row, and they receive no gradient.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._kernels import project, take_rows
from .md import MDParams, MDSpec, as_rows, block_capacities, check_ids, head_blocks
from .routing import Routing, assemble, head_gather, route, route_tail

__all__ = ["lookup", "lookup_bag", "lookup_columns", "materialize", "projected_blocks"]


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


def _head_lookup(params: MDParams, spec: MDSpec, head: int, flat: jax.Array) -> jax.Array:
    """``[B, d0]``: ids in the first ``head`` blocks embedded from those blocks'
    projected tables, stacked (one gather); ids in later blocks give zeros and
    out-of-range ids NaN."""
    if head == 0:
        valid = (flat >= 0) & (flat < spec.n_rows)
        dtype = params.tables[0].dtype
        start = jnp.where(valid[:, None], jnp.zeros((), dtype), jnp.asarray(jnp.nan, dtype))
        return jnp.broadcast_to(start, (flat.shape[0], spec.base_dim))
    return head_gather(projected_blocks(params, spec, head), spec, flat, jnp.nan)


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
        return _stacked_gather(projected_blocks(params, spec, head), tail, spec, routing, flat)

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

    One gather of the batch and, for the gradient, one scatter (docs/performance.md).
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
    loop keeps only one chunk's temporaries.
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


def lookup_columns(params: MDParams, spec: MDSpec, ids) -> jax.Array:
    """Embeddings of ids ``[..., k]`` whose column ``i`` holds rows of block ``i`` only (k =
    the number of blocks; DLRM's stacked fields with one block per field): block ``i``
    gathers and projects column ``i``, with no routing. Equals :func:`lookup` on such
    ids; an id outside its column's block gives a NaN vector. Returns ``[..., k, d0]``,
    differentiable in every table and projection, in forward and reverse mode."""
    ids = jnp.asarray(ids)
    k = spec.n_blocks
    if ids.ndim < 1 or ids.shape[-1] != k:
        raise ValueError(f"lookup_columns: ids of shape {ids.shape} need a last axis of one column per block ({k})")
    flat = ids.reshape(-1, k)
    columns = []
    for i in range(k):
        local = flat[:, i] - spec.offsets[i]
        valid = (local >= 0) & (local < spec.sizes[i])
        vectors = _block_vectors(params, i, jnp.where(valid, local, 0), spec.sizes[i] <= flat.shape[0])
        columns.append(jnp.where(valid[:, None], vectors, jnp.nan))  # NaN after the projection: finite gradients
    return jnp.stack(columns, axis=1).reshape(*ids.shape, spec.base_dim)


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

    Useful for inference (one gather per lookup) and for inspection; gather from it
    with :func:`~mdcf.embeddings.take_rows`.
    """
    return jnp.concatenate(projected_blocks(params, spec, spec.n_blocks), axis=0)


def projected_blocks(params: MDParams, spec: MDSpec, count: int) -> list[jax.Array]:
    """``E_i @ P_i`` (``[n_i, d0]``) of the first ``count`` blocks."""
    return [
        # [:size]: tables padded for row sharding (mdcf.sharding) carry unused rows at the end.
        table[:size] if projection is None else project(table[:size], projection)
        for table, projection, size in zip(params.tables[:count], params.projections[:count], spec.sizes[:count])
    ]

