"""``fit``: train a model with epochs as jitted scans, validation, early stopping and a refit.

:func:`fit` reads as its phases: check and prepare the settings, run a phase
(:func:`_run_phase`: resume or start a state, then epochs until patience runs
out), and, when validation was carved from the training data, refit on all of
it for the chosen number of epochs.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import checkpoint as checkpoints
from .. import data as data_
from .. import models, sharding
from .._checks import is_int, is_real
from .batches import by_key, epoch_order, pack
from .epochs import auto_sparse, cached_epoch_fn, copy_tree
from .evaluate import TASK_METRICS, predict_batch
from .optim import Optimizer, as_optimizer, named_optimizer
from .state import TrainState, init_state

__all__ = ["fit", "FitResult", "TrainingDivergedError"]


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      model: the model (structure and id maps), or the config for families without
        id maps (DLRM).
      params: the parameters: the refit's when there was one (see :func:`fit`'s
        ``refit``), else the best epoch's when ``restore_best``, else the last.
      state: the final train state (for resuming), the refit's when there was one.
      history: one dict per epoch: ``epoch``, ``train_loss``, ``train_<metric>``
        (``train_mse``; ``train_logloss``), ``train_curve`` (the mean task loss over
        each of 16 equal parts of the epoch's steps, in order: a learning curve within
        the epoch), the validation metrics when validating
        (``val_mse``, ``val_rmse``; ``val_logloss``, ``val_accuracy``, ``val_auc``),
        ``seconds``.
      best_epoch: the epoch whose parameters were kept (1-based), or the last;
        with a refit, the number of epochs it ran.
      stopped_early: whether patience ran out.
      refit_history: the refit's epochs (no validation metrics); empty without one.
    """

    model: Any
    params: dict
    state: TrainState
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    refit_history: list[dict] = field(default_factory=list)


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


# The validation a task gets when the caller gives none (see fit's ``validation``).
AUTO = "auto"

# Per task, the validation metrics an epoch logs (as ``val_<name>``); the first is the task's metric.
VALIDATION_METRICS = {"rating": ("mse", "rmse"), "click": ("logloss", "accuracy", "auc")}


