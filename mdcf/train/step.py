"""Pure train steps ``(state, batch) -> (state, metrics)``: dense and row-sparse.

* **Row-sparse** (an :class:`~mdcf.train.Optimizer` with ``rows`` set, the
  default of :func:`~mdcf.train.fit`): the loss is differentiated with respect to
  the leaves each embedding scheme gathers for the batch
  (:class:`mdcf.embeddings.RowSparse`) and the gathered biases; each table leaf
  is then updated on the rows the batch touched (:mod:`mdcf.train.sparse`), and
  dense parameters (projections, MLP, global bias) by the optax transformation.
  A step costs the same whatever the table sizes.
* **Dense**: one optax transformation over every parameter (``jax.grad`` of the
  whole pytree); each step touches every row of every table.

Regularisation: ``l2`` adds ``l2 * (|e_u|^2 + |e_i|^2 + b_u^2 + b_i^2)`` per rating,
on the embedding *vectors* a rating uses (after projection) and its biases, as
classic MF SGD does; it touches only the rows of the batch. ``weight_decay``
(decoupled, AdamW-style) applies to the dense parameters. Paper-style runs use
``l2`` only.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .. import embeddings, models, sharding
from ..models import ModelConfig
from .optim import Optimizer, as_optimizer
from .sparse import duplicates, mask_rows, update_rows, update_whole
from .state import TrainState, model_config

__all__ = ["make_train_step"]

_SIDES = ("user", "item")


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
    users = embeddings.as_rows(parts["users"], config.user.n_rows)
    items = embeddings.as_rows(parts["items"], config.item.n_rows)
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


def _side_specs(config: ModelConfig) -> dict:
    return {"user": config.user, "item": config.item}


def _batch_ids(users, items, weights) -> dict:
    """The batch's rows per side; padding (weight 0) and skipped entries are -1."""
    return {"user": jnp.where(weights > 0, users, -1), "item": jnp.where(weights > 0, items, -1)}


def _plans(config: ModelConfig, tables: dict, ids: dict, slots: dict) -> dict:
    """Per side, the row plan of the batch's ids (every table of a side shares it)."""
    first = {}
    for name, side, _ in config.embeddings:
        first.setdefault(side, name)
    specs = _side_specs(config)
    return {side: embeddings.scheme(specs[side]).rows.plan(
                specs[side], ids[side], slots[side], tuple(t.shape[0] for t in jax.tree.leaves(tables[first[side]])))
            for side in _SIDES}


def _sparse_grads(config: ModelConfig, params, ids, ratings, weights, bad, plans, l2):
    """Loss and gradients with respect to each table's gathered leaves and the dense params.

    Returns ``(loss, mse, row_ids, kinds, row_grads, dense_grads)``: per table the rows
    each leaf's gradient belongs to and its kind (:class:`mdcf.embeddings.RowSparse`).
    """
    rows_of = {name: embeddings.scheme(spec).rows for name, _, spec in config.embeddings}
    # Out-of-range rows (padding, unused slots) read a clamped row: their values never
    # reach the loss (weight 0, or a slot the scheme drops) and their gradients are dropped.
    gathered = {name: rows_of[name].gather(spec, params["tables"][name], plans[side])
                for name, side, spec in config.embeddings}
    if config.biases:
        for name, side in (("user_bias", "user"), ("item_bias", "item")):
            gathered[name] = embeddings.take_rows(params["tables"][name], ids[side], None)

    def loss_fn(rows, dense):
        vectors = {name: rows_of[name].vectors(spec, rows[name], dense["projections"][name], plans[side])
                   for name, side, spec in config.embeddings}
        user_bias = rows.get("user_bias")
        item_bias = rows.get("item_bias")
        pred = models.head(dense, config, vectors, user_bias, item_bias)
        return _weighted_loss(pred, ratings, weights, _penalty(config, vectors, user_bias, item_bias), l2, bad)

    (loss, mse), (row_grads, dense_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        gathered, params["dense"])
    row_ids, kinds = {}, {}
    for name, side, spec in config.embeddings:
        row_ids[name], kinds[name] = rows_of[name].updated_rows(spec, plans[side])
    if config.biases:
        row_ids["user_bias"] = jnp.where(ids["user"] >= 0, ids["user"], config.user.n_rows)
        row_ids["item_bias"] = jnp.where(ids["item"] >= 0, ids["item"], config.item.n_rows)
        kinds["user_bias"] = kinds["item_bias"] = "batch"
    return loss, mse, row_ids, kinds, row_grads, dense_grads


