"""Training data on the device, and the seeded order of each epoch's batches.

:func:`pack` lays a batch dict out as one int32 ``[n, width]`` array (integer
columns as they are, float32 columns as their bits; :func:`unpack` reads a batch
back as the dict): a step then reads its batch with one gather of whole rows, one
cache miss per example instead of one per array. :func:`by_key` orders the
examples by one id column (ratings by user), and :func:`epoch_order` gives each
epoch's shuffled batches, sorted within a batch, so that a step reads and writes
that table in increasing row order.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Packed", "by_key", "by_user", "pack", "unpack", "epoch_order"]


@jax.tree_util.register_pytree_node_class
class Packed:
    """Examples as one int32 ``[n, width]`` device array, and its static layout: per
    column group ``(key, dtype name, trailing shape)`` in order.

    A pytree whose only leaf is the array (the layout is static), so it passes
    through ``jit`` and ``device_put`` like an array."""

    def __init__(self, array, layout: tuple[tuple[str, str, tuple[int, ...]], ...]):
        self.array = array
        self.layout = layout

    def __len__(self) -> int:
        return self.array.shape[0]

    def tree_flatten(self):
        return (self.array,), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], layout)


def by_key(encoded: dict, key: str) -> dict[str, np.ndarray]:
    """The arrays ordered by ``encoded[key]`` (stable)."""
    order = np.argsort(encoded[key], kind="stable")
    return {name: np.ascontiguousarray(value[order]) for name, value in encoded.items()}


def by_user(encoded: dict) -> dict[str, np.ndarray]:
    """Ratings ordered by user row (:func:`by_key` of ``"users"``): with :func:`epoch_order`'s
    sorted batches, a step then reads and writes the user table in increasing row order."""
    return by_key(encoded, "users")


def pack(encoded: dict) -> Packed:
    """A batch dict of equal-length NumPy arrays (int32-range integers or float32;
    e.g. ``by_user(model.encode(ratings))``) as one :class:`Packed` device array.

    Ratings take 12 bytes per example (user row, item row, rating bits); a DLRM
    example 4 * (1 + n_dense + F) bytes.
    """
    columns, layout = [], []
    n = None
    for key, value in encoded.items():
        value = np.asarray(value)
        if n is None:
            n = len(value)
        if value.ndim < 1 or len(value) != n:
            raise ValueError(f"pack: every array must have one length, {key!r} has shape {value.shape} "
                             f"(the first has {n} examples)")
        if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
            if value.size and (value.min() < 0 or value.max() > np.iinfo(np.int32).max):
                raise ValueError(f"pack: {key} must lie in [0, 2**31), found {value.min()}..{value.max()}")
            column, dtype = value.astype(np.int32), "int32"
        elif np.issubdtype(value.dtype, np.floating):
            column, dtype = value.astype(np.float32).view(np.int32), "float32"
        else:
            raise TypeError(f"pack: {key} must hold numbers, got dtype {value.dtype}")
        columns.append(column.reshape(n, -1))
        layout.append((key, dtype, tuple(value.shape[1:])))
    if not columns:
        raise ValueError("pack: nothing to pack")
    return Packed(jnp.asarray(np.concatenate(columns, axis=1)), tuple(layout))


def unpack(data: Packed, index: jax.Array) -> dict[str, jax.Array]:
    """The batch dict of the examples at positions ``index`` (in range) of a :func:`pack` array."""
    rows = data.array.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)
    out, start = {}, 0
    for key, dtype, shape in data.layout:
        width = math.prod(shape)
        column = rows[:, start:start + width].reshape(rows.shape[:1] + shape)
        out[key] = column if dtype == "int32" else jax.lax.bitcast_convert_type(column, jnp.float32)
        start += width
    return out


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The seeded shuffle of one epoch, padded to whole batches: int32 ``[n_batches, batch_size]``.

    Which examples share a batch is the seeded shuffle's; within a batch the
    positions are sorted (the padding of the last batch stays at its end). The
    order inside a batch does not change a step's result (up to float rounding
    of sums), but on data ordered by an id (:func:`by_key`) it makes that
    table's gathers and scatters in a step run over increasing rows. Shuffled on
    the host, overlapping the previous epoch's computation.
    """
    n_batches = -(-n // batch_size)
    order = np.zeros(n_batches * batch_size, np.int32)
    order[:n] = np.random.default_rng([seed, epoch]).permutation(n)
    order = order.reshape(n_batches, batch_size)
    order[: n // batch_size].sort(axis=1)
    if n % batch_size:
        order[-1, : n % batch_size].sort()
    return order
