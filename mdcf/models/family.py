"""Every model family behind one interface: :class:`Family`, one entry per config type in :data:`FAMILIES`.

The train step, ``fit``, evaluation and checkpoints see a model only through its
config's structure (``task``, ``sides``, ``id_keys``, ``inputs``, ``embeddings``,
``row_tables``, ``to_dict``) and its family's functions below; a family is data
to them, not a second code path. Two families are registered: the rating models
(:class:`~mdcf.models.ModelConfig`: MF, GMF, MLP, NeuMF) and DLRM
(:class:`~mdcf.models.dlrm.DLRMConfig`).

Parameters of every family share one layout: ``{"tables": {name: leaves indexed
by rows}, "dense": {"projections": {name: ...}, ...}}``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from ..data import CTRData, Ratings
from . import core, dlrm
from .config import ModelConfig
from .dlrm import DLRMConfig
from .model import Model

__all__ = ["Family", "FAMILIES", "BOUND", "family", "init", "forward", "outputs", "num_params",
           "check_params", "encode", "config_from_dict", "config_of"]


class Family(NamedTuple):
    """The functions of one model family.

    Attributes:
      init: ``(key, config, offset) -> params``; ``offset`` is the initial global
        bias where the family has one (rating models: the training mean), else unused.
      forward: ``(dense, config, vectors, rows, inputs) -> [B]`` raw outputs (ratings,
        or click logits) from the dense parameters, the embedding vectors
        ``{name: [*ids.shape, d0]}``, the gathered one-value-per-row tables
        ``{name: ids.shape}`` (biases) and the batch's dense inputs.
      num_params: ``config -> int``, every trainable parameter.
      encode: ``(model, data) -> batch dict`` of NumPy arrays (the side id keys, the
        task's target, the inputs) for data in the model's code space.
      data: the type of the data it trains on (:class:`~mdcf.data.Ratings`,
        :class:`~mdcf.data.CTRData`); it has ``len`` and ``take(rows)``, or is Ratings.
    """

    init: Callable[[jax.Array, Any, float], dict]
    forward: Callable[[dict, Any, dict, dict, dict], jax.Array]
    num_params: Callable[[Any], int]
    encode: Callable[[Any, Any], dict]
    data: type


def _rating_forward(dense, config, vectors, rows, inputs):
    return core.head(dense, config, vectors, rows.get("user_bias"), rows.get("item_bias"))


def _rating_encode(model, data):
    if not isinstance(model, Model):
        raise TypeError(f"a rating model needs its id maps to encode ratings: pass the mdcf.models.Model "
                        f"(models.build_model), got {type(model).__name__}")
    return model.encode(data)


FAMILIES: dict[type, Family] = {
    ModelConfig: Family(core.init, _rating_forward, core.num_params, _rating_encode, Ratings),
    DLRMConfig: Family(lambda key, config, offset=0.0: dlrm.init(key, config), dlrm.forward, dlrm.num_params,
                       dlrm.encode, CTRData),
}


# The models that bind a config to row maps (each has ``.config``).
BOUND = (Model, dlrm.CTRModel)


def config_of(model):
    """The config of a bound model (:class:`~mdcf.models.Model`: a rating model with its
    id maps; :class:`~mdcf.models.dlrm.CTRModel`), or the config itself."""
    return model.config if isinstance(model, BOUND) else model


def family(config) -> Family:
    """The family of a config (or :class:`~mdcf.models.Model`); ``TypeError`` for anything else."""
    config = config_of(config)
    try:
        return FAMILIES[type(config)]
    except KeyError:
        raise TypeError(f"expected a model config ({', '.join(t.__name__ for t in FAMILIES)}) or "
                        f"mdcf.models.Model, got {type(config).__name__}") from None


def init(key: jax.Array, config, global_mean: float = 0.0) -> dict:
    """Initial parameters of any family (``global_mean``: the rating models' initial global bias)."""
    return family(config).init(key, config_of(config), global_mean)


def forward(dense: dict, config, vectors: dict, rows: dict, inputs: dict) -> jax.Array:
    """Raw outputs ``[B]`` from embedding vectors; see :attr:`Family.forward`."""
    return family(config).forward(dense, config_of(config), vectors, rows, inputs)


def outputs(params: dict, config, batch: dict, capacity: int | str | None = "auto") -> jax.Array:
    """Raw outputs ``[B]`` (ratings, or click logits) of a model of any family on a batch
    dict holding its id keys (rows in block order) and dense inputs
    (:func:`encode`); the family-independent form of ``apply``."""
    config = config_of(config)
    ids = {side: batch[key] for side, key in config.id_keys.items()}
    vectors, rows = core.embed_batch(params, config, ids, capacity)
    return forward(params["dense"], config, vectors, rows, {key: batch[key] for key in config.inputs})


def num_params(config) -> int:
    """Every trainable parameter of a model of any family."""
    return family(config).num_params(config_of(config))


def encode(model, data) -> dict[str, np.ndarray]:
    """The batch dict of ``data`` in ``model``'s code space (:attr:`Family.encode`)."""
    return family(model).encode(model, data)


def config_from_dict(value: dict[str, Any]):
    """The config a ``to_dict`` wrote, of either family (told apart by ``kind``)."""
    return DLRMConfig.from_dict(value) if value.get("kind") == "dlrm" else ModelConfig.from_dict(value)


@lru_cache(maxsize=16)
def _param_shapes(config):
    return jax.eval_shape(lambda: init(jax.random.key(0), config))


def check_params(config, params, where: str = "params") -> None:
    """Raise ``ValueError`` unless ``params`` have the structure and shapes that
    :func:`init` gives for ``config`` (tables may carry extra trailing rows, as row
    sharding pads them). Catches parameters of another model or data set, which
    would otherwise read past their tables and give NaN predictions."""
    if isinstance(params, jax.core.Tracer):
        return
    config = config_of(config)
    expected = _param_shapes(config)
    found_paths = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want_paths = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    if found_paths.keys() != want_paths.keys():
        missing = [jax.tree_util.keystr(k) for k in want_paths if k not in found_paths]
        extra = [jax.tree_util.keystr(k) for k in found_paths if k not in want_paths]
        raise ValueError(f"{where} do not match the {config.kind} model: missing {missing[:4]}, unexpected "
                         f"{extra[:4]}; they are parameters of another model")
    for path, want in want_paths.items():
        shape = tuple(np.shape(found_paths[path]))
        table = path and getattr(path[0], "key", None) == "tables"
        fits = shape == want.shape or (table and len(shape) == len(want.shape) and shape[1:] == want.shape[1:]
                                       and shape[0] >= want.shape[0])
        if not fits:
            raise ValueError(f"{where}{jax.tree_util.keystr(path)} has shape {shape}, the model needs {want.shape}: "
                             "parameters of another model or of a model built from other data")
