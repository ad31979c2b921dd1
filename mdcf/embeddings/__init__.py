"""Embedding layers as pure JAX functions: one interface, the MD layer as its first member.

The public contract::

    Scheme, RowSparse, register, scheme            the interface (mdcf.embeddings.base)
    init, lookup, num_params, nbytes, split, join  dispatch on a spec's scheme
    spec_from_dict                                 a spec back from its to_dict (any scheme)
    MDSpec, MDParams                               the MD layer (a uniform table is one block)
    HashSpec (mdcf.embeddings.hashing)             the hashing trick: ids share a table through a seeded hash
    QRSpec (mdcf.embeddings.qr)                    quotient-remainder: two small tables combined per id
    lowrank.low_rank, lowrank.for_budget           a table times a shared matrix (MD with one block)
    TTSpec (mdcf.embeddings.tt)                    tensor-train: three small cores, rows computed per id
    FieldsSpec (mdcf.embeddings.fields)            one spec per field over stacked rows (DLRM's per-table schemes)
    quantize.quantize, quantize.lookup             post-training int8 / int4 rows of a trained MD layer
    lookup_bag, materialize, check_ids             MD lookups
    block_capacities, head_blocks, route, ...      the MD layer's grouped path
    take_rows, scatter_rows, project               fast row gathers, scatters and projections

Example:
  >>> import jax
  >>> from mdcf import embeddings
  >>> spec = embeddings.MDSpec(sizes=(100, 900), dims=(32, 8), base_dim=32)
  >>> params = embeddings.init(jax.random.key(0), spec)
  >>> embeddings.lookup(params, spec, jax.numpy.array([0, 150, 999])).shape
  (3, 32)
"""

from . import fields, hashing, lowrank, md_rows, qr, quantize, tt
from ._kernels import project, scatter_rows, take_rows
from .base import (RowSparse, Scheme, TaggedSpec, init, join, lookup, nbytes, num_params, register, row_heights,
                   scheme, slotless_rows, spec_from_dict, split)
from .fields import FieldsSpec
from .hashing import HashSpec
from .qr import QRSpec
from .tt import TTSpec
from .md_lookup import lookup as md_lookup
from .md_lookup import lookup_bag, lookup_columns, materialize
from .md import HEAD_ROWS_PER_SLOT, MDParams, MDSpec, as_rows, block_capacities, check_ids, head_blocks
from .md import init as md_init
from .md import nbytes as md_nbytes
from .md import num_params as md_num_params
from .routing import Routing, assemble, head_gather, route, route_tail

register(MDSpec, Scheme(
    name="md",
    init=md_init,
    lookup=md_lookup,
    num_params=md_num_params,
    nbytes=md_nbytes,
    split=lambda params: (params.tables, params.projections),
    join=lambda tables, dense: MDParams(tuple(tables), tuple(dense)),
    row_heights=lambda spec: spec.sizes,
    rows=RowSparse(md_rows.capacities, md_rows.check_capacities, md_rows.plan, md_rows.overflow_plan,
                   md_rows.gather, md_rows.vectors, md_rows.updated_rows, md_rows.column_plan),
    lookup_columns=lookup_columns,
))

register(HashSpec, hashing.SCHEME)
register(QRSpec, qr.SCHEME)
register(TTSpec, tt.SCHEME)
register(FieldsSpec, fields.SCHEME)

__all__ = [
    "RowSparse",
    "Scheme",
    "slotless_rows",
    "TaggedSpec",
    "register",
    "scheme",
    "init",
    "lookup",
    "num_params",
    "nbytes",
    "split",
    "join",
    "row_heights",
    "spec_from_dict",
    "MDSpec",
    "HashSpec",
    "hashing",
    "QRSpec",
    "qr",
    "TTSpec",
    "tt",
    "FieldsSpec",
    "fields",
    "lowrank",
    "quantize",
    "MDParams",
    "lookup_bag",
    "lookup_columns",
    "materialize",
    "check_ids",
    "as_rows",
    "block_capacities",
    "HEAD_ROWS_PER_SLOT",
    "head_blocks",
    "Routing",
    "route",
    "route_tail",
    "assemble",
    "head_gather",
    "take_rows",
    "scatter_rows",
    "project",
    "md_rows",
]
