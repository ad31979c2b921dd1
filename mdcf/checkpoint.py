"""Checkpoints: a model with its parameters or whole train state, in one checksummed file.

:func:`save` writes the model's structure, its id maps and every array through
:func:`mdcf.io.write_arrays` (atomic, checksummed); :func:`load` reads them back
and checks them against the structure they must fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import models
from .io import CorruptFileError, read_arrays, write_arrays
from .models import Model, ModelConfig
from .train.optim import as_optimizer
from .train.state import TrainState, init_state

__all__ = ["CheckpointMismatchError", "Checkpoint", "save", "load", "model_differences"]

_CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit what it is loaded into (structure, shapes or optimiser).

    Attributes:
      differences: when the saved model is not the expected one, what differs
        (:func:`model_differences`); empty otherwise.
    """

    def __init__(self, message: str, differences: tuple[str, ...] = ()):
        super().__init__(message)
        self.differences = tuple(differences)


class Checkpoint(NamedTuple):
    """What :func:`load` returns.

    Attributes:
      model: the :class:`~mdcf.models.Model` (structure and id maps).
      params: the saved parameters.
      state: the :class:`~mdcf.train.TrainState` (None unless an optimiser was given
        and the checkpoint holds one).
      best_params: the best parameters saved beside the state (by ``fit``), or None.
      meta: the JSON ``meta`` saved with it (``fit`` keeps its epoch and history there).
    """

    model: Any
    params: Any
    state: Any
    best_params: Any
    meta: dict


_MODEL_ARRAYS = ("model/user_ids", "model/item_ids", "model/user_rows", "model/item_rows")


def model_differences(saved: Model, model: Model) -> list[str]:
    """What differs between two models, in words: structure fields, then id maps (empty: the same model)."""
    out = []
    a, b = saved.config.to_dict(), model.config.to_dict()
    for key in a.keys() | b.keys():
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):  # an embedding spec
            out += [f"{key} {sub}: saved {_short(a[key].get(sub))}, now {_short(b[key].get(sub))}"
                    for sub in sorted(a[key].keys() | b[key].keys()) if a[key].get(sub) != b[key].get(sub)]
        elif a.get(key) != b.get(key):
            out.append(f"{key}: saved {_short(a.get(key))}, now {_short(b.get(key))}")
    out.sort()
    for side in ("user", "item"):
        same = all(np.array_equal(getattr(saved, f"{side}_{kind}"), getattr(model, f"{side}_{kind}"))
                   for kind in ("ids", "rows"))
        if not same:
            out.append(f"{side} ids or their rows (a model built from other data)")
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), [_to_jax(x) for x in leaves])


def _to_jax(value):
    return jnp.asarray(value)


def _ids_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype.hasobject else ids


def save(path: os.PathLike | str, model, state_or_params, *, best_params=None, meta: Mapping[str, Any] | None = None) -> None:
    """Atomically save a model with its parameters or full train state.

    Args:
      path: destination file.
      model: the :class:`~mdcf.models.Model`.
      state_or_params: a :class:`~mdcf.train.TrainState` (parameters, optimiser
        state and step: enough to resume exactly) or a params dict.
      best_params: optional second parameter set (``fit`` keeps its best epoch here).
      meta: JSON-serialisable extras.
    """
    has_state = isinstance(state_or_params, TrainState)
    params = state_or_params.params if has_state else state_or_params
    models.check_params(model.config, params, f"save {path}: params")  # never a checkpoint that cannot be used
    if best_params is not None:
        models.check_params(model.config, best_params, f"save {path}: best_params")
    arrays: dict[str, np.ndarray] = {
        "model/user_ids": _ids_array(model.user_ids),
        "model/item_ids": _ids_array(model.item_ids),
        "model/user_rows": np.asarray(model.user_rows),
        "model/item_rows": np.asarray(model.item_rows),
    }
    _flatten("params", params, arrays)
    if has_state:
        _flatten("dense_state", state_or_params.dense_state, arrays)
        _flatten("row_state", state_or_params.row_state, arrays)
        arrays["step"] = np.asarray(state_or_params.step)
    if best_params is not None:
        _flatten("best", best_params, arrays)
    header = {
        "checkpoint_version": _CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "scale": None if model.scale is None else list(model.scale),
        "global_mean": model.global_mean,
        "has_state": has_state,
        "sparse_state": has_state and bool(state_or_params.row_state),
        "has_best": best_params is not None,
        "meta": dict(meta or {}),
    }
    write_arrays(path, arrays, header)


def load(path: os.PathLike | str, opt=None, *, model: Model | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save`.

    Args:
      path: the file.
      opt: the optimiser used for training (an :class:`~mdcf.train.Optimizer` or
        optax transformation) to restore the optimiser state; without it only
        parameters are restored.
      model: when given, the checkpoint must hold this model: the same structure
        and id maps (checked before anything else is read into arrays).

    Raises:
      FileNotFoundError: no such file.
      CorruptFileError: truncated or corrupt file (checksums), not a checkpoint, or
        a checkpoint missing a member (the message names it).
      CheckpointMismatchError: the optimiser does not match the saved state, or the
        saved model is not ``model`` (the message says what differs).
    """
    path = Path(path)
    arrays, header = read_arrays(path)
    if header.get("checkpoint_version") != _CHECKPOINT_VERSION or "config" not in header:
        raise CorruptFileError(path, "not an mdcf checkpoint (or written by an incompatible version)")
    missing = [name for name in ("scale", "global_mean") if name not in header]
    missing += [name for name in _MODEL_ARRAYS + (("step",) if header.get("has_state") else ()) if name not in arrays]
    if missing:
        raise CorruptFileError(path, f"the checkpoint has no member {missing[0]!r}; it is damaged or was not "
                                     "written by mdcf.checkpoint.save")
    config = ModelConfig.from_dict(header["config"])
    saved = Model(
        config, arrays["model/user_ids"], arrays["model/item_ids"], arrays["model/user_rows"],
        arrays["model/item_rows"], None if header["scale"] is None else tuple(header["scale"]), header["global_mean"],
    )
    if model is not None:
        differences = model_differences(saved, model)
        if differences:
            raise CheckpointMismatchError(f"{path} holds another model: {'; '.join(differences)}", differences)
    template = jax.eval_shape(lambda: models.init(jax.random.key(0), config, 0.0))
    params = _unflatten("params", template, arrays, path)
    best = _unflatten("best", template, arrays, path) if header.get("has_best") else None
    state = None
    if opt is not None and header.get("has_state"):
        opt = as_optimizer(opt)
        if (opt.rows is not None) != header.get("sparse_state"):
            raise CheckpointMismatchError(
                f"{path}: saved with a {'row-sparse' if header.get('sparse_state') else 'dense'} optimiser, "
                f"loaded with a {'row-sparse' if opt.rows is not None else 'dense'} one"
            )
        shape = jax.eval_shape(lambda: init_state(jax.random.key(0), config, opt, 0.0))
        state = TrainState(
            params,
            _unflatten("dense_state", shape.dense_state, arrays, path),
            _unflatten("row_state", shape.row_state, arrays, path),
            _to_jax(arrays["step"]),
        )
    return Checkpoint(saved, params, state, best, header.get("meta", {}))
