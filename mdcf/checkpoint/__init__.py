"""Checkpoints: a model with its parameters or whole train state.

Two formats, read alike by :func:`load`:

* **one file** (:mod:`mdcf.checkpoint.single`): every array gathered into one
  atomic, checksummed file; the format for one device.
* **a sharded folder** (:mod:`mdcf.checkpoint.sharded`): every process writes the
  shards it holds through orbax-checkpoint, atomically; restoring places them on
  the same mesh, another one, or one device. The format for states placed on a
  mesh (several devices or hosts); needs ``pip install "mdcf[distributed]"``.

Example::

    mdcf.checkpoint.save("run.ckpt", model, state)        # one device: one file
    ckpt = mdcf.checkpoint.load("run.ckpt", opt, model=model)
    ckpt.state, ckpt.meta
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax

from . import sharded, single
from .common import Checkpoint, CheckpointMismatchError, model_differences
from ..train.optim import as_optimizer

__all__ = ["CheckpointMismatchError", "Checkpoint", "save", "load", "model_differences", "is_sharded"]

is_sharded = sharded.is_sharded


def _spans_devices(tree) -> bool:
    return any(len(getattr(leaf, "sharding", None).device_set) > 1 for leaf in jax.tree.leaves(tree)
               if getattr(leaf, "sharding", None) is not None)


def save(path: os.PathLike | str, model, state_or_params, *, best_params=None,
         meta: Mapping[str, Any] | None = None, sharded_format: bool | None = None) -> None:
    """Atomically save a model with its parameters or full train state.

    Args:
      path: destination file, or folder for the sharded format.
      model: the :class:`~mdcf.models.Model`, or a model config without id maps (DLRM).
      state_or_params: a :class:`~mdcf.train.TrainState` (parameters, optimiser
        state and step: enough to resume exactly) or a params dict; tables may be
        padded and placed on a mesh (:func:`mdcf.sharding.shard_state`).
      best_params: optional second parameter set (``fit`` keeps its best epoch here).
      meta: JSON-serialisable extras.
      sharded_format: True for a sharded folder, False for one file. By default a
        folder where ``path`` already is one or where an array spans several
        devices (unless every array can be gathered by this process and ``path``
        holds a single-file checkpoint or orbax-checkpoint is not installed), else
        one file. With several processes
        every process must call ``save`` (the sharded format).
    """
    path = Path(path)
    if sharded_format is None:
        spread = _spans_devices((state_or_params, best_params))
        addressable = all(getattr(leaf, "is_fully_addressable", True)
                          for leaf in jax.tree.leaves((state_or_params, best_params)))
        sharded_format = path.is_dir() or (spread and not (addressable and (path.is_file() or not sharded.available())))
    writer = sharded.save if sharded_format else single.save
    if not sharded_format and path.is_dir():
        raise IsADirectoryError(f"save {path}: a sharded checkpoint folder is there; save with the sharded format "
                                "or to another path")
    writer(path, model, state_or_params, best_params=best_params, meta=meta)


def load(path: os.PathLike | str, opt=None, *, model=None, mesh=None,
         model_axis: str | None = "model") -> Checkpoint:
    """Load a checkpoint written by :func:`save` (either format).

    Args:
      path: the file or sharded folder.
      opt: the optimiser used for training (an :class:`~mdcf.train.Optimizer` or
        optax transformation) to restore the optimiser state; without it only
        parameters are restored.
      model: when given, the checkpoint must hold this model: the same structure
        and id maps (checked before anything else is read into arrays).
      mesh: place the arrays on this mesh (tables split by rows over
        ``model_axis``, padded as :func:`mdcf.sharding.shard_state` does), whatever
        mesh they were saved from; needed when several processes restore a sharded
        folder. Without it everything lands on one device, tables at their rows.

    Raises:
      FileNotFoundError: no such file or folder.
      CorruptFileError: truncated or corrupt file (checksums or fingerprints), not a
        checkpoint, a folder with no complete save, or a checkpoint missing a member
        (the message names it).
      CheckpointMismatchError: the optimiser does not match the saved state, or the
        saved model is not ``model`` (the message says what differs).
    """
    path = Path(path)
    opt = None if opt is None else as_optimizer(opt)
    reader = sharded.load if path.is_dir() else single.load
    return reader(path, opt, model=model, mesh=mesh, model_axis=model_axis)

