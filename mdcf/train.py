"""Training: optimisers with row-sparse table updates, pure train steps, and ``fit``.

Two ways to update parameters:

* **Row-sparse** (``optimizer(..., sparse=True)``, the default of :func:`fit`): the
  loss is differentiated with respect to the *gathered rows* of every table
  (embedding blocks and biases), gradients of rows that occur several times in
  a batch are summed, and the rows and their row-wise optimiser state are
  updated and scattered back. Dense parameters (projections, MLP, global bias)
  use the optax transformation. A step costs the same whatever the table sizes.
  MD blocks with no more rows than their slots in a batch (the small, popular
  blocks) are projected whole and gathered from; their gradient, summed per row,
  updates only the rows the batch touched, exactly as the row path would.
* **Dense**: one optax transformation over every parameter (``jax.grad`` of the
  whole pytree); each step touches every row of every table.

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

Regularisation: ``l2`` adds ``l2 * (|e_u|^2 + |e_i|^2 + b_u^2 + b_i^2)`` per rating,
on the embedding *vectors* a rating uses (after projection) and its biases, as
classic MF SGD does; it touches only the rows of the batch. ``weight_decay``
(decoupled, AdamW-style) applies to the dense parameters. Paper-style runs use
``l2`` only.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import embedding, metrics, models
from ._checks import is_int, is_real
from .embedding import MDSpec
from .models import Model, ModelConfig

__all__ = [
    "RowOptimizer",
    "Optimizer",
    "row_sgd",
    "row_adagrad",
    "row_adam",
    "row_rowwise_adagrad",
    "OPTIMIZERS",
    "optimizer",
    "TrainState",
    "init_state",
    "make_train_step",
    "auto_sparse",
    "make_eval_fn",
    "evaluate",
    "predict",
    "fit",
    "FitResult",
    "TrainingDivergedError",
]


# ------------------------------------------------------------ row optimisers
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


class Optimizer(NamedTuple):
    """An optax transformation for dense parameters and, for the row-sparse path, a row optimiser.

    ``rows=None`` means the dense path: ``dense`` updates every parameter.
    """

    dense: optax.GradientTransformation
    rows: RowOptimizer | None


OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")


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
        accumulator per row; dense parameters plain Adagrad; row-sparse only) or ``"adam"``.
      learning_rate: step size of both parts.
      sparse: row-sparse table updates (see the module docstring); False gives
        one optax transformation over every parameter.
      weight_decay: decoupled weight decay of the dense parameters (AdamW-style
        for ``"adam"``); with ``sparse=False`` it applies to the tables as well.
      b1, b2, eps: Adam's constants.
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
    else:
        raise ValueError(f"optimizer name must be one of {OPTIMIZERS}, got {name!r}")
    if name == "rowwise_adagrad" and not sparse:
        raise ValueError("rowwise_adagrad exists for row-sparse updates only; use sparse=True or 'adagrad'")
    if weight_decay:
        dense = optax.chain(optax.add_decayed_weights(weight_decay), dense) if name != "adam" else optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return Optimizer(dense, rows if sparse else None)


def _as_optimizer(opt) -> Optimizer:
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, optax.GradientTransformation):
        return Optimizer(opt, None)
    raise TypeError(
        f"optimizer must be an mdcf.train.Optimizer (see mdcf.train.optimizer) or an optax "
        f"GradientTransformation (dense updates), got {type(opt).__name__}"
    )


# --------------------------------------------------------------- train state
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


def _config(model) -> ModelConfig:
    return model.config if isinstance(model, Model) else model


def init_state(key: jax.Array, model, opt, global_mean: float | None = None) -> TrainState:
    """Fresh parameters and optimiser state.

    Args:
      key: PRNG key for the parameters.
      model: a :class:`~mdcf.models.Model` or :class:`~mdcf.models.ModelConfig`.
      opt: an :class:`Optimizer` or an optax transformation (dense path).
      global_mean: initial global bias (default: the model's training mean, else 0).
    """
    config = _config(model)
    opt = _as_optimizer(opt)
    if global_mean is None:
        global_mean = model.global_mean if isinstance(model, Model) else 0.0
    if isinstance(key, jax.core.Tracer) or isinstance(global_mean, jax.core.Tracer):
        return _init_state(key, jnp.asarray(global_mean, jnp.float32), config, opt)
    try:
        init = _jitted_init(config, opt)
    except TypeError:  # an unhashable config or optimiser: compile for this call only
        init = jax.jit(partial(_init_state, config=config, opt=opt))
    return init(key, jnp.asarray(global_mean, jnp.float32))


@lru_cache(maxsize=4)
def _jitted_init(config: ModelConfig, opt: Optimizer) -> Callable:
    """``_init_state`` compiled as one computation (run eagerly, every random draw and
    optimiser buffer of a new shape compiles on its own: seconds for an MD model).
    The last few are kept, so that ``fit``'s refit, which passes the same optimiser,
    does not compile it again; the others' compiled code is freed."""
    return jax.jit(partial(_init_state, config=config, opt=opt))


def _init_state(key, global_mean, config: ModelConfig, opt: Optimizer) -> TrainState:
    params = models.init(key, config, global_mean)
    if opt.rows is None:
        return TrainState(params, opt.dense.init(params), {}, jnp.zeros((), jnp.int32))
    row_state = {}
    for name, table in params["tables"].items():
        if isinstance(table, tuple):
            row_state[name] = tuple(opt.rows.init(block) for block in table)
        else:
            row_state[name] = opt.rows.init(table)
    return TrainState(params, opt.dense.init(params["dense"]), row_state, jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------- the loss
def _weighted_loss(pred, ratings, weights, penalty, l2, bad=None):
    """``(loss, mse)``, weighted means over the batch. ``bad`` (``[B]``, NaN for
    entries of weight > 0 with an id outside the tables, else 0; see
    :func:`_bad_ids`) makes both NaN without touching the gradients: it is a
    constant inside the sum."""
    err = pred - ratings
    total = jnp.maximum(jnp.sum(weights), 1.0)
    squares = weights * err**2 if bad is None else weights * err**2 + bad
    mse = jnp.sum(squares) / total
    if isinstance(l2, (int, float)) and not l2:  # a traced l2 (fit's epochs) is always applied
        return mse, mse
    return mse + l2 * jnp.sum(weights * penalty) / total, mse


def _bad_ids(config: ModelConfig, users, items, weights):
    """``(inside, bad)``: whether each entry's user and item ids lie inside the tables,
    and ``[B]`` NaN for the entries of weight > 0 that do not, 0 elsewhere (see
    :func:`_weighted_loss`)."""
    inside = (users >= 0) & (users < config.user.n_rows) & (items >= 0) & (items < config.item.n_rows)
    return inside, jnp.where(inside | (weights <= 0), 0.0, jnp.nan).astype(weights.dtype)


def _batch_parts(config: ModelConfig, batch):
    """``(users, items, ratings, weights)`` of a batch dict, checked. Keys, dtypes and
    shapes are static under ``jit``, so a malformed batch raises when the step is traced."""
    missing = [key for key in ("users", "items", "ratings") if key not in batch]
    if missing:
        raise KeyError(f"train step: the batch has no {missing}; it needs 'users', 'items', 'ratings' "
                       f"and optionally 'weights', got keys {sorted(batch)}")
    parts = {key: jnp.asarray(batch[key]) for key in ("users", "items", "ratings", "weights") if key in batch}
    for key in ("users", "items"):
        if not jnp.issubdtype(parts[key].dtype, jnp.integer):
            raise TypeError(f"train step: batch[{key!r}] must hold integer rows, got dtype {parts[key].dtype}")
    shapes = {key: value.shape for key, value in parts.items()}
    if len(set(shapes.values())) != 1 or len(shapes["users"]) != 1:
        raise ValueError(f"train step: the batch's arrays must be 1-D and of one length, got shapes {shapes}")
    users = embedding.as_rows(parts["users"], config.user.n_rows)
    items = embedding.as_rows(parts["items"], config.item.n_rows)
    ratings = parts["ratings"].astype(jnp.float32)
    weights = jnp.ones_like(ratings) if "weights" not in parts else parts["weights"].astype(jnp.float32)
    return users, items, ratings, weights


def _penalty(config: ModelConfig, vectors, user_bias, item_bias):
    penalty = sum(jnp.sum(v**2, axis=-1) for v in vectors.values())
    if config.biases:
        penalty = penalty + user_bias**2 + item_bias**2
    return penalty


def _dense_step(config: ModelConfig, opt: Optimizer, l2: float):
    def loss_fn(params, users, items, ratings, weights, bad):
        vectors = models.embed(params, config, users, items)
        user_bias = item_bias = None
        if config.biases:
            user_bias = params["tables"]["user_bias"][users]
            item_bias = params["tables"]["item_bias"][items]
        pred = models.head(params["dense"], config, vectors, user_bias, item_bias)
        return _weighted_loss(pred, ratings, weights, _penalty(config, vectors, user_bias, item_bias), l2, bad)

    def step(state: TrainState, batch):
        users, items, ratings, weights = _batch_parts(config, batch)
        # Entries with bad ids are not skipped here (a select on the weights makes ml-100k
        # epochs about 1.1x slower): they embed as NaN, which the loss and gradients carry.
        bad = _bad_ids(config, users, items, weights)[1]
        # Padding entries (weight 0) point at row 0: finite, and they add no gradient.
        users = jnp.where(weights > 0, users, 0)
        items = jnp.where(weights > 0, items, 0)
        (loss, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, users, items, ratings, weights, bad)
        updates, dense_state = opt.dense.update(grads, state.dense_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, dense_state, state.row_state, state.step + 1), {"loss": loss, "mse": mse}

    return step


def _sort_order(rows: jax.Array, bound: int) -> jax.Array:
    """``argsort(rows)`` (stable), for rows in ``[0, bound]``.

    XLA's CPU key-value sort is several times slower than sorting plain
    integers, so when ``bound * len(rows)`` fits in int32 the row and position
    are packed into one key and sorted alone.
    """
    size = rows.shape[0]
    if (bound + 1) * size < 2**31:
        packed = jnp.sort(rows * size + jnp.arange(size, dtype=rows.dtype))
        return packed % size
    return jnp.argsort(rows, stable=True)


def _first_of_run(rows: jax.Array) -> jax.Array:
    """For each entry, the position of the first equal row in sorted order (a
    segment id shared by duplicates): one plain sort plus a binary search, both
    much faster on a CPU than a key-value sort."""
    sorted_rows = jnp.sort(rows)
    return sorted_rows, jnp.searchsorted(sorted_rows, rows, side="left", method="scan_unrolled")


def _duplicates(rows: jax.Array, n_rows: int):
    """How to sum the gradients of repeated rows: ``(unique_rows, combine)``, where
    ``combine(grads)`` sums each row's gradients into its entry of ``unique_rows``.
    Both have the input's length; unused entries get distinct out-of-range rows
    (dropped by scatters). One plan serves every table indexed by the same rows."""
    size = rows.shape[0]
    rows = jnp.minimum(rows, n_rows)  # every out-of-range row becomes n_rows
    spare = n_rows + jnp.arange(size, dtype=rows.dtype)
    if (n_rows + 1) * size < 2**31:
        order = _sort_order(rows, n_rows)
        sorted_rows = rows[order]
        new = jnp.concatenate([jnp.ones(1, bool), sorted_rows[1:] != sorted_rows[:-1]])
        segment = jnp.cumsum(new) - 1
        unique = spare.at[segment].set(sorted_rows, indices_are_sorted=True)

        def combine(grads):
            return jnp.zeros_like(grads).at[segment].add(grads[order], indices_are_sorted=True)
    else:
        sorted_rows, first = _first_of_run(rows)
        unique = spare.at[first].set(rows)  # duplicates write the same row

        def combine(grads):
            return jnp.zeros_like(grads).at[first].add(grads)
    return jnp.where(unique < n_rows, unique, spare), combine


def _update_rows(table, state, rows, grads, row_opt: RowOptimizer, step, plan=None):
    """Row-sparse update of ``table`` (and its row state) by the gradients of ``rows``;
    ``plan``: :func:`_duplicates` of ``rows``, when already made for another table."""
    n = table.shape[0]
    if row_opt.delta is not None:
        return embedding.scatter_rows(table, rows, row_opt.delta(grads)), state
    unique, combine = _duplicates(rows, n) if plan is None else plan
    summed = combine(grads)
    # Spare entries of `unique` are out of range: they read a clamped row and are never written.
    current = embedding.take_rows(table, unique, None)
    current_state = tuple(embedding.take_rows(s, unique, None) for s in state)
    new_rows, new_state = row_opt.update(summed, current_state, current, step)
    table = embedding.scatter_rows(table, unique, new_rows, "set", unique_indices=True)
    state = tuple(embedding.scatter_rows(s, unique, ns, "set", unique_indices=True) for s, ns in zip(state, new_state))
    return table, state


def _update_whole_block(table, state, rows, grads, row_opt: RowOptimizer, step):
    """The row update of a block whose gradient was taken for the whole table
    (:func:`_whole_blocks`): ``grads`` is ``[n, d]``, already summed per row;
    ``rows[j] == j`` marks row ``j`` as touched by the batch, anything else as
    untouched. Only touched rows change, as on the row-sparse path."""
    touched = rows == jnp.arange(table.shape[0], dtype=rows.dtype)

    def where(new, old):
        return jnp.where(touched.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    if row_opt.delta is not None:
        return table + where(row_opt.delta(grads), 0), state
    new_rows, new_state = row_opt.update(grads, state, table, step)
    return where(new_rows, table), tuple(where(n, o) for n, o in zip(new_state, state))


# The row-sparse step's head takes blocks up to this many rows per slot, more than
# lookup's (embedding.HEAD_ROWS_PER_SLOT): a routed block's rows cost more here (their
# optimiser update is gathered and scattered row by row), while a head block is updated
# whole. MD MF, 1M ratings on MovieLens-20M-shaped synthetic data, batch 4,096, a user
# block of 1.87 rows per slot (2-core CPU, 9 alternating rounds of
# bench_train.epoch_throughput): row-sparse SGD at a limit of 1.75 (the block routed)
# ran at a median 0.79x (0.56-1.30x) the throughput of a limit of 2 (the block in the
# head), lazy Adam at 0.96x (0.66-1.39x).
TRAIN_HEAD_ROWS_PER_SLOT = 2.0


def _heads(config: ModelConfig, capacities: dict) -> dict[str, int]:
    """Per side, how many leading blocks of an MD table form its head
    (:func:`mdcf.embedding.head_blocks` with ``TRAIN_HEAD_ROWS_PER_SLOT``: projected
    whole, and their ids served by one gather from the stacked result); 0 for a
    one-block table. A static choice, made from the step's regular capacities."""
    return {side: 0 if spec.n_blocks == 1 else
            embedding.head_blocks(spec, capacities[side], TRAIN_HEAD_ROWS_PER_SLOT)
            for side, spec in (("user", config.user), ("item", config.item))}


def _whole_blocks(config: ModelConfig, tables: dict, routing: dict, heads: dict) -> dict:
    """Per MD table, which blocks to differentiate whole (a static choice).

    The head's blocks always are. A routed block with no more rows than its slots
    is cheaper to project whole (``E_i @ P_i``, ``n_i`` rows) and gather from than
    to project each of its slots. A block differentiated whole gets its gradient for
    the whole table (already summed per row), applied to the touched rows only.
    One-block tables never are.
    """
    out = {}
    for name, side, spec in config.embeddings:
        if spec.n_blocks == 1:
            out[name] = (False,)
            continue
        head = heads[side]
        tail = () if routing[side] is None else routing[side].rows
        out[name] = (True,) * head + tuple(t.shape[0] <= r.shape[0] for t, r in zip(tables[name][head:], tail))
    return out


def _route(spec: MDSpec, ids: jax.Array, capacities, head: int) -> embedding.Routing | None:
    """Block routing of a batch's ids to the blocks after the ``head`` (None when every
    block is in the head); a one-block table needs none (rows in batch order)."""
    if spec.n_blocks == 1:
        valid = (ids >= 0) & (ids < spec.n_rows)
        return embedding.Routing((jnp.where(valid, ids, spec.n_rows),), None, jnp.ones((), bool))
    return None if head == spec.n_blocks else embedding.route_tail(spec, ids, capacities, head)


def _batch_routing(config: ModelConfig, users, items, weights, capacities, heads) -> dict:
    """Routing of the user and item ids of a batch; padding (weight 0) gets no slot."""
    ids = {"user": jnp.where(weights > 0, users, -1), "item": jnp.where(weights > 0, items, -1)}
    specs = {"user": config.user, "item": config.item}
    return {side: _route(specs[side], ids[side], capacities[side], heads[side]) for side in ("user", "item")}


def _routing_fits(routing: dict) -> jax.Array:
    """Whether every routed id got a slot (True when nothing is routed)."""
    fits = jnp.ones((), bool)
    for side_routing in routing.values():
        if side_routing is not None:
            fits = jnp.logical_and(fits, side_routing.fits)
    return fits


def _head_rows(spec: MDSpec, block: int, ids: jax.Array, n: int) -> jax.Array:
    """Block-local rows of the ids in ``block``; ``n`` (out of range) for the others."""
    local = ids - spec.offsets[block]
    return jnp.where((local >= 0) & (local < spec.sizes[block]), local, n)


def _sparse_grads(config: ModelConfig, params, users, items, ratings, weights, bad, routing, heads, l2):
    """Loss and gradients with respect to gathered rows (per table) and dense params.

    Blocks chosen by :func:`_whole_blocks` are differentiated whole: their row
    ids are ``arange(n)`` for touched rows (out of range for the others) and
    their gradients ``[n, d]``, summed per row. The head's blocks (``heads``)
    are stacked after projection and their ids gathered at once; the other
    blocks' ids come in through ``routing``. Returns ``(loss, mse, row_ids,
    row_grads, dense_grads, whole)``, ``whole`` that choice.
    """
    ids = {"user": jnp.where(weights > 0, users, -1), "item": jnp.where(weights > 0, items, -1)}
    whole = _whole_blocks(config, params["tables"], routing, heads)
    slots = {}  # per table and block: the routed rows (None for the head's blocks)
    for name, side, spec in config.embeddings:
        tail = () if routing[side] is None else routing[side].rows
        slots[name] = (None,) * heads[side] + tuple(tail)
    # Out-of-range rows (padding, unused slots) read a clamped row: their values never
    # reach the loss (weight 0, or a slot assemble drops) and their gradients are dropped.
    gathered = {}
    for name, side, _ in config.embeddings:
        gathered[name] = tuple(
            block if entire else embedding.take_rows(block, rows, None)
            for block, rows, entire in zip(params["tables"][name], slots[name], whole[name]))
    if config.biases:
        for name, side in (("user_bias", "user"), ("item_bias", "item")):
            gathered[name] = embedding.take_rows(params["tables"][name], ids[side], None)

    def loss_fn(rows, dense):
        vectors = {}
        for name, side, spec in config.embeddings:
            head = heads[side]
            projected = [values if projection is None else embedding.project(values, projection)
                         for values, projection in zip(rows[name], dense["projections"][name])]
            if spec.n_blocks == 1:  # one block: rows are in batch order already
                vectors[name] = projected[0]
                continue
            start = None
            if head:  # ids past the head, and padding (-1), read zeros
                start = embedding.head_gather([v[:size] for v, size in zip(projected[:head], spec.sizes)],
                                              spec, ids[side], 0.0)
            if routing[side] is None:
                vectors[name] = start
                continue
            outputs = [embedding.take_rows(values, rows_, None) if entire else values
                       for values, rows_, entire in zip(projected[head:], slots[name][head:], whole[name][head:])]
            # Scattered into the head's vectors, not stacked after the head and gathered at once
            # as lookup does: stacked, epochs of MF (d=64, 8 blocks, 1M ratings, batch 4,096) took
            # 1.19x (row-sparse SGD) and 1.12x (lazy Adam) the time on a 2-core CPU.
            vectors[name] = embedding.assemble(spec, outputs, routing[side], fill=0.0, start=start)
        user_bias = rows.get("user_bias")
        item_bias = rows.get("item_bias")
        pred = models.head(dense, config, vectors, user_bias, item_bias)
        return _weighted_loss(pred, ratings, weights, _penalty(config, vectors, user_bias, item_bias), l2, bad)

    (loss, mse), (row_grads, dense_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        gathered, params["dense"])
    row_ids = {}
    for name, side, spec in config.embeddings:
        row_ids[name] = tuple(
            _touched_rows(table.shape[0], _head_rows(spec, block, ids[side], table.shape[0]) if rows is None else rows)
            if entire else rows
            for block, (table, rows, entire) in enumerate(zip(params["tables"][name], slots[name], whole[name])))
    if config.biases:
        row_ids["user_bias"] = jnp.where(ids["user"] >= 0, ids["user"], config.user.n_rows)
        row_ids["item_bias"] = jnp.where(ids["item"] >= 0, ids["item"], config.item.n_rows)
    return loss, mse, row_ids, row_grads, dense_grads, whole


def _touched_rows(n: int, rows: jax.Array) -> jax.Array:
    """``[n]``: ``j`` where row ``j`` appears in ``rows``, ``n`` (out of range) elsewhere."""
    touched = jnp.zeros(n, bool).at[rows].set(True, mode="drop")
    return jnp.where(touched, jnp.arange(n, dtype=rows.dtype), n)


def _mask_rows(tables: dict, row_ids: dict, active) -> dict:
    """Row ids redirected out of range (so that scatters drop them) where ``active`` is False."""
    out = {}
    for name, rows in row_ids.items():
        table = tables[name]
        if isinstance(table, tuple):
            out[name] = tuple(jnp.where(active, r, t.shape[0]) for r, t in zip(rows, table))
        else:
            out[name] = jnp.where(active, rows, table.shape[0])
    return out


def _sparse_step(config: ModelConfig, opt: Optimizer, l2: float, capacities):
    sides = dict(config.row_tables)

    def apply_updates(state, row_ids, row_grads, dense_grads, whole, active=None):
        # whole: _whole_blocks of the gradients (from _sparse_grads).
        # active (a traced bool; None: always): when False the state is left as it was:
        # rows are redirected out of range (scatters drop them) and the small dense
        # parameters, their optimiser state and the step count are kept.
        step = state.step + 1
        if active is not None:
            row_ids = _mask_rows(state.params["tables"], row_ids, active)
        tables, row_state, plans = {}, {}, {}

        def plan(name, table, rows):
            # Uniform embeddings and biases of one side are indexed by the same rows (the
            # batch's ids; padding and skipped entries out of range): their duplicates
            # are found once per side and table height.
            key = (sides[name], table.shape[0])
            if opt.rows.delta is None and key not in plans:
                plans[key] = _duplicates(rows, table.shape[0])
            return plans.get(key)

        for name, table in state.params["tables"].items():
            if isinstance(table, tuple):  # MD blocks; a uniform embedding is one block (never whole)
                shared = plan(name, table[0], row_ids[name][0]) if len(table) == 1 else None
                update_rows = partial(_update_rows, plan=shared)
                pairs = [
                    (_update_whole_block if e else update_rows)(block, block_state, rows, grads, opt.rows, step)
                    for block, block_state, rows, grads, e in zip(
                        table, state.row_state[name], row_ids[name], row_grads[name], whole[name])
                ]
                tables[name] = tuple(p[0] for p in pairs)
                row_state[name] = tuple(p[1] for p in pairs)
            else:
                tables[name], row_state[name] = _update_rows(
                    table, state.row_state[name], row_ids[name], row_grads[name], opt.rows, step,
                    plan(name, table, row_ids[name]))
        updates, dense_state = opt.dense.update(dense_grads, state.dense_state, state.params["dense"])
        dense = optax.apply_updates(state.params["dense"], updates)
        if active is not None:
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
            dense, dense_state = keep(dense, state.params["dense"]), keep(dense_state, state.dense_state)
            step = jnp.where(active, step, state.step)
        return TrainState({"tables": tables, "dense": dense}, dense_state, row_state, step)

    def main(state, routing, heads, users, items, ratings, weights, bad, active=None):
        loss, mse, row_ids, row_grads, dense_grads, whole = _sparse_grads(
            config, state.params, users, items, ratings, weights, bad, routing, heads, l2)
        return apply_updates(state, row_ids, row_grads, dense_grads, whole, active), loss, mse

    def step(state: TrainState, batch):
        users, items, ratings, weights = _batch_parts(config, batch)
        inside, bad = _bad_ids(config, users, items, weights)
        weights = jnp.where(inside, weights, 0.0)  # skipped, like padding
        regular = capacities(users.shape[0])
        heads = _heads(config, regular)
        routing = _batch_routing(config, users, items, weights, regular, heads)
        if all(r is None or r.slot is None for r in routing.values()):  # nothing routed: nothing can overflow
            new_state, loss, mse = main(state, routing, heads, users, items, ratings, weights, bad)
            return new_state, {"loss": loss, "mse": mse}
        # The grouped step always runs and changes nothing when a block overflowed its
        # slots; then a loop of at most one iteration runs the same step with a slot
        # per batch entry in every block, which cannot overflow. (A lax.cond choosing
        # between the two steps, which passes the whole training state through its
        # branches, made MD steps about 1.5x slower on a CPU.)
        fits = _routing_fits(routing)
        state, loss, mse = main(state, routing, heads, users, items, ratings, weights, bad, active=fits)
        batch_size = users.shape[0]
        every_entry = {"user": (batch_size,) * config.user.n_blocks, "item": (batch_size,) * config.item.n_blocks}

        def overflow(carry):
            full = _batch_routing(config, users, items, weights, every_entry, heads)
            new_state, loss, mse = main(carry[0], full, heads, users, items, ratings, weights, bad)
            return new_state, jnp.asarray(False), loss, mse

        state, _, loss, mse = jax.lax.while_loop(lambda carry: carry[1], overflow,
                                                 (state, jnp.logical_not(fits), loss, mse))
        return state, {"loss": loss, "mse": mse}

    return step


def make_train_step(model, opt, *, l2: float = 0.0, capacities: str | dict = "auto", mesh=None,
                    data_axis: str = "data", model_axis: str | None = "model") -> Callable:
    """A pure train step ``(state, batch) -> (state, metrics)`` for your own ``jit``/``scan``/``vmap``.

    Args:
      model: a :class:`~mdcf.models.Model` or :class:`~mdcf.models.ModelConfig`.
      opt: an :class:`Optimizer` (row-sparse when ``opt.rows`` is set) or an optax
        transformation (dense).
      l2: regularisation of the embedding vectors and biases a rating uses.
      capacities: row-sparse path only: per-block slots, ``"auto"`` (sized from
        each spec's loads, :func:`mdcf.embedding.block_capacities`) or
        ``{"user": (...), "item": (...)}``. A batch that overflows them is
        handled exactly: the step is redone with a slot per batch entry in
        every block (slower, and rare with ``"auto"``).
      mesh, data_axis, model_axis: on a :class:`jax.sharding.Mesh`, the step
        splits each batch over ``data_axis`` and keeps the state in the layout
        of :func:`mdcf.sharding.state_shardings` (place it first with
        :func:`mdcf.sharding.shard_state`).

    The batch is a dict of ``users`` and ``items`` (rows in block order, e.g.
    from :meth:`Model.encode <mdcf.models.Model.encode>`), ``ratings`` and
    optional ``weights`` (0 marks padding; the ids of padding entries are
    ignored). Metrics: ``loss`` (MSE plus regularisation) and ``mse``, weighted
    means over the batch.

    Ids outside the tables cannot raise inside ``jit``. A batch with such an id
    in an entry of weight > 0 gives NaN ``loss`` and ``mse`` (:func:`fit`
    would stop with an error naming the epoch and step). The row-sparse step
    skips those entries, as if their weight were 0; on the dense path they
    embed as NaN vectors (as :func:`mdcf.embedding.lookup` does under ``jit``)
    and the parameters they reach become NaN.

    Example:
      >>> step = jax.jit(make_train_step(model, optimizer("adam", 1e-3), l2=0.05))  # doctest: +SKIP
      >>> state, metrics = step(state, batch)  # doctest: +SKIP
    """
    config = _config(model)
    opt = _as_optimizer(opt)
    step = _unsharded_step(config, opt, l2, capacities)
    if mesh is None:
        return step
    from . import sharding as sharding_

    def sharded_step(state, batch):
        constrain = jax.lax.with_sharding_constraint
        batch = {k: constrain(jnp.asarray(v), sharding_.batch_sharding(mesh, data_axis)) for k, v in batch.items()}
        state = constrain(state, sharding_.state_shardings(state, mesh, model_axis))
        new_state, metrics_ = step(state, batch)
        return constrain(new_state, sharding_.state_shardings(new_state, mesh, model_axis)), metrics_

    return sharded_step


def _unsharded_step(config: ModelConfig, opt: Optimizer, l2: float, capacities) -> Callable:
    if opt.rows is None:
        return _dense_step(config, opt, l2)
    if capacities != "auto":
        specs = {"user": config.user, "item": config.item}
        try:
            ok = set(capacities) == set(specs) and all(
                len(capacities[side]) == spec.n_blocks and all(is_int(c) and c >= 1 for c in capacities[side])
                for side, spec in specs.items())
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"capacities must be 'auto' or {{'user': ..., 'item': ...}} with one positive slot count per "
                f"block ({config.user.n_blocks} user and {config.item.n_blocks} item blocks), got {capacities!r}")

    def capacity_for(batch: int) -> dict:
        if capacities == "auto":
            return {"user": embedding.block_capacities(config.user, batch),
                    "item": embedding.block_capacities(config.item, batch)}
        return {side: tuple(min(int(c), batch) for c in capacities[side]) for side in ("user", "item")}

    return _sparse_step(config, opt, l2, capacity_for)


# ------------------------------------------------------------- evaluation
def make_eval_fn(model, clip: bool = True, scale=None) -> Callable:
    """A jittable ``(params, users, items) -> predictions`` (clipped to the rating scale)."""
    config = _config(model)
    if scale is None and isinstance(model, Model):
        scale = model.scale
    scale = tuple(scale) if clip and scale is not None else None
    return partial(_predict_impl, config=config, scale=scale)


def _predict_impl(params, users, items, *, config: ModelConfig, scale):
    pred = models.apply(params, config, users, items)
    return pred if scale is None else jnp.clip(pred, scale[0], scale[1])


# One compiled function per (structure, scale), reused across calls and epochs.
_predict_jit = jax.jit(_predict_impl, static_argnames=("config", "scale"))


def _predict_rows(model, params, users, items, batch_size=1 << 14, clip=True) -> np.ndarray:
    """Predictions in fixed-size padded chunks: one compiled shape for every call on a model."""
    config = _config(model)
    scale = tuple(model.scale) if clip and isinstance(model, Model) and model.scale is not None else None
    users = np.asarray(users, np.int32)
    items = np.asarray(items, np.int32)
    n = len(users)
    if n == 0:
        return np.zeros(0, np.float32)
    batch = batch_size
    out = np.empty(n, np.float32)
    for start in range(0, n, batch):
        u, i = users[start:start + batch], items[start:start + batch]
        size = len(u)
        if size < batch:  # pad to keep one compiled shape
            u = np.concatenate([u, np.zeros(batch - size, np.int32)])
            i = np.concatenate([i, np.zeros(batch - size, np.int32)])
        out[start:start + size] = np.asarray(_predict_jit(params, u, i, config=config, scale=scale))[:size]
    return out


def evaluate(model: Model, params: dict, ratings, batch_size: int = 1 << 14, clip: bool = True) -> dict[str, float]:
    """Test metrics of a model on ratings in its code space.

    Returns:
      ``mse``, ``rmse``, ``mae``, and ``mse_popular`` / ``mse_rare``: the MSE on
      ratings of the most popular third and the rarest third of items (by
      training frequency; the paper's Fig. 3 split), with ``n``, ``n_popular``,
      ``n_rare``. Predictions are clipped to the rating scale unless ``clip=False``.
    """
    models.check_params(model.config, params, "evaluate: params")
    batch = model.encode(ratings)
    pred = _predict_rows(model, params, batch["users"], batch["items"], batch_size, clip)
    return metrics.rating_metrics(pred, batch["ratings"], batch["items"], model.config.item.n_rows)


def predict(model: Model, params: dict, user_ids, item_ids, clip: bool = True, batch_size: int = 1 << 14) -> np.ndarray:
    """Predicted ratings for *original* user and item ids.

    Users or items the model has never seen get a documented fallback: the
    global bias plus whichever biases are known (the item's bias for an unknown
    user, the user's for an unknown item, neither if both are unknown), and a
    warning reports how many predictions used it.

    Returns:
      float32 ``[n]``, clipped to the rating scale unless ``clip=False``.
    """
    models.check_params(model.config, params, "predict: params")
    user_ids = np.asarray(user_ids)
    item_ids = np.asarray(item_ids)
    if user_ids.shape != item_ids.shape or user_ids.ndim != 1:
        raise ValueError(f"user_ids and item_ids must be 1-D of equal length, got {user_ids.shape} and {item_ids.shape}")

    def to_rows(ids, known, rows):
        if len(known) == 0:
            return np.zeros(len(ids), np.int32), np.zeros(len(ids), bool)
        try:
            pos = np.searchsorted(known, ids)
        except TypeError:
            raise TypeError(f"ids of type {ids.dtype} cannot be compared with the model's ids ({known.dtype})") from None
        pos = np.minimum(pos, len(known) - 1)
        found = known[pos] == ids
        return np.where(found, rows[pos], 0).astype(np.int32), found

    users, user_known = to_rows(user_ids, model.user_ids, model.user_rows)
    items, item_known = to_rows(item_ids, model.item_ids, model.item_rows)
    pred = _predict_rows(model, params, users, items, batch_size, clip=False)
    unknown = ~(user_known & item_known)
    if unknown.any():
        config = model.config
        fallback = np.full(len(pred), float(params["dense"]["bias"]), np.float32)
        if config.biases:
            user_bias = np.asarray(params["tables"]["user_bias"])[users]
            item_bias = np.asarray(params["tables"]["item_bias"])[items]
            fallback += np.where(user_known, user_bias, 0) + np.where(item_known, item_bias, 0)
        pred = np.where(unknown, fallback, pred)
        warnings.warn(
            f"predict: {int(unknown.sum())} of {len(pred)} pairs involve unknown users or items "
            f"({int((~user_known).sum())} unknown users, {int((~item_known).sum())} unknown items); "
            "they get the global bias plus the known biases",
            stacklevel=2,
        )
    if clip and model.scale is not None:
        pred = np.clip(pred, model.scale[0], model.scale[1])
    return pred.astype(np.float32)


# --------------------------------------------------------------------- fit
class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      model: the model (structure and id maps).
      params: the parameters: the refit's when there was one (see :func:`fit`'s
        ``refit``), else the best epoch's when ``restore_best``, else the last.
      state: the final train state (for resuming), the refit's when there was one.
      history: one dict per epoch: ``epoch``, ``train_loss``, ``train_mse``,
        ``val_mse``, ``val_rmse`` (when validating), ``seconds``.
      best_epoch: the epoch whose parameters were kept (1-based), or the last;
        with a refit, the number of epochs it ran.
      stopped_early: whether patience ran out.
      refit_history: the refit's epochs (no validation metrics); empty without one.
    """

    model: Model
    params: dict
    state: TrainState
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    refit_history: list[dict] = field(default_factory=list)


def _by_user(encoded: dict) -> dict[str, np.ndarray]:
    """The training arrays ordered by user row (stable): with :func:`_epoch_order`'s
    sorted batches, a step then reads and writes the user table in increasing row order."""
    order = np.argsort(encoded["users"], kind="stable")
    return {key: np.ascontiguousarray(value[order]) for key, value in encoded.items()}


def _pack(encoded: dict) -> jax.Array:
    """The training arrays (:func:`_by_user`) as one int32 ``[n, 3]`` device array: per
    rating its user row, item row and the float32 bits of the rating
    (:func:`_unpack` reads a batch back).

    A step then reads its batch with one gather of 12-byte rows instead of three
    gathers of 4 bytes: the positions of a batch are spread over the whole data set,
    so each rating costs one cache miss instead of three (uniform MF SGD, batch
    32,768, 2-core CPU, alternating runs: about 1.05x the epoch throughput at 20M
    ratings and 1.2x at 2M).
    """
    users, items = np.asarray(encoded["users"]), np.asarray(encoded["items"])
    for name, rows in (("users", users), ("items", items)):
        if rows.size and (rows.min() < 0 or rows.max() > np.iinfo(np.int32).max):
            raise ValueError(f"training {name} rows must lie in [0, 2**31), found {rows.min()}..{rows.max()}")
    ratings = np.asarray(encoded["ratings"], np.float32)
    return jnp.asarray(np.stack([users.astype(np.int32), items.astype(np.int32), ratings.view(np.int32)], axis=1))


def _unpack(data: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(users, items, ratings)`` of the ratings at positions ``index`` (in range) of a
    :func:`_pack` array."""
    rows = data.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)
    return rows[:, 0], rows[:, 1], jax.lax.bitcast_convert_type(rows[:, 2], jnp.float32)


