"""Rating metrics against a per-rating loop, and their input checks."""

import math

import numpy as np
import pytest

from mdcf import metrics


def test_rating_metrics_match_a_loop():
    rng = np.random.default_rng(0)
    n_items = 10
    items = rng.integers(0, n_items, 200)
    target = rng.integers(1, 6, 200).astype(np.float32)
    pred = target + rng.normal(0, 0.7, 200).astype(np.float32)
    got = metrics.rating_metrics(pred, target, items, n_items)
    squared = {"all": [], "popular": [], "rare": []}
    for p, t, i in zip(pred.tolist(), target.tolist(), items.tolist()):
        squared["all"].append((p - t) ** 2)
        if i < n_items / 3:  # rows 0-3: the most popular third of 10 items
            squared["popular"].append((p - t) ** 2)
        if i >= n_items - n_items / 3:  # rows 7-9
            squared["rare"].append((p - t) ** 2)
    assert got["mse"] == pytest.approx(sum(squared["all"]) / 200, rel=1e-6)
    assert got["rmse"] == pytest.approx(math.sqrt(got["mse"]))
    assert got["mae"] == pytest.approx(sum(abs(p - t) for p, t in zip(pred.tolist(), target.tolist())) / 200, rel=1e-6)
    assert got["mse_popular"] == pytest.approx(np.mean(squared["popular"]), rel=1e-6)
    assert got["mse_rare"] == pytest.approx(np.mean(squared["rare"]), rel=1e-6)
    assert (got["n"], got["n_popular"], got["n_rare"]) == (200, len(squared["popular"]), len(squared["rare"]))
    empty = metrics.rating_metrics(np.zeros(0), np.zeros(0), np.zeros(0, int), n_items)
    assert math.isnan(empty["mse"]) and empty["n"] == 0


def test_rating_metrics_refuse_mismatched_or_out_of_range_input():
    with pytest.raises(ValueError, match=r"1-D of one length, got shapes \(3,\), \(4,\) and \(3,\)"):
        metrics.rating_metrics(np.zeros(3), np.zeros(4), np.zeros(3, int), 5)
    with pytest.raises(ValueError, match=r"item_rows must lie in \[0, 3\), got values from 0 to 7"):
        metrics.rating_metrics(np.ones(3), np.ones(3), np.array([0, 1, 7]), 3)
    with pytest.raises(ValueError, match=r"item_rows must lie in \[0, 3\), got values from -1"):
        metrics.rating_metrics(np.ones(2), np.ones(2), np.array([-1, 1]), 3)


@pytest.mark.parametrize("metric", [metrics.mse, metrics.rmse, metrics.mae])
def test_error_metrics_refuse_broadcasting(metric):
    # [n, 1] against [n] would broadcast to n * n differences: a silently wrong value.
    pred, target = np.arange(4.0)[:, None], np.arange(4.0)
    with pytest.raises(ValueError, match=r"one shape, got \(4, 1\) and \(4,\)"):
        metric(pred, target)
    assert metric(pred[:, 0], target) == 0.0
