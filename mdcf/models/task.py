"""What a model is trained to predict: :class:`Task`, one entry per task in :data:`TASKS`.

A task is data to the one train step and ``fit``: the batch key of its targets,
its per-example loss, the metric it reports and stops on, how a prediction is
read (a rating, or a click probability from a logit) and the settings that give
good results by default. Rating models (:class:`~mdcf.models.ModelConfig`) have
the ``rating`` task, DLRM (:class:`~mdcf.models.dlrm.DLRMConfig`) the ``click`` task.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Task", "RATING", "CLICK", "TASKS", "squared_error", "binary_cross_entropy"]


def squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``(pred - target)**2`` per example."""
    return (pred - target) ** 2


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary cross-entropy per example from logits, numerically stable:
    ``max(z, 0) - z * y + log(1 + exp(-|z|))``."""
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _mean_square(targets) -> float:
    return float(np.mean(np.square(np.asarray(targets, np.float64)))) if len(targets) else 0.0


class Task(NamedTuple):
    """One learning task.

    Attributes:
      name: ``"rating"`` or ``"click"``.
      target: the batch key of the targets (``"ratings"``, ``"labels"``).
      loss: ``(pred, target) -> [B]`` per-example loss of the model's raw output.
      metric: the name of the mean loss in step metrics and of the validation
        metric ``fit`` stops on (``"mse"``, ``"logloss"``).
      link: ``raw output -> prediction`` (identity for ratings, sigmoid for clicks).
      reference: ``targets -> float``, the loss of a trivial predictor, which
        ``fit``'s divergence check scales (``DIVERGENCE_FACTOR`` times the larger of
        it and the first step's loss): the mean squared rating (predicting 0), or
        ``log 2`` (predicting 1/2).
      reference_name: the reference in words, for the divergence error.
      defaults: ``fit``'s settings for this task where the caller gives none (epochs,
        batch size, optimiser, learning rate, l2, validation).
    """

    name: str
    target: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    metric: str
    link: Callable[[jax.Array], jax.Array]
    reference: Callable[[np.ndarray], float]
    reference_name: str
    defaults: dict


RATING = Task(
    "rating", "ratings", squared_error, "mse", lambda x: x, _mean_square, "the mean squared rating",
    {"epochs": 100, "batch_size": 2048, "optimizer_name": "adam", "learning_rate": 3e-3, "l2": 0.1,
     "validation": 0.1},
)

# The MD paper's CTR runs (Ginart et al. 2019, section 4): Amsgrad, learning rate 1e-3,
# batch 4096, one epoch; no regularisation.
CLICK = Task(
    "click", "labels", binary_cross_entropy, "logloss", jax.nn.sigmoid, lambda labels: math.log(2.0),
    "log 2 (the loss of predicting 1/2)",
    {"epochs": 1, "batch_size": 4096, "optimizer_name": "amsgrad", "learning_rate": 1e-3, "l2": 0.0,
     "validation": None},
)

TASKS = {task.name: task for task in (RATING, CLICK)}
