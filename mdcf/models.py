"""Rating models on uniform or MD embeddings: MF, GMF, MLP and NeuMF, as pure functions.

A :class:`ModelConfig` is the static structure (hashable, a ``jax.jit`` static
argument, JSON round-trip). Parameters are a plain dict pytree split into row
tables and dense parameters::

    params = {
        "tables": {"user": (E_0, ...), "item": (...), "user_bias": [n_users], "item_bias": [n_items]},
        "dense": {"projections": {"user": (P_0 | None, ...), "item": ...}, "bias": scalar, ...},
    }

``tables`` are indexed by user or item rows (row-sparse updates touch only the
rows of a batch); ``dense`` holds everything else. Users and items are
*rows in block order* (most frequent first); :class:`Model` carries the maps
from original ids, and :func:`mdcf.train.predict` works on original ids.

Models (all predict a rating; the global bias starts at the training mean):

* ``mf``: ``bias + b_u + b_i + <e_u, e_i>``;
* ``gmf``: ``bias + b_u + b_i + h . (e_u * e_i)`` (NCF's generalised MF, ``h`` starts at ones);
* ``mlp``: ``bias + b_u + b_i + MLP([e_u, e_i])``, hidden layers ``layers`` (default
  128-128-32 as in the paper) with LeakyReLU, then a linear output;
* ``neumf``: ``bias + b_u + b_i + h . [e_u^g * e_i^g, MLP([e_u^m, e_i^m])]`` with separate
  GMF and MLP embeddings (both of the configured structure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import blocking as blocking_
from . import embedding
from . import sizing
from .data import Ratings
from .embedding import MDParams, MDSpec

__all__ = ["KINDS", "ModelConfig", "Model", "init", "embed", "head", "apply", "num_params", "build_model"]

KINDS = ("mf", "gmf", "mlp", "neumf")


@dataclass(frozen=True)
class ModelConfig:
    """Static structure of a rating model.

    Attributes:
      kind: one of :data:`KINDS`.
      user, item: embedding structures (``MDSpec.uniform(n, d)`` for plain tables).
        Their base dimensions must match for ``mf``, ``gmf`` and ``neumf``.
      biases: learn per-user and per-item biases.
      layers: MLP hidden sizes (``mlp`` and ``neumf``).
      negative_slope: LeakyReLU slope of the MLP.
      init_stddev: standard deviation of initial embedding coordinates.
    """

    kind: str
    user: MDSpec
    item: MDSpec
    biases: bool = True
    layers: tuple[int, ...] = (128, 128, 32)
    negative_slope: float = 0.01
    init_stddev: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.user, MDSpec) or not isinstance(self.item, MDSpec):
            raise TypeError("user and item must be MDSpec structures")
        if self.kind in ("mf", "gmf", "neumf") and self.user.base_dim != self.item.base_dim:
            raise ValueError(
                f"{self.kind} multiplies user and item embeddings, so their base dims must match: "
                f"user {self.user.base_dim}, item {self.item.base_dim}"
            )
        layers = tuple(int(x) for x in self.layers)
        if self.kind in ("mlp", "neumf") and (not layers or min(layers) < 1):
            raise ValueError(f"layers must be positive sizes, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)

    @property
    def embeddings(self) -> tuple[tuple[str, str, MDSpec], ...]:
        """``(name, side, spec)`` for every embedding table; side is ``"user"`` or ``"item"``."""
        if self.kind == "neumf":
            return (("user_gmf", "user", self.user), ("item_gmf", "item", self.item),
                    ("user_mlp", "user", self.user), ("item_mlp", "item", self.item))
        return (("user", "user", self.user), ("item", "item", self.item))

    @property
    def row_tables(self) -> tuple[tuple[str, str], ...]:
        """``(name, side)`` of every row-indexed table: embeddings and biases."""
        out = tuple((name, side) for name, side, _ in self.embeddings)
        if self.biases:
            out += (("user_bias", "user"), ("item_bias", "item"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "user": self.user.to_dict(), "item": self.item.to_dict(), "biases": self.biases,
            "layers": list(self.layers), "negative_slope": self.negative_slope, "init_stddev": self.init_stddev,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "ModelConfig":
        value = dict(value)
        value["user"] = MDSpec.from_dict(value["user"])
        value["item"] = MDSpec.from_dict(value["item"])
        value["layers"] = tuple(value.get("layers", (128, 128, 32)))
        return cls(**value)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


def _mlp_input_dim(config: ModelConfig) -> int:
    return config.user.base_dim + config.item.base_dim


def init(key: jax.Array, config: ModelConfig, global_mean: float = 0.0) -> dict:
    """Initial parameters.

    Embeddings come from :func:`mdcf.embedding.init` (coordinates ``N(0, init_stddev**2)``),
    biases start at zero and the global bias at ``global_mean``. MLP weights are
    He-normal for LeakyReLU with zero biases; the output weights ``h`` start at ones
    on the GMF part (so ``gmf`` starts as ``mf``) and LeCun-normal on the MLP part.
    """
    keys = iter(jax.random.split(key, 16))
    tables, projections = {}, {}
    for name, _, spec in config.embeddings:
        layer = embedding.init(next(keys), spec, stddev=config.init_stddev)
        tables[name] = layer.tables
        projections[name] = layer.projections
    if config.biases:
        tables["user_bias"] = jnp.zeros(config.user.n_rows, jnp.float32)
        tables["item_bias"] = jnp.zeros(config.item.n_rows, jnp.float32)
    dense: dict[str, Any] = {"projections": projections, "bias": jnp.asarray(global_mean, jnp.float32)}
    if config.kind in ("mlp", "neumf"):
        layers = []
        width = _mlp_input_dim(config)
        he = jax.nn.initializers.he_normal()
        for size in config.layers:
            layers.append({"w": he(next(keys), (width, size), jnp.float32), "b": jnp.zeros(size, jnp.float32)})
            width = size
        dense["mlp"] = layers
    if config.kind == "gmf":
        dense["out"] = jnp.ones(config.user.base_dim, jnp.float32)
    elif config.kind == "mlp":
        dense["out"] = jax.nn.initializers.lecun_normal()(next(keys), (config.layers[-1], 1), jnp.float32)[:, 0]
    elif config.kind == "neumf":
        mlp_out = jax.nn.initializers.lecun_normal()(next(keys), (config.layers[-1], 1), jnp.float32)[:, 0]
        dense["out"] = jnp.concatenate([jnp.ones(config.user.base_dim, jnp.float32), mlp_out])
    return {"tables": tables, "dense": dense}


@lru_cache(maxsize=16)
def _param_shapes(config: ModelConfig):
    return jax.eval_shape(lambda: init(jax.random.key(0), config))


def check_params(config: ModelConfig, params, where: str = "params") -> None:
    """Raise ``ValueError`` unless ``params`` have the structure and shapes that
    :func:`init` gives for ``config`` (tables may carry extra trailing rows, as row
    sharding pads them). Catches parameters of another model or data set, which
    would otherwise read past their tables and give NaN predictions."""
    if isinstance(params, jax.core.Tracer):
        return
    expected = _param_shapes(config)
    found_paths = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want_paths = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    if found_paths.keys() != want_paths.keys():
        missing = [jax.tree_util.keystr(k) for k in want_paths if k not in found_paths]
        extra = [jax.tree_util.keystr(k) for k in found_paths if k not in want_paths]
        raise ValueError(f"{where} do not match the {config.kind} model: missing {missing[:4]}, unexpected "
                         f"{extra[:4]}; they are parameters of another model")
    for path, want in want_paths.items():
        shape = tuple(np.shape(found_paths[path]))
        table = path and getattr(path[0], "key", None) == "tables"
        fits = shape == want.shape or (table and len(shape) == len(want.shape) and shape[1:] == want.shape[1:]
                                       and shape[0] >= want.shape[0])
        if not fits:
            raise ValueError(f"{where}{jax.tree_util.keystr(path)} has shape {shape}, the model needs {want.shape}: "
                             "parameters of another model or of a model built from other data")


def layer_params(params: dict, name: str) -> MDParams:
    """The :class:`~mdcf.embedding.MDParams` of embedding ``name``."""
    return MDParams(tuple(params["tables"][name]), tuple(params["dense"]["projections"][name]))


def embed(params: dict, config: ModelConfig, users: jax.Array, items: jax.Array,
          capacity: int | str | None = "auto") -> dict[str, jax.Array]:
    """Embedding vectors ``[B, d0]`` of every table for a batch of user and item rows.
    ``capacity`` goes to :func:`mdcf.embedding.lookup` (``None``: differentiable in
    forward mode and to any order, slower)."""
    ids = {"user": users, "item": items}
    return {name: embedding.lookup(layer_params(params, name), spec, ids[side], capacity)
            for name, side, spec in config.embeddings}


def _mlp(dense: dict, config: ModelConfig, x: jax.Array) -> jax.Array:
    for layer in dense["mlp"]:
        x = jax.nn.leaky_relu(x @ layer["w"] + layer["b"], config.negative_slope)
    return x


def head(dense: dict, config: ModelConfig, vectors: dict[str, jax.Array], user_bias=None, item_bias=None) -> jax.Array:
    """Predicted ratings ``[B]`` from embedding vectors (and gathered biases)."""
    if config.kind == "mf":
        score = jnp.sum(vectors["user"] * vectors["item"], axis=-1)
    elif config.kind == "gmf":
        score = (vectors["user"] * vectors["item"]) @ dense["out"]
    elif config.kind == "mlp":
        score = _mlp(dense, config, jnp.concatenate([vectors["user"], vectors["item"]], axis=-1)) @ dense["out"]
    else:
        gmf = vectors["user_gmf"] * vectors["item_gmf"]
        mlp = _mlp(dense, config, jnp.concatenate([vectors["user_mlp"], vectors["item_mlp"]], axis=-1))
        score = jnp.concatenate([gmf, mlp], axis=-1) @ dense["out"]
    score = score + dense["bias"]
    if config.biases:
        score = score + user_bias + item_bias
    return score


def apply(params: dict, config: ModelConfig, users: jax.Array, items: jax.Array,
          capacity: int | str | None = "auto") -> jax.Array:
    """Predicted ratings ``[B]`` (not clipped) for user and item rows in block order.

    Differentiable in ``params`` with ``jax.grad``; for forward mode (``jax.jvp``,
    ``jax.hessian``) or a gradient of a gradient, pass ``capacity=None`` (see
    :func:`mdcf.embedding.lookup`)."""
    vectors = embed(params, config, users, items, capacity)
    user_bias = item_bias = None
    if config.biases:
        user_bias = params["tables"]["user_bias"][users]
        item_bias = params["tables"]["item_bias"][items]
    return head(params["dense"], config, vectors, user_bias, item_bias)


def num_params(config: ModelConfig) -> int:
    """Every trainable parameter: embeddings (projections included), biases, MLP and output."""
    total = sum(embedding.num_params(spec) for _, _, spec in config.embeddings)
    if config.biases:
        total += config.user.n_rows + config.item.n_rows
    total += 1  # global bias
    if config.kind in ("mlp", "neumf"):
        width = _mlp_input_dim(config)
        for size in config.layers:
            total += width * size + size
            width = size
    if config.kind == "gmf":
        total += config.user.base_dim
    elif config.kind == "mlp":
        total += config.layers[-1]
    elif config.kind == "neumf":
        total += config.user.base_dim + config.layers[-1]
    return total


@dataclass(frozen=True, eq=False)
class Model:
    """A :class:`ModelConfig` plus the maps from original ids to rows in block order.

    Attributes:
      config: the static structure.
      user_ids, item_ids: original ids, indexed by code (as ``Ratings.user_ids``).
      user_rows, item_rows: int32, the block-ordered row of each code.
      scale: ``(low, high)`` predictions are clipped to at evaluation, or None.
      global_mean: mean training rating (the initial global bias, and the
        prediction for unknown users and items).
    """

    config: ModelConfig
    user_ids: np.ndarray = field(repr=False)
    item_ids: np.ndarray = field(repr=False)
    user_rows: np.ndarray = field(repr=False)
    item_rows: np.ndarray = field(repr=False)
    scale: tuple[float, float] | None = None
    global_mean: float = 0.0

    def __post_init__(self):
        for side in ("user", "item"):
            ids, rows = getattr(self, f"{side}_ids"), np.asarray(getattr(self, f"{side}_rows"), np.int32)
            n = getattr(self.config, side).n_rows
            if len(ids) != n or len(rows) != n or sorted(rows.tolist()) != list(range(n)):
                raise ValueError(
                    f"Model: {side} maps must cover the {n} rows of the {side} embedding "
                    f"(got {len(ids)} ids and {len(rows)} rows)"
                )
            object.__setattr__(self, f"{side}_rows", rows)

    def encode(self, ratings) -> dict[str, np.ndarray]:
        """A batch dict (``users``, ``items`` as block-ordered rows, ``ratings``) for ratings
        in this model's code space (e.g. any split of the data it was built from)."""
        if ratings.n_users != len(self.user_ids) or ratings.n_items != len(self.item_ids) or not (
            np.array_equal(ratings.user_ids, self.user_ids) and np.array_equal(ratings.item_ids, self.item_ids)
        ):
            raise ValueError(
                "ratings are coded differently from the model's training data; use mdcf.train.predict with "
                "original ids, or build both from the same Ratings"
            )
        return {
            "users": self.user_rows[ratings.users],
            "items": self.item_rows[ratings.items],
            "ratings": np.asarray(ratings.ratings, np.float32),
        }


