"""DLRM (Naumov et al. 2019) for click-through-rate prediction, as pure functions.

The model of facebookresearch/dlrm with dot interactions:

1. a bottom MLP maps the dense features to ``d0`` (ReLU after every layer);
2. each categorical field looks up a ``d0``-dimensional embedding. All fields share
   one stacked row space (field ``f``'s code ``c`` is row ``offsets[f] + c``) held by
   one embedding spec of any registered scheme: a uniform table, or MD with one block
   per field (:func:`dlrm_config`), the paper's CTR layout;
3. the pairwise dot products of the ``F + 1`` vectors (bottom output and embeddings,
   each pair once, no self-products) are concatenated to the bottom output;
4. a top MLP (ReLU on hidden layers) gives one logit; the click probability is its sigmoid.

dlrm's Kaggle configuration is the default: bottom 13-512-256-64-16, top 367-512-256-1
(367 = 16 + 27 * 26 / 2), ``d0 = 16``. MLP weights are Xavier-uniform with zero biases
(the MD paper's initialisation); embeddings start as their scheme draws them
(:func:`mdcf.embeddings.init`, coordinates of standard deviation ``init_stddev``).

Example:
  >>> import jax, numpy as np
  >>> config = dlrm_config((100, 20, 5), dim=4, alpha=0.3, bottom=(8,), top=(8,), n_dense=2)
  >>> config.table.dims
  (2, 3, 4)
  >>> params = init(jax.random.key(0), config)
  >>> rows = field_rows_to_stacked(np.array([[3, 1, 0], [99, 19, 4]]), config)
  >>> apply(params, config, np.ones((2, 2), np.float32), rows).shape
  (2,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import blocking, embeddings, sizing
from ..embeddings import MDSpec

__all__ = ["DLRMConfig", "dlrm_config", "init", "apply", "predict_proba", "num_params", "interaction_pairs",
           "field_rows_to_stacked", "bce_loss"]


@dataclass(frozen=True)
class DLRMConfig:
    """Static structure of a DLRM.

    Attributes:
      table: the embedding spec of all fields' stacked rows (any registered scheme);
        its base dimension is ``d0``.
      field_rows: rows of each categorical field (they sum to the table's rows).
      n_dense: dense features.
      bottom: hidden sizes of the bottom MLP (its last layer, of size ``d0``, is added).
      top: hidden sizes of the top MLP (its output layer, of size 1, is added).
      init_stddev: standard deviation of initial embedding coordinates.
    """

    table: Any
    field_rows: tuple[int, ...]
    n_dense: int = 13
    bottom: tuple[int, ...] = (512, 256, 64)
    top: tuple[int, ...] = (512, 256)
    init_stddev: float = 0.01

    def __post_init__(self):
        embeddings.scheme(self.table)  # a registered spec, or TypeError
        rows = tuple(int(r) for r in self.field_rows)
        if not rows or min(rows) < 1:
            raise ValueError(f"field_rows must be positive row counts, got {self.field_rows!r}")
        if sum(rows) != self.table.n_rows:
            raise ValueError(f"the table has {self.table.n_rows} rows, the fields {sum(rows)} "
                             f"({len(rows)} fields); stack one row space for all fields")
        for name in ("bottom", "top"):
            sizes = tuple(int(s) for s in getattr(self, name))
            if sizes and min(sizes) < 1:
                raise ValueError(f"{name} must be positive layer sizes, got {getattr(self, name)!r}")
            object.__setattr__(self, name, sizes)
        if self.n_dense < 1:
            raise ValueError(f"n_dense must be positive, got {self.n_dense}")
        object.__setattr__(self, "field_rows", rows)

    @property
    def dim(self) -> int:
        return self.table.base_dim

    @property
    def n_fields(self) -> int:
        return len(self.field_rows)

    @property
    def offsets(self) -> np.ndarray:
        """First stacked row of each field."""
        return np.concatenate([[0], np.cumsum(self.field_rows)[:-1]]).astype(np.int64)

    @property
    def top_input(self) -> int:
        vectors = self.n_fields + 1
        return self.dim + vectors * (vectors - 1) // 2

    def layer_sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Full widths of the bottom and top MLPs, inputs and outputs included."""
        return (self.n_dense, *self.bottom, self.dim), (self.top_input, *self.top, 1)


def dlrm_config(field_rows, *, dim: int = 16, alpha: float = 0.0, round_pow2: bool = False,
                n_dense: int = 13, bottom=(512, 256, 64), top=(512, 256), init_stddev: float = 0.01) -> DLRMConfig:
    """A DLRM with a uniform table (``alpha=0``) or MD embeddings with one block per field.

    With ``alpha > 0``, field ``f``'s block gets ``d_f = dim * (p_f / p_max) ** alpha``
    with ``p_f = 1 / n_f`` (each field is looked up once per example; dlrm's sizing
    rule, :func:`mdcf.blocking.stack`), rounded (to powers of two with ``round_pow2``);
    the smallest fields get ``dim`` and a projection maps each block to ``dim``.
    """
    rows = tuple(int(r) for r in field_rows)
    if alpha == 0:
        table = MDSpec.uniform(sum(rows), dim)
    else:
        stacked = blocking.stack(rows)
        dims = sizing.popularity_dims(stacked.row_probs, alpha, base_dim=dim, round_pow2=round_pow2)
        table = MDSpec(rows, dims, dim, loads=tuple(stacked.probs))
    return DLRMConfig(table, rows, n_dense, tuple(bottom), tuple(top), init_stddev)


def field_rows_to_stacked(categorical, config: DLRMConfig) -> np.ndarray:
    """Per-field codes ``[B, F]`` to stacked table rows (``offsets[f] + code``), int32.
    Codes outside a field's rows raise ``ValueError`` naming the field."""
    categorical = np.asarray(categorical)
    if categorical.ndim != 2 or categorical.shape[1] != config.n_fields:
        raise ValueError(f"categorical codes must be [examples, {config.n_fields}], got shape {categorical.shape}")
    low, high = categorical.min(axis=0), categorical.max(axis=0)
    bad = np.flatnonzero((low < 0) | (high >= np.asarray(config.field_rows))) if len(categorical) else []
    if len(bad):
        f = int(bad[0])
        raise ValueError(f"field {f}: codes must lie in [0, {config.field_rows[f]}), got values from {low[f]} to {high[f]}")
    return (categorical + config.offsets).astype(np.int32)


def _xavier(key, fan_in: int, fan_out: int) -> jax.Array:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit)