def fit(
    model,
    train,
    validation=AUTO,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer_name: str | None = None,
    learning_rate: float | None = None,
    l2: float | None = None,
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
    """Train a model of any family with epochs as jitted scans, validation and early stopping.

    The task (the model's, :class:`mdcf.models.Task`) gives the loss, the metric
    and the defaults; the step, the epochs, checkpoints and meshes are the same
    for each. Settings left as None take the task's default:

    =================  ==========================  ==================================
    setting            ratings (MF, NCF)           clicks (DLRM; the MD paper's)
    =================  ==========================  ==================================
    epochs             100 (early stopping)        1
    batch_size         2048                        4096
    optimizer_name     ``"adam"``                  ``"amsgrad"``
    learning_rate      3e-3                        1e-3
    l2                 0.1                         0
    validation         0.1 of train, then refit    none (pass a validation set)
    =================  ==========================  ==================================

    Args:
      model: a rating :class:`~mdcf.models.Model` (:func:`mdcf.models.build_model`) or a
        DLRM config (:func:`mdcf.models.dlrm.dlrm_config`).
      train: training data in the model's code space: :class:`~mdcf.data.Ratings`, or
        :class:`~mdcf.data.CTRData` for DLRM.
      validation: data to validate on each epoch, a fraction of ``train`` to carve
        off for it (seeded random split), None for no validation (no early
        stopping), or ``"auto"``: the task's default. Never pass test data here.
      epochs: maximum number of epochs.
      batch_size: examples per step.
      optimizer_name, learning_rate, weight_decay: build the optimiser with
        :func:`~mdcf.train.optimizer` (ignored when ``opt`` is given).
      l2: regularisation of the embedding vectors and biases of each example.
      sparse: row-sparse table updates; ``"auto"`` uses them for SGD without weight
        decay, and otherwise when the tables together have at least 8 batches of rows
        (below that a dense step, which touches every row, is cheaper;
        :func:`~mdcf.train.auto_sparse`).
      opt: an explicit optimiser (overrides the three above).
      patience: stop after this many epochs without a better validation metric
        (MSE; logloss).
      restore_best: return the parameters of the best validation epoch.
      seed: seeds the parameters, the validation carve-out and every epoch's shuffle.
      refit: when ``validation`` is a fraction carved from ``train``, use the
        carved-off part only to choose the number of epochs: after early
        stopping, train again from the same seed on *all* of ``train`` for the
        best epoch's count (the last epoch's without ``restore_best``) and
        return that model. It costs about twice the epochs and gives a better
        model (docs/training.md). Ignored for an explicit
        validation set or None. With ``checkpoint``, the refit checkpoints to
        ``checkpoint + ".refit"``; ``callbacks`` see the first phase only.
      progress: show a progress bar (tqdm) with loss and validation metric; a
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
      TrainingDivergedError: the training loss became NaN or infinite, or exploded: a
        step's loss above 100 times the larger of the task's reference loss (the mean
        squared training rating; log 2) and the first step's loss (names the epoch and step).
    """
    callbacks = tuple(callbacks)
    models.family(model)  # TypeError for anything but a model
    defaults = models.config_of(model).task.defaults
    epochs, batch_size, l2, optimizer_name, learning_rate = (
        defaults[key] if value is None else value for key, value in (
            ("epochs", epochs), ("batch_size", batch_size), ("l2", l2), ("optimizer_name", optimizer_name),
            ("learning_rate", learning_rate)))
    if isinstance(validation, str) and validation == AUTO:
        validation = defaults["validation"]
    train_part, validation, carved, opt, label = _prepare(
        model, train, validation, opt, dict(
            epochs=epochs, batch_size=batch_size, start_epoch=start_epoch, seed=seed, patience=patience, l2=l2,
            learning_rate=learning_rate, weight_decay=weight_decay, optimizer_name=optimizer_name, sparse=sparse,
            callbacks=callbacks, initial_state=initial_state))
    kind = models.config_of(model).kind
    run = _Run(model, opt, float(l2), seed, mesh, data_axis, model_axis, label)
    first = _run_phase(run, train_part, validation, epochs, batch_size, patience=patience, restore_best=restore_best,
                       progress=(progress if isinstance(progress, str) else f"fit {kind}") if progress else False,
                       callbacks=callbacks, initial_state=initial_state, start_epoch=start_epoch,
                       checkpoint=checkpoint)
    if not (refit and carved and first.best_epoch > 0):
        return FitResult(model, first.params, first.state, first.history, first.best_epoch, first.stopped)
    again = _run_phase(run, train, None, first.best_epoch, batch_size, patience=None, restore_best=False,
                       progress=f"refit {kind}" if progress else False,
                       checkpoint=_refit_checkpoint(checkpoint, first.best_epoch, run))
    return FitResult(model, again.params, again.state, first.history, first.best_epoch, first.stopped,
                     again.history)


def _carve(train, fraction: float, seed: int):
    """``(train part, validation part)``: a seeded random ``fraction`` of ``train`` held out."""
    if isinstance(train, data_.Ratings):
        return data_.split(train, "random", test_fraction=fraction, seed=seed)
    order = np.random.default_rng(seed).permutation(len(train))
    held = int(round(fraction * len(train)))
    return train.take(np.sort(order[held:])), train.take(np.sort(order[:held]))


def _prepare(model, train, validation, opt, settings: dict):
    """``fit``'s arguments checked (a ``ValueError`` naming the first one out of range),
    the validation part carved from ``train`` when asked, and the optimiser built:
    ``(train part, validation, carved, opt, a label of the optimiser or None)``."""
    config = models.config_of(model)
    epochs, seed, sparse, callbacks = settings["epochs"], settings["seed"], settings["sparse"], settings["callbacks"]
    initial_state, batch_size = settings["initial_state"], settings["batch_size"]
    learning_rate, weight_decay = settings["learning_rate"], settings["weight_decay"]
    _check_fit_args(**{k: settings[k] for k in ("epochs", "batch_size", "start_epoch", "seed", "patience", "l2")},
                    learning_rate=None if opt is not None else learning_rate,
                    weight_decay=None if opt is not None else weight_decay)
    if settings["start_epoch"] > epochs:
        raise ValueError(f"fit: start_epoch={settings['start_epoch']} is past epochs={epochs}")
    if not all(callable(c) for c in callbacks):
        raise TypeError(f"fit: callbacks must be callables callback(epoch, logs, state), got "
                        f"{[c for c in callbacks if not callable(c)][:3]!r}")
    if initial_state is not None:
        models.check_params(config, initial_state.params, "fit: initial_state.params")
    if sparse not in (True, False, "auto"):
        raise ValueError(f"fit: sparse must be True, False or 'auto', got {sparse!r}")
    data_type = models.family(config).data
    if not isinstance(train, data_type):
        raise TypeError(f"fit: a {config.kind} model trains on {data_type.__name__}, got {type(train).__name__}")
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    carved = validation is not None and not isinstance(validation, data_type)
    if carved:
        if not (is_real(validation) and 0 < float(validation) < 1):
            raise ValueError(f"fit: validation must be {data_type.__name__}, None, 'auto', or the fraction of "
                             f"train to validate on (strictly between 0 and 1), got {validation!r}")
        train, validation = _carve(train, float(validation), seed + 7919)
    elif validation is not None and len(validation) == 0:
        raise ValueError("fit: the validation set is empty; pass data to validate on, a fraction of train, "
                         "or None for no validation (and no early stopping)")
    if opt is None:
        if sparse == "auto":
            sparse = auto_sparse(model, batch_size, settings["optimizer_name"], float(weight_decay))
        opt = named_optimizer(settings["optimizer_name"], float(learning_rate), bool(sparse), float(weight_decay))
        label = (f"{settings['optimizer_name']}(learning_rate={float(learning_rate)!r}, "
                 f"weight_decay={float(weight_decay)!r}, sparse={bool(sparse)})")
    else:  # a caller's optimiser: only its row part has a name to compare
        opt = as_optimizer(opt)
        label = None if opt.rows is None else f"rows {opt.rows.name}"
    return train, validation, carved, opt, label


class _Run(NamedTuple):
    """What every phase of one ``fit`` shares."""

    model: Any
    opt: Optimizer
    l2: float
    seed: int
    mesh: object
    data_axis: str
    model_axis: str | None
    optimizer_label: str | None  # how the optimiser was built, for checkpoints (None: not comparable)


class _Phase(NamedTuple):
    """What one phase of training returns."""

    params: dict
    state: TrainState
    history: list
    best_epoch: int
    stopped: bool


def _refit_checkpoint(checkpoint: str | None, epochs: int, run: _Run) -> str | None:
    """The refit's checkpoint path; one holding more epochs (of a longer run) is removed."""
    if checkpoint is None:
        return None
    path = f"{checkpoint}.refit"
    if os.path.exists(path) and checkpoints.load(path, mesh=run.mesh).meta.get("epoch", 0) > epochs:
        _remove(path)  # a refit of another run (a longer one): start it again
    return path


def _settings(run: _Run, batch_size: int) -> dict:
    """The settings that shape a run's trajectory, kept in its checkpoints."""
    return {"seed": run.seed, "l2": run.l2, "batch_size": batch_size, "optimizer": run.optimizer_label}


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _check_settings(path, saved: dict | None, now: dict) -> None:
    """A checkpoint resumes only the run that wrote it (checkpoints without settings: not checked)."""
    if saved is None:
        return
    differ = [f"{key}: saved {saved[key]!r}, now {now[key]!r}" for key in now
              if key in saved and None not in (saved[key], now[key]) and saved[key] != now[key]]
    if differ:
        raise checkpoints.CheckpointMismatchError(
            f"fit: the checkpoint {path} was written by a run with other settings ({'; '.join(differ)}); "
            "resuming it would not continue that run: use the same settings, or another checkpoint path")


def _resume(run: _Run, path: str | None, epochs: int, initial_state, start_epoch: int, settings: dict):
    """``(state, start_epoch, history, best)``: from ``initial_state``, from the checkpoint at
    ``path`` when one exists (written by the same model and settings), else a fresh state
    from the run's seed."""
    history: list[dict] = []
    best = {"value": math.inf, "epoch": 0, "params": None, "bad": 0}
    state = initial_state
    if path is not None and state is None and os.path.exists(path):
        try:
            loaded = checkpoints.load(path, opt=run.opt, model=run.model, mesh=run.mesh, model_axis=run.model_axis)
        except checkpoints.CheckpointMismatchError as err:
            if not err.differences:  # the same model, another optimiser's state: say which setting differs
                _check_settings(path, checkpoints.load(path).meta.get("settings"), settings)
            raise checkpoints.CheckpointMismatchError(f"fit: cannot resume: {err}") from None
        _check_settings(path, loaded.meta.get("settings"), settings)
        state, start_epoch = loaded.state, loaded.meta.get("epoch", 0)
        if start_epoch > epochs:
            raise ValueError(f"fit: the checkpoint {path} holds {start_epoch} epochs, more than "
                             f"epochs={epochs}; ask for at least {start_epoch} epochs or use another path")
        history = loaded.meta.get("history", [])
        saved_best = dict(loaded.meta.get("best", {}))
        if "mse" in saved_best and "value" not in saved_best:  # checkpoints of rating runs before tasks
            saved_best["value"] = saved_best.pop("mse")
        best.update(saved_best)
        best["params"] = loaded.best_params
    if state is None:
        state = init_state(jax.random.key(run.seed), run.model, run.opt)
    return state, start_epoch, history, best


def _run_phase(run: _Run, train, validation, epochs: int, batch_size: int, *, patience, restore_best: bool,
               progress, callbacks=(), initial_state=None, start_epoch: int = 0, checkpoint=None) -> _Phase:
    """Train on ``train`` for up to ``epochs`` epochs, validating on ``validation`` (or None)."""
    model = run.model
    config = models.config_of(model)
    encoded = _in_row_order(config, models.encode(model, train))
    n = len(train)
    if n == 0:
        raise ValueError("fit: the training set is empty")
    batch_size = int(min(batch_size, n))
    data = pack(encoded)
    val_batch = None if validation is None else models.encode(model, validation)
    settings = _settings(run, batch_size)
    limit = None  # the divergence limit, set by the phase's first epoch
    state, start_epoch, history, best = _resume(run, checkpoint, epochs, initial_state, start_epoch, settings)
    order_sharding = None
    if run.mesh is not None:
        if batch_size % run.mesh.shape[run.data_axis]:
            raise ValueError(f"batch_size {batch_size} does not split evenly over the "
                             f"{run.mesh.shape[run.data_axis]} devices of mesh axis {run.data_axis!r}")
        state = sharding.shard_state(state, run.mesh, run.model_axis)
        order_sharding = sharding.batch_sharding(run.mesh, run.data_axis, leading_dims=1)
        data = jax.device_put(data, sharding.replicated(run.mesh))
    if initial_state is not None:  # each epoch donates its input state: never the caller's arrays
        state = copy_tree(state)
    epoch_args = (config, run.opt, n, batch_size, run.l2 != 0.0, run.mesh, run.data_axis, run.model_axis)
    try:
        run_epoch = cached_epoch_fn(*epoch_args)
    except TypeError:  # an unhashable optimiser: compile for this fit only
        run_epoch = cached_epoch_fn.__wrapped__(*epoch_args)

    l2 = jnp.asarray(run.l2, jnp.float32)

    def unpadded(value):
        return value if run.mesh is None else sharding.trim_state(value, config)

    if best["params"] is None and restore_best:
        best["params"] = copy_tree(state.params)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc=progress, unit="epoch", leave=False)
    stopped = False
    next_order = None
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            if patience is not None and val_batch is not None and best["bad"] >= patience:
                stopped = True
                break
            started = time.perf_counter()
            order = next_order if next_order is not None else epoch_order(run.seed, epoch, n, batch_size)
            if order_sharding is not None:
                order = jax.device_put(order, order_sharding)
            new_state, losses, means, sizes = run_epoch(state, data, order, l2)  # dispatched asynchronously
            next_order = epoch_order(run.seed, epoch + 1, n, batch_size) if epoch < epochs else None
            if limit is None:
                limit = _divergence_limit(config.task, encoded[config.task.target], float(np.asarray(losses)[0]))
            state, logs = new_state, _epoch_logs(config.task, epoch, losses, means, sizes, n, limit)
            if val_batch is not None:
                _validate(model, state, val_batch, logs, best, restore_best)
            logs["seconds"] = time.perf_counter() - started
            history.append(logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: round(v, 4) for k, v in logs.items()
                                 if k in ("train_loss", "val_rmse", "val_logloss", "val_auc")})
            if checkpoint is not None:
                checkpoints.save(checkpoint, model, state, best_params=best["params"] if restore_best else None,
                                 meta={"epoch": epoch, "history": history, "settings": settings,
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
    return _Phase(unpadded(state._replace(params=params)).params, state, history, best_epoch, stopped)


def _in_row_order(config, encoded: dict) -> dict:
    """The examples ordered by their first side's rows when each example has one (ratings
    by user, :func:`~mdcf.train.by_key`): a step then reads and writes that table in
    increasing row order. Examples with several rows per side keep their order."""
    side = next(iter(config.sides))
    return by_key(encoded, config.id_keys[side]) if config.id_shapes[side] == () else encoded


# An epoch's learning curve: the mean task loss over each of this many equal parts of its steps.
CURVE_POINTS = 16

# A step's loss above this many times the divergence reference stops the run (see _epoch_logs).
DIVERGENCE_FACTOR = 100.0


def _divergence_limit(task, targets, first_loss: float) -> float:
    """The training loss that means a run diverged: ``DIVERGENCE_FACTOR`` times the larger of
    the task's reference loss (:attr:`mdcf.models.Task.reference`: the mean squared
    training rating, the loss of predicting 0 for every rating; log 2 for clicks) and the
    phase's first step's loss (the model as it started; large under a large ``l2``)."""
    return DIVERGENCE_FACTOR * max(task.reference(targets), first_loss if math.isfinite(first_loss) else 0.0)


def _epoch_logs(task, epoch: int, losses, means, sizes, n: int, limit: float) -> dict:
    """An epoch's training metrics; :class:`TrainingDivergedError` when a step's loss is not
    finite or exceeds ``limit`` (:func:`_divergence_limit`)."""
    losses = np.asarray(losses)
    bad = ~np.isfinite(losses) | (losses > limit)
    if bad.any():
        bad_step = int(np.flatnonzero(bad)[0]) + 1
        why = ("the returned model would be NaN" if not np.isfinite(losses[bad_step - 1]) else
               f"more than {limit:.4g}, {DIVERGENCE_FACTOR:g}x the larger of {task.reference_name} and the "
               "first step's loss: the run diverged")
        raise TrainingDivergedError(
            f"fit: the training loss became {losses[bad_step - 1]:.4g} at epoch {epoch}, step {bad_step} of "
            f"{len(losses)} ({why}); lower the learning rate or raise l2"
        )
    sizes = np.asarray(sizes)
    means = np.asarray(means)
    parts = np.array_split(np.arange(len(means)), min(CURVE_POINTS, len(means)))
    return {
        "epoch": epoch,
        "train_loss": float(np.sum(losses * sizes) / n),
        f"train_{task.metric}": float(np.sum(means * sizes) / n),
        "train_curve": [float(np.sum(means[p] * sizes[p]) / max(np.sum(sizes[p]), 1.0)) for p in parts],
    }


def _validate(model, state: TrainState, val_batch: dict, logs: dict, best: dict, restore_best: bool) -> None:
    """Adds the validation metrics (:data:`VALIDATION_METRICS`) to ``logs`` and keeps
    ``best`` (lowest task metric) up to date."""
    task = models.config_of(model).task
    pred = predict_batch(model, state.params, val_batch)
    values = TASK_METRICS[task.name](model, val_batch, pred)
    for name in VALIDATION_METRICS[task.name]:
        logs[f"val_{name}"] = values[name]
    value = values[task.metric]
    if value < best["value"]:
        best.update(value=value, epoch=logs["epoch"], bad=0)
        if restore_best:
            best["params"] = copy_tree(state.params)  # the next epoch donates state
    else:
        best["bad"] += 1
