"""The ways to shrink embedding tables as sweep methods: a model per (method, setting) at a budget.

A budget is a total count of parameters (``unit="params"``) or of bytes
(``unit="bytes"``: float32 parameters weigh 4 bytes, int8 codes 1 byte plus a float32
scale and offset per row). Every parameter counts: embeddings with their projections
or cores, biases, the global bias, MLP and output layers. No model exceeds its budget.
MD, hashing and the compositions land within 1% below it; the uniform baseline is the
largest uniform model that fits (at the natural budgets, exactly the budget).
Quotient-remainder and low-rank grow in coarse steps (a collision count, a rank: one
column of every row) and take the largest size that fits, which can be well below the
budget at small dimensions; tensor-train takes the closest ranks below where none land
within 1% (small tables, whose full ranks cap the cores). The results record every
model's exact size.

Methods (:data:`METHODS`) and the setting each is tuned over on validation:

=================  ============================================================  ===========
method             embeddings of both sides                                      setting
=================  ============================================================  ===========
``uniform``        one plain table per side                                      none
``md``             MD layers (:func:`~mdcf.sweep.model_for_budget`)              alpha
``hash``           the hashing trick (:mod:`mdcf.embeddings.hashing`)            factor
``qr``             quotient-remainder, ``mult`` (:mod:`mdcf.embeddings.qr`)      collisions
``lowrank``        a table times a shared matrix (:mod:`mdcf.embeddings.lowrank`)  factor
``tt``             tensor-train cores (:mod:`mdcf.embeddings.tt`)                factor
``md-qr``          QR for users, MD for items (the same base dimension)          alpha
``uniform-int8``   uniform, trained in float32, rows then quantised to int8      none
``md-int8``        MD, trained in float32, rows then quantised to int8           alpha
=================  ============================================================  ===========

A *factor* ``f`` gives ``hash``, ``lowrank`` and ``tt`` a base dimension of ``f``
times the uniform dimension at the same budget; the scheme's own size (buckets, rank,
TT ranks) is then solved to fill the budget. For ``qr`` the factor is the collision
count ``m`` (ids per quotient row, both sides), and the base dimension is the largest
that fits. The int8 methods exist only in bytes (their parameter count is their float
model's). Rows are in frequency order, as the uniform and MD tables are, so ``qr``'s
quotient rows and ``lowrank``'s one block follow popularity too.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from .. import embeddings, models
from ..embeddings import hashing, lowrank, qr, quantize, tt
from .budget import largest_fitting, model_for_budget, side_budgets, uniform_for_budget

__all__ = ["METHODS", "ALPHA_METHODS", "FACTOR_METHODS", "BYTES_ONLY", "settings", "model_for_method", "model_nbytes",
           "describe", "quantized_params"]

METHODS = ("uniform", "md", "hash", "qr", "lowrank", "tt", "md-qr", "uniform-int8", "md-int8")
FACTOR_METHODS = ("hash", "qr", "lowrank", "tt")
BYTES_ONLY = ("uniform-int8", "md-int8")
ALPHA_METHODS = ("md", "md-qr", "md-int8")
_BUILDERS = {
    "hash": lambda budget, n, d, tolerance: hashing.for_budget(budget, n, d),
    "lowrank": lambda budget, n, d, tolerance: lowrank.for_budget(budget, n, d, tolerance=tolerance),
    "tt": lambda budget, n, d, tolerance: tt.for_budget(budget, n, d, tolerance=tolerance),
}


def settings(method: str, alphas: Sequence[float], factors: Sequence[int]) -> list[tuple[float, int]]:
    """The ``(alpha, factor)`` settings a method is tuned over (alpha 0 and factor 0 where
    the method has none); ``alphas`` of 0 are the uniform baseline, not an MD setting."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ALPHA_METHODS:
        return [(float(a), 0) for a in alphas if a > 0]
    if method in FACTOR_METHODS:
        return [(0.0, int(f)) for f in factors]
    return [(0.0, 0)]


def model_nbytes(model, method: str) -> int:
    """Every stored byte of ``model`` as ``method`` keeps it: float32 parameters, and for
    the int8 methods int8 embedding rows with a float32 scale and offset each."""
    config = models.config_of(model)
    total = 4 * models.num_params(config)
    if method in BYTES_ONLY:
        for _, _, spec in config.embeddings:
            total += quantize.spec_nbytes(spec, 8) - 4 * embeddings.num_params(spec)
    return total


