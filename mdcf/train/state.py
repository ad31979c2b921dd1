"""The train state: parameters, optimiser state and step count, as one pytree."""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from .. import models
from ..models import Model
from .optim import Optimizer, as_optimizer

__all__ = ["TrainState", "init_state", "compiled_init", "model_config"]


class TrainState(NamedTuple):
    """Everything a train step reads and writes: a pytree.

    Attributes:
      params: the model parameters (see :mod:`mdcf.models`).
      dense_state: optax state of ``params["dense"]`` (row-sparse path) or of all params.
      row_state: ``{table name: per-block states}`` (row-sparse path) or ``{}``.
      step: int32 scalar, steps taken.
    """

    params: dict
    dense_state: Any
    row_state: dict
    step: jax.Array


def model_config(model):
    """The config of a :class:`~mdcf.models.Model`, or the config itself (any family)."""
    return models.config_of(model)


def init_state(key: jax.Array, model, opt, global_mean: float | None = None) -> TrainState:
    """Fresh parameters and optimiser state.

    Args:
      key: PRNG key for the parameters.
      model: a :class:`~mdcf.models.Model` or a model config of any family.
      opt: an :class:`Optimizer` or an optax transformation (dense path).
      global_mean: initial global bias of a rating model (default: the model's
        training mean, else 0); unused by families without one.
    """
    config = model_config(model)
    opt = as_optimizer(opt)
    if global_mean is None:
        global_mean = model.global_mean if isinstance(model, Model) else 0.0
    if isinstance(key, jax.core.Tracer) or isinstance(global_mean, jax.core.Tracer):
        return _init_state(key, jnp.asarray(global_mean, jnp.float32), config, opt)
    try:
        init = compiled_init(config, opt)
    except TypeError:  # an unhashable config or optimiser: compile for this call only
        init = jax.jit(partial(_init_state, config=config, opt=opt))
    return init(key, jnp.asarray(global_mean, jnp.float32))


@lru_cache(maxsize=4)
def compiled_init(config, opt: Optimizer) -> Callable:
    """``_init_state`` compiled as one computation (run eagerly, every random draw and
    optimiser buffer of a new shape compiles on its own: seconds for an MD model).
    The last few are kept, so that ``fit``'s refit, which passes the same optimiser,
    does not compile it again; the others' compiled code is freed."""
    return jax.jit(partial(_init_state, config=config, opt=opt))


def _init_state(key, global_mean, config, opt: Optimizer) -> TrainState:
    params = models.init(key, config, global_mean)
    if opt.rows is None:
        return TrainState(params, opt.dense.init(params), {}, jnp.zeros((), jnp.int32))
    # Per table leaf (an embedding's blocks, a bias) the row optimiser's state.
    row_state = {name: _per_leaf(opt.rows.init, table) for name, table in params["tables"].items()}
    return TrainState(params, opt.dense.init(params["dense"]), row_state, jnp.zeros((), jnp.int32))




def _per_leaf(fn, table):
    """``fn`` of each leaf of a table's pytree, the results (tuples of arrays) in its place."""
    return jax.tree.map(fn, table)
