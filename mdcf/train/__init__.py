"""Training: optimisers with row-sparse table updates, pure train steps, ``fit`` and evaluation.

The public contract, one concern per module::

    optim      RowOptimizer, Optimizer, row_sgd, row_adagrad, row_rowwise_adagrad, row_adam,
               row_amsgrad,
               optimizer, named_optimizer, as_optimizer, OPTIMIZERS
    state      TrainState, init_state
    step       make_train_step (dense or row-sparse, on one device or a mesh)
    sparse     duplicate combining and row updates of the row-sparse step
    batches    pack, unpack, Packed, by_key, by_user, epoch_order: training data on the device
    epochs     make_epoch_fn, cached_epoch_fn, auto_sparse: the epoch runner fit uses
    loop       fit, FitResult, TrainingDivergedError
    evaluate   make_eval_fn, evaluate, predict, predict_rows, predict_batch, TASK_METRICS

Example:
  >>> import jax
  >>> from mdcf import data, models, train
  >>> ratings, _ = data.synthetic(200, 100, 2_000, seed=0)
  >>> model = models.build_model(ratings, "mf", dim=8)
  >>> opt = train.optimizer("adam", 1e-2)
  >>> state = train.init_state(jax.random.key(0), model, opt)
  >>> step = jax.jit(train.make_train_step(model, opt, l2=0.01))
  >>> state, metrics = step(state, model.encode(ratings))
  >>> int(state.step)
  1
"""

from .batches import Packed, by_key, by_user, epoch_order, pack, unpack
from .epochs import auto_sparse, cached_epoch_fn, copy_tree, make_epoch_fn
from .evaluate import TASK_METRICS, evaluate, make_eval_fn, predict, predict_batch, predict_rows
from .loop import FitResult, TrainingDivergedError, fit
from .optim import (
    OPTIMIZERS,
    Optimizer,
    RowOptimizer,
    as_optimizer,
    named_optimizer,
    optimizer,
    row_adagrad,
    row_adam,
    row_amsgrad,
    row_rowwise_adagrad,
    row_sgd,
)
from .state import TrainState, init_state, model_config
from .step import make_train_step

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
    "TrainState",
    "init_state",
    "model_config",
    "make_train_step",
    "Packed",
    "by_key",
    "by_user",
    "pack",
    "unpack",
    "epoch_order",
    "make_epoch_fn",
    "cached_epoch_fn",
    "copy_tree",
    "auto_sparse",
    "make_eval_fn",
    "evaluate",
    "predict",
    "predict_rows",
    "predict_batch",
    "TASK_METRICS",
    "fit",
    "FitResult",
    "TrainingDivergedError",
]