def _apply_updates(config: ModelConfig, opt: Optimizer, state, row_ids, kinds, row_grads, dense_grads, active=None):
    """The state after one row-sparse step. ``active`` (a traced bool; None: always):
    when False the state is left as it was: rows are redirected out of range (scatters
    drop them) and the dense parameters, their optimiser state and the step count kept."""
    sides = dict(config.row_tables)
    step = state.step + 1
    if active is not None:
        row_ids = mask_rows(state.params["tables"], row_ids, active)
    tables, row_state, plans = {}, {}, {}

    def update(name, table, table_state, rows, grads, kind):
        if kind == "whole":
            return update_whole(table, table_state, rows, grads, opt.rows, step)
        plan = None
        if kind == "batch" and opt.rows.delta is None:
            # Tables of one side indexed by the batch's own ids (uniform embeddings,
            # biases) share one duplicates plan per table height.
            key = (sides[name], table.shape[0])
            if key not in plans:
                plans[key] = duplicates(rows, table.shape[0])
            plan = plans[key]
        return update_rows(table, table_state, rows, grads, opt.rows, step, plan)

    for name, table in state.params["tables"].items():
        leaves, tree = jax.tree.flatten(table)
        pairs = [update(name, *args) for args in zip(
            leaves, tree.flatten_up_to(state.row_state[name]), tree.flatten_up_to(row_ids[name]),
            tree.flatten_up_to(row_grads[name]), tree.flatten_up_to(kinds[name]))]
        tables[name] = tree.unflatten([p[0] for p in pairs])
        row_state[name] = tree.unflatten([p[1] for p in pairs])
    updates, dense_state = opt.dense.update(dense_grads, state.dense_state, state.params["dense"])
    dense = optax.apply_updates(state.params["dense"], updates)
    if active is not None:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
        dense, dense_state = keep(dense, state.params["dense"]), keep(dense_state, state.dense_state)
        step = jnp.where(active, step, state.step)
    return TrainState({"tables": tables, "dense": dense}, dense_state, row_state, step)


def _sparse_step(config: ModelConfig, opt: Optimizer, l2: float, capacities):
    specs = _side_specs(config)

    def main(state, plans, ids, ratings, weights, bad, active=None):
        loss, mse, row_ids, kinds, row_grads, dense_grads = _sparse_grads(
            config, state.params, ids, ratings, weights, bad, plans, l2)
        return _apply_updates(config, opt, state, row_ids, kinds, row_grads, dense_grads, active), loss, mse

    def step(state: TrainState, batch):
        users, items, ratings, weights = _batch_parts(config, batch)
        inside, bad = _bad_ids(config, users, items, weights)
        weights = jnp.where(inside, weights, 0.0)  # skipped, like padding
        ids = _batch_ids(users, items, weights)
        plans = _plans(config, state.params["tables"], ids, capacities(users.shape[0]))
        fits = [p.fits for p in plans.values() if p.fits is not None]
        if not fits:  # nothing routed: nothing can overflow
            new_state, loss, mse = main(state, plans, ids, ratings, weights, bad)
            return new_state, {"loss": loss, "mse": mse}
        # The planned step always runs and changes nothing when some plan overflowed;
        # then a loop of at most one iteration runs the same step with overflow plans,
        # which are exact for any batch. (A lax.cond choosing between the two steps
        # passes the whole training state through its branches: slower on a CPU.)
        fits = fits[0] if len(fits) == 1 else jnp.logical_and(*fits)
        state, loss, mse = main(state, plans, ids, ratings, weights, bad, active=fits)

        def overflow(carry):
            full = {side: embeddings.scheme(specs[side]).rows.overflow_plan(specs[side], plans[side])
                    for side in _SIDES}
            new_state, loss, mse = main(carry[0], full, ids, ratings, weights, bad)
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
        each spec's loads, :func:`mdcf.embeddings.block_capacities`) or
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
    embed as NaN vectors (as :func:`mdcf.embeddings.lookup` does under ``jit``)
    and the parameters they reach become NaN.

    Example:
      >>> step = jax.jit(make_train_step(model, optimizer("adam", 1e-3), l2=0.05))  # doctest: +SKIP
      >>> state, metrics = step(state, batch)  # doctest: +SKIP
    """
    config = model_config(model)
    opt = as_optimizer(opt)
    step = _unsharded_step(config, opt, l2, capacities)
    if mesh is None:
        return step

    def sharded_step(state, batch):
        constrain = jax.lax.with_sharding_constraint
        batch = {k: constrain(jnp.asarray(v), sharding.batch_sharding(mesh, data_axis)) for k, v in batch.items()}
        state = constrain(state, sharding.state_shardings(state, mesh, model_axis))
        new_state, metrics_ = step(state, batch)
        return constrain(new_state, sharding.state_shardings(new_state, mesh, model_axis)), metrics_

    return sharded_step


def _unsharded_step(config: ModelConfig, opt: Optimizer, l2: float, capacities) -> Callable:
    if opt.rows is None:
        return _dense_step(config, opt, l2)
    specs = _side_specs(config)
    if capacities != "auto":
        try:
            ok = set(capacities) == set(specs) and all(
                embeddings.scheme(spec).rows.check_capacities(spec, capacities[side]) is None
                for side, spec in specs.items())
        except TypeError:
            ok = False
        if not ok:
            wanted = {side: embeddings.scheme(spec).rows.check_capacities(spec, ()) for side, spec in specs.items()}
            raise ValueError(f"capacities must be 'auto' or {{'user': ..., 'item': ...}} with, for users, "
                             f"{wanted['user']} and, for items, {wanted['item']}; got {capacities!r}")

    def capacity_for(batch: int) -> dict:
        return {side: embeddings.scheme(spec).rows.capacities(spec, batch, capacities if capacities == "auto"
                                                              else capacities[side])
                for side, spec in specs.items()}

    return _sparse_step(config, opt, l2, capacity_for)
