"""A model bound to its data: :class:`Model` (structure plus id maps) and :func:`build_model`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import blocking as blocking_
from .. import sizing
from ..data import Ratings
from ..embeddings import MDSpec
from .config import ModelConfig

__all__ = ["Model", "build_model"]


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
      kind: one of :data:`~mdcf.models.KINDS`.
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
