"""Criteo-shaped synthetic click logs from a known click model.

:func:`synthetic_ctr` draws examples with Criteo Kaggle's 26 categorical fields
(their cardinalities, or scaled down), Zipf popularity within each field, 13
integer features, and clicks from a ground-truth model

    logit = w0 + <w, dense> + sum_f b_f[c_f] + scale * sum_{f < g} <u_f[c_f], u_g[c_g]>

(a dense linear term, per-category biases and low-rank pairwise field interactions,
the structure DLRM itself models), with ``w0`` calibrated to the wanted positive
rate. The true click probabilities come back with the data, so the best achievable
logloss and AUC on any part are known (:meth:`CTRTruth.best`).
:func:`write_criteo_text` writes examples in Criteo's text layout, for the reader.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..metrics import auc, logloss
from .criteo import CTRData, transform_dense
from .synthetic import zipf_weights

__all__ = ["KAGGLE_CARDINALITIES", "CTRTruth", "synthetic_ctr", "write_criteo_text"]

KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
"""Rows of Criteo Kaggle's 26 categorical tables without a frequency threshold (33.76M in all)."""


@dataclass(frozen=True)
class CTRTruth:
    """The click model behind :func:`synthetic_ctr`'s examples.

    Attributes:
      probabilities: ``[n]`` the true click probability of every example.
      raw_dense: ``[n, 13]`` the integer features before the transform (NaN where empty).
      w0, dense_weights, scale: the model's intercept, dense weights and interaction scale.
    """

    probabilities: np.ndarray
    raw_dense: np.ndarray
    w0: float
    dense_weights: np.ndarray
    scale: float

    def best(self, labels: np.ndarray, rows=slice(None)) -> dict[str, float]:
        """The Bayes-optimal predictor's logloss, accuracy and AUC on ``labels`` (the
        examples ``rows``): what no model can beat, up to sampling noise."""
        p = self.probabilities[rows]
        return {"logloss": logloss(p, labels), "accuracy": float(np.mean((p > 0.5) == (labels > 0.5))),
                "auc": auc(p, labels)}


def _cardinalities(cardinalities, scale: float | None, cap: int | None) -> tuple[int, ...]:
    out = []
    for n in cardinalities:
        n = int(n)
        if scale is not None:
            n = max(2, int(round(n * scale)))
        if cap is not None:
            n = min(n, int(cap))
        out.append(max(n, 2))
    return tuple(out)


