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
(the MD paper's initialisation); so are the embedding tables and projections by
default (``embedding_init="xavier"``: each 2-D leaf uniform in ``+-sqrt(6 / (fan_in +
fan_out))``, a stacked single-block table per field, as dlrm's separate tables), or as
their scheme draws them (``"normal"``: :func:`mdcf.embeddings.init` with ``init_stddev``).
A per-field table (:class:`~mdcf.embeddings.FieldsSpec`: hashing, quotient-remainder or
tensor-train per field, as dlrm and TT-Rec apply them) draws its plain and MD parts
Xavier-uniform and its other parts by their scheme with rows of the field's Xavier
variance ``2 / (n_f + d0)``.

A :class:`DLRMConfig` has the ``click`` task (:data:`mdcf.models.CLICK`): it trains with
:func:`mdcf.train.make_train_step` and :func:`mdcf.train.fit` like the rating models, on
batches ``{"rows": [B, F] stacked rows, "dense": [B, n_dense], "labels": [B]}``
(:func:`encode`).

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

import json
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import blocking, embeddings, sizing
from ..embeddings import MDSpec
from .core import embed_batch
from .task import CLICK, Task, binary_cross_entropy

__all__ = ["DLRMConfig", "dlrm_config", "CTRModel", "frequency_blocked", "init", "apply", "forward", "predict_proba", "num_params",
           "interaction_pairs", "field_rows_to_stacked", "encode", "bce_loss", "EMBEDDING_INITS"]

EMBEDDING_INITS = ("xavier", "normal")


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
      init_stddev: standard deviation of initial embedding coordinates
        (``embedding_init="normal"``).
      embedding_init: ``"xavier"`` (the MD paper's) or ``"normal"``; see the module docstring.
      row_order: ``"fields"``: field ``f``'s code ``c`` is table row ``offsets[f] + c``
        (:func:`field_rows_to_stacked`); ``"blocks"``: the rows are permuted, as in a
        :class:`CTRModel`'s config (its row map gives them).
    """

    table: Any
    field_rows: tuple[int, ...]
    n_dense: int = 13
    bottom: tuple[int, ...] = (512, 256, 64)
    top: tuple[int, ...] = (512, 256)
    init_stddev: float = 0.01
    embedding_init: str = "xavier"
    row_order: str = "fields"

    def __post_init__(self):
        embeddings.scheme(self.table)  # a registered spec, or TypeError
        if self.row_order not in ("fields", "blocks"):
            raise ValueError(f"row_order must be 'fields' or 'blocks', got {self.row_order!r}")
        if self.embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"embedding_init must be one of {EMBEDDING_INITS}, got {self.embedding_init!r}")
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
    def kind(self) -> str:
        return "dlrm"

    @property
    def task(self) -> Task:
        """Click prediction (:data:`mdcf.models.CLICK`)."""
        return CLICK

    @property
    def sides(self) -> dict[str, Any]:
        """The row space a batch indexes: ``{"rows": table spec}`` (every field's rows, stacked)."""
        return {"rows": self.table}

    @property
    def id_keys(self) -> dict[str, str]:
        """The batch key of the stacked rows (``[B, F]`` int)."""
        return {"rows": "rows"}

    @property
    def id_shapes(self) -> dict[str, tuple[int, ...]]:
        """One example's ids: one stacked row per field, ``(F,)``."""
        return {"rows": (self.n_fields,)}

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Per-example dense inputs: ``{"dense": (n_dense,)}``."""
        return {"dense": (self.n_dense,)}

    @property
    def embeddings(self) -> tuple[tuple[str, str, Any], ...]:
        """``(name, side, spec)`` of the one embedding: ``("fields", "rows", table)``."""
        return (("fields", "rows", self.table),)

    @property
    def row_tables(self) -> tuple[tuple[str, str], ...]:
        return (("fields", "rows"),)

    @property
    def column_sides(self) -> tuple[str, ...]:
        """Sides whose id columns each lie in one part of the layer: ``("rows",)`` when the
        table has one block (MD) or one part (:class:`~mdcf.embeddings.FieldsSpec`) per field,
        in field order, so that lookups and row-sparse steps read part ``f`` from column ``f``
        without routing."""
        sizes = getattr(self.table, "sizes", None)
        aligned = sizes is not None and tuple(sizes) == self.field_rows
        return ("rows",) if self.row_order == "fields" and self.n_fields > 1 and aligned else ()

    @property
    def id_bounds(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per side, the valid rows of each id column, ``(low, high)`` (``low <= id < high``):
        field ``f``'s rows for a table in field order; empty (any table row) otherwise.
        A train step skips, and flags with a NaN loss, examples with an id outside its field."""
        if self.row_order != "fields":
            return {}
        return {"rows": (self.offsets.astype(np.int32), (self.offsets + self.field_rows).astype(np.int32))}

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "dlrm", "table": self.table.to_dict(), "field_rows": list(self.field_rows),
               "n_dense": self.n_dense, "bottom": list(self.bottom), "top": list(self.top),
               "init_stddev": self.init_stddev, "embedding_init": self.embedding_init}
        if self.row_order != "fields":
            out["row_order"] = self.row_order
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "DLRMConfig":
        value = {k: v for k, v in value.items() if k != "kind"}
        value["table"] = embeddings.spec_from_dict(value["table"])
        for key in ("field_rows", "bottom", "top"):
            value[key] = tuple(value[key])
        return cls(**value)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "DLRMConfig":
        return cls.from_dict(json.loads(text))

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


def dlrm_config(field_rows, *, dim: int = 16, alpha: float = 0.0, budget: int | None = None,
                round_pow2: bool = False, n_dense: int = 13, bottom=(512, 256, 64), top=(512, 256),
                init_stddev: float = 0.01, embedding_init: str = "xavier") -> DLRMConfig:
    """A DLRM with a uniform table (``alpha=0``) or MD embeddings with one block per field.

    With ``alpha > 0``, field ``f``'s block gets ``d_f = dim * (p_f / p_max) ** alpha``
    with ``p_f = 1 / n_f`` (each field is looked up once per example; dlrm's sizing
    rule, :func:`mdcf.blocking.stack`), rounded (to powers of two with ``round_pow2``);
    the smallest fields get ``dim`` and a projection maps each block to ``dim``.

    With a ``budget`` (embedding parameters, projections included) and ``alpha > 0``,
    the same rule is scaled to the budget (:func:`mdcf.sizing.solve_budget`: within 1%
    below it, no block above ``dim``; ``ValueError`` when it cannot be met). A uniform
    table (``alpha=0``) with a budget gets the largest ``dim`` that fits, and the
    model's base dimension is that ``dim``.
    """
    rows = tuple(int(r) for r in field_rows)
    stacked = blocking.stack(rows)
    if alpha == 0:
        if budget is not None:
            dim = sizing.uniform_dim_for_budget(budget, sum(rows))
        table = MDSpec.uniform(sum(rows), dim)
    elif budget is not None:
        table = sizing.solve_budget(int(budget), rows, stacked.row_probs, dim, alpha, round_pow2=round_pow2)
        table = table.with_loads(tuple(stacked.probs))
    else:
        dims = sizing.popularity_dims(stacked.row_probs, alpha, base_dim=dim, round_pow2=round_pow2)
        table = MDSpec(rows, dims, dim, loads=tuple(stacked.probs))
    return DLRMConfig(table, rows, n_dense, tuple(bottom), tuple(top), init_stddev, embedding_init)


@dataclass(frozen=True, eq=False)
class CTRModel:
    """A :class:`DLRMConfig` whose table is not in stacked order: the config plus the
    block-ordered row of every stacked code (as a rating :class:`~mdcf.models.Model`
    carries its id maps). Built by :func:`frequency_blocked`; it trains, evaluates and
    checkpoints wherever a config does.

    Attributes:
      config: the static structure; its table's rows are in block order.
      rows: int32 ``[n_rows]``, ``rows[offsets[f] + code]`` is the table row of field
        ``f``'s ``code``.
    """

    config: DLRMConfig
    rows: np.ndarray = field(repr=False)

    def __post_init__(self):
        if self.config.row_order != "blocks":  # the config's rows are this map's, not stacked fields'
            object.__setattr__(self, "config", replace(self.config, row_order="blocks"))
        rows = np.asarray(self.rows, np.int32)
        n = self.config.table.n_rows
        if rows.shape != (n,) or not np.array_equal(np.sort(rows), np.arange(n)):
            raise ValueError(f"CTRModel: rows must be a permutation of the table's {n} rows, got shape {rows.shape}")
        object.__setattr__(self, "rows", rows)


def frequency_blocked(field_rows, counts, *, blocks: int, dim: int = 16, alpha: float = 0.3,
                      budget: int | None = None, round_pow2: bool = False, **layers) -> CTRModel:
    """The MD paper's control for CTR: rows of all fields stacked, sorted by training
    frequency and cut into ``blocks`` blocks of equal popularity mass
    (:func:`mdcf.blocking.equipartition`), instead of one block per field; dimensions
    by the popularity rule (scaled to ``budget`` when given, as in :func:`dlrm_config`).

    Args:
      field_rows: rows of each field.
      counts: per field, the training occurrences of each code (``CTRData.counts``).
      blocks, dim, alpha, budget, round_pow2: the blocking and sizing.
      layers: the rest of :class:`DLRMConfig` (``n_dense``, ``bottom``, ``top``, ...).
    """
    rows = tuple(int(r) for r in field_rows)
    if len(counts) != len(rows) or any(len(c) != r for c, r in zip(counts, rows)):
        raise ValueError(f"counts must hold one array per field of its rows ({rows[:4]}...), got "
                         f"{[len(c) for c in counts][:4]}...")
    cut = blocking.equipartition(np.concatenate([np.asarray(c, np.float64) for c in counts]), blocks)
    if budget is None:
        table = MDSpec(cut.sizes, sizing.popularity_dims(cut.row_probs, alpha, base_dim=dim, round_pow2=round_pow2),
                       dim)
    else:
        table = sizing.solve_budget(int(budget), cut.sizes, cut.row_probs, dim, alpha, round_pow2=round_pow2)
    table = table.with_loads(tuple(cut.probs)) if table.n_blocks > 1 else table
    return CTRModel(DLRMConfig(table, rows, **layers), cut.position.astype(np.int32))


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


def _xavier_embedding(key, config: DLRMConfig, tables, projections):
    """Every 2-D leaf of the table and its projections redrawn Xavier-uniform. A leaf
    holding all stacked rows (a single-block table) takes each field's own limit
    ``sqrt(6 / (n_f + d))``, as if each field had its table."""
    leaves, tree = jax.tree.flatten((tables, projections))
    keys = iter(jax.random.split(key, max(len(leaves), 1)))
    field_of_row = np.repeat(np.arange(config.n_fields), config.field_rows)
    out = []
    for leaf in leaves:
        k = next(keys)
        if leaf.ndim != 2:
            out.append(leaf)
            continue
        n, d = leaf.shape
        if n == config.table.n_rows and config.n_fields > 1:
            limit = np.sqrt(6.0 / (np.asarray(config.field_rows, np.float64) + d))[field_of_row][:, None]
        else:
            limit = np.full((1, 1), np.sqrt(6.0 / (n + d)))
        draw = jax.random.uniform(k, leaf.shape, jnp.float32, -1.0, 1.0)
        out.append((draw * jnp.asarray(limit, jnp.float32)).astype(leaf.dtype))
    return tree.unflatten(out)


def _xavier_fields(key, config: DLRMConfig):
    """``(tables, dense)`` of a per-field table (:class:`~mdcf.embeddings.FieldsSpec`): plain
    and MD parts Xavier-uniform leaf by leaf; other schemes drawn by their own ``init`` with
    rows of the variance a Xavier-uniform table of the field would have, ``2 / (n_f + d0)``
    (a quotient-remainder product or tensor-train contraction of Xavier-uniform leaves would not)."""
    spec = config.table
    tables, dense = [], []
    for f, (k, part) in enumerate(zip(jax.random.split(key, len(spec.parts)), spec.parts)):
        if isinstance(part, MDSpec):
            t, d = embeddings.split(part, embeddings.init(k, part))
            leaves, tree = jax.tree.flatten((t, d))
            keys = jax.random.split(jax.random.fold_in(k, 1), max(len(leaves), 1))
            t, d = tree.unflatten([_xavier(kk, *leaf.shape).astype(leaf.dtype) if leaf.ndim == 2 else leaf
                                   for kk, leaf in zip(keys, leaves)])
        else:
            stddev = float(np.sqrt(2.0 / (part.n_rows + spec.base_dim)))
            t, d = embeddings.split(part, embeddings.init(k, part, stddev))
        tables.append(t)
        dense.append(d)
    return tuple(tables), tuple(dense)


def init(key: jax.Array, config: DLRMConfig) -> dict:
    """Initial parameters ``{"tables": {"fields": ...}, "dense": {"projections": {"fields": ...},
    "bottom": [...], "top": [...]}}`` (the layout of the rating models: tables by rows, the rest dense)."""
    k_table, k_bottom, k_top = jax.random.split(key, 3)
    if config.embedding_init == "xavier" and isinstance(config.table, embeddings.FieldsSpec):
        tables, projections = _xavier_fields(k_table, config)
    else:
        tables, projections = embeddings.split(config.table, embeddings.init(k_table, config.table,
                                                                             config.init_stddev))
        if config.embedding_init == "xavier":
            tables, projections = _xavier_embedding(jax.random.fold_in(k_table, 1), config, tables, projections)
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


def forward(dense: dict, config: DLRMConfig, vectors: dict, rows: dict, inputs: dict) -> jax.Array:
    """Click logits ``[B]`` from the dense parameters, the field vectors ``{"fields": [B, F, d0]}``
    and the inputs ``{"dense": [B, n_dense]}`` (``rows``: no per-row tables, unused).
    The form the train step calls (:attr:`mdcf.models.Family.forward`)."""
    x = _mlp(dense["bottom"], jnp.asarray(inputs["dense"], jnp.float32), last_relu=True)  # [B, d0]
    z = jnp.concatenate([x[:, None, :], vectors["fields"]], axis=1)
    products = jnp.einsum("bid,bjd->bij", z, z)
    i, j = interaction_pairs(z.shape[1])
    top_in = jnp.concatenate([x, products[:, i, j]], axis=1)
    return _mlp(dense["top"], top_in, last_relu=False)[:, 0]


def apply(params: dict, config: DLRMConfig, dense, rows, capacity: int | str | None = "auto") -> jax.Array:
    """Click logits ``[B]`` from dense features ``[B, n_dense]`` and stacked rows ``[B, F]``
    (:func:`field_rows_to_stacked`). Differentiable in ``params``; jit- and vmap-safe."""
    vectors, _ = embed_batch(params, config, {"rows": jnp.asarray(rows)}, capacity)  # [B, F, d0] each
    return forward(params["dense"], config, vectors, {}, {"dense": dense})


def encode(model, data) -> dict[str, np.ndarray]:
    """A batch dict ``{"rows": [n, F] int32 table rows, "dense": [n, n_dense] float32,
    "labels": [n] float32}`` of :class:`~mdcf.data.CTRData` whose fields match the model's
    (a :class:`DLRMConfig`: stacked rows; a :class:`CTRModel`: its block-ordered rows)."""
    config = model.config if isinstance(model, CTRModel) else model
    if tuple(data.field_rows) != config.field_rows or data.n_dense != config.n_dense:
        raise ValueError(f"{data.name}: {data.n_fields} fields of {tuple(data.field_rows)[:4]}... rows and "
                         f"{data.n_dense} dense features, the model has {config.n_fields} fields of "
                         f"{config.field_rows[:4]}... rows and {config.n_dense} dense features: build the "
                         "model from this data's field_rows")
    rows = field_rows_to_stacked(data.categorical, config)
    if isinstance(model, CTRModel):
        rows = model.rows[rows]
    return {"rows": rows, "dense": np.asarray(data.dense, np.float32), "labels": np.asarray(data.labels, np.float32)}


def predict_proba(params: dict, config: DLRMConfig, dense, rows) -> jax.Array:
    """Click probabilities ``[B]``."""
    return jax.nn.sigmoid(apply(params, config, dense, rows))


def bce_loss(logits, labels, weights=None) -> jax.Array:
    """Mean binary cross-entropy from logits (numerically stable), weighted if ``weights``."""
    losses = binary_cross_entropy(logits, jnp.asarray(labels, jnp.float32))
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
