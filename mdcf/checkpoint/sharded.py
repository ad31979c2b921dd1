"""The sharded checkpoint format: a folder written by every process, through orbax-checkpoint.

Each process writes the shards of the arrays it holds (tables split by rows over a
mesh are never gathered); the first process writes a JSON header (the model, its id
maps, ``meta``, and each array's shape, dtype and fingerprint). Saves are atomic:
orbax writes a numbered step into a temporary folder and renames it once every
process has finished, keeping only the newest complete step; a temporary folder
left by a killed save is ignored by readers and removed by the next save.

Restoring places every array directly on a mesh, the one it was saved from or
another (tables are re-padded for the new number of row shards), or on one device.
Each array's fingerprint, a position-weighted 32-bit sum of its bits over its true
rows (computed on the devices, so without gathering), is checked after restoring:
a damaged or truncated shard file is an error, never a silent wrong value.

orbax-checkpoint is an optional dependency: ``pip install "mdcf[distributed]"``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, SingleDeviceSharding

from .. import models, sharding
from ..io import CorruptFileError
from ..train.state import TrainState
from .common import (Checkpoint, CheckpointMismatchError, check_optimizer, make_header, model_arrays,
                     params_template, saved_model, state_template, trim)

__all__ = ["save", "load", "is_sharded", "available", "fingerprint"]

FORMAT = "mdcf-sharded"


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # an optional dependency
        raise ImportError('sharded checkpoints need orbax-checkpoint: pip install "mdcf[distributed]" '
                          '(or pip install orbax-checkpoint)') from err
    return ocp


def available() -> bool:
    """Whether orbax-checkpoint is installed (the sharded format can be written)."""
    return importlib.util.find_spec("orbax") is not None and importlib.util.find_spec("orbax.checkpoint") is not None


@contextlib.contextmanager
def _manager(ocp, path: Path, read_only: bool = False):
    """An orbax manager of ``path`` keeping one step, its routine absl log lines silenced."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else 1, create=not read_only,
                                           read_only=read_only, save_interval_steps=0 if read_only else 1,
                                           cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    manager = None
    try:
        manager = ocp.CheckpointManager(str(path), options=options)
        yield manager
    finally:
        if manager is not None:
            manager.close()
        log.setLevel(level)


def is_sharded(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (complete or not)."""
    return Path(path).is_dir()


def _name(key_path) -> str:
    parts = []
    for key in key_path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def _flat(prefix: str, tree) -> dict[str, Any]:
    return {f"{prefix}.{_name(p)}".rstrip("."): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _trees(state_or_params, best_params) -> dict[str, Any]:
    if isinstance(state_or_params, TrainState):
        trees = {"params": state_or_params.params, "dense_state": state_or_params.dense_state,
                 "row_state": state_or_params.row_state, "step": state_or_params.step}
    else:
        trees = {"params": state_or_params}
    if best_params is not None:
        trees["best"] = best_params
    out: dict[str, Any] = {}
    for prefix, tree in trees.items():
        out.update(_flat(prefix, tree))
    return out


def _as_bits(x):
    """The array's bits as uint32 values (64-bit elements give two values each)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@functools.partial(jax.jit, static_argnums=1)
def _fingerprint(x, rows: int):
    bits = _as_bits(x)
    bits = bits.reshape((bits.shape[0] if bits.ndim else 1), -1)
    row = jnp.arange(bits.shape[0], dtype=jnp.uint32)[:, None]
    pos = row * jnp.uint32(bits.shape[1]) + jnp.arange(bits.shape[1], dtype=jnp.uint32)[None, :]
    weight = ((pos * jnp.uint32(0x9E3779B1)) ^ (pos >> 15)) | jnp.uint32(1)  # odd: every bit flip shows
    return jnp.sum(jnp.where(row < rows, bits * weight, jnp.uint32(0)), dtype=jnp.uint32)


def fingerprint(x, rows: int | None = None) -> int:
    """A 32-bit fingerprint of ``x``'s first ``rows`` rows (all rows by default): a sum of its
    bits weighted by position, computed where ``x`` lives (a sharded array is not gathered).
    Any single changed bit, and any pair of swapped unequal elements, changes it."""
    x = jnp.asarray(x)
    rows = (x.shape[0] if x.ndim else 1) if rows is None else rows
    return int(jax.device_get(_fingerprint(x, rows)))


def save(path: os.PathLike | str, model, state_or_params, *, best_params=None,
         meta: Mapping[str, Any] | None = None) -> None:
    """Write a sharded checkpoint folder (see :func:`mdcf.checkpoint.save`); every process calls it."""
    ocp = _orbax()
    path = Path(path).absolute()
    config = models.config_of(model)
    trimmed = jax.eval_shape(functools.partial(trim, config), state_or_params)  # shapes only
    params = trimmed.params if isinstance(trimmed, TrainState) else trimmed
    models.check_params(config, params, f"save {path}: params")
    best_shapes = None if best_params is None else jax.eval_shape(functools.partial(trim, config), best_params)
    if best_shapes is not None:
        models.check_params(config, best_shapes, f"save {path}: best_params")
    arrays = {name: jnp.asarray(leaf) for name, leaf in _trees(state_or_params, best_params).items()}
    shapes = _trees(trimmed, best_shapes)
    header = make_header(model, state_or_params, best_params, meta)
    header["format"] = FORMAT
    header["model"] = {name: {"dtype": value.dtype.str, "values": value.tolist()}
                       for name, value in model_arrays(model).items()}
    header["arrays"] = {
        name: {"shape": list(shapes[name].shape), "dtype": jnp.dtype(leaf.dtype).name,
               "fingerprint": fingerprint(leaf, shapes[name].shape[0] if shapes[name].ndim else 1)}
        for name, leaf in arrays.items()
    }
    if path.is_file():  # a single-file checkpoint is replaced by the folder
        if jax.process_count() > 1:
            raise FileExistsError(f"save {path}: a single-file checkpoint is there; move it away before a "
                                  "multi-process save writes a sharded one")
        fresh = path.with_name(path.name + ".sharded-new")
        shutil.rmtree(fresh, ignore_errors=True)
        _write(ocp, fresh, arrays, header)
        old = path.with_name(path.name + ".single-old")
        os.replace(path, old)
        os.replace(fresh, path)
        old.unlink()
        return
    _write(ocp, path, arrays, header)


def _write(ocp, path: Path, arrays, header) -> None:
    with _manager(ocp, path) as manager:
        step = (manager.latest_step() or 0) + 1
        manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                   header=ocp.args.JsonSave(header)))
        manager.wait_until_finished()