def describe(spec) -> str:
    """A short text for a side's embedding: MD block dimensions ``"32-16-8"``, or the
    scheme's size (``"rank 7"``, ``"hash 1200 rows"``, ``"qr m=8"``, ``"tt r=12-10"``)."""
    if isinstance(spec, embeddings.MDSpec):
        if spec.n_blocks == 1 and spec.dims[0] < spec.base_dim:
            return f"rank {spec.dims[0]}"
        return "-".join(str(d) for d in spec.dims)
    if isinstance(spec, embeddings.HashSpec):
        return f"hash {spec.n_buckets} rows"
    if isinstance(spec, embeddings.QRSpec):
        return f"qr m={spec.collisions}"
    if isinstance(spec, embeddings.TTSpec):
        return f"tt r={spec.ranks[0]}-{spec.ranks[1]}"
    return type(spec).__name__


def _with_specs(model, user, item):
    """``model`` with its embedding specs replaced (same id maps, biases and head)."""
    return dataclasses.replace(model, config=dataclasses.replace(model.config, user=user, item=item))


def _qr_model(train, kind, budget, collisions, model_kwargs):
    """QR tables with ``collisions`` remainder rows on both sides at the largest base
    dimension whose model fits ``budget``."""
    def build(d0):
        spec = lambda n: qr.QRSpec(n, min(collisions, n), d0, "mult")  # noqa: E731
        probe = models.build_model(train, kind, dim=d0, **model_kwargs)
        return _with_specs(probe, spec(train.n_users), spec(train.n_items))

    d0 = largest_fitting(lambda d: models.num_params(build(d).config), budget)
    if d0 is None:
        return None, f"budget {budget:,} is below QR at d0=1 with {collisions} collisions"
    return build(d0), ""


def _factor_model(train, kind, budget, method, factor, tolerance, model_kwargs):
    if method == "qr":
        return _qr_model(train, kind, budget, factor, model_kwargs)
    uniform = uniform_for_budget(train, kind, budget, **model_kwargs)
    if uniform is None:
        return None, f"budget {budget:,} is below the smallest uniform model"
    d0 = factor * uniform.config.user.base_dim
    probe, sides = side_budgets(train, kind, budget, d0, **model_kwargs)
    if sides is None:
        return None, f"d0={d0}: no budget left for embeddings"
    specs = []
    for side_budget, n in zip(sides, (train.n_users, train.n_items)):
        # Where the scheme's size steps are coarser than the tolerance, the closest size below.
        for within in sorted({tolerance, 0.02, 0.05, 0.1, 0.25, 1.0}):
            try:
                specs.append(_BUILDERS[method](side_budget, n, d0, within))
                break
            except ValueError as err:
                reason = str(err)
        else:
            return None, f"d0={d0}: {reason}"
    model = _with_specs(probe, *specs)
    total = models.num_params(model.config)
    if total > budget:
        return None, f"d0={d0}: total {total:,} is above {budget:,}"
    return model, ""


def _md_qr_model(train, kind, budget, alpha, blocks, base_dims, tolerance, model_kwargs):
    """MD items and QR users at MD's base dimension: the users' QR layer takes the largest
    size below their share, and the MD items the rest of the embedding budget."""
    md, reason = model_for_budget(train, kind, budget, alpha, blocks, base_dims, tolerance, **model_kwargs)
    if md is None:
        return None, reason
    d0 = md.config.item.base_dim
    user_share = embeddings.num_params(md.config.user)
    try:
        user = qr.for_budget(user_share, train.n_users, d0, "mult", tolerance=1.0)
        with_qr = _with_specs(md, user, md.config.item)
        sets = len(md.config.embeddings) // 2
        # The items take everything else: MD lands within 1% below its share, so does the total.
        item_budget = (budget - models.num_params(with_qr.config)) // sets + embeddings.num_params(md.config.item)
        item = models.build_model(train, kind, dim=d0, alpha=alpha, blocks=blocks, user_budget=user_share,
                                  item_budget=item_budget, **model_kwargs).config.item
    except ValueError as err:
        return None, f"d0={d0}: {err}"
    model = _with_specs(md, user, item)
    total = models.num_params(model.config)
    if not (1 - tolerance) * budget <= total <= budget:
        return None, f"d0={d0}: total {total:,} is not within {tolerance:.0%} below {budget:,}"
    return model, ""


