"""Post-training row-wise quantisation of embedding tables: int8 or int4, a scale and an
offset per row.

Each row ``x`` of a table is stored as codes ``q = round((x - offset) / scale)`` in
``[0, 2**bits - 1]`` with ``offset = min(x)`` and ``scale = (max(x) - min(x)) / (2**bits - 1)``
(float32 each), and read back as ``offset + scale * q``; every coordinate is then within
``scale / 2`` of the original. int4 packs two codes per byte. Dense parameters (an MD
layer's projections) stay in float32. Any trained MD layer, uniform tables and low-rank
ones included, quantises; the byte count includes the scales and offsets.

Example:
  >>> import jax
  >>> from mdcf import embeddings
  >>> spec = embeddings.MDSpec((100, 900), (16, 4), 16)
  >>> params = embeddings.init(jax.random.key(0), spec)
  >>> q = quantize(spec, params, bits=8)
  >>> nbytes(q), float_nbytes(spec)  # 8 bytes of scale and offset a row weigh on narrow blocks
  (13456, 21056)
  >>> lookup(q, spec, jax.numpy.array([0, 150])).shape
  (2, 16)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .md import MDParams, MDSpec
from .md import nbytes as md_nbytes

__all__ = ["QuantizedRows", "QuantizedMD", "quantize_rows", "dequantize_rows", "quantize", "dequantize", "lookup",
           "nbytes", "spec_nbytes", "float_nbytes", "BITS"]

BITS = (8, 4)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["codes", "scale", "offset"],
                   meta_fields=["bits", "dim"])
@dataclasses.dataclass(frozen=True)
class QuantizedRows:
    """A quantised ``[n, d]`` table (a pytree): ``codes`` (uint8 ``[n, d]`` for int8,
    ``[n, ceil(d / 2)]`` for int4), float32 ``scale`` and ``offset`` ``[n]``, and the static
    ``bits`` and ``dim``."""

    codes: jax.Array
    scale: jax.Array
    offset: jax.Array
    bits: int
    dim: int


class QuantizedMD(NamedTuple):
    """A quantised MD layer: one :class:`QuantizedRows` per block, float projections."""

    tables: tuple[QuantizedRows, ...]
    projections: tuple


def quantize_rows(table, bits: int = 8) -> QuantizedRows:
    """Quantise every row of ``table`` (``[n, d]``) to ``bits`` (8 or 4) with its own scale and offset."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    table = jnp.asarray(table, jnp.float32)
    if table.ndim != 2:
        raise ValueError(f"quantize_rows: a table must be [rows, dim], got shape {table.shape}")
    levels = 2**bits - 1
    low = jnp.min(table, axis=1)
    span = jnp.max(table, axis=1) - low
    scale = jnp.where(span > 0, span / levels, 1.0)  # a constant row: any scale, codes 0
    codes = jnp.clip(jnp.round((table - low[:, None]) / scale[:, None]), 0, levels).astype(jnp.uint8)
    if bits == 4:
        if table.shape[1] % 2:
            codes = jnp.pad(codes, ((0, 0), (0, 1)))
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return QuantizedRows(codes, scale, low, bits, table.shape[1])


def _codes(rows: QuantizedRows, codes) -> jax.Array:
    if rows.bits == 4:
        codes = jnp.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(*codes.shape[:-1], -1)[..., : rows.dim]
    return codes.astype(jnp.float32)


def dequantize_rows(rows: QuantizedRows, ids=None) -> jax.Array:
    """The float32 rows ``ids`` (all rows by default) of a quantised table."""
    if ids is None:
        return rows.offset[:, None] + rows.scale[:, None] * _codes(rows, rows.codes)
    return rows.offset[ids, None] + rows.scale[ids, None] * _codes(rows, rows.codes[ids])


def quantize(spec: MDSpec, params: MDParams, bits: int = 8) -> QuantizedMD:
    """Quantise every block table of a trained MD layer; projections stay float32."""
    if not isinstance(spec, MDSpec):
        raise TypeError(f"quantize: an MD layer's spec (MDSpec, uniform and low-rank included), got {type(spec).__name__}")
    return QuantizedMD(tuple(quantize_rows(t, bits) for t in params.tables), tuple(params.projections))


def dequantize(q: QuantizedMD) -> MDParams:
    """The float parameters a quantised layer stands for."""
    return MDParams(tuple(dequantize_rows(t) for t in q.tables), tuple(q.projections))


def lookup(q: QuantizedMD, spec: MDSpec, ids) -> jax.Array:
    """``[*ids.shape, d0]`` embeddings read from the codes of each id's block only (no whole
    table is dequantised). Ids must lie in ``[0, n_rows)``; jit-safe."""
    ids = jnp.asarray(ids)
    flat = ids.reshape(-1)
    bounds = np.cumsum((0,) + tuple(spec.sizes))
    out = jnp.zeros((flat.shape[0], spec.base_dim), jnp.float32)
    for i, (table, projection) in enumerate(zip(q.tables, q.projections)):
        local = jnp.clip(flat - int(bounds[i]), 0, spec.sizes[i] - 1)
        vectors = dequantize_rows(table, local)
        if projection is not None:
            vectors = vectors @ projection
        inside = (flat >= bounds[i]) & (flat < bounds[i + 1])
        out = jnp.where(inside[:, None], vectors, out)
    return out.reshape(*ids.shape, spec.base_dim)


def nbytes(q: QuantizedMD) -> int:
    """Every stored byte: codes, a float32 scale and offset per row, and float32 projections."""
    total = 0
    for table in q.tables:
        total += int(np.prod(table.codes.shape)) + 2 * 4 * table.codes.shape[0]
    total += sum(4 * int(np.prod(p.shape)) for p in q.projections if p is not None)
    return total


def spec_nbytes(spec: MDSpec, bits: int = 8) -> int:
    """:func:`nbytes` of ``spec``'s layer once quantised to ``bits``, from the spec alone
    (to size a layer for a byte budget before training it)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if not isinstance(spec, MDSpec):
        raise TypeError(f"spec_nbytes: an MD layer's spec (MDSpec), got {type(spec).__name__}")
    total = 0
    for n, d in zip(spec.sizes, spec.dims):
        total += n * (d if bits == 8 else -(-d // 2)) + 2 * 4 * n
        if d != spec.base_dim:
            total += 4 * d * spec.base_dim
    return total


def float_nbytes(spec: MDSpec) -> int:
    """The float32 layer's bytes, for comparison."""
    return md_nbytes(spec, jnp.float32)
