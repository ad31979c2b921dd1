"""Rating models as pure functions of a :class:`~mdcf.models.ModelConfig`.

Parameters are a plain dict pytree split into row tables and dense parameters::

    params = {
        "tables": {"user": (E_0, ...), "item": (...), "user_bias": [n_users], "item_bias": [n_items]},
        "dense": {"projections": {"user": (P_0 | None, ...), "item": ...}, "bias": scalar, ...},
    }

``tables`` holds each embedding's table leaves (:func:`mdcf.embeddings.split`) and
the biases, all indexed by user or item rows (row-sparse updates touch only the
rows of a batch); ``dense`` holds everything else, each embedding's dense
parameters (an MD layer's projections) under ``"projections"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import embeddings
from .config import ModelConfig
from .kinds import REGISTRY

__all__ = ["init", "layer_params", "value_tables", "embed_batch", "embed", "head", "apply", "num_params"]


def init(key: jax.Array, config: ModelConfig, global_mean: float = 0.0) -> dict:
    """Initial parameters.

    Embeddings come from :func:`mdcf.embeddings.init` (coordinates ``N(0, init_stddev**2)``),
    biases start at zero and the global bias at ``global_mean``. MLP weights are
    He-normal for LeakyReLU with zero biases; the output weights ``h`` start at ones
    on the GMF part (so ``gmf`` starts as ``mf``) and LeCun-normal on the MLP part.
    """
    keys = iter(jax.random.split(key, 16))
    tables, projections = {}, {}
    for name, _, spec in config.embeddings:
        tables[name], projections[name] = embeddings.split(
            spec, embeddings.init(next(keys), spec, stddev=config.init_stddev))
    if config.biases:
        tables["user_bias"] = jnp.zeros(config.user.n_rows, jnp.float32)
        tables["item_bias"] = jnp.zeros(config.item.n_rows, jnp.float32)
    dense = {"projections": projections, "bias": jnp.asarray(global_mean, jnp.float32)}
    dense.update(REGISTRY[config.kind].init_dense(keys, config))
    return {"tables": tables, "dense": dense}


def layer_params(params: dict, name: str, spec=None):
    """The parameters of embedding ``name`` as its scheme holds them: joined by
    ``spec``'s scheme (:func:`mdcf.embeddings.join`), an MD layer's
    :class:`~mdcf.embeddings.MDParams` without a ``spec``."""
    tables, dense = params["tables"][name], params["dense"]["projections"][name]
    return embeddings.MDParams(tuple(tables), tuple(dense)) if spec is None else embeddings.join(spec, tables, dense)


def value_tables(config) -> tuple[tuple[str, str], ...]:
    """``(name, side)`` of the row tables holding one value per row (a rating model's
    biases), for a config of any family."""
    names = {name for name, _, _ in config.embeddings}
    return tuple((name, side) for name, side in config.row_tables if name not in names)


def embed_batch(params: dict, config, ids: dict, capacity: int | str | None = "auto") -> tuple[dict, dict]:
    """``(vectors, rows)`` of a batch, for a config of any family: each embedding's vectors
    ``[*ids[side].shape, d0]`` and each one-value-per-row table's values
    (:func:`value_tables`) gathered with the side's ids (``{side: int rows in block order}``).
    ``capacity`` goes to :func:`mdcf.embeddings.lookup` (``None``: differentiable in
    forward mode and to any order, slower). Sides in ``config.column_sides`` whose scheme
    has ``lookup_columns`` (DLRM with one MD block per field) use it instead."""
    columns = getattr(config, "column_sides", ())
    vectors = {}
    for name, side, spec in config.embeddings:
        by_columns = embeddings.scheme(spec).lookup_columns if side in columns else None
        layer = layer_params(params, name, spec)
        vectors[name] = (by_columns(layer, spec, ids[side]) if by_columns is not None
                         else embeddings.lookup(layer, spec, ids[side], capacity))
    rows = {name: params["tables"][name][ids[side]] for name, side in value_tables(config)}
    return vectors, rows


def embed(params: dict, config: ModelConfig, users: jax.Array, items: jax.Array,
          capacity: int | str | None = "auto") -> dict[str, jax.Array]:
    """Embedding vectors ``[B, d0]`` of every table for a batch of user and item rows
    (``capacity``: see :func:`embed_batch`)."""
    return embed_batch(params, config, {"user": users, "item": items}, capacity)[0]


def head(dense: dict, config: ModelConfig, vectors: dict[str, jax.Array], user_bias=None, item_bias=None) -> jax.Array:
    """Predicted ratings ``[B]`` from embedding vectors (and gathered biases)."""
    score = REGISTRY[config.kind].score(dense, config, vectors)
    score = score + dense["bias"]
    if config.biases:
        score = score + user_bias + item_bias
    return score


def apply(params: dict, config: ModelConfig, users: jax.Array, items: jax.Array,
          capacity: int | str | None = "auto") -> jax.Array:
    """Predicted ratings ``[B]`` (not clipped) for user and item rows in block order.

    Differentiable in ``params`` with ``jax.grad``; for forward mode (``jax.jvp``,
    ``jax.hessian``) or a gradient of a gradient, pass ``capacity=None`` (see
    :func:`mdcf.embeddings.lookup`)."""
    vectors, rows = embed_batch(params, config, {"user": users, "item": items}, capacity)
    return head(params["dense"], config, vectors, rows.get("user_bias"), rows.get("item_bias"))


def num_params(config: ModelConfig) -> int:
    """Every trainable parameter: embeddings (projections included), biases, MLP and output."""
    total = sum(embeddings.num_params(spec) for _, _, spec in config.embeddings)
    if config.biases:
        total += config.user.n_rows + config.item.n_rows
    total += 1  # global bias
    return total + REGISTRY[config.kind].num_dense(config)
