"""Pure train steps ``(state, batch) -> (state, metrics)``: dense and row-sparse, for any model family.

The step reads the model only through its config (sides, batch keys, embeddings,
row tables) and its family (:func:`mdcf.models.forward`); the task (rating
regression, click prediction) gives the targets and the loss
(:class:`mdcf.models.Task`). One step serves MF/NCF on ratings and DLRM on clicks.

* **Row-sparse** (an :class:`~mdcf.train.Optimizer` with ``rows`` set, the
  default of :func:`~mdcf.train.fit`): the loss is differentiated with respect to
  the leaves each embedding scheme gathers for the batch
  (:class:`mdcf.embeddings.RowSparse`) and the gathered biases; each table leaf
  is then updated on the rows the batch touched (:mod:`mdcf.train.sparse`), and
  dense parameters (projections, MLP, global bias) by the optax transformation.
  A step costs the same whatever the table sizes.
* **Dense**: one optax transformation over every parameter (``jax.grad`` of the
  whole pytree); each step touches every row of every table.

Regularisation: ``l2`` adds ``l2 * (|e_u|^2 + |e_i|^2 + b_u^2 + b_i^2)`` per rating
(for DLRM the sum over its ``F`` field vectors), on the embedding *vectors* an
example uses (after projection) and its biases, as classic MF SGD does; it touches only the rows of the batch. ``weight_decay``
(decoupled, AdamW-style) applies to the dense parameters. Paper-style runs use
``l2`` only.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .. import embeddings, models, sharding
from .optim import Optimizer, as_optimizer
from .sparse import duplicates, mask_rows, update_rows, update_whole
from .state import TrainState, model_config

__all__ = ["make_train_step"]


def _per_example(x: jax.Array, n: int) -> jax.Array:
    """``x`` (``[B, ...]``) summed to ``[B]``."""
    return jnp.sum(x.reshape(n, -1), axis=1)


def _weighted_loss(losses, weights, penalty, l2, bad=None):
    """``(loss, mean)``: the weighted mean of the per-example ``losses`` plus ``l2`` times
    the weighted mean penalty, and the weighted mean loss alone. ``bad`` (``[B]``, NaN
    for entries of weight > 0 with an id outside the tables, else 0; see
    :func:`_bad_ids`) makes both NaN without touching the gradients: it is a constant
    inside the sum."""
    total = jnp.maximum(jnp.sum(weights), 1.0)
    terms = weights * losses if bad is None else weights * losses + bad
    mean = jnp.sum(terms) / total
    if isinstance(l2, (int, float)) and not l2:  # a traced l2 (fit's epochs) is always applied
        return mean, mean
    return mean + l2 * jnp.sum(weights * penalty) / total, mean


def _bad_ids(config, ids: dict, weights):
    """``(inside, bad)``: whether all of each entry's ids lie inside their tables (inside
    their columns' bounds where the config gives them, ``config.id_bounds``), and
    ``[B]`` NaN for the entries of weight > 0 that do not, 0 elsewhere (see
    :func:`_weighted_loss`)."""
    n = weights.shape[0]
    inside = jnp.ones(n, bool)
    bounds = getattr(config, "id_bounds", {})
    for side, spec in config.sides.items():
        low, high = bounds.get(side, (0, spec.n_rows))
        ok = (ids[side] >= low) & (ids[side] < high)
        inside = inside & jnp.all(ok.reshape(n, -1), axis=1)
    return inside, jnp.where(inside | (weights <= 0), 0.0, jnp.nan).astype(weights.dtype)


def _batch_parts(config, batch):
    """``(ids, targets, weights, inputs)`` of a batch dict, checked: ``ids`` per side
    (int32 rows), the task's targets and the weights as float32 ``[B]``, the dense
    inputs as float32. Keys, dtypes and shapes are static under ``jit``, so a
    malformed batch raises when the step is traced."""
    task = config.task
    id_keys = config.id_keys
    wanted = [*id_keys.values(), task.target, *config.inputs]
    missing = [key for key in wanted if key not in batch]
    if missing:
        raise KeyError(f"train step: the batch has no {missing}; a {config.kind} model needs "
                       f"{wanted} and optionally 'weights', got keys {sorted(batch)}")
    parts = {key: jnp.asarray(batch[key]) for key in [*wanted, "weights"] if key in batch}
    for key in id_keys.values():
        if not jnp.issubdtype(parts[key].dtype, jnp.integer):
            raise TypeError(f"train step: batch[{key!r}] must hold integer rows, got dtype {parts[key].dtype}")
    expected = {key: config.id_shapes[side] for side, key in id_keys.items()}
    expected.update({task.target: (), "weights": ()}, **config.inputs)
    shapes = {key: value.shape for key, value in parts.items()}
    n = shapes[task.target][0] if shapes[task.target] else None
    if n is None or any(shape != (n, *expected[key]) for key, shape in shapes.items()):
        want = {key: ("B", *expected[key]) for key in shapes}
        raise ValueError(f"train step: the batch's arrays must have shapes {want} with one batch size B, "
                         f"got {shapes}")
    ids = {side: embeddings.as_rows(parts[key], config.sides[side].n_rows) for side, key in id_keys.items()}
    targets = parts[task.target].astype(jnp.float32)
    weights = jnp.ones_like(targets) if "weights" not in parts else parts["weights"].astype(jnp.float32)
    inputs = {key: parts[key].astype(jnp.float32) for key in config.inputs}
    return ids, targets, weights, inputs


def _for_entries(weights, ids, other):
    """``ids`` where the entry's weight is > 0, else ``other`` (``weights`` broadcast over the id axes)."""
    live = (weights > 0).reshape(weights.shape + (1,) * (ids.ndim - 1))
    return jnp.where(live, ids, other)


