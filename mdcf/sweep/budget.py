"""Models at a budget: every parameter counted, MD within 1% below, uniform the largest that fits."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from .. import models

__all__ = ["PAPER_ABLATION_BUDGET", "PAPER_ABLATION_ROWS", "natural_budgets", "largest_fitting", "uniform_for_budget",
           "side_budgets", "model_for_budget", "ablation_budget", "ablation_model_budget"]

# The paper's ablation used 2**21 parameters on MovieLens ("ml-latest", about 283k users
# and 54k movies); the ablation keeps its parameters per embedding row.
PAPER_ABLATION_BUDGET = 2**21
PAPER_ABLATION_ROWS = 283_228 + 53_889


def natural_budgets(train, kind: str, dims: Iterable[int], **model_kwargs) -> list[int]:
    """Total parameters of the uniform ``kind`` model at each dimension in ``dims``."""
    return [models.num_params(models.build_model(train, kind, dim=d, **model_kwargs).config) for d in dims]


def largest_fitting(size: Callable[[int], int], budget: int) -> int | None:
    """The largest integer ``x >= 1`` with ``size(x) <= budget`` for a ``size`` that grows
    with ``x`` (doubling, then bisection); None when ``size(1)`` is already above it."""
    if size(1) > budget:
        return None
    low, high = 1, 2
    while size(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) <= budget else (low, middle)
    return low


def uniform_for_budget(train, kind: str, budget: int, **model_kwargs):
    """The largest uniform model whose total parameter count is at most ``budget`` (binary search on d)."""
    dim = largest_fitting(
        lambda d: models.num_params(models.build_model(train, kind, dim=d, **model_kwargs).config), budget)
    return None if dim is None else models.build_model(train, kind, dim=dim, **model_kwargs)


def side_budgets(train, kind: str, budget: int, d0: int, **model_kwargs):
    """``(probe, sides)``: the uniform ``kind`` model at ``d0`` and the embedding budget of
    each embedding set's user and item tables, ``(users, items)``: what ``budget`` leaves
    after biases, MLP and output layers (at ``d0``), per set, split by row count; ``sides``
    is None when nothing is left."""
    probe = models.build_model(train, kind, dim=d0, **model_kwargs)
    n_users, n_items = train.n_users, train.n_items
    sets = len(probe.config.embeddings) // 2
    per_set = (budget - (models.num_params(probe.config) - sets * (n_users + n_items) * d0)) // sets
    if per_set <= 0:
        return probe, None
    return probe, (per_set * n_users // (n_users + n_items), per_set * n_items // (n_users + n_items))


def model_for_budget(train, kind: str, budget: int, alpha: float, blocks: int, base_dims: Sequence[int],
                     tolerance: float = 0.01, **model_kwargs):
    """A model of ``kind`` whose exact total parameter count lies in ``[(1 - tolerance) budget, budget]``.

    Alpha 0: the largest uniform model within the budget. Alpha > 0: MD
    embeddings, with the embedding budget left after biases, MLP and output
    layers split between users and items by row count, and the smallest base
    dimension in ``base_dims`` that does not cap the popularity rule (every
    block's dimension below it), else the largest that fits: a larger base
    dimension would only spend parameters on projections (and MLP inputs).

    Returns:
      ``(model, reason)``: the model, or None and why no model fits.
    """
    if alpha == 0:
        model = uniform_for_budget(train, kind, budget, **model_kwargs)
        if model is None:
            return None, f"budget {budget:,} is below the smallest uniform model"
        return model, ""
    reasons = []
    fallback = None
    for d0 in sorted(base_dims):
        _, sides = side_budgets(train, kind, budget, d0, **model_kwargs)
        if sides is None:
            reasons.append(f"d0={d0}: no budget left for embeddings")
            continue
        try:
            model = models.build_model(train, kind, dim=d0, alpha=alpha, blocks=blocks, user_budget=sides[0],
                                       item_budget=sides[1], **model_kwargs)
        except ValueError as err:
            reasons.append(f"d0={d0}: {str(err).split(':')[0]}")
            continue
        total = models.num_params(model.config)
        if not (1 - tolerance) * budget <= total <= budget:
            reasons.append(f"d0={d0}: total {total:,}")
            continue
        fallback = model
        if max(model.config.user.dims) < d0 and max(model.config.item.dims) < d0:
            return model, ""  # the smallest base dimension that does not cap the rule
    if fallback is not None:
        return fallback, ""
    return None, "; ".join(reasons)


def ablation_budget(n_rows: int) -> int:
    """The paper's 2**21-parameter ablation budget, scaled to keep its parameters per embedding row."""
    return int(round(PAPER_ABLATION_BUDGET * n_rows / PAPER_ABLATION_ROWS))


def ablation_model_budget(ratings, kind: str = "mf", **model_kwargs) -> int:
    """Total parameters for the alpha ablation: the uniform model whose dimension is the
    paper's parameters per embedding row (about 6.2), rounded; alpha 0 meets it exactly."""
    rows = ratings.n_users + ratings.n_items
    dim = max(1, round(ablation_budget(rows) / rows))
    return models.num_params(models.build_model(ratings, kind, dim=dim, **model_kwargs).config)