def _int8_model(train, kind, budget, alpha, blocks, base_dims, tolerance, model_kwargs):
    """The model whose int8 bytes lie within ``tolerance`` below ``budget``: uniform, the
    largest dimension that fits; MD, per base dimension a parameter budget rescaled to the
    byte target, then the base dimension :func:`model_for_budget`'s rule picks."""
    method = "md-int8" if alpha > 0 else "uniform-int8"
    if alpha == 0:
        def size(d):
            return model_nbytes(models.build_model(train, kind, dim=d, **model_kwargs), method)

        dim = largest_fitting(size, budget)
        if dim is None:
            return None, f"budget {budget:,} bytes is below the smallest uniform int8 model ({size(1):,})"
        return models.build_model(train, kind, dim=dim, **model_kwargs), ""
    target = (1 - tolerance / 10) * budget  # MD lands up to ``tolerance`` below a parameter budget
    found, reasons = [], []
    for d0 in sorted(base_dims):
        params = budget // 2
        for _ in range(12):
            model, reason = model_for_budget(train, kind, params, alpha, blocks, (d0,), tolerance, **model_kwargs)
            if model is None:
                reasons.append(f"at {params:,} parameters, {reason[:120]}")
                break
            size = model_nbytes(model, method)
            if (1 - tolerance) * budget <= size <= budget:
                found.append(model)
                break
            params = max(1, int(params * target / size))
        else:
            reasons.append(f"d0={d0}: no parameter budget lands its int8 bytes within {tolerance:.0%}")
    for model in found:  # the smallest base dimension that does not cap the popularity rule
        if max(model.config.user.dims) < model.config.user.base_dim and \
                max(model.config.item.dims) < model.config.item.base_dim:
            return model, ""
    if found:
        return found[-1], ""
    return None, "; ".join(reasons)


def model_for_method(train, kind: str, budget: int, method: str, alpha: float = 0.0, factor: int = 0, *,
                     unit: str = "params", blocks: int = 8, base_dims: Sequence[int] = (128, 64, 32, 16, 8, 4, 2),
                     tolerance: float = 0.01, **model_kwargs):
    """A ``kind`` model of ``method`` at ``budget`` (parameters or bytes, ``unit``).

    Args:
      train: the training ratings (popularity, rows, the global mean).
      kind: a model kind (:data:`mdcf.models.KINDS`).
      budget: total parameters, or bytes with ``unit="bytes"``.
      method: one of :data:`METHODS`.
      alpha: MD's temperature (``md``, ``md-qr``, ``md-int8``).
      factor: the base dimension over the uniform one (``hash``, ``qr``, ``lowrank``, ``tt``).
      blocks, base_dims: MD's blocks per table and candidate base dimensions.
      tolerance: how far below the budget a model may land.

    Returns:
      ``(model, reason)``: the model (:func:`model_nbytes` gives its bytes), or None and
      why none fits (an infeasible cell, recorded as such by the sweep).

    Raises:
      ValueError: an unknown method or unit, a missing setting, an int8 method in parameters.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    if method in BYTES_ONLY and unit != "bytes":
        raise ValueError(f"{method} keeps as many parameters as its float model and saves bytes: compare it with "
                         "unit='bytes' (--budget-unit bytes)")
    if method in ALPHA_METHODS and not alpha > 0:
        raise ValueError(f"{method} needs an alpha > 0, got {alpha!r}")
    if method in FACTOR_METHODS and not (isinstance(factor, int) and factor >= 1):
        raise ValueError(f"{method} needs a factor >= 1 (its base dimension over the uniform one), got {factor!r}")
    if method in BYTES_ONLY:
        return _int8_model(train, kind, budget, alpha, blocks, base_dims, tolerance, model_kwargs)
    params = budget // 4 if unit == "bytes" else budget  # float32 parameters
    if method in ("uniform", "md"):
        return model_for_budget(train, kind, params, alpha if method == "md" else 0.0, blocks, base_dims, tolerance,
                                **model_kwargs)
    if method == "md-qr":
        return _md_qr_model(train, kind, params, alpha, blocks, base_dims, tolerance, model_kwargs)
    return _factor_model(train, kind, params, method, factor, tolerance, model_kwargs)


def quantized_params(model, params: dict, bits: int = 8) -> dict:
    """``params`` with every embedding table's rows quantised to ``bits`` and read back:
    the float parameters the quantised model computes with (its predictions exactly). Any
    model family: rating models and DLRM (:func:`mdcf.models.config_of`)."""
    tables = dict(params["tables"])
    for name, _, spec in models.config_of(model).embeddings:
        if not isinstance(spec, embeddings.MDSpec):
            raise TypeError(f"quantized_params: row quantisation applies to MD layers (uniform, MD, low-rank), "
                            f"not {type(spec).__name__}")
        tables[name] = tuple(quantize.dequantize_rows(quantize.quantize_rows(t, bits)) for t in params["tables"][name])
    return {**params, "tables": tables}

