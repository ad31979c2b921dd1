"""Grouping a batch's ids by MD block: which block each id goes to, in which slot.

The grouped path of :func:`mdcf.embeddings.lookup` and the row-sparse train step
give each block a fixed number of slots per batch (:func:`~mdcf.embeddings.md.block_capacities`);
:func:`route` places the ids in them, :func:`assemble` brings per-slot vectors back
into batch order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._kernels import scatter_rows, take_rows
from .md import MDSpec, as_rows

__all__ = ["Routing", "route", "route_tail", "ranks", "assemble", "head_gather"]


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
    position, counts = ranks(block, k, start=starts)  # the id's slot, if its block has room
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


def ranks(values: jax.Array, k: int, chunk: int = 32, start=None) -> tuple[jax.Array, jax.Array]:
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
    (``routing.positions``; slots are distinct, so nothing collides); its transpose
    is one gather per block.
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



def route_tail(spec: MDSpec, ids: jax.Array, capacities: tuple[int, ...], head: int) -> Routing:
    """:func:`route` over the blocks after the first ``head`` (ids in the head, and
    out-of-range ids, get no slot); block ``j`` of the result is block ``head + j``,
    with ``capacities[head + j]`` slots and rows local to it."""
    tail = MDSpec(spec.sizes[head:], spec.dims[head:], spec.base_dim)
    return route(tail, ids - spec.offsets[head], tuple(capacities)[head:])



def head_gather(blocks: list[jax.Array], spec: MDSpec, ids: jax.Array, fill: float) -> jax.Array:
    """``[B, d0]`` from the projected head ``blocks`` (``[n_i, d0]`` each, the first
    ``len(blocks)`` blocks of ``spec``), stacked and gathered at once: ids in the head
    read their row, ids in later blocks zeros, ids outside ``[0, n_rows)`` ``fill``.
"""
    head = len(blocks)
    end = spec.offsets[head] if head < spec.n_blocks else spec.n_rows
    valid = (ids >= 0) & (ids < spec.n_rows)
    stacked = jnp.concatenate(blocks + [jnp.zeros((1, spec.base_dim), blocks[0].dtype)], axis=0)  # row `end`: zeros
    index = jnp.where(ids < end, ids, jnp.where(valid, end, -1))  # negative ids stay negative: fill
    return take_rows(stacked, index, fill)