def synthetic_ctr(n: int, *, cardinalities=KAGGLE_CARDINALITIES, scale: float | None = None,
                  cap: int | None = None, exponent: float = 1.05, rank: int = 4, interaction: float = 3.0,
                  positive_rate: float = 0.256, missing: float = 0.05, seed: int = 0) -> tuple[CTRData, CTRTruth]:
    """``n`` Criteo-shaped examples and the click model that labelled them.

    Args:
      n: examples.
      cardinalities: rows per categorical field (default Criteo Kaggle's 26).
      scale, cap: shrink the tables: multiply every cardinality by ``scale`` and/or
        cap it at ``cap`` rows (at least 2 each).
      exponent: Zipf exponent of popularity within a field (code 0 most popular).
      rank: dimension of the ground-truth interaction vectors.
      interaction: scale of the pairwise interactions in the logit (the default gives
        about Criteo Kaggle's best logloss, 0.44, and AUC, 0.80).
      positive_rate: the mean click probability the intercept is calibrated to
        (Criteo Kaggle: about 25.6%).
      missing: fraction of integer features left empty.
      seed: everything is drawn from this seed.

    Returns:
      ``(CTRData, CTRTruth)``; ``counts`` are over all ``n`` examples (use
      :func:`mdcf.data.split_ctr` to split and recount on the training part).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0 < positive_rate < 1:
        raise ValueError(f"positive_rate must lie in (0, 1), got {positive_rate!r}")
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be a fraction in [0, 1), got {missing!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if cap is not None and cap < 2:
        raise ValueError(f"cap must be at least 2, got {cap!r}")
    rows = _cardinalities(cardinalities, scale, cap)
    rng = np.random.default_rng(seed)
    n_fields = len(rows)
    codes = np.empty((n, n_fields), np.int32)
    logit = np.zeros(n)
    interaction_sum = np.zeros((n, rank))
    interaction_sq = np.zeros(n)
    for f, size in enumerate(rows):
        weights = zipf_weights(size, exponent)
        codes[:, f] = np.minimum(np.searchsorted(np.cumsum(weights), rng.random(n), side="right"), size - 1)
        field_rng = np.random.default_rng([seed, f])
        bias = field_rng.normal(0.0, 0.15, size)
        vectors = field_rng.normal(0.0, 1.0 / np.sqrt(rank * n_fields), (size, rank))
        logit += bias[codes[:, f]]
        v = vectors[codes[:, f]]
        interaction_sum += v
        interaction_sq += np.sum(v * v, axis=1)
    # sum_{f<g} <u_f, u_g> = (|sum u|^2 - sum |u|^2) / 2
    logit += interaction * (np.sum(interaction_sum**2, axis=1) - interaction_sq) / 2
    raw_dense = np.floor(rng.lognormal(1.0, 1.5, (n, 13))) - (rng.random((n, 13)) < 0.02)  # a few -1s, as Criteo has
    raw_dense[rng.random((n, 13)) < missing] = np.nan
    dense = transform_dense(raw_dense)
    dense_weights = rng.normal(0.0, 0.15, 13)
    logit += (dense - dense.mean(axis=0)) @ dense_weights
    w0 = _calibrate(logit, positive_rate)
    probabilities = 1.0 / (1.0 + np.exp(-(logit + w0)))
    labels = (rng.random(n) < probabilities).astype(np.float32)
    counts = tuple(np.bincount(codes[:, f], minlength=rows[f]).astype(np.int64) for f in range(n_fields))
    data = CTRData(labels, dense, codes, rows, counts, "synthetic-ctr")
    return data, CTRTruth(probabilities, raw_dense, float(w0), dense_weights, float(interaction))


def _calibrate(logit: np.ndarray, rate: float) -> float:
    """The intercept giving a mean probability of ``rate`` (bisection: the mean is monotone)."""
    low, high = -30.0, 30.0
    for _ in range(80):
        middle = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + middle)))) < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _hash_hex(field: int, codes: np.ndarray) -> np.ndarray:
    """A fixed 32-bit mix of (field, code), as 8 hex digits: a bijection of codes per field."""
    x = (codes.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(field * 0x85EBCA77 + 1)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    return np.char.mod("%08x", x)


def write_criteo_text(path: os.PathLike | str, data: CTRData, truth: CTRTruth, *, empty_code: int | None = None,
                      compress: bool = False) -> Path:
    """Write examples in Criteo's text layout (atomically; gzip with ``compress``).

    Integer features are ``truth.raw_dense`` (empty where NaN); categories are a fixed
    32-bit hash of (field, code) in hex, except ``empty_code`` (if given), written as an
    empty field. Needs the 13 + 26 layout.
    """
    if data.n_dense != 13 or data.n_fields != 26:
        raise ValueError(f"the Criteo layout has 13 integer and 26 categorical fields, got {data.n_dense} and "
                         f"{data.n_fields}")
    path = Path(path)
    with atomic_write(path) as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
        for start in range(0, len(data), 50_000):
            rows = slice(start, start + 50_000)
            columns = [data.labels[rows].astype(np.int64).astype(str)]
            dense = truth.raw_dense[rows]
            for j in range(13):
                text = np.where(np.isnan(dense[:, j]), "", np.nan_to_num(dense[:, j]).astype(np.int64).astype(str))
                columns.append(text)
            for f in range(26):
                codes = np.asarray(data.categorical[rows, f])
                text = _hash_hex(f, codes)
                if empty_code is not None:
                    text = np.where(codes == empty_code, "", text)
                columns.append(text)
            lines = columns[0].astype(object)
            for column in columns[1:]:
                lines = lines + "\t" + column.astype(object)
            out.write(("\n".join(lines) + "\n").encode())
        if compress:
            out.close()
    return path
