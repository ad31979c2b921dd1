"""Predictions and test metrics of trained models of any family.

:func:`evaluate` gives the task's metrics: MSE, RMSE, MAE and the popular/rare
split for ratings; logloss, accuracy and exact AUC for clicks.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics, models
from ..models import Model
from .state import model_config

__all__ = ["make_eval_fn", "predict_rows", "predict_batch", "evaluate", "predict"]


def make_eval_fn(model, clip: bool = True, scale=None) -> Callable:
    """A jittable ``(params, users, items) -> predictions`` (clipped to the rating scale)."""
    config = model_config(model)
    if scale is None and isinstance(model, Model):
        scale = model.scale
    scale = tuple(scale) if clip and scale is not None else None
    return partial(_predict_impl, config=config, scale=scale)


def _predict_impl(params, users, items, *, config, scale):
    pred = models.apply(params, config, users, items)
    return pred if scale is None else jnp.clip(pred, scale[0], scale[1])


def predict_rows(model, params, users, items, batch_size=1 << 14, clip=True) -> np.ndarray:
    """float32 ``[n]`` predictions of a rating model for block-ordered user and item rows
    (:func:`predict_batch`)."""
    batch = {"users": np.asarray(users, np.int32), "items": np.asarray(items, np.int32)}
    return predict_batch(model, params, batch, batch_size, clip)


def _outputs_impl(params, batch, *, config, scale):
    pred = config.task.link(models.outputs(params, config, batch))
    return pred if scale is None else jnp.clip(pred, scale[0], scale[1])


_outputs_jit = jax.jit(_outputs_impl, static_argnames=("config", "scale"))


def predict_batch(model, params, encoded: dict, batch_size: int = 1 << 14, clip: bool = True) -> np.ndarray:
    """float32 ``[n]`` predictions (ratings, clipped to a rating model's scale unless
    ``clip=False``; click probabilities) for a batch dict of any length
    (:func:`mdcf.models.encode`), in fixed-size padded chunks: one compiled shape
    for every call on a model."""
    config = model_config(model)
    scale = tuple(model.scale) if clip and isinstance(model, Model) and model.scale is not None else None
    keys = [*config.id_keys.values(), *config.inputs]
    arrays = {key: np.asarray(encoded[key]) for key in keys}
    n = len(arrays[keys[0]])
    out = np.empty(n, np.float32)
    for start in range(0, n, batch_size):
        chunk = {key: value[start:start + batch_size] for key, value in arrays.items()}
        size = len(chunk[keys[0]])
        if size < batch_size:  # pad (copies of the first example) to keep one compiled shape
            chunk = {key: np.concatenate([value, np.repeat(value[:1], batch_size - size, axis=0)])
                     for key, value in chunk.items()}
        out[start:start + size] = np.asarray(_outputs_jit(params, chunk, config=config, scale=scale))[:size]
    return out


def _rating_metrics(model, encoded: dict, pred: np.ndarray) -> dict[str, float]:
    return metrics.rating_metrics(pred, encoded["ratings"], encoded["items"], model_config(model).item.n_rows)


def _click_metrics(model, encoded: dict, pred: np.ndarray) -> dict[str, float]:
    return metrics.ctr_metrics(pred, encoded["labels"])


# Per task, the test metrics of predictions: (model, encoded data, predictions) -> dict.
TASK_METRICS = {"rating": _rating_metrics, "click": _click_metrics}


def evaluate(model, params: dict, data, *, clip: bool = True, batch_size: int = 1 << 14) -> dict[str, float]:
    """Test metrics of a model on data in its code space: the task's metrics.

    Args:
      model: a rating :class:`~mdcf.models.Model` with :class:`~mdcf.data.Ratings`, or
        a DLRM config with :class:`~mdcf.data.CTRData`.

    Returns:
      For ratings: ``mse``, ``rmse``, ``mae``, and ``mse_popular`` / ``mse_rare``: the MSE on
      ratings of the most popular third and the rarest third of items (by
      training frequency; the paper's Fig. 3 split), with ``n``, ``n_popular``,
      ``n_rare``. Predictions are clipped to the rating scale unless ``clip=False``.
      For clicks: ``logloss``, ``accuracy``, ``auc`` (exact), ``mean_prediction``,
      ``positive_rate`` and ``n`` (:func:`mdcf.metrics.ctr_metrics`).
    """
    config = model_config(model)
    models.check_params(config, params, "evaluate: params")
    if len(data) == 0:
        raise ValueError("evaluate: no examples to evaluate on (every metric of an empty set is undefined)")
    encoded = models.encode(model, data)
    pred = predict_batch(model, params, encoded, batch_size, clip)
    return TASK_METRICS[config.task.name](model, encoded, pred)


def predict(model: Model, params: dict, user_ids, item_ids, *, clip: bool = True, batch_size: int = 1 << 14) -> np.ndarray:
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
        numeric = lambda a: a.dtype.kind in "iub" or (a.dtype.kind == "f")  # noqa: E731
        if len(ids) and len(known) and numeric(ids) != numeric(known):
            raise TypeError(f"predict: ids of dtype {ids.dtype} cannot be the model's ids, which are "
                            f"{'numbers' if numeric(known) else 'strings'} ({known.dtype})")
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
    pred = predict_rows(model, params, users, items, batch_size, clip=False)
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