def _mlp_init(key, sizes) -> list[dict]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": _xavier(k, a, b), "b": jnp.zeros(b, jnp.float32)} for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def init(key: jax.Array, config: DLRMConfig) -> dict:
    """Initial parameters ``{"tables": {"fields": ...}, "dense": {"projections": {"fields": ...},
    "bottom": [...], "top": [...]}}`` (the layout of the rating models: tables by rows, the rest dense)."""
    k_table, k_bottom, k_top = jax.random.split(key, 3)
    tables, projections = embeddings.split(config.table, embeddings.init(k_table, config.table, config.init_stddev))
    bottom_sizes, top_sizes = config.layer_sizes()
    return {"tables": {"fields": tables},
            "dense": {"projections": {"fields": projections}, "bottom": _mlp_init(k_bottom, bottom_sizes),
                      "top": _mlp_init(k_top, top_sizes)}}


def interaction_pairs(n_vectors: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` of every pair with ``i > j``, in dlrm's order (row by row of the lower triangle)."""
    i, j = np.tril_indices(n_vectors, k=-1)
    return i, j


def _mlp(layers, x, last_relu: bool):
    for n, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if last_relu or n < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def apply(params: dict, config: DLRMConfig, dense, rows, capacity: int | str | None = "auto") -> jax.Array:
    """Click logits ``[B]`` from dense features ``[B, n_dense]`` and stacked rows ``[B, F]``
    (:func:`field_rows_to_stacked`). Differentiable in ``params``; jit- and vmap-safe."""
    dense = jnp.asarray(dense, jnp.float32)
    x = _mlp(params["dense"]["bottom"], dense, last_relu=True)  # [B, d0]
    layer = embeddings.join(config.table, params["tables"]["fields"], params["dense"]["projections"]["fields"])
    vectors = embeddings.lookup(layer, config.table, jnp.asarray(rows), capacity)  # [B, F, d0]
    z = jnp.concatenate([x[:, None, :], vectors], axis=1)
    products = jnp.einsum("bid,bjd->bij", z, z)
    i, j = interaction_pairs(z.shape[1])
    top_in = jnp.concatenate([x, products[:, i, j]], axis=1)
    return _mlp(params["dense"]["top"], top_in, last_relu=False)[:, 0]


def predict_proba(params: dict, config: DLRMConfig, dense, rows) -> jax.Array:
    """Click probabilities ``[B]``."""
    return jax.nn.sigmoid(apply(params, config, dense, rows))


def bce_loss(logits, labels, weights=None) -> jax.Array:
    """Mean binary cross-entropy from logits (numerically stable), weighted if ``weights``."""
    labels = jnp.asarray(labels, jnp.float32)
    losses = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    if weights is None:
        return jnp.mean(losses)
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1.0)


def num_params(config: DLRMConfig) -> int:
    """Every trainable parameter: embeddings (projections included) and both MLPs."""
    total = embeddings.num_params(config.table)
    for sizes in config.layer_sizes():
        total += sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return total
