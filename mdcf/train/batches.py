"""Training data on the device, and the seeded order of each epoch's batches.

:func:`pack` lays the ratings out as one int32 ``[n, 3]`` array (user row, item
row, float32 bits of the rating; :func:`unpack` reads a batch back), ordered by
user (:func:`by_user`); :func:`epoch_order` gives each epoch's shuffled batches,
sorted within a batch, so that a step reads and writes the user table in
increasing row order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["by_user", "pack", "unpack", "epoch_order"]


def by_user(encoded: dict) -> dict[str, np.ndarray]:
    """The training arrays ordered by user row (stable): with :func:`epoch_order`'s
    sorted batches, a step then reads and writes the user table in increasing row order."""
    order = np.argsort(encoded["users"], kind="stable")
    return {key: np.ascontiguousarray(value[order]) for key, value in encoded.items()}


def pack(encoded: dict) -> jax.Array:
    """The training arrays (:func:`by_user`) as one int32 ``[n, 3]`` device array: per
    rating its user row, item row and the float32 bits of the rating
    (:func:`unpack` reads a batch back).

    A step then reads its batch with one gather of 12-byte rows instead of three
    gathers of 4 bytes: one cache miss per rating instead of three.
    """
    users, items = np.asarray(encoded["users"]), np.asarray(encoded["items"])
    for name, rows in (("users", users), ("items", items)):
        if rows.size and (rows.min() < 0 or rows.max() > np.iinfo(np.int32).max):
            raise ValueError(f"training {name} rows must lie in [0, 2**31), found {rows.min()}..{rows.max()}")
    ratings = np.asarray(encoded["ratings"], np.float32)
    return jnp.asarray(np.stack([users.astype(np.int32), items.astype(np.int32), ratings.view(np.int32)], axis=1))


def unpack(data: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(users, items, ratings)`` of the ratings at positions ``index`` (in range) of a
    :func:`pack` array."""
    rows = data.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)
    return rows[:, 0], rows[:, 1], jax.lax.bitcast_convert_type(rows[:, 2], jnp.float32)


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The seeded shuffle of one epoch, padded to whole batches: int32 ``[n_batches, batch_size]``.

    Which ratings share a batch is the seeded shuffle's; within a batch the
    positions are sorted (the padding of the last batch stays at its end). The
    order inside a batch does not change a step's result (up to float rounding
    of sums), but on data ordered by user (:func:`by_user`) it makes the
    table gathers and scatters of a step run over increasing rows. Shuffled on
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