def _penalty(config, vectors: dict, rows: dict, n: int):
    """Per example, the squared norms of its embedding vectors and gathered per-row values."""
    return sum(_per_example(v**2, n) for v in (*vectors.values(), *rows.values()))


def _outputs(config, dense, vectors, rows, inputs, targets, weights, bad, l2):
    """``(loss, mean loss)`` of the model's outputs on a batch."""
    pred = models.forward(dense, config, vectors, rows, inputs)
    penalty = _penalty(config, vectors, rows, targets.shape[0])
    return _weighted_loss(config.task.loss(pred, targets), weights, penalty, l2, bad)


def _dense_step(config, opt: Optimizer, l2: float):
    metric = config.task.metric

    def loss_fn(params, ids, targets, weights, inputs, bad):
        vectors, rows = models.embed_batch(params, config, ids)
        return _outputs(config, params["dense"], vectors, rows, inputs, targets, weights, bad, l2)

    def step(state: TrainState, batch):
        ids, targets, weights, inputs = _batch_parts(config, batch)
        # Entries with bad ids are not skipped here (a select on the weights makes ml-100k
        # epochs about 1.1x slower): they embed as NaN, which the loss and gradients carry.
        bad = _bad_ids(config, ids, weights)[1]
        # Padding entries (weight 0) point at row 0 (the first row of each column's bounds,
        # config.id_bounds): finite, and they add no gradient.
        bounds = getattr(config, "id_bounds", {})
        ids = {side: _for_entries(weights, value, bounds[side][0] if side in bounds else 0)
               for side, value in ids.items()}
        (loss, mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, ids, targets, weights, inputs, bad)
        updates, dense_state = opt.dense.update(grads, state.dense_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, dense_state, state.row_state, state.step + 1), {"loss": loss, metric: mean}

    return step


def _batch_ids(ids: dict, weights) -> dict:
    """The batch's rows per side, flattened to ``[B * ...]``; padding (weight 0) and skipped
    entries are -1."""
    return {side: _for_entries(weights, value, -1).reshape(-1) for side, value in ids.items()}


