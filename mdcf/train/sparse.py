"""Row-sparse updates: summing the gradients of repeated rows and updating the rows a batch touched.

A table leaf is updated from gradients of gathered rows (:func:`update_rows`:
duplicates summed, the rows and their optimiser state gathered, updated and
scattered back) or from the gradient of the whole table, applied to the touched
rows only (:func:`update_whole`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import embeddings
from .optim import RowOptimizer

__all__ = ["duplicates", "update_rows", "update_whole", "mask_rows"]


def _sort_order(rows: jax.Array, bound: int) -> jax.Array:
    """``argsort(rows)`` (stable), for rows in ``[0, bound]``.

    XLA's CPU key-value sort is several times slower than sorting plain
    integers, so when ``bound * len(rows)`` fits in int32 the row and position
    are packed into one key and sorted alone.
    """
    size = rows.shape[0]
    if (bound + 1) * size < 2**31:
        packed = jnp.sort(rows * size + jnp.arange(size, dtype=rows.dtype))
        return packed % size
    return jnp.argsort(rows, stable=True)


def _first_of_run(rows: jax.Array) -> jax.Array:
    """For each entry, the position of the first equal row in sorted order (a
    segment id shared by duplicates): one plain sort plus a binary search, both
    much faster on a CPU than a key-value sort."""
    sorted_rows = jnp.sort(rows)
    return sorted_rows, jnp.searchsorted(sorted_rows, rows, side="left", method="scan_unrolled")


def duplicates(rows: jax.Array, n_rows: int):
    """How to sum the gradients of repeated rows: ``(unique_rows, combine)``, where
    ``combine(grads)`` sums each row's gradients into its entry of ``unique_rows``.
    Both have the input's length; unused entries get distinct out-of-range rows
    (dropped by scatters). One plan serves every table indexed by the same rows."""
    size = rows.shape[0]
    rows = jnp.minimum(rows, n_rows)  # every out-of-range row becomes n_rows
    spare = n_rows + jnp.arange(size, dtype=rows.dtype)
    if (n_rows + 1) * size < 2**31:
        order = _sort_order(rows, n_rows)
        sorted_rows = rows[order]
        new = jnp.concatenate([jnp.ones(1, bool), sorted_rows[1:] != sorted_rows[:-1]])
        segment = jnp.cumsum(new) - 1
        unique = spare.at[segment].set(sorted_rows, indices_are_sorted=True)

        def combine(grads):
            return jnp.zeros_like(grads).at[segment].add(grads[order], indices_are_sorted=True)
    else:
        sorted_rows, first = _first_of_run(rows)
        unique = spare.at[first].set(rows)  # duplicates write the same row

        def combine(grads):
            return jnp.zeros_like(grads).at[first].add(grads)
    return jnp.where(unique < n_rows, unique, spare), combine


def update_rows(table, state, rows, grads, row_opt: RowOptimizer, step, plan=None):
    """Row-sparse update of ``table`` (and its row state) by the gradients of ``rows``;
    ``plan``: :func:`duplicates` of ``rows``, when already made for another table."""
    n = table.shape[0]
    if row_opt.delta is not None:
        return embeddings.scatter_rows(table, rows, row_opt.delta(grads)), state
    unique, combine = duplicates(rows, n) if plan is None else plan
    summed = combine(grads)
    # Spare entries of `unique` are out of range: they read a clamped row and are never written.
    current = embeddings.take_rows(table, unique, None)
    current_state = tuple(embeddings.take_rows(s, unique, None) for s in state)
    new_rows, new_state = row_opt.update(summed, current_state, current, step)
    table = embeddings.scatter_rows(table, unique, new_rows, "set", unique_indices=True)
    state = tuple(embeddings.scatter_rows(s, unique, ns, "set", unique_indices=True) for s, ns in zip(state, new_state))
    return table, state


def update_whole(table, state, rows, grads, row_opt: RowOptimizer, step):
    """The row update of a block whose gradient was taken for the whole table
    (an ``"whole"`` leaf of :func:`mdcf.embeddings.RowSparse.updated_rows`): ``grads`` is ``[n, d]``, already summed per row;
    ``rows[j] == j`` marks row ``j`` as touched by the batch, anything else as
    untouched. Only touched rows change, as on the row-sparse path."""
    touched = rows == jnp.arange(table.shape[0], dtype=rows.dtype)

    def where(new, old):
        return jnp.where(touched.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    if row_opt.delta is not None:
        return table + where(row_opt.delta(grads), 0), state
    new_rows, new_state = row_opt.update(grads, state, table, step)
    return where(new_rows, table), tuple(where(n, o) for n, o in zip(new_state, state))


def mask_rows(tables: dict, row_ids: dict, active) -> dict:
    """Row ids redirected out of range (so that scatters drop them) where ``active`` is False."""
    return {name: jax.tree.map(lambda rows, table: jnp.where(active, rows, table.shape[0]), rows, tables[name])
            for name, rows in row_ids.items()}
