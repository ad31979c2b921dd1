"""The interface every embedding scheme implements, and the functions that dispatch on it.

A scheme is a static *spec* (a frozen dataclass: hashable, a ``jax.jit`` static
argument, JSON round-trip) and a :class:`Scheme` of pure functions registered for
the spec's type (:func:`register`). Models and the train step see only these
functions, so a new scheme drops in without touching them.

Parameters of every scheme split into *tables*, whose leaves are indexed by rows
(row-sparse training touches only the rows a batch uses), and *dense* parameters
(an MD layer's projections), updated by an optax transformation.

Example:
  >>> import jax
  >>> from mdcf import embeddings
  >>> spec = embeddings.MDSpec(sizes=(10, 90), dims=(8, 2), base_dim=8)
  >>> params = embeddings.init(jax.random.key(0), spec)
  >>> embeddings.lookup(params, spec, jax.numpy.arange(4)).shape
  (4, 8)
  >>> embeddings.num_params(spec)
  276
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["RowSparse", "Scheme", "slotless_rows", "TaggedSpec", "register", "scheme", "spec_from_dict", "init", "lookup", "num_params", "nbytes",
           "split", "join", "row_heights"]


class RowSparse(NamedTuple):
    """What a row-sparse train step needs of a scheme (all pure; ``plan`` objects live
    inside one traced step and carry static choices beside traced arrays).

    Attributes:
      capacities: ``(spec, batch, requested) -> slots``, a static value sizing the
        step's per-batch work (``requested`` is ``"auto"`` or the user's setting).
      check_capacities: ``(spec, requested) -> None | str``: ``None`` when the
        setting is valid, else what is expected.
      plan: ``(spec, ids, slots, heights) -> plan`` for ``[B]`` int32 ids (negative:
        padding) and the tables' row counts (:func:`row_heights` or more, when
        padded); ``plan.fits`` is a traced bool, or ``None`` when it cannot overflow.
      overflow_plan: ``(spec, plan) -> plan``, exact for any batch, used when ``fits`` is False.
      gather: ``(spec, tables, plan) -> leaves``: the differentiable leaves.
      vectors: ``(spec, leaves, dense, plan) -> [B, d0]``; padding gives zeros.
      updated_rows: ``(spec, plan) -> (rows, kinds)``, pytrees matching ``tables``:
        per leaf the row ids its gradient belongs to and a kind, ``"whole"`` (the
        gradient of the whole table; ``rows[j] == j`` marks touched rows),
        ``"batch"`` (one gradient row per batch entry: the batch's ids) or ``"rows"``.
      column_plan: optional, ``(spec, ids, heights) -> plan`` for ``[B, k]`` ids whose
        column ``i`` lies in the layer's ``i``-th part (DLRM's fields, one MD block
        each): a plan for ``ids.reshape(-1)`` with no routing, which cannot overflow;
        ids outside their column's part are treated as padding (callers skip them).
    """

    capacities: Callable
    check_capacities: Callable
    plan: Callable
    overflow_plan: Callable
    gather: Callable
    vectors: Callable
    updated_rows: Callable
    column_plan: Callable | None = None


class Scheme(NamedTuple):
    """The functions of one embedding scheme.

    Attributes:
      name: a label.
      init: ``(key, spec, stddev, dtype) -> params``.
      lookup: ``(params, spec, ids, capacity) -> [*ids.shape, d0]``.
      num_params: ``spec -> int``, every parameter.
      nbytes: ``(spec, dtype) -> int``, every byte of the parameters.
      split: ``params -> (tables, dense)``.
      join: ``(tables, dense) -> params``.
      row_heights: ``spec -> `` the row count of every table leaf (a pytree of ints).
      rows: the row-sparse members, or ``None`` (dense training only).
      lookup_columns: optional, ``(params, spec, ids) -> [..., k, d0]`` for ids
        ``[..., k]`` whose column ``i`` lies in the layer's ``i``-th part (DLRM's fields,
        one MD block each): :attr:`lookup` without routing.
    """

    name: str
    init: Callable
    lookup: Callable
    num_params: Callable
    nbytes: Callable
    split: Callable
    join: Callable
    row_heights: Callable
    rows: RowSparse | None
    lookup_columns: Callable | None = None


def slotless_rows(plan: Callable, gather: Callable, vectors: Callable, updated_rows: Callable,
                  layer: str) -> RowSparse:
    """The :class:`RowSparse` of a scheme whose plans cannot overflow (no slots to size):
    ``capacities`` is ``None``, only ``"auto"`` is accepted, and the overflow plan is the plan."""
    return RowSparse(
        capacities=lambda spec, batch, requested: None,
        check_capacities=lambda spec, requested: None if requested == "auto" else f"'auto' ({layer} has no slots)",
        plan=plan,
        overflow_plan=lambda spec, planned: planned,
        gather=gather,
        vectors=vectors,
        updated_rows=updated_rows,
    )


class TaggedSpec:
    """JSON round-trip for a dataclass spec, tagged with its scheme's name (``SCHEME_NAME``)
    so that :func:`spec_from_dict` finds its type."""

    SCHEME_NAME: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.SCHEME_NAME, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]):
        return cls(**{k: v for k, v in value.items() if k != "scheme"})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


_SCHEMES: dict[type, Scheme] = {}
_SPEC_TYPES: dict[str, type] = {}


def register(spec_type: type, value: Scheme) -> None:
    """Make ``value`` the scheme of specs of type ``spec_type`` (and of :func:`spec_from_dict`
    for dicts tagged ``"scheme": value.name``)."""
    _SCHEMES[spec_type] = value
    _SPEC_TYPES[value.name] = spec_type


def spec_from_dict(value: dict):
    """A spec from its ``to_dict``: the type registered under ``value["scheme"]`` (``"md"``
    when the key is absent, as in MD specs and older files)."""
    name = value.get("scheme", "md")
    if name not in _SPEC_TYPES:
        raise ValueError(f"unknown embedding scheme {name!r} (known: {', '.join(_SPEC_TYPES)})")
    return _SPEC_TYPES[name].from_dict(value)


def scheme(spec) -> Scheme:
    """The :class:`Scheme` registered for ``spec``'s type."""
    try:
        return _SCHEMES[type(spec)]
    except KeyError:
        known = ", ".join(t.__name__ for t in _SCHEMES)
        raise TypeError(f"no embedding scheme is registered for {type(spec).__name__} (known: {known})") from None


