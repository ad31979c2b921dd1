"""Several devices: data- and model-parallel training on JAX's SPMD sharding.

mdcf does not schedule devices itself: it places arrays with
:class:`jax.sharding.NamedSharding` on a :class:`jax.sharding.Mesh` and lets
the compiler partition the (unchanged) train step.

* **Data parallel**: each batch is split over the mesh's ``data`` axis.
* **Row (model) parallel**: every embedding block table, bias vector and its
  row-wise optimiser state is split by rows over the ``model`` axis, so a
  table too large for one device is spread over several. Rows are padded to a
  multiple of the axis size (the padding rows are never read and stay zero).
* Dense parameters (projections, MLP, global bias) and their optimiser state
  are replicated.

Example (4 devices: 2-way data x 2-way rows)::

    mesh = mdcf.sharding.make_mesh(data=2, model=2)
    result = mdcf.train.fit(model, train, mesh=mesh)

In your own pipeline: place the state with :func:`shard_state` and build the
step with ``make_train_step(model, opt, mesh=mesh)``, which keeps that layout
and splits each batch over the data axis::

    state = mdcf.sharding.shard_state(mdcf.train.init_state(key, model, opt), mesh)
    step = jax.jit(mdcf.train.make_train_step(model, opt, mesh=mesh))

Several hosts: call ``jax.distributed.initialize()`` (see
:func:`initialize_distributed`) in every process before building the mesh from
``jax.devices()``; each process then runs the same program. On one machine, CPU
devices can be simulated with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(set before JAX starts).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import embeddings

__all__ = [
    "make_mesh",
    "initialize_distributed",
    "row_padding",
    "pad_state",
    "trim_state",
    "shard_state",
    "state_shardings",
    "batch_sharding",
    "replicated",
    "bytes_per_device",
]


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A ``(data, model)`` device mesh.

    Args:
      data: devices along the batch axis (default: all devices / ``model``).
      model: devices along the table-row axis.
      devices: devices to use (default ``jax.devices()``).
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or (data is not None and data < 1):
        raise ValueError(f"make_mesh needs at least one device on each axis, got data={data}, model={model}")
    if data is None:
        data = len(devices) // model
    if data * model > len(devices) or data < 1:
        raise ValueError(f"a {max(data, 1)} x {model} mesh needs {max(data, 1) * model} devices; "
                         f"{len(devices)} are available")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), ("data", "model"))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-host run (a thin wrapper of ``jax.distributed.initialize``).

    Call it in every process before any other JAX call; arguments left as None
    are detected from the cluster environment (SLURM, TPU, ...). Afterwards
    ``jax.devices()`` lists every host's devices and :func:`make_mesh` spans them.
    """
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def row_padding(n_rows: int, shards: int) -> int:
    """Rows to add so that ``n_rows`` splits evenly into ``shards``."""
    return (-n_rows) % shards


def _pad_rows(array, shards: int):
    extra = row_padding(array.shape[0], shards)
    if not extra:
        return array
    return jnp.concatenate([array, jnp.zeros((extra,) + array.shape[1:], array.dtype)])


def _map_tables(state, fn):
    """Apply ``fn`` to every row table and its row-wise optimiser state."""
    params = dict(state.params)
    params["tables"] = jax.tree.map(fn, state.params["tables"])
    return state._replace(params=params, row_state=jax.tree.map(fn, state.row_state))


def pad_state(state, shards: int):
    """Pad every row table (and row-wise optimiser state) to a multiple of ``shards`` rows."""
    if shards == 1:
        return state
    if not state.row_state and _has_table_leaves(state.dense_state):
        raise ValueError(
            "row sharding needs the row-sparse optimiser (mdcf.train.optimizer(..., sparse=True)): "
            "a dense optax state mirrors every table and would not be padded and sharded with it"
        )
    return _map_tables(state, lambda x: _pad_rows(x, shards))


def _has_table_leaves(dense_state) -> bool:
    return any(getattr(x, "ndim", 0) >= 1 and x.shape[0] > 1 for x in jax.tree.leaves(dense_state))


def trim_state(state, config):
    """Undo :func:`pad_state`: every table back to its model's row counts."""
    heights = {name: embeddings.row_heights(spec) for name, _, spec in config.embeddings}
    heights.update({name: config.sides[side].n_rows for name, side in config.row_tables if name not in heights})

    def trim_tables(tables):
        # Per table leaf its height; the leaf's row state (a tuple of arrays) is cut alike.
        return {name: jax.tree.map(lambda n, sub: jax.tree.map(lambda x: x[:n], sub), heights[name], value)
                for name, value in tables.items()}

    params = dict(state.params)
    params["tables"] = trim_tables(state.params["tables"])
    return state._replace(params=params, row_state=trim_tables(state.row_state) if state.row_state else {})


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _row_axis(mesh: Mesh, model_axis: str | None) -> str | None:
    return model_axis if model_axis and model_axis in mesh.shape and mesh.shape[model_axis] > 1 else None


def state_shardings(state, mesh: Mesh, model_axis: str | None = "model"):
    """The layout of a train state on ``mesh`` (a pytree of shardings matching ``state``):
    tables and row-wise optimiser state by rows over ``model_axis`` (if it has more than
    one device), everything else replicated."""
    axis = _row_axis(mesh, model_axis)
    rows = NamedSharding(mesh, PartitionSpec(axis)) if axis else replicated(mesh)
    every = lambda tree, sharding: jax.tree.map(lambda _: sharding, tree)  # noqa: E731
    return state._replace(
        params={"tables": every(state.params["tables"], rows), "dense": every(state.params["dense"], replicated(mesh))},
        dense_state=every(state.dense_state, replicated(mesh)),
        row_state=every(state.row_state, rows),
        step=replicated(mesh),
    )


def shard_state(state, mesh: Mesh, model_axis: str | None = "model"):
    """Pad a train state for ``mesh`` (:func:`pad_state`) and place it there (:func:`state_shardings`).

    With ``model_axis=None`` (or a model axis of size 1) everything is replicated
    (pure data parallelism).
    """
    axis = _row_axis(mesh, model_axis)
    state = pad_state(state, mesh.shape[axis] if axis else 1)
    return jax.device_put(state, state_shardings(state, mesh, axis))


def batch_sharding(mesh: Mesh, data_axis: str = "data", leading_dims: int = 0) -> NamedSharding:
    """Sharding of batch arrays split over ``data_axis`` (after ``leading_dims`` unsplit axes)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_dims), data_axis))


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes each device holds of the arrays in ``tree`` (from their shards)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + math.prod(shard.data.shape) * shard.data.dtype.itemsize
    return out