def _target(path: Path, header, config, opt, mesh, model_axis):
    """Per array name, the ShapeDtypeStruct (with its sharding) to restore into."""
    if opt is not None and header.get("has_state"):
        check_optimizer(path, header, opt)
        shape = state_template(config, opt)
    else:
        shape = TrainState(params_template(config), (), {}, jax.ShapeDtypeStruct((), jnp.int32))
    if mesh is not None:
        axis = model_axis if model_axis and mesh.shape.get(model_axis, 1) > 1 else None
        shards = sharding.state_shardings(shape, mesh, axis)
    else:
        if jax.process_count() > 1:
            raise ValueError(f"load {path}: several processes must restore onto a mesh (mesh=...)")
        one = SingleDeviceSharding(jax.local_devices()[0])
        shards = jax.tree.map(lambda _: one, shape)
    full = opt is not None and header.get("has_state")
    shapes = _trees(shape if full else shape.params, shape.params if header.get("has_best") else None)
    placed = _trees(shards if full else shards.params, shards.params if header.get("has_best") else None)
    out = {}
    for name, leaf in shapes.items():
        where = placed[name]
        global_shape = tuple(leaf.shape)
        if isinstance(where, NamedSharding) and leaf.ndim and where.spec and where.spec[0] is not None:
            global_shape = (leaf.shape[0] + sharding.row_padding(leaf.shape[0], mesh.shape[where.spec[0]]),) + global_shape[1:]
        out[name] = jax.ShapeDtypeStruct(global_shape, leaf.dtype, sharding=where)
    return shapes, out


def load(path: Path, opt=None, *, model=None, mesh=None, model_axis: str | None = "model") -> Checkpoint:
    """Restore a sharded checkpoint folder (see :func:`mdcf.checkpoint.load`)."""
    ocp = _orbax()
    path = Path(path).absolute()
    with _manager(ocp, path, read_only=True) as manager:
        step = manager.latest_step()
        if step is None:
            raise CorruptFileError(path, "the folder holds no complete checkpoint (a save that never finished "
                                         "leaves only temporary folders)")
        try:
            header = manager.restore(step, args=ocp.args.Composite(header=ocp.args.JsonRestore()))["header"]
        except Exception as err:  # noqa: BLE001 - any failure to read is a damaged checkpoint
            raise CorruptFileError(path, f"its header cannot be read ({type(err).__name__}: {err})") from err
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CorruptFileError(path, "not an mdcf sharded checkpoint")
        arrays = {name: np.asarray(entry["values"], dtype=np.dtype(entry["dtype"]))
                  for name, entry in header.get("model", {}).items()}
        saved = saved_model(path, header, arrays, model)
        shapes, target = _target(path, header, models.config_of(saved), opt, mesh, model_axis)
        stored = header.get("arrays", {})
        for name, leaf in shapes.items():
            entry = stored.get(name)
            if entry is None:
                raise CheckpointMismatchError(f"{path}: no array {name!r}; the checkpoint was saved from another "
                                              "model or optimiser")
            if tuple(entry["shape"]) != tuple(leaf.shape) or entry["dtype"] != jnp.dtype(leaf.dtype).name:
                raise CheckpointMismatchError(f"{path}: {name!r} has shape {tuple(entry['shape'])} {entry['dtype']}, "
                                              f"expected {tuple(leaf.shape)} {jnp.dtype(leaf.dtype).name}")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                arrays=ocp.args.PyTreeRestore(target, restore_args=_restore_args(ocp, target), partial_restore=True)))
        except Exception as err:  # noqa: BLE001
            raise CorruptFileError(path, f"its arrays cannot be read ({type(err).__name__}: {err})") from err
        values = restored["arrays"]
    for name, value in values.items():
        if fingerprint(value, shapes[name].shape[0] if shapes[name].ndim else 1) != stored[name]["fingerprint"]:
            raise CorruptFileError(path, f"the array {name!r} fails its fingerprint check: a shard file is damaged")
    return _assemble(saved, header, values, opt)


def _restore_args(ocp, target):
    return {name: ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, strict=False, dtype=leaf.dtype)
            for name, leaf in target.items()}


def _assemble(saved, header, values, opt) -> Checkpoint:
    config = models.config_of(saved)

    def tree(prefix, template):
        leaves = [values[f"{prefix}.{_name(p)}".rstrip(".")] for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)

    template = params_template(config)
    params = tree("params", template)
    best = tree("best", template) if header.get("has_best") else None
    state = None
    if opt is not None and header.get("has_state"):
        shape = state_template(config, opt)
        state = TrainState(params, tree("dense_state", shape.dense_state), tree("row_state", shape.row_state),
                           values["step"])
    return Checkpoint(saved, params, state, best, header.get("meta", {}))