def _epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The seeded shuffle of one epoch, padded to whole batches: int32 ``[n_batches, batch_size]``.

    Which ratings share a batch is the seeded shuffle's; within a batch the
    positions are sorted (the padding of the last batch stays at its end). The
    order inside a batch does not change a step's result (up to float rounding
    of sums), but on data ordered by user (:func:`_by_user`) it makes the
    table gathers and scatters of a step run over increasing rows, which is
    about 1.1-1.2x faster on a CPU for tables larger than the caches.
    Shuffling on the host (numpy) is much faster than ``jax.random.permutation``
    on a CPU, and overlaps with the previous epoch's computation.
    """
    n_batches = -(-n // batch_size)
    order = np.zeros(n_batches * batch_size, np.int32)
    order[:n] = np.random.default_rng([seed, epoch]).permutation(n)
    order = order.reshape(n_batches, batch_size)
    order[: n // batch_size].sort(axis=1)
    if n % batch_size:
        order[-1, : n % batch_size].sort()
    return order


def _copy(tree):
    """New buffers holding the same values (same shardings): safe from donation."""
    return jax.tree.map(jnp.copy, tree)


def _epoch_fn(step_for: Callable, n: int, batch_size: int):
    """A jitted epoch ``run(state, data, order, l2)``: a scan of the train steps
    ``step_for(l2)`` over the padded batches of ``order`` (:func:`_epoch_order`), read
    from ``data`` (:func:`_pack`). ``l2`` is an argument of the compiled epoch, not a
    constant in it, so that runs that differ only in ``l2`` share it
    (:func:`_cached_epoch_fn`).

    The state passed in is donated: the epoch updates its buffers in place and the
    caller's arrays are deleted. Without donation XLA copies the whole state (every
    table and its optimiser state) at the start of each epoch, which costs about as
    much as ten steps of 32,768 ratings for tables of millions of rows (uniform SGD,
    1M ratings, 1.4M x 267k rows: 3.7 M ratings/s donated against 2.7 copied, 2-core CPU).

    The scan runs one step per iteration. Two (``unroll=2``) made the ml-100k MF epochs
    about 1.2x faster, but doubled the step's code to compile: an MD fit on ml-100k
    (8 blocks per table, early-stopped after about 20 epochs) took 2-3 s longer to
    compile its first epoch and saved about 0.2 s over the other 20.
    """
    n_batches = -(-n // batch_size)

    @partial(jax.jit, donate_argnums=0)
    def run(state, data, order, l2):
        weight = (jnp.arange(n_batches * batch_size) < n).astype(jnp.float32).reshape(n_batches, batch_size)
        step = step_for(l2)

        def body(state, xs):
            index, w = xs
            users, items, ratings = _unpack(data, index)
            batch = {"users": users, "items": items, "ratings": ratings, "weights": w}
            state, metrics_ = step(state, batch)
            return state, (metrics_["loss"], metrics_["mse"], jnp.sum(w))

        state, (losses, mses, sizes) = jax.lax.scan(body, state, (order, weight))
        return state, losses, mses, sizes

    return run


@lru_cache(maxsize=8)
def _cached_epoch_fn(config: ModelConfig, opt: Optimizer, n: int, batch_size: int, with_l2: bool, mesh,
                     data_axis: str, model_axis: str | None) -> Callable:
    """:func:`_epoch_fn` of ``config``'s train step, shared by the fits that differ only in
    ``l2`` (``with_l2=False``: no regularisation term at all).

    ``fit`` builds its optimiser with :func:`_named_optimizer`, so equal settings give
    the same ``opt`` and reach this cache (and :func:`_jitted_init`'s). Compiling the
    epoch and the initial state is most of an ml-100k fit: in a sweep over an l2 grid
    (``experiments/budget_sweep.py``), every run but a model's first now skips both.
    The last few are kept; the others' compiled code is freed.
    """
    def step_for(l2):
        return make_train_step(config, opt, l2=l2 if with_l2 else 0.0, mesh=mesh, data_axis=data_axis,
                               model_axis=model_axis)

    return _epoch_fn(step_for, n, batch_size)


@lru_cache(maxsize=8)
def _named_optimizer(name: str, learning_rate: float, sparse: bool, weight_decay: float) -> Optimizer:
    """:func:`optimizer`, the same object for the same settings (see :func:`_cached_epoch_fn`)."""
    return optimizer(name, learning_rate, sparse=sparse, weight_decay=weight_decay)


def auto_sparse(model, batch_size: int) -> bool:
    """``fit``'s ``sparse="auto"`` choice: row-sparse updates when the user and item
    tables together hold at least 8 batches of rows.

    Measured crossover on a 2-core CPU (``benchmarks/bench_train.py``): a dense
    Adam step costs about 1/6 of a sparse step per table row versus per rating.
    """
    config = _config(model)
    return config.user.n_rows + config.item.n_rows >= 8 * batch_size


def _check_fit_args(**values) -> None:
    """``ValueError`` naming the first of :func:`fit`'s numeric arguments that is out of range."""
    rules = {
        "epochs": ("an integer >= 1", lambda v: is_int(v) and v >= 1),
        "batch_size": ("an integer >= 1", lambda v: is_int(v) and v >= 1),
        "start_epoch": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
        "seed": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
        "patience": ("None or an integer >= 1", lambda v: v is None or (is_int(v) and v >= 1)),
        "l2": ("a finite number >= 0", lambda v: is_real(v) and v >= 0),
        "learning_rate": ("a finite number > 0", lambda v: v is None or (is_real(v) and v > 0)),
        "weight_decay": ("a finite number >= 0", lambda v: v is None or (is_real(v) and v >= 0)),
    }
    for name, value in values.items():
        wanted, ok = rules[name]
        if not ok(value):
            raise ValueError(f"fit: {name} must be {wanted}, got {value!r}")


def fit(
    model: Model,
    train,
    validation=0.1,
    *,
    epochs: int = 100,
    batch_size: int = 2048,
    optimizer_name: str = "adam",
    learning_rate: float = 3e-3,
    l2: float = 0.1,
    weight_decay: float = 0.0,
    sparse: bool | str = "auto",
    opt: Optimizer | optax.GradientTransformation | None = None,
    patience: int | None = 5,
    restore_best: bool = True,
    seed: int = 0,
    refit: bool = True,
    progress: bool | str = True,
    callbacks: Sequence[Callable] = (),
    initial_state: TrainState | None = None,
    start_epoch: int = 0,
    checkpoint: str | None = None,
    mesh=None,
    data_axis: str = "data",
    model_axis: str | None = "model",
) -> FitResult:
    """Train a model with epochs as jitted scans, validation and early stopping.

    Args:
      model: from :func:`mdcf.models.build_model`.
      train: training :class:`~mdcf.data.Ratings` (in the model's code space).
      validation: Ratings to validate on each epoch, a fraction of ``train`` to
        carve off for it (seeded random split; default 0.1), or None for no
        validation (no early stopping). Never pass test data here.
      epochs: maximum number of epochs.
      batch_size: ratings per step (2048 by default: on ml-100k as accurate as 1024 and
        about 1.6x faster on a 2-core CPU).
      optimizer_name, learning_rate, weight_decay: build the optimiser with
        :func:`optimizer` (ignored when ``opt`` is given).
      l2: regularisation of the embedding vectors and biases of each rating.
      sparse: row-sparse table updates; ``"auto"`` uses them when the user and
        item tables together have at least 8 batches of rows (below that a dense
        step, which touches every row, is cheaper).
      opt: an explicit optimiser (overrides the three above).
      patience: stop after this many epochs without a better validation MSE.
      restore_best: return the parameters of the best validation epoch.
      seed: seeds the parameters, the validation carve-out and every epoch's shuffle.
      refit: when ``validation`` is a fraction carved from ``train``, use the
        carved-off part only to choose the number of epochs: after early
        stopping, train again from the same seed on *all* of ``train`` for the
        best epoch's count (the last epoch's without ``restore_best``) and
        return that model. It costs about twice the epochs and gives a better
        model (ml-100k, MF defaults, split seeds 0-2: test RMSE 0.902 against
        0.908 without, ``benchmarks/bench_accuracy.py``). Ignored for an explicit
        validation set or None. With ``checkpoint``, the refit checkpoints to
        ``checkpoint + ".refit"``; ``callbacks`` see the first phase only.
      progress: show a progress bar (tqdm) with loss and validation RMSE; a
        string labels the bar.
      callbacks: ``callback(epoch, logs, state)`` after every epoch; returning True stops training.
        The next epoch updates ``state``'s arrays in place (they are donated to it): a
        callback that keeps them must copy them (``jax.tree.map(jnp.copy, state)``).
      initial_state, start_epoch: resume from a state after ``start_epoch`` epochs
        (gives the same result as an uninterrupted run). ``initial_state`` itself is
        left as it is: training runs on a copy.
      checkpoint: a path; the state is saved there atomically after every epoch,
        and a run started with an existing checkpoint resumes from it.
      mesh: a :class:`jax.sharding.Mesh` (e.g. :func:`mdcf.sharding.make_mesh`):
        batches are split over ``data_axis``; with a ``model_axis`` of size > 1,
        tables and their row-wise optimiser state are split by rows over it (this
        needs the row-sparse optimiser). ``batch_size`` must divide evenly over
        ``data_axis``. The result is the same as on one device up to float
        rounding.

    Returns:
      A :class:`FitResult`.

    Raises:
      TrainingDivergedError: the loss became NaN or infinite (names the epoch and step).
    """
    from . import data as data_, io as io_

    _check_fit_args(epochs=epochs, batch_size=batch_size, start_epoch=start_epoch, seed=seed, patience=patience,
                    l2=l2, learning_rate=None if opt is not None else learning_rate,
                    weight_decay=None if opt is not None else weight_decay)
    if start_epoch > epochs:
        raise ValueError(f"fit: start_epoch={start_epoch} is past epochs={epochs}")
    callbacks = tuple(callbacks)
    if not all(callable(c) for c in callbacks):
        raise TypeError(f"fit: callbacks must be callables callback(epoch, logs, state), got "
                        f"{[c for c in callbacks if not callable(c)][:3]!r}")
    if initial_state is not None:
        models.check_params(model.config, initial_state.params, "fit: initial_state.params")
    if sparse not in (True, False, "auto"):
        raise ValueError(f"fit: sparse must be True, False or 'auto', got {sparse!r}")
    full_train, requested_batch = train, batch_size
    carved = validation is not None and not hasattr(validation, "ratings")
    if carved:
        if not (is_real(validation) and 0 < float(validation) < 1):
            raise ValueError(f"fit: validation must be Ratings, None, or the fraction of train to validate on "
                             f"(strictly between 0 and 1), got {validation!r}")
        fraction = float(validation)
        train, validation = data_.split(train, "random", test_fraction=fraction, seed=seed + 7919)
    elif validation is not None and len(validation) == 0:
        raise ValueError("fit: the validation set is empty; pass ratings to validate on, a fraction of train, "
                         "or None for no validation (and no early stopping)")
    config = model.config
    if opt is None:
        if sparse == "auto":
            sparse = auto_sparse(model, batch_size)
        opt = _named_optimizer(optimizer_name, float(learning_rate), bool(sparse), float(weight_decay))
    opt = _as_optimizer(opt)
    l2 = float(l2)
    encoded = _by_user(model.encode(train))
    n = len(train)
    if n == 0:
        raise ValueError("fit: the training set is empty")
    batch_size = int(min(batch_size, n))
    data = _pack(encoded)
    val_batch = None if validation is None else model.encode(validation)

    history: list[dict] = []
    best = {"mse": math.inf, "epoch": 0, "params": None, "bad": 0}
    state = initial_state
    if checkpoint is not None and state is None:
        if os.path.exists(checkpoint):
            loaded = io_.load(checkpoint, opt=opt)
            state, start_epoch = loaded.state, loaded.meta.get("epoch", 0)
            if start_epoch > epochs:
                raise ValueError(f"fit: the checkpoint {checkpoint} holds {start_epoch} epochs, more than "
                                 f"epochs={epochs}; ask for at least {start_epoch} epochs or use another path")
            history = loaded.meta.get("history", [])
            best.update(loaded.meta.get("best", {}))
            best["params"] = loaded.best_params
    if state is None:
        state = init_state(jax.random.key(seed), model, opt)
    order_sharding = None
    if mesh is not None:
        from . import sharding as sharding_

        if batch_size % mesh.shape[data_axis]:
            raise ValueError(f"batch_size {batch_size} does not split evenly over the {mesh.shape[data_axis]} "
                             f"devices of mesh axis {data_axis!r}")
        state = sharding_.shard_state(state, mesh, model_axis)
        order_sharding = sharding_.batch_sharding(mesh, data_axis, leading_dims=1)
        data = jax.device_put(data, sharding_.replicated(mesh))
    if initial_state is not None:  # each epoch donates its input state: never the caller's arrays
        state = _copy(state)
    epoch_args = (config, opt, n, batch_size, l2 != 0.0, mesh, data_axis, model_axis)
    try:
        run_epoch = _cached_epoch_fn(*epoch_args)
    except TypeError:  # an unhashable optimiser: compile for this fit only
        run_epoch = _cached_epoch_fn.__wrapped__(*epoch_args)
    l2_value = jnp.asarray(l2, jnp.float32)

    def unpadded(value):
        return value if mesh is None else sharding_.trim_state(value, config)

    if best["params"] is None and restore_best:
        best["params"] = _copy(state.params)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else f"fit {config.kind}"
        bar = tqdm(total=epochs, initial=start_epoch, desc=label, unit="epoch", leave=False)
    stopped = False
    next_order = None
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            if patience is not None and val_batch is not None and best["bad"] >= patience:
                stopped = True
                break
            started = time.perf_counter()
            order = next_order if next_order is not None else _epoch_order(seed, epoch, n, batch_size)
            if order_sharding is not None:
                order = jax.device_put(order, order_sharding)
            new_state, losses, mses, sizes = run_epoch(state, data, order, l2_value)  # dispatched asynchronously
            next_order = _epoch_order(seed, epoch + 1, n, batch_size) if epoch < epochs else None
            losses = np.asarray(losses)
            if not np.isfinite(losses).all():
                bad_step = int(np.flatnonzero(~np.isfinite(losses))[0]) + 1
                raise TrainingDivergedError(
                    f"fit: the training loss became {losses[bad_step - 1]} at epoch {epoch}, step {bad_step} of "
                    f"{len(losses)}; lower the learning rate or raise l2 (the returned model would be NaN)"
                )
            state = new_state
            sizes = np.asarray(sizes)
            logs = {
                "epoch": epoch,
                "train_loss": float(np.sum(losses * sizes) / n),
                "train_mse": float(np.sum(np.asarray(mses) * sizes) / n),
            }
            if val_batch is not None:
                pred = _predict_rows(model, state.params, val_batch["users"], val_batch["items"])
                val_mse = float(np.mean((pred - val_batch["ratings"]) ** 2))
                logs["val_mse"], logs["val_rmse"] = val_mse, math.sqrt(val_mse)
                if val_mse < best["mse"]:
                    best.update(mse=val_mse, epoch=epoch, bad=0)
                    if restore_best:
                        best["params"] = _copy(state.params)  # the next epoch donates state
                else:
                    best["bad"] += 1
            logs["seconds"] = time.perf_counter() - started
            history.append(logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: round(v, 4) for k, v in logs.items() if k in ("train_loss", "val_rmse")})
            if checkpoint is not None:
                best_params = unpadded(state._replace(params=best["params"])).params if restore_best else None
                io_.save(checkpoint, model, unpadded(state), best_params=best_params,
                         meta={"epoch": epoch, "history": history,
                               "best": {k: v for k, v in best.items() if k != "params"}})
            if any(callback(epoch, logs, state) for callback in callbacks):
                stopped = True
                break
    finally:
        if bar is not None:
            bar.close()
    if patience is not None and val_batch is not None and best["bad"] >= patience:
        stopped = True
    params = state.params
    best_epoch = history[-1]["epoch"] if history else start_epoch
    if restore_best and val_batch is not None and best["epoch"]:
        params, best_epoch = best["params"], best["epoch"]
    state = unpadded(state)
    params = unpadded(state._replace(params=params)).params
    if refit and carved and best_epoch > 0:
        refit_checkpoint = None if checkpoint is None else f"{checkpoint}.refit"
        if refit_checkpoint is not None and os.path.exists(refit_checkpoint):
            if io_.load(refit_checkpoint).meta.get("epoch", 0) > best_epoch:
                os.remove(refit_checkpoint)  # a refit of another run (a longer one): start it again
        again = fit(model, full_train, None, epochs=best_epoch, batch_size=requested_batch, l2=l2, opt=opt,
                    patience=None, restore_best=False, seed=seed, refit=False,
                    progress=f"refit {config.kind}" if progress else False,
                    checkpoint=refit_checkpoint,
                    mesh=mesh, data_axis=data_axis, model_axis=model_axis)
        return FitResult(model, again.params, again.state, history, best_epoch, stopped, again.history)
    return FitResult(model, params, state, history, best_epoch, stopped)