def _plans(config, tables: dict, ids: dict, slots: dict, shapes: dict) -> dict:
    """Per side, the row plan of the batch's flat ids (every table of a side shares it):
    a column plan where the config says each id column lies in its own part of the
    layer (``config.column_sides``, DLRM's fields) and the scheme has one."""
    first = {}
    for name, side, _ in config.embeddings:
        first.setdefault(side, name)
    plans = {}
    for side, spec in config.sides.items():
        rows = embeddings.scheme(spec).rows
        heights = tuple(t.shape[0] for t in jax.tree.leaves(tables[first[side]]))
        if side in getattr(config, "column_sides", ()) and rows.column_plan is not None:
            plans[side] = rows.column_plan(spec, ids[side].reshape(shapes[side]), heights)
        else:
            plans[side] = rows.plan(spec, ids[side], slots[side], heights)
    return plans


def _sparse_grads(config, params, ids, shapes, targets, weights, inputs, bad, plans, l2):
    """Loss and gradients with respect to each table's gathered leaves and the dense params.

    ``ids`` are the flat ids of :func:`_batch_ids`, ``shapes`` each side's batch shape.
    Returns ``(loss, mean, row_ids, kinds, row_grads, dense_grads)``: per table the rows
    each leaf's gradient belongs to and its kind (:class:`mdcf.embeddings.RowSparse`).
    """
    rows_of = {name: embeddings.scheme(spec).rows for name, _, spec in config.embeddings}
    # Out-of-range rows (padding, unused slots) read a clamped row: their values never
    # reach the loss (weight 0, or a slot the scheme drops) and their gradients are dropped.
    gathered = {name: rows_of[name].gather(spec, params["tables"][name], plans[side])
                for name, side, spec in config.embeddings}
    values = models.value_tables(config)
    for name, side in values:
        gathered[name] = embeddings.take_rows(params["tables"][name], ids[side], None)

    def loss_fn(rows, dense):
        vectors = {name: rows_of[name].vectors(spec, rows[name], dense["projections"][name], plans[side])
                   .reshape(*shapes[side], spec.base_dim) for name, side, spec in config.embeddings}
        per_row = {name: rows[name].reshape(shapes[side]) for name, side in values}
        return _outputs(config, dense, vectors, per_row, inputs, targets, weights, bad, l2)

    (loss, mean), (row_grads, dense_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        gathered, params["dense"])
    row_ids, kinds = {}, {}
    for name, side, spec in config.embeddings:
        row_ids[name], kinds[name] = rows_of[name].updated_rows(spec, plans[side])
    for name, side in values:
        row_ids[name] = jnp.where(ids[side] >= 0, ids[side], config.sides[side].n_rows)
        kinds[name] = "batch"
    return loss, mean, row_ids, kinds, row_grads, dense_grads


def _apply_updates(config, opt: Optimizer, state, row_ids, kinds, row_grads, dense_grads, active=None):
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


def _sparse_step(config, opt: Optimizer, l2: float, capacities):
    specs = config.sides
    metric = config.task.metric

    def main(state, plans, ids, shapes, targets, weights, inputs, bad, active=None):
        loss, mean, row_ids, kinds, row_grads, dense_grads = _sparse_grads(
            config, state.params, ids, shapes, targets, weights, inputs, bad, plans, l2)
        return _apply_updates(config, opt, state, row_ids, kinds, row_grads, dense_grads, active), loss, mean

    def step(state: TrainState, batch):
        ids, targets, weights, inputs = _batch_parts(config, batch)
        inside, bad = _bad_ids(config, ids, weights)
        weights = jnp.where(inside, weights, 0.0)  # skipped, like padding
        shapes = {side: value.shape for side, value in ids.items()}
        ids = _batch_ids(ids, weights)
        plans = _plans(config, state.params["tables"], ids,
                       capacities({side: math.prod(shape) for side, shape in shapes.items()}), shapes)
        args = (ids, shapes, targets, weights, inputs, bad)
        fits = [p.fits for p in plans.values() if p.fits is not None]
        if not fits:  # nothing routed: nothing can overflow
            new_state, loss, mean = main(state, plans, *args)
            return new_state, {"loss": loss, metric: mean}
        # The planned step always runs and changes nothing when some plan overflowed;
        # then a loop of at most one iteration runs the same step with overflow plans,
        # which are exact for any batch. (A lax.cond choosing between the two steps
        # passes the whole training state through its branches: slower on a CPU.)
        fits = fits[0] if len(fits) == 1 else jnp.all(jnp.stack(fits))
        state, loss, mean = main(state, plans, *args, active=fits)

        def overflow(carry):
            full = {side: embeddings.scheme(spec).rows.overflow_plan(spec, plans[side])
                    for side, spec in specs.items()}
            new_state, loss, mean = main(carry[0], full, *args)
            return new_state, jnp.asarray(False), loss, mean

        state, _, loss, mean = jax.lax.while_loop(lambda carry: carry[1], overflow,
                                                  (state, jnp.logical_not(fits), loss, mean))
        return state, {"loss": loss, metric: mean}

    return step


