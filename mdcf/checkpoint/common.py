"""What both checkpoint formats share: the errors, the loaded result, the saved header
and the checks of a saved model against the one expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from .. import models, sharding
from ..io import CorruptFileError
from ..models import Model, dlrm
from ..train.state import TrainState, init_state

__all__ = ["CheckpointMismatchError", "Checkpoint", "model_differences"]

CHECKPOINT_VERSION = 1


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
    """What :func:`mdcf.checkpoint.load` returns.

    Attributes:
      model: the :class:`~mdcf.models.Model` (structure and id maps), or the bare config of
        a model saved without id maps (DLRM).
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


# Per kind of row maps a model carries (header "id_maps"), the arrays that hold them.
MODEL_ARRAYS = {"users_items": ("model/user_ids", "model/item_ids", "model/user_rows", "model/item_rows"),
                "stacked_rows": ("model/stacked_rows",)}


def maps_kind(model) -> str | None:
    """Which row maps ``model`` carries: ``"users_items"`` (a rating
    :class:`~mdcf.models.Model`), ``"stacked_rows"`` (a :class:`~mdcf.models.dlrm.CTRModel`)
    or None (a bare config)."""
    if isinstance(model, Model):
        return "users_items"
    return "stacked_rows" if isinstance(model, dlrm.CTRModel) else None


def model_differences(saved, model) -> list[str]:
    """What differs between two models (:class:`~mdcf.models.Model` or a config of any
    family), in words: structure fields, then id maps (empty: the same model)."""
    out = []
    a, b = models.config_of(saved).to_dict(), models.config_of(model).to_dict()
    for key in a.keys() | b.keys():
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):  # an embedding spec
            out += [f"{key} {sub}: saved {short(a[key].get(sub))}, now {short(b[key].get(sub))}"
                    for sub in sorted(a[key].keys() | b[key].keys()) if a[key].get(sub) != b[key].get(sub)]
        elif a.get(key) != b.get(key):
            out.append(f"{key}: saved {short(a.get(key))}, now {short(b.get(key))}")
    out.sort()
    if maps_kind(saved) != maps_kind(model):
        out.append(f"row maps: saved {maps_kind(saved) or 'none'}, now {maps_kind(model) or 'none'}")
        return out
    if isinstance(saved, dlrm.CTRModel) and not np.array_equal(saved.rows, model.rows):
        out.append("stacked rows' block order (a model built from other counts)")
    if not isinstance(saved, Model):
        return out
    for side in ("user", "item"):
        same = all(np.array_equal(getattr(saved, f"{side}_{kind}"), getattr(model, f"{side}_{kind}"))
                   for kind in ("ids", "rows"))
        if not same:
            out.append(f"{side} ids or their rows (a model built from other data)")
    return out


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ids_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype.hasobject else ids


def model_arrays(model) -> dict[str, np.ndarray]:
    """The model's row maps, by their names in a checkpoint (none for a bare config)."""
    if isinstance(model, dlrm.CTRModel):
        return {"model/stacked_rows": np.asarray(model.rows)}
    if not isinstance(model, Model):
        return {}
    return {
        "model/user_ids": ids_array(model.user_ids),
        "model/item_ids": ids_array(model.item_ids),
        "model/user_rows": np.asarray(model.user_rows),
        "model/item_rows": np.asarray(model.item_rows),
    }


def make_header(model, state_or_params, best_params, meta: Mapping[str, Any] | None) -> dict:
    """The JSON header of a checkpoint (both formats)."""
    has_state = isinstance(state_or_params, TrainState)
    bound = isinstance(model, Model)
    return {
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": models.config_of(model).to_dict(),
        "id_maps": maps_kind(model),
        "scale": None if not bound or model.scale is None else list(model.scale),
        "global_mean": model.global_mean if bound else 0.0,
        "has_state": has_state,
        "sparse_state": has_state and bool(state_or_params.row_state),
        "has_best": best_params is not None,
        "meta": dict(meta or {}),
    }


def saved_model(path: Path, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], model):
    """The model a checkpoint holds (a :class:`~mdcf.models.Model`, a
    :class:`~mdcf.models.dlrm.CTRModel`, or a bare config when it was saved without row
    maps), checked for completeness and (if given) against ``model``."""
    if header.get("checkpoint_version") != CHECKPOINT_VERSION or "config" not in header:
        raise CorruptFileError(path, "not an mdcf checkpoint (or written by an incompatible version)")
    maps = header.get("id_maps", "users_items")  # checkpoints before other families: rating models
    if maps is not None and maps not in MODEL_ARRAYS:
        raise CorruptFileError(path, f"unknown row maps {maps!r}; written by a newer version of mdcf?")
    missing = [name for name in ("scale", "global_mean") if name not in header]
    missing += [name for name in MODEL_ARRAYS.get(maps, ()) if name not in arrays]
    if missing:
        raise CorruptFileError(path, f"the checkpoint has no member {missing[0]!r}; it is damaged or was not "
                                     "written by mdcf.checkpoint.save")
    try:
        config = models.config_from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptFileError(path, f"the saved model structure cannot be read: {err}") from None
    if maps == "users_items":
        saved = Model(config, arrays["model/user_ids"], arrays["model/item_ids"],
                      arrays["model/user_rows"], arrays["model/item_rows"],
                      None if header["scale"] is None else tuple(header["scale"]), header["global_mean"])
    elif maps == "stacked_rows":
        saved = dlrm.CTRModel(config, arrays["model/stacked_rows"])
    else:
        saved = config
    if model is not None:
        differences = model_differences(saved, model)
        if differences:
            raise CheckpointMismatchError(f"{path} holds another model: {'; '.join(differences)}", differences)
    return saved


def check_optimizer(path: Path, header: Mapping[str, Any], opt) -> None:
    """The optimiser ``opt`` (an :class:`~mdcf.train.Optimizer`) has the kind of state the checkpoint holds."""
    if (opt.rows is not None) != header.get("sparse_state"):
        raise CheckpointMismatchError(
            f"{path}: saved with a {'row-sparse' if header.get('sparse_state') else 'dense'} optimiser, "
            f"loaded with a {'row-sparse' if opt.rows is not None else 'dense'} one"
        )


def params_template(config):
    """Shapes and dtypes of a model's parameters (nothing allocated)."""
    return jax.eval_shape(lambda: models.init(jax.random.key(0), config, 0.0))


def state_template(config, opt):
    """Shapes and dtypes of a train state for ``opt`` (nothing allocated)."""
    return jax.eval_shape(lambda: init_state(jax.random.key(0), config, opt, 0.0))


def trim(config, state_or_params):
    """A state or params with every table cut back to its model's rows (undoes mesh padding).

    Parameters of another structure are returned as they are, for
    :func:`mdcf.models.check_params` to name what differs."""
    params = state_or_params.params if isinstance(state_or_params, TrainState) else state_or_params
    tables = params.get("tables") if isinstance(params, dict) else None
    if not isinstance(tables, dict) or set(tables) - {name for name, _ in config.row_tables}:
        return state_or_params
    try:
        if isinstance(state_or_params, TrainState):
            return sharding.trim_state(state_or_params, config)
        state = TrainState(state_or_params, (), {}, np.int32(0))
        return sharding.trim_state(state, config).params
    except (ValueError, TypeError, IndexError):  # blocks of another structure: left for check_params
        return state_or_params
