"""The single-file checkpoint format: every array gathered into one checksummed file.

:func:`save` writes the model's structure, its id maps and every array through
:func:`mdcf.io.write_arrays` (atomic, checksummed); :func:`load` reads them back
and checks them against the structure they must fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import models, sharding
from ..io import CorruptFileError, read_arrays, write_arrays
from ..train.state import TrainState
from .common import (Checkpoint, CheckpointMismatchError, check_optimizer, make_header, model_arrays,
                     params_template, saved_model, state_template, trim)

__all__ = ["save", "load"]


def _flatten(prefix: str, tree, out: dict) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def _unflatten(prefix: str, template, arrays: dict, path: Path):
    leaves = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = prefix + jax.tree_util.keystr(key_path)
        if name not in arrays:
            raise CheckpointMismatchError(f"{path}: no array {name!r}; the checkpoint was saved from another model or optimiser")
        value = arrays[name]
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise CheckpointMismatchError(
                f"{path}: {name!r} has shape {value.shape} {value.dtype}, expected {tuple(leaf.shape)} {leaf.dtype}"
            )
        leaves.append(value)
    expected = {prefix + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]}
    extra = sorted(k for k in arrays if k.startswith(prefix) and k not in expected)
    if extra:
        raise CheckpointMismatchError(f"{path}: unexpected arrays {extra[:3]}; saved from another model or optimiser")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), [jnp.asarray(x) for x in leaves])


def save(path: os.PathLike | str, model, state_or_params, *, best_params=None,
         meta: Mapping[str, Any] | None = None) -> None:
    """Gather a model with its parameters or train state into one file, atomically
    (see :func:`mdcf.checkpoint.save`). Tables padded for a mesh are cut back to their rows."""
    has_state = isinstance(state_or_params, TrainState)
    state_or_params = trim(models.config_of(model), state_or_params)
    params = state_or_params.params if has_state else state_or_params
    models.check_params(models.config_of(model), params, f"save {path}: params")  # never a checkpoint that cannot be used
    if best_params is not None:
        best_params = trim(models.config_of(model), best_params)
        models.check_params(models.config_of(model), best_params, f"save {path}: best_params")
    arrays = model_arrays(model)
    _flatten("params", params, arrays)
    if has_state:
        _flatten("dense_state", state_or_params.dense_state, arrays)
        _flatten("row_state", state_or_params.row_state, arrays)
        arrays["step"] = np.asarray(state_or_params.step)
    if best_params is not None:
        _flatten("best", best_params, arrays)
    write_arrays(path, arrays, make_header(model, state_or_params, best_params, meta))


def load(path: Path, opt=None, *, model=None, mesh=None, model_axis: str | None = "model") -> Checkpoint:
    """Read a single-file checkpoint (see :func:`mdcf.checkpoint.load`)."""
    arrays, header = read_arrays(path)
    if header.get("has_state") and "step" not in arrays and "config" in header:
        raise CorruptFileError(path, "the checkpoint has no member 'step'; it is damaged or was not "
                                     "written by mdcf.checkpoint.save")
    saved = saved_model(path, header, arrays, model)
    config = models.config_of(saved)
    template = params_template(config)
    params = _unflatten("params", template, arrays, path)
    best = _unflatten("best", template, arrays, path) if header.get("has_best") else None
    state = None
    if opt is not None and header.get("has_state"):
        check_optimizer(path, header, opt)
        shape = state_template(config, opt)
        state = TrainState(
            params,
            _unflatten("dense_state", shape.dense_state, arrays, path),
            _unflatten("row_state", shape.row_state, arrays, path),
            jnp.asarray(arrays["step"]),
        )
    if mesh is not None:
        placed = sharding.shard_state(state if state is not None else TrainState(params, (), {}, jnp.int32(0)),
                                      mesh, model_axis)
        if state is not None:
            state = placed
        params = placed.params
        if best is not None:
            best = sharding.shard_state(TrainState(best, (), {}, jnp.int32(0)), mesh, model_axis).params
    return Checkpoint(saved, params, state, best, header.get("meta", {}))