def make_train_step(model, opt, *, l2: float = 0.0, capacities: str | dict = "auto", mesh=None,
                    data_axis: str = "data", model_axis: str | None = "model") -> Callable:
    """A pure train step ``(state, batch) -> (state, metrics)`` for your own ``jit``/``scan``/``vmap``.

    Args:
      model: a :class:`~mdcf.models.Model`, a :class:`~mdcf.models.ModelConfig`, or a
        model config of another family (:class:`~mdcf.models.dlrm.DLRMConfig`).
      opt: an :class:`Optimizer` (row-sparse when ``opt.rows`` is set) or an optax
        transformation (dense).
      l2: regularisation of the embedding vectors and per-row values (biases) an
        example uses.
      capacities: row-sparse path only: per-block slots, ``"auto"`` (sized from
        each spec's loads, :func:`mdcf.embeddings.block_capacities`) or a dict by
        side (``{"user": (...), "item": (...)}``; DLRM: ``{"rows": (...)}``, slots
        for the ``B * F`` ids of a batch). A batch that overflows them is
        handled exactly: the step is redone with a slot per batch entry in
        every block (slower, and rare with ``"auto"``).
      mesh, data_axis, model_axis: on a :class:`jax.sharding.Mesh`, the step
        splits each batch over ``data_axis`` and keeps the state in the layout
        of :func:`mdcf.sharding.state_shardings` (place it first with
        :func:`mdcf.sharding.shard_state`).

    The task is the model's (:attr:`config.task <mdcf.models.Task>`), the same step for
    each. A rating model's batch is a dict of ``users`` and ``items`` (``[B]`` rows in
    block order, e.g. from :meth:`Model.encode <mdcf.models.Model.encode>`) and
    ``ratings``; a DLRM's holds ``rows`` (``[B, F]`` stacked rows), ``dense``
    (``[B, n_dense]``) and ``labels`` (:func:`mdcf.models.dlrm.encode`). Either takes
    optional ``weights`` (0 marks padding; the ids of padding entries are ignored).
    Metrics: ``loss`` (the task's loss plus regularisation) and the mean task loss
    under the task's metric name (``mse``; ``logloss``), weighted means over the batch.

    Ids outside the tables cannot raise inside ``jit``. A batch with such an id
    in an entry of weight > 0 gives NaN metrics (:func:`fit`
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


def _unsharded_step(config, opt: Optimizer, l2: float, capacities) -> Callable:
    if opt.rows is None:
        return _dense_step(config, opt, l2)
    specs = config.sides
    if capacities != "auto":
        try:
            ok = set(capacities) == set(specs) and all(
                embeddings.scheme(spec).rows.check_capacities(spec, capacities[side]) is None
                for side, spec in specs.items())
        except TypeError:
            ok = False
        if not ok:
            wanted = "; ".join(f"{side!r}: {embeddings.scheme(spec).rows.check_capacities(spec, ())}"
                               for side, spec in specs.items())
            raise ValueError(f"capacities must be 'auto' or a dict by side with, for each, {wanted}; "
                             f"got {capacities!r}")

    def capacity_for(entries: dict) -> dict:
        """Slots per side for a batch of ``entries[side]`` ids."""
        return {side: embeddings.scheme(spec).rows.capacities(spec, entries[side], capacities if capacities == "auto"
                                                              else capacities[side])
                for side, spec in specs.items()}

    return _sparse_step(config, opt, l2, capacity_for)
