"""Metrics: rating prediction (including the paper's popular-third / rare-third split) and
click prediction (logloss, accuracy, exact ROC AUC)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mse", "rmse", "mae", "popularity_thirds", "rating_metrics", "logloss", "accuracy", "auc", "ctr_metrics"]


def _pair(pred, target, where: str) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:  # broadcasting [n, 1] against [n] would average n * n errors
        raise ValueError(f"{where}: pred and target must have one shape, got {pred.shape} and {target.shape}")
    return pred, target


def _mean_squared(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred - target) ** 2)) if pred.size else math.nan


def mse(pred, target) -> float:
    """Mean squared error (NaN for no predictions). ``pred`` and ``target`` have one shape."""
    return _mean_squared(*_pair(pred, target, "mse"))


def rmse(pred, target) -> float:
    """Root mean squared error."""
    return math.sqrt(_mean_squared(*_pair(pred, target, "rmse")))


def mae(pred, target) -> float:
    """Mean absolute error (NaN for no predictions). ``pred`` and ``target`` have one shape."""
    pred, target = _pair(pred, target, "mae")
    return float(np.mean(np.abs(pred - target))) if pred.size else math.nan


def popularity_thirds(item_rows, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of ratings on the most popular third and the rarest third of items.

    ``item_rows`` are rows in block order, which is training-frequency order
    (most frequent first): the popular third is rows ``< n_items / 3``, the rare
    third rows ``>= n_items - n_items / 3`` (Fig. 3 of the paper).
    """
    item_rows = np.asarray(item_rows)
    third = n_items / 3.0
    return item_rows < third, item_rows >= n_items - third


def rating_metrics(pred, target, item_rows, n_items: int) -> dict[str, float]:
    """``mse``, ``rmse``, ``mae``, ``mse_popular``, ``mse_rare`` and counts.

    ``pred``, ``target`` and ``item_rows`` are 1-D and of one length; ``item_rows``
    lie in ``[0, n_items)`` (``ValueError`` otherwise).
    """
    pred, target, item_rows = np.asarray(pred), np.asarray(target), np.asarray(item_rows)
    if pred.ndim != 1 or pred.shape != target.shape or pred.shape != item_rows.shape:
        raise ValueError(f"rating_metrics: pred, target and item_rows must be 1-D of one length, got shapes "
                         f"{pred.shape}, {target.shape} and {item_rows.shape}")
    if item_rows.size and (item_rows.min() < 0 or item_rows.max() >= n_items):
        raise ValueError(f"rating_metrics: item_rows must lie in [0, {n_items}), got values from "
                         f"{item_rows.min()} to {item_rows.max()}")
    popular, rare = popularity_thirds(item_rows, n_items)
    return {
        "mse": mse(pred, target),
        "rmse": rmse(pred, target),
        "mae": mae(pred, target),
        "mse_popular": mse(pred[popular], target[popular]),
        "mse_rare": mse(pred[rare], target[rare]),
        "n": int(pred.size),
        "n_popular": int(popular.sum()),
        "n_rare": int(rare.sum()),
    }


def _clicks(prob, labels, where: str) -> tuple[np.ndarray, np.ndarray]:
    prob, labels = _pair(prob, labels, where)
    if prob.ndim != 1:
        raise ValueError(f"{where}: probabilities and labels must be 1-D, got shape {prob.shape}")
    if labels.size and not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{where}: labels must be 0 or 1, got values such as {labels[(labels != 0) & (labels != 1)][0]}")
    return prob, labels


def logloss(prob, labels, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of click probabilities (clipped to ``[eps, 1 - eps]``); NaN when empty."""
    prob, labels = _clicks(prob, labels, "logloss")
    if not prob.size:
        return math.nan
    prob = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(labels * np.log(prob) + (1 - labels) * np.log1p(-prob)))


def accuracy(prob, labels, threshold: float = 0.5) -> float:
    """Fraction of examples where ``prob > threshold`` agrees with the label; NaN when empty."""
    prob, labels = _clicks(prob, labels, "accuracy")
    return float(np.mean((prob > threshold) == (labels == 1))) if prob.size else math.nan


def auc(scores, labels) -> float:
    """Exact area under the ROC curve: the probability that a random click scores above a
    random non-click, ties counting one half (the Mann-Whitney statistic from one sort,
    O(n log n), vectorised). NaN when either class is absent."""
    scores, labels = _clicks(scores, labels, "auc")
    positives = float(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    # Average ranks (1-based) over runs of tied scores.
    starts = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1]]))
    ends = np.append(starts[1:], ranked.size)
    average = (starts + ends + 1) / 2.0
    ranks = np.repeat(average, ends - starts)
    rank_sum = float(np.sum(ranks[labels[order] == 1]))
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def ctr_metrics(prob, labels) -> dict[str, float]:
    """``logloss``, ``accuracy``, ``auc``, the mean prediction and the positive rate, and ``n``."""
    prob, labels = _clicks(prob, labels, "ctr_metrics")
    return {"logloss": logloss(prob, labels), "accuracy": accuracy(prob, labels), "auc": auc(prob, labels),
            "mean_prediction": float(prob.mean()) if prob.size else math.nan,
            "positive_rate": float(labels.mean()) if labels.size else math.nan, "n": int(prob.size)}
