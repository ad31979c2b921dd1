"""Predictions and test metrics of trained models."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics, models
from ..models import Model, ModelConfig
from .state import model_config

__all__ = ["make_eval_fn", "predict_rows", "evaluate", "predict"]


def make_eval_fn(model, clip: bool = True, scale=None) -> Callable:
    """A jittable ``(params, users, items) -> predictions`` (clipped to the rating scale)."""
    config = model_config(model)
    if scale is None and isinstance(model, Model):
        scale = model.scale
    scale = tuple(scale) if clip and scale is not None else None
    return partial(_predict_impl, config=config, scale=scale)


def _predict_impl(params, users, items, *, config: ModelConfig, scale):
    pred = models.apply(params, config, users, items)
    return pred if scale is None else jnp.clip(pred, scale[0], scale[1])


# One compiled function per (structure, scale), reused across calls and epochs.
_predict_jit = jax.jit(_predict_impl, static_argnames=("config", "scale"))


def predict_rows(model, params, users, items, batch_size=1 << 14, clip=True) -> np.ndarray:
    """float32 ``[n]`` predictions for block-ordered user and item rows, in fixed-size padded
    chunks: one compiled shape for every call on a model."""
    config = model_config(model)
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


def evaluate(model: Model, params: dict, ratings, *, clip: bool = True, batch_size: int = 1 << 14) -> dict[str, float]:
    """Test metrics of a model on ratings in its code space.

    Returns:
      ``mse``, ``rmse``, ``mae``, and ``mse_popular`` / ``mse_rare``: the MSE on
      ratings of the most popular third and the rarest third of items (by
      training frequency; the paper's Fig. 3 split), with ``n``, ``n_popular``,
      ``n_rare``. Predictions are clipped to the rating scale unless ``clip=False``.
    """
    models.check_params(model.config, params, "evaluate: params")
    if len(ratings) == 0:
        raise ValueError("evaluate: no ratings to evaluate on (every metric of an empty set is undefined)")
    batch = model.encode(ratings)
    pred = predict_rows(model, params, batch["users"], batch["items"], batch_size, clip)
    return metrics.rating_metrics(pred, batch["ratings"], batch["items"], model.config.item.n_rows)


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