def build_model(
    train,
    kind: str = "mf",
    dim: int = 64,
    *,
    alpha: float = 0.0,
    blocks: int = 8,
    budget: int | None = None,
    user_budget: int | None = None,
    item_budget: int | None = None,
    round_pow2: bool = False,
    biases: bool = True,
    layers: tuple[int, ...] = (128, 128, 32),
    negative_slope: float = 0.01,
    init_stddev: float = 0.1,
) -> Model:
    """A model whose embeddings are sized from the training data's popularity.

    Users and items are each sorted by training frequency and cut into
    ``blocks`` equal-mass blocks (:func:`mdcf.blocking.equipartition`). With
    ``alpha = 0`` and no budget, each embedding is a plain ``[n, dim]`` table (in
    frequency order). With ``alpha > 0``, dimensions follow
    :func:`mdcf.sizing.popularity_dims` with the most popular block at ``dim``;
    with a budget, :func:`mdcf.sizing.solve_budget` sizes each table to its share
    of the embedding budget (split between users and items in proportion to
    their row counts unless ``user_budget`` / ``item_budget`` are given).

    Args:
      train: the training :class:`~mdcf.data.Ratings` (its counts drive the blocking).
      kind: one of :data:`KINDS`.
      dim: base dimension ``d0``.
      alpha: temperature of the popularity rule.
      blocks: blocks per table for MD embeddings.
      budget: total embedding parameters of both tables (projections included).
      user_budget, item_budget: per-table budgets (override the split of ``budget``).
      round_pow2, biases, layers, negative_slope, init_stddev: see :class:`ModelConfig`
        and :func:`mdcf.sizing.solve_budget`.
    """
    if not isinstance(train, Ratings):
        raise TypeError(f"build_model: train must be mdcf.data.Ratings (data.load_movielens, data.from_dataframe, "
                        f"...), got {type(train).__name__}")
    if len(train) == 0:
        raise ValueError("build_model: train holds no ratings; the blocking, the dimensions and the global "
                         "mean are all taken from the training ratings")
    specs, rows = {}, {}
    sides = (("user", train.user_counts(), user_budget), ("item", train.item_counts(), item_budget))
    n_total = train.n_users + train.n_items
    for side, counts, side_budget in sides:
        share = None  # how the side's budget came from `budget`, for errors
        if side_budget is None and budget is not None:
            side_budget = int(budget) * len(counts) // n_total
            share = (f"its share of budget={int(budget):,} ({side_budget:,}: {len(counts):,} of the "
                     f"{n_total:,} user and item rows)")
        uniform = alpha == 0 and side_budget is None
        blocking = blocking_.equipartition(counts, 1 if uniform else blocks)
        if uniform:
            spec = MDSpec.uniform(len(counts), dim)
        elif side_budget is None:
            spec = MDSpec(blocking.sizes, sizing.popularity_dims(blocking.row_probs, alpha, base_dim=dim,
                                                                  round_pow2=round_pow2), dim)
        else:
            try:
                if alpha == 0:
                    spec = MDSpec.uniform(len(counts), sizing.uniform_dim_for_budget(side_budget, len(counts)))
                else:
                    spec = sizing.solve_budget(side_budget, blocking.sizes, blocking.row_probs, dim, alpha,
                                               round_pow2=round_pow2)
            except ValueError as err:
                given = share or f"{side}_budget={side_budget:,}"
                raise ValueError(f"build_model: the {side} table cannot be sized for {given}: {err}") from None
        specs[side] = spec.with_loads(tuple(blocking.probs)) if spec.n_blocks > 1 else spec
        rows[side] = blocking.position.astype(np.int32)
    config = ModelConfig(kind, specs["user"], specs["item"], biases, layers, negative_slope, init_stddev)
    return Model(config, np.asarray(train.user_ids), np.asarray(train.item_ids), rows["user"], rows["item"],
                 train.scale, float(np.mean(train.ratings, dtype=np.float64)))
