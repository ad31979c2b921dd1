"""Quotient-remainder (compositional) embeddings (Shi et al., KDD 2020): two small tables per layer.

Id ``x`` reads row ``x // m`` of a quotient table (``ceil(n_rows / m)`` rows) and row
``x % m`` of a remainder table (``m`` rows, ``m`` the collisions), combined by
``"mult"`` (elementwise product, dlrm's default), ``"add"`` or ``"concat"`` (the
quotient part gives the first ``ceil(dim / 2)`` coordinates, the remainder the rest).
Every id gets a distinct pair of rows, so no two ids share an embedding outright.

The remainder table starts at the identity of its operation (ones for ``"mult"``,
zeros for ``"add"``): the layer starts as the plain quotient table, and with
``m = 1`` it *is* a plain table (test-checked).

Example:
  >>> import jax
  >>> spec = QRSpec(n_rows=1_000, collisions=4, dim=8)
  >>> num_params(spec)
  2032
  >>> lookup(init(jax.random.key(0), spec), spec, jax.numpy.arange(5)).shape
  (5, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._checks import is_int
from ._kernels import take_rows
from .base import Scheme, TaggedSpec, slotless_rows

__all__ = ["QRSpec", "OPERATIONS", "init", "lookup", "num_params", "nbytes", "for_budget", "RowPlan", "plan",
           "gather", "vectors", "updated_rows", "SCHEME"]

OPERATIONS = ("mult", "add", "concat")


@dataclass(frozen=True)
class QRSpec(TaggedSpec):
    """A quotient-remainder layer over ``n_rows`` ids with ``collisions`` remainder rows.

    Attributes:
      n_rows: ids in ``[0, n_rows)``.
      collisions: ``m``, the remainder table's rows (ids per quotient row).
      dim: the output dimension (``base_dim``).
      operation: one of :data:`OPERATIONS`.
    """

    SCHEME_NAME = "qr"
    n_rows: int
    collisions: int
    dim: int
    operation: str = "mult"

    def __post_init__(self):
        for name in ("n_rows", "collisions", "dim"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise ValueError(f"QRSpec: {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.operation not in OPERATIONS:
            raise ValueError(f"QRSpec: operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.operation == "concat" and self.dim < 2:
            raise ValueError("QRSpec: concat needs dim >= 2 (a part from each table)")

    @property
    def base_dim(self) -> int:
        return self.dim

    @property
    def quotient_rows(self) -> int:
        return -(-self.n_rows // self.collisions)

    @property
    def dims(self) -> tuple[int, int]:
        """Widths of the quotient and the remainder table."""
        if self.operation == "concat":
            return (self.dim + 1) // 2, self.dim // 2
        return self.dim, self.dim


def num_params(spec: QRSpec) -> int:
    """``ceil(n_rows / m) * d_q + m * d_r``: both tables, every parameter."""
    d_q, d_r = spec.dims
    return spec.quotient_rows * d_q + spec.collisions * d_r


def nbytes(spec: QRSpec, dtype=jnp.float32) -> int:
    """Bytes of both tables stored as ``dtype``."""
    return num_params(spec) * jnp.dtype(dtype).itemsize


def init(key: jax.Array, spec: QRSpec, stddev: float = 0.1, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """``(quotient, remainder)``: the quotient table ``N(0, stddev**2)``; the remainder table
    ones (``"mult"``), zeros (``"add"``) or ``N(0, stddev**2)`` (``"concat"``)."""
    d_q, d_r = spec.dims
    k_q, k_r = jax.random.split(key)
    quotient = (stddev * jax.random.normal(k_q, (spec.quotient_rows, d_q), jnp.float32)).astype(dtype)
    if spec.operation == "mult":
        remainder = jnp.ones((spec.collisions, d_r), dtype)
    elif spec.operation == "add":
        remainder = jnp.zeros((spec.collisions, d_r), dtype)
    else:
        remainder = (stddev * jax.random.normal(k_r, (spec.collisions, d_r), jnp.float32)).astype(dtype)
    return quotient, remainder


def _combine(spec: QRSpec, q: jax.Array, r: jax.Array) -> jax.Array:
    if spec.operation == "mult":
        return q * r
    if spec.operation == "add":
        return q + r
    return jnp.concatenate([q, r], axis=-1)


def _rows(spec: QRSpec, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Quotient and remainder rows; ids outside ``[0, n_rows)`` get rows past both tables."""
    valid = (ids >= 0) & (ids < spec.n_rows)
    safe = jnp.where(valid, ids, 0)
    return (jnp.where(valid, safe // spec.collisions, spec.quotient_rows),
            jnp.where(valid, safe % spec.collisions, spec.collisions))


def lookup(params, spec: QRSpec, ids, capacity=None) -> jax.Array:
    """``[*ids.shape, dim]``; ids outside ``[0, n_rows)`` give NaN (``capacity`` is unused)."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    q_rows, r_rows = _rows(spec, ids.reshape(-1))
    out = _combine(spec, take_rows(params[0], q_rows, jnp.nan), take_rows(params[1], r_rows, jnp.nan))
    return out.reshape(*ids.shape, spec.dim)


def for_budget(budget: int, n_rows: int, dim: int, operation: str = "mult", *, unit: str = "params",
               dtype=jnp.float32, tolerance: float = 0.01) -> QRSpec:
    """The QR layer with the fewest collisions whose parameters (``unit="params"``) or bytes
    (``unit="bytes"``) are at most ``budget`` and within ``tolerance`` of it.

    Raises:
      ValueError: no collision count lands within the tolerance; the message gives the
        nearest totals below and above.
    """
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    scale = jnp.dtype(dtype).itemsize if unit == "bytes" else 1
    if not (is_int(budget) and budget >= 1):
        raise ValueError(f"for_budget: budget must be a whole number >= 1, got {budget!r}")
    cost = lambda m: num_params(QRSpec(n_rows, m, dim, operation)) * scale  # noqa: E731
    # The cost falls with m up to about sqrt(n_rows): search that range for the first m within budget.
    low, high = 1, max(1, int((n_rows * max(1, QRSpec(n_rows, 1, dim, operation).dims[0])
                               / max(1, QRSpec(n_rows, 1, dim, operation).dims[1])) ** 0.5) + 1)
    if cost(high) > budget:
        raise ValueError(f"for_budget: budget {budget:,} {unit} is below the smallest QR layer of {n_rows:,} rows "
                         f"and dim {dim} ({cost(high):,} {unit} at {high} collisions)")
    while low < high:  # the smallest m with cost(m) <= budget
        middle = (low + high) // 2
        low, high = (low, middle) if cost(middle) <= budget else (middle + 1, high)
    if cost(low) < (1 - tolerance) * budget:
        above = cost(low - 1) if low > 1 else None
        raise ValueError(f"for_budget: no collision count lands within {tolerance:.1%} below {budget:,} {unit}: "
                         f"{low} collisions give {cost(low):,}" + (f", {low - 1} give {above:,}" if above else "")
                         + "; change the budget or the tolerance")
    return QRSpec(n_rows, low, dim, operation)


# --------------------------------------------------------------- row-sparse members
class RowPlan(NamedTuple):
    quotient: jax.Array
    remainder: jax.Array
    fits: None = None  # a QR plan cannot overflow


def plan(spec: QRSpec, ids: jax.Array, slots, heights) -> RowPlan:
    """Each id's quotient and remainder rows (padding, negative ids: out of range)."""
    return RowPlan(*_rows(spec, ids))


def gather(spec: QRSpec, tables: tuple, planned: RowPlan) -> tuple:
    """The batch's quotient and remainder rows (clamped for padding; its vectors are zeroed)."""
    return take_rows(tables[0], planned.quotient, None), take_rows(tables[1], planned.remainder, None)


def vectors(spec: QRSpec, leaves: tuple, dense, planned: RowPlan) -> jax.Array:
    """``[B, dim]`` combined vectors, zeros for padding."""
    return jnp.where((planned.quotient < spec.quotient_rows)[:, None], _combine(spec, *leaves), 0)


def updated_rows(spec: QRSpec, planned: RowPlan):
    """One gradient row per batch entry in each table (repeats summed by the step)."""
    return (planned.quotient, planned.remainder), ("rows", "rows")


SCHEME = Scheme(
    name="qr",
    init=init,
    lookup=lookup,
    num_params=num_params,
    nbytes=nbytes,
    split=lambda params: (tuple(params), ()),
    join=lambda tables, dense: tuple(tables),
    row_heights=lambda spec: (spec.quotient_rows, spec.collisions),
    rows=slotless_rows(plan, gather, vectors, updated_rows, "a QR layer"),
)