def init(key: jax.Array, spec, stddev: float = 0.1, dtype=jnp.float32) -> Any:
    """Random parameters of ``spec``'s layer (see each scheme's ``init``)."""
    return scheme(spec).init(key, spec, stddev, dtype)


def lookup(params, spec, ids, capacity: int | str | None = "auto") -> jax.Array:
    """``[*ids.shape, d0]`` embeddings of ``ids`` (see each scheme's ``lookup``)."""
    return scheme(spec).lookup(params, spec, ids, capacity)


def num_params(spec) -> int:
    """Every parameter of ``spec``'s layer."""
    return scheme(spec).num_params(spec)


def nbytes(spec, dtype=jnp.float32) -> int:
    """Every byte of ``spec``'s layer with parameters stored as ``dtype``."""
    return scheme(spec).nbytes(spec, dtype)


def split(spec, params) -> tuple[Any, Any]:
    """``(tables, dense)`` of a layer's parameters."""
    return scheme(spec).split(params)


def join(spec, tables, dense) -> Any:
    """A layer's parameters from ``(tables, dense)`` (the inverse of :func:`split`)."""
    return scheme(spec).join(tables, dense)


def row_heights(spec):
    """The row count of every table leaf of ``spec``'s layer (a pytree matching the tables)."""
    return scheme(spec).row_heights(spec)
