"""The epoch runner: a jitted scan of train steps over one epoch's batches.

The public runner that :func:`~mdcf.train.fit` and the benchmarks share::

    data = pack(by_user(model.encode(ratings)))          # the training set on the device
    run = make_epoch_fn(lambda l2: make_train_step(model, opt, l2=l2), n, batch_size)
    state, losses, means, sizes = run(state, data, epoch_order(seed, epoch, n, batch_size), l2)

Any model family trains through it: a DLRM's data is ``pack(models.encode(config, clicks))``.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Callable

import jax
import jax.numpy as jnp

from .batches import unpack
from .optim import Optimizer
from .state import model_config
from .step import make_train_step

__all__ = ["make_epoch_fn", "cached_epoch_fn", "auto_sparse", "copy_tree"]


def copy_tree(tree):
    """New buffers holding the same values (same shardings): safe from donation."""
    return jax.tree.map(jnp.copy, tree)


def make_epoch_fn(step_for: Callable, n: int, batch_size: int, metric: str = "mse"):
    """A jitted epoch ``run(state, data, order, l2) -> (state, losses, means, sizes)``.

    A scan of the train steps ``step_for(l2)`` over the padded batches of ``order``
    (:func:`~mdcf.train.epoch_order`, ``[n_batches, batch_size]``), read from
    ``data`` (:func:`~mdcf.train.pack`); padding entries have weight 0. ``l2`` is an
    argument of the compiled epoch, not a constant in it, so that runs that differ
    only in ``l2`` share it. Returns per step the loss, the step metric ``metric``
    (the task's mean loss: ``"mse"``, ``"logloss"``) and the number of real examples.

    The state passed in is donated: the epoch updates its buffers in place and the
    caller's arrays are deleted (copy them first, :func:`copy_tree`, to keep them).
    """
    n_batches = -(-n // batch_size)

    @partial(jax.jit, donate_argnums=0)
    def run(state, data, order, l2):
        weight = (jnp.arange(n_batches * batch_size) < n).astype(jnp.float32).reshape(n_batches, batch_size)
        step = step_for(l2)

        def body(state, xs):
            index, w = xs
            batch = unpack(data, index)
            batch["weights"] = w
            state, metrics_ = step(state, batch)
            return state, (metrics_["loss"], metrics_[metric], jnp.sum(w))

        state, (losses, means, sizes) = jax.lax.scan(body, state, (order, weight))
        return state, losses, means, sizes

    return run


@lru_cache(maxsize=8)
def cached_epoch_fn(config, opt: Optimizer, n: int, batch_size: int, with_l2: bool, mesh=None,
                    data_axis: str = "data", model_axis: str | None = "model") -> Callable:
    """:func:`make_epoch_fn` of ``config``'s train step, the same compiled epoch for equal
    arguments (``with_l2=False``: no regularisation term at all). The last few are
    kept; the others' compiled code is freed.

    Equal optimiser settings reach the cache when the optimiser comes from
    :func:`~mdcf.train.named_optimizer`, as in ``fit``: a sweep over an l2 grid
    compiles each model's epoch once.
    """
    def step_for(l2):
        return make_train_step(config, opt, l2=l2 if with_l2 else 0.0, mesh=mesh, data_axis=data_axis,
                               model_axis=model_axis)

    return make_epoch_fn(step_for, n, batch_size, config.task.metric)


def auto_sparse(model, batch_size: int, optimizer_name: str = "adam", weight_decay: float = 0.0) -> bool:
    """``fit``'s ``sparse="auto"`` choice, from measured step costs (docs/performance.md).

    Plain SGD without weight decay always takes the row-sparse step: its row update is
    one scatter-add of the batch's gradients, cheaper than the dense step's pass over
    every row at any table size, and the same update (weight decay, which the dense step
    applies to the tables as well, keeps the rule below). Optimisers with per-row state (Adam, Amsgrad, Adagrad) take it when the tables
    (users and items; DLRM's stacked fields) together hold at least 8 batches of rows:
    below that, a dense step, which touches every row, is cheaper than combining the
    batch's duplicate rows and scattering rows and state back.
    """
    if optimizer_name == "sgd" and not weight_decay:
        return True
    config = model_config(model)
    return sum(spec.n_rows for spec in config.sides.values()) >= 8 * batch_size
