"""Optimisers: optax for dense parameters, row optimisers for the rows a batch touches.

Row optimisers and how they relate to their dense counterparts:

* :func:`row_sgd` gives the dense SGD result (untouched rows have zero
  gradient either way; sums of duplicate rows may round differently).
* :func:`row_adagrad` gives exactly the dense (optax) Adagrad result for the
  same reason: a zero gradient leaves the accumulator and the row unchanged.
* :func:`row_rowwise_adagrad` keeps one accumulator per row (DLRM's choice for
  large tables): the cheapest adaptive optimiser, with no dense counterpart.
* :func:`row_adam` is "lazy" Adam: the moments of a row are updated only in
  steps where the row occurs, with bias correction by the global step count.
  Dense Adam also decays every absent row's moments and keeps moving absent rows
  with their stale momentum; lazy Adam does not (it is the usual sparse Adam of
  TensorFlow's LazyAdam and PyTorch's SparseAdam).
* :func:`row_amsgrad` is lazy Amsgrad in the same sense; when every row occurs in
  every step it equals optax's ``amsgrad``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._checks import is_real

__all__ = [
    "RowOptimizer",
    "Optimizer",
    "row_sgd",
    "row_adagrad",
    "row_adam",
    "row_amsgrad",
    "row_rowwise_adagrad",
    "OPTIMIZERS",
    "optimizer",
    "named_optimizer",
    "as_optimizer",
]


class RowOptimizer(NamedTuple):
    """A row-wise optimiser for embedding tables.

    Attributes:
      init: ``table -> state``, a tuple of arrays whose first axis is the table's rows.
      update: ``(grads, state_rows, param_rows, step) -> (new_param_rows, new_state_rows)``
        on the gathered rows of one batch (duplicates already summed); ``step``
        is the 1-based global step.
      name: a label.
      delta: for optimisers whose update is a fixed linear map of the gradient
        (plain SGD), ``grads -> row change``; the step then scatter-adds it
        without gathering rows or combining duplicates (the same result, faster).
    """

    init: Callable[[jax.Array], tuple]
    update: Callable[..., tuple]
    name: str
    delta: Callable[[jax.Array], jax.Array] | None = None


def row_sgd(learning_rate: float) -> RowOptimizer:
    """``row -= learning_rate * grad`` for the rows of a batch."""

    def update(grads, state, rows, step):
        return rows - learning_rate * grads, state

    return RowOptimizer(lambda table: (), update, f"sgd(lr={learning_rate})", lambda grads: -learning_rate * grads)


def row_rowwise_adagrad(learning_rate: float, initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> RowOptimizer:
    """Adagrad with one accumulator per row (the mean squared gradient of the row).

    The usual optimiser of large embedding tables (as in DLRM): its state is one
    number per row instead of one per parameter, so a step moves a fraction of
    the memory of Adagrad or Adam. For 1-D tables (biases) it is plain Adagrad.
    """

    def init(table):
        return (jnp.full(table.shape[:1], initial_accumulator_value, table.dtype),)

    def update(grads, state, rows, step):
        (accumulator,) = state
        squared = grads**2 if grads.ndim == 1 else jnp.mean(grads**2, axis=-1)
        accumulator = accumulator + squared
        scale = jax.lax.rsqrt(accumulator + eps)
        return rows - learning_rate * grads * (scale if grads.ndim == 1 else scale[:, None]), (accumulator,)

    return RowOptimizer(init, update, f"rowwise_adagrad(lr={learning_rate})")


def row_adagrad(learning_rate: float, initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> RowOptimizer:
    """Adagrad on the rows of a batch, matching ``optax.adagrad`` exactly."""

    def init(table):
        return (jnp.full_like(table, initial_accumulator_value),)

    def update(grads, state, rows, step):
        (accumulator,) = state
        accumulator = accumulator + grads**2
        return rows - learning_rate * grads * jax.lax.rsqrt(accumulator + eps), (accumulator,)

    return RowOptimizer(init, update, f"adagrad(lr={learning_rate})")


def row_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> RowOptimizer:
    """Lazy Adam: moments of a row are updated only when the row occurs in a batch."""

    def init(table):
        return (jnp.zeros_like(table), jnp.zeros_like(table))

    def update(grads, state, rows, step):
        m, v = state
        m = b1 * m + (1 - b1) * grads
        v = b2 * v + (1 - b2) * grads**2
        # As optax computes it: the correction in the default float dtype (float64 under
        # jax_enable_x64), the division in the moments' dtype.
        m_hat = m / jnp.asarray(1 - b1**step).astype(m.dtype)
        v_hat = v / jnp.asarray(1 - b2**step).astype(v.dtype)
        return rows - learning_rate * m_hat / (jnp.sqrt(v_hat) + eps), (m, v)

    return RowOptimizer(init, update, f"adam(lr={learning_rate})")


def row_amsgrad(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> RowOptimizer:
    """Lazy Amsgrad (Reddi et al. 2018, as optax computes it): Adam whose denominator uses
    the running maximum of the bias-corrected second moment; a row's moments are updated
    only when the row occurs in a batch."""

    def init(table):
        return (jnp.zeros_like(table), jnp.zeros_like(table), jnp.zeros_like(table))

    def update(grads, state, rows, step):
        m, v, v_max = state
        m = b1 * m + (1 - b1) * grads
        v = b2 * v + (1 - b2) * grads**2
        m_hat = m / jnp.asarray(1 - b1**step).astype(m.dtype)
        v_max = jnp.maximum(v_max, v / jnp.asarray(1 - b2**step).astype(v.dtype))
        return rows - learning_rate * m_hat / (jnp.sqrt(v_max) + eps), (m, v, v_max)

    return RowOptimizer(init, update, f"amsgrad(lr={learning_rate})")


class Optimizer(NamedTuple):
    """An optax transformation for dense parameters and, for the row-sparse path, a row optimiser.

    ``rows=None`` means the dense path: ``dense`` updates every parameter.
    """

    dense: optax.GradientTransformation
    rows: RowOptimizer | None


OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad")


def optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    *,
    sparse: bool = True,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> Optimizer:
    """A matching pair of dense (optax) and row-sparse optimisers.

    Args:
      name: ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"`` (tables get one
        accumulator per row; dense parameters plain Adagrad; row-sparse only), ``"adam"``
        or ``"amsgrad"`` (the MD paper's CTR optimiser).
      learning_rate: step size of both parts.
      sparse: row-sparse table updates (see the module docstring); False gives
        one optax transformation over every parameter.
      weight_decay: decoupled weight decay of the dense parameters (AdamW-style
        for ``"adam"``); with ``sparse=False`` it applies to the tables as well.
      b1, b2, eps: Adam's (and Amsgrad's) constants.
    """
    if not callable(learning_rate) and not (is_real(learning_rate) and learning_rate > 0):
        raise ValueError(f"optimizer: learning_rate must be a finite number > 0 or an optax schedule, "
                         f"got {learning_rate!r}")
    if not (is_real(weight_decay) and weight_decay >= 0):
        raise ValueError(f"optimizer: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if name == "sgd":
        dense, rows = optax.sgd(learning_rate), row_sgd(learning_rate)
    elif name == "adagrad":
        dense, rows = optax.adagrad(learning_rate), row_adagrad(learning_rate)
    elif name == "rowwise_adagrad":
        dense, rows = optax.adagrad(learning_rate), row_rowwise_adagrad(learning_rate)
    elif name == "adam":
        dense, rows = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), row_adam(learning_rate, b1, b2, eps)
    elif name == "amsgrad":
        dense, rows = optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps), row_amsgrad(learning_rate, b1, b2, eps)
    else:
        raise ValueError(f"optimizer name must be one of {OPTIMIZERS}, got {name!r}")
    if name == "rowwise_adagrad" and not sparse:
        raise ValueError("rowwise_adagrad exists for row-sparse updates only; use sparse=True or 'adagrad'")
    if weight_decay:
        dense = optax.chain(optax.add_decayed_weights(weight_decay), dense) if name != "adam" else optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return Optimizer(dense, rows if sparse else None)


@lru_cache(maxsize=8)
def named_optimizer(name: str, learning_rate: float, sparse: bool, weight_decay: float) -> Optimizer:
    """:func:`optimizer`, the same object for the same settings, so that the compiled
    initial state and epochs cached per optimiser are shared by equal settings."""
    return optimizer(name, learning_rate, sparse=sparse, weight_decay=weight_decay)


def as_optimizer(opt) -> Optimizer:
    """An :class:`Optimizer`; an optax transformation becomes the dense-path optimiser."""
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, optax.GradientTransformation):
        return Optimizer(opt, None)
    raise TypeError(
        f"optimizer must be an mdcf.train.Optimizer (see mdcf.train.optimizer) or an optax "
        f"GradientTransformation (dense updates), got {type(opt).__name__}"
    )

