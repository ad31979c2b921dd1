"""The click-prediction sweep: DLRM with uniform tables against MD tables at equal embedding budgets.

One *cell* is (budget, method, alpha, seed). The budgets are those of uniform
tables of dimension ``d`` (``d`` times the stacked rows of all fields); at each,
``uniform`` is that table (base dimension ``d``) and ``md`` is an MD table with
one block per field, base dimension ``base_dim``, dimensions from the popularity
rule at temperature ``alpha`` scaled to the same budget (projections counted,
within 1% below it; :func:`mdcf.models.dlrm.dlrm_config`). ``md-frequency`` is
the paper's control: the same budget and alpha, but blocks cut by training
frequency across all fields (as many blocks as fields;
:func:`mdcf.models.dlrm.frequency_blocked`) instead of one block per field. Every run trains
with ``fit``'s click defaults (the MD paper's Amsgrad, learning rate 1e-3,
batch 4,096) for the configured epochs, keeps the best validation epoch, and is
scored on the test part. The data split is fixed; seeds vary the initial
parameters and the shuffles.

The other ways to shrink the tables run at the same budgets, per field as dlrm and
TT-Rec apply them (:mod:`mdcf.embeddings.fields`), each at every *factor*: ``hash``
(each field hashed into a common share of its rows), ``lowrank`` (per-field ``[n_f, r]``
tables with their ``r x d0`` projections, one rank) and ``tt`` (tensor-train cores at
common ranks) have the base dimension ``factor * d`` and fill the budget with their own
size; ``qr`` takes ``factor`` collisions in every field large enough to save by it, at
the largest base dimension that fits. A field where a scheme would not save parameters
is a plain table. Each method's setting (alpha, factor) is chosen on validation
logloss (:func:`ctr_method_cells`), never on test.

Budgets are in embedding parameters (``budget_unit="params"``) or in embedding bytes
(``"bytes"``: ``4 * d * sum(field_rows)``, float32 parameters weighing 4 bytes). In
bytes two more methods run: ``uniform-int8`` (the largest uniform table whose int8 rows,
with a float32 scale and offset each, fit: ``d' = 4 d - 8``) and ``md-int8`` (MD per
field at each alpha, sized so that its int8 rows and float32 projections land within 1%
below the budget, at the first of ``base_dim``, twice and four times it where such a
table exists: a budget above every row at ``base_dim`` needs a larger one). Both train
in float32 and are quantised row-wise after training (:mod:`mdcf.embeddings.quantize`);
their validation and test metrics are the quantised model's. The float methods are the
same models in either unit.

Results go to ``results.csv`` (one row per run, appended atomically); a rerun
skips the runs already there, and a rerun with more grid values (dims, alphas,
seeds, methods, factors) extends the folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jax
import numpy as np

from .. import data, embeddings, io, models, train
from ..embeddings import fields, quantize
from ..models import dlrm
from .methods import quantized_params
from .runs import append_result, read_results

__all__ = ["CTRSweepConfig", "CTR_COLUMNS", "CTR_METHODS", "CTR_FACTOR_METHODS", "CTR_BYTES_ONLY", "run_ctr_sweep",
           "read_ctr_results", "load_clicks", "ctr_fast_mode", "ctr_model", "embedding_nbytes", "ctr_cells",
           "ctr_table", "ctr_method_cells", "ctr_methods_table"]

CTR_METHODS = ("uniform", "md", "md-frequency", "hash", "qr", "lowrank", "tt", "uniform-int8", "md-int8")
CTR_FACTOR_METHODS = ("hash", "qr", "lowrank", "tt")
CTR_BYTES_ONLY = ("uniform-int8", "md-int8")
CTR_COLUMNS = (
    "dataset", "model", "method", "budget_dim", "budget", "embedding_params", "embedding_bytes", "params", "alpha",
    "factor", "base_dim", "dims", "seed", "learning_rate", "train_logloss", "val_logloss", "val_auc", "test_logloss",
    "test_accuracy", "test_auc", "epochs", "best_epoch", "train_seconds", "seconds", "train_curve", "status",
)
# Earlier layouts, read and rewritten by a sweep: before the other methods (no factor
# column), and before byte budgets (no embedding_bytes; every method then was float32).
_CTR_COLUMNS_V2 = tuple(c for c in CTR_COLUMNS if c != "embedding_bytes")
_CTR_COLUMNS_V1 = tuple(c for c in _CTR_COLUMNS_V2 if c != "factor")
_INTS = ("budget_dim", "budget", "embedding_params", "embedding_bytes", "params", "factor", "base_dim", "seed",
         "epochs", "best_epoch")
_TEXTS = ("dataset", "model", "method", "dims", "train_curve", "status")
_KEY = ("dataset", "method", "budget_dim", "alpha", "factor", "seed")
_GRID = ("dims", "alphas", "seeds", "methods", "factors")


@dataclass(frozen=True)
class CTRSweepConfig:
    """Settings of a click-prediction sweep (JSON round-trip).

    Attributes:
      dataset: ``"synthetic"`` (:func:`mdcf.data.synthetic_ctr`) or the path of a
        Criteo-format file (:func:`mdcf.data.load_criteo`, the Kaggle day split).
      examples, cap, fields, data_seed: the synthetic set's size, cardinality cap per
        field (None: the full Kaggle cardinalities), number of fields (the first of
        Kaggle's 26) and seed.
      threshold: a real file's frequency threshold (rarer categories share a row).
      dims: the uniform dimensions whose table sizes are the budgets.
      alphas: MD temperatures (> 0) run at every budget.
      seeds: seeds of the initial parameters and shuffles.
      base_dim: the MD layers' output dimension ``d0``.
      control: also run the frequency-blocked control (``md-frequency``) at each alpha.
      epochs, batch_size, learning_rate: training. The defaults suit the synthetic set's
        500k examples (per-run times in RESULTS.md, "Click prediction"): the paper's
        batch 4,096 and learning rate 1e-3, tuned for Criteo's 45M examples, would give
        only about 110 steps. For a Criteo file use ``batch_size=4096, learning_rate=1e-3``.
      bottom, top: hidden sizes of DLRM's MLPs.
      methods: what runs at each budget (:data:`CTR_METHODS`): ``uniform``, ``md`` (at every
        alpha), ``md-frequency`` (also added by ``control``) and the per-field schemes
        ``hash``, ``qr``, ``lowrank``, ``tt`` (at every factor; see the module docstring).
      factors: the per-field schemes' settings: base dimension over ``d`` (``hash``,
        ``lowrank``, ``tt``) or collisions (``qr``).
      budget_unit: ``"params"`` (embedding parameters) or ``"bytes"`` (embedding bytes,
        which the int8 methods ``uniform-int8`` and ``md-int8`` need).
    """

    dataset: str = "synthetic"
    examples: int = 500_000
    cap: int | None = 200_000
    fields: int = 26
    data_seed: int = 0
    threshold: int = 0
    dims: tuple[int, ...] = (2, 4, 8, 16, 32)
    alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    seeds: tuple[int, ...] = (0, 1, 2)
    base_dim: int = 32
    control: bool = True
    epochs: int = 1
    batch_size: int = 1024
    learning_rate: float = 3e-3
    bottom: tuple[int, ...] = (512, 256, 64)
    top: tuple[int, ...] = (512, 256)
    methods: tuple[str, ...] = ("uniform", "md")
    factors: tuple[int, ...] = (2, 4)
    budget_unit: str = "params"

    def __post_init__(self):
        for name in ("dims", "alphas", "seeds", "bottom", "top", "methods", "factors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [m for m in self.methods if m not in CTR_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be some of {CTR_METHODS}, got {list(self.methods)}")
        if any(not (isinstance(f, int) and f >= 1) for f in self.factors) or \
                (not self.factors and any(m in CTR_FACTOR_METHODS for m in self.methods)):
            raise ValueError(f"factors must be integers >= 1 (one at least for {CTR_FACTOR_METHODS}), "
                             f"got {list(self.factors)}")
        if self.budget_unit not in ("params", "bytes"):
            raise ValueError(f"budget_unit must be 'params' or 'bytes', got {self.budget_unit!r}")
        int8 = [m for m in self.methods if m in CTR_BYTES_ONLY]
        if int8 and self.budget_unit != "bytes":
            raise ValueError(f"{', '.join(int8)} keep as many parameters as their float tables and save bytes: "
                             "compare them with budget_unit='bytes' (--budget-unit bytes)")
        if not 1 <= self.fields <= 26:
            raise ValueError(f"fields must be 1 to 26 (the first Kaggle fields of the synthetic set), got {self.fields}")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"dims must be positive dimensions, got {self.dims}")
        if any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be > 0 (alpha 0 is the uniform run at each budget), got {self.alphas}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def runs(self) -> list[tuple[str, float, int]]:
        """``(method, alpha, factor)`` of every run at one budget and seed, in method order."""
        methods = set(self.methods) | ({"md-frequency"} if self.control else set())
        out = []
        for method in CTR_METHODS:
            if method not in methods:
                continue
            if method in ("md", "md-frequency", "md-int8"):
                out += [(method, float(a), 0) for a in self.alphas]
            elif method in CTR_FACTOR_METHODS:
                out += [(method, 0.0, int(f)) for f in self.factors]
            else:
                out.append((method, 0.0, 0))
        return out


def ctr_fast_mode(config: CTRSweepConfig) -> CTRSweepConfig:
    """A tiny version of ``config`` for tests and notebooks: a small synthetic set of six
    fields, one budget (d = 2; in bytes d = 4, where int8 rows fit), one alpha, one seed,
    small MLPs and one epoch (a smoke run: too small to tell the methods apart)."""
    return CTRSweepConfig(dataset="synthetic", examples=4_000, cap=100, fields=6, data_seed=config.data_seed,
                          dims=(4,) if config.budget_unit == "bytes" else (2,), alphas=(0.4,), seeds=(0,),
                          base_dim=16, epochs=1, batch_size=512, learning_rate=3e-3, bottom=(16,), top=(16,),
                          methods=config.methods, factors=config.factors[:1], control=config.control,
                          budget_unit=config.budget_unit)


def load_clicks(config: CTRSweepConfig) -> data.CTRSplit:
    """The sweep's training, validation and test parts."""
    if config.dataset == "synthetic":
        examples, _ = data.synthetic_ctr(config.examples, cardinalities=data.KAGGLE_CARDINALITIES[:config.fields],
                                         cap=config.cap, seed=config.data_seed)
        return data.split_ctr(examples, "random", seed=config.data_seed)
    return data.load_criteo(config.dataset, threshold=config.threshold, split="day")


def read_ctr_results(path, *, set_aside: bool = False) -> list[dict]:
    """The rows of a click sweep's ``results.csv`` (:data:`CTR_COLUMNS`)."""
    return read_results(path, set_aside=set_aside, columns=CTR_COLUMNS, ints=_INTS, texts=_TEXTS,
                        upgrades={_CTR_COLUMNS_V1: lambda row: _float_bytes({**row, "factor": "0"}),
                                  _CTR_COLUMNS_V2: _float_bytes})


def _float_bytes(row: dict) -> dict:
    """A row of a layout before byte budgets, whose methods all stored float32 tables."""
    params = row.get("embedding_params") or ""
    return {**row, "embedding_bytes": str(4 * int(params)) if params else ""}


def _key(row: dict) -> tuple:
    return tuple(str(row[k]) if k in ("dataset", "method") else float(row[k] or 0) for k in _KEY)


def ctr_model(field_rows, method: str, budget_dim: int, *, alpha: float = 0.0, factor: int = 0, base_dim: int = 32,
              counts=None, n_dense: int = 13, bottom=(512, 256, 64), top=(512, 256), unit: str = "params"):
    """The DLRM of one click-sweep run: ``method`` (:data:`CTR_METHODS`) at the embedding
    budget of a uniform table of dimension ``budget_dim`` (``budget_dim * sum(field_rows)``
    parameters, projections and cores counted; with ``unit="bytes"``, four times as many
    bytes, which only the int8 methods spend differently). ``counts`` (per field, each
    code's training occurrences) is needed by ``md-frequency``. Returns a
    :class:`~mdcf.models.dlrm.DLRMConfig` (a :class:`~mdcf.models.dlrm.CTRModel` for
    ``md-frequency``); :func:`embedding_nbytes` gives its stored embedding bytes.

    Raises:
      ValueError: an unknown method or unit, a missing setting, an int8 method in
        parameters, or a budget the method cannot meet.
    """
    rows = tuple(int(r) for r in field_rows)
    budget = int(budget_dim) * sum(rows)
    layers = dict(n_dense=n_dense, bottom=tuple(bottom), top=tuple(top))
    if method not in CTR_METHODS:
        raise ValueError(f"method must be one of {CTR_METHODS}, got {method!r}")
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    if method in CTR_BYTES_ONLY:
        if unit != "bytes":
            raise ValueError(f"{method} keeps as many parameters as its float tables: its budget is in bytes "
                             "(unit='bytes')")
        return _int8_model(rows, method, 4 * budget, alpha, base_dim, layers)
    if method in ("md", "md-frequency") and not alpha > 0:
        raise ValueError(f"{method} needs an alpha > 0, got {alpha!r}")
    if method in CTR_FACTOR_METHODS and not (isinstance(factor, int) and factor >= 1):
        raise ValueError(f"{method} needs a factor >= 1, got {factor!r}")
    if method == "uniform":
        return dlrm.dlrm_config(rows, dim=budget_dim, **layers)
    if method == "md":
        return dlrm.dlrm_config(rows, dim=base_dim, alpha=alpha, budget=budget, **layers)
    if method == "md-frequency":
        if counts is None:
            raise ValueError("md-frequency needs counts (per field, each code's training occurrences)")
        return dlrm.frequency_blocked(rows, counts, blocks=len(rows), dim=base_dim, alpha=alpha, budget=budget,
                                      **layers)
    if method == "qr":
        per_dim = embeddings.num_params(fields.quotient_remainder(rows, 1, factor))
        if budget < per_dim:
            raise ValueError(f"qr: budget {budget:,} is below QR at d0 = 1 with {factor} collisions ({per_dim:,})")
        table = fields.quotient_remainder(rows, budget // per_dim, factor)
    else:
        build = {"hash": fields.hashed, "lowrank": fields.low_rank_fields, "tt": fields.tensor_train}[method]
        table = build(rows, budget, factor * budget_dim)
    return dlrm.DLRMConfig(table, rows, **layers)


def _int8_model(rows, method, budget_bytes, alpha, base_dim, layers, tolerance=0.01):
    """``uniform-int8``: the largest uniform table whose int8 bytes fit; ``md-int8``: MD per
    field at ``alpha`` whose int8 bytes land within ``tolerance`` below ``budget_bytes``, at
    the first base dimension of ``base_dim``, twice and four times it that can hold them."""
    n = sum(rows)
    if budget_bytes < 9 * n:
        raise ValueError(f"{method}: {budget_bytes:,} bytes cannot hold {n:,} int8 rows of one column "
                         f"({9 * n:,} bytes with their scales and offsets)")
    if method == "uniform-int8":
        dim = budget_bytes // n - 8  # a row of d int8 codes weighs d bytes, plus 8 of scale and offset
        return dlrm.dlrm_config(rows, dim=int(dim), **layers)
    if not alpha > 0:
        raise ValueError(f"md-int8 needs an alpha > 0, got {alpha!r}")
    reasons = []
    for d0 in (base_dim, 2 * base_dim, 4 * base_dim):
        if budget_bytes > n * (d0 + 8):  # more than every row at d0 holds
            reasons.append(f"d0 = {d0}: every row at d0 takes {n * (d0 + 8):,} bytes")
            continue
        config, reason = _md_int8_at(rows, budget_bytes, alpha, d0, layers, tolerance)
        if config is not None:
            return config
        reasons.append(reason)
    raise ValueError(f"md-int8 at alpha {alpha:g} and {budget_bytes:,} bytes: " + "; ".join(reasons))


def _md_int8_at(rows, budget_bytes, alpha, d0, layers, tolerance):
    n = sum(rows)
    target = (1 - tolerance / 2) * budget_bytes
    params = (budget_bytes - 8 * n) // 2  # a first guess: codes weigh 1 byte, projections 4
    size = 0
    for _ in range(30):
        try:
            config = dlrm.dlrm_config(rows, dim=d0, alpha=alpha, budget=max(params, n), **layers)
        except ValueError as err:
            return None, f"d0 = {d0}: {err}"
        size = quantize.spec_nbytes(config.table, 8)
        if (1 - tolerance) * budget_bytes <= size <= budget_bytes:
            return config, ""
        # bytes grow by about one per parameter of the rows and four per projection entry
        params = max(n, params + int((target - size) / (1 + 3 * _projection_share(config.table))))
    return None, f"d0 = {d0}: no table lands within {tolerance:.0%} below (last {size:,} bytes)"


def _projection_share(table) -> float:
    """The share of an MD table's parameters in its projections."""
    projections = sum(d * table.base_dim for d in table.dims if d != table.base_dim)
    return projections / max(1, embeddings.num_params(table))


def embedding_nbytes(model, method: str) -> int:
    """The stored bytes of ``model``'s embedding as ``method`` keeps it: 4 per float32
    parameter; for the int8 methods, int8 rows with a float32 scale and offset each and
    float32 projections (:func:`mdcf.embeddings.quantize.spec_nbytes`)."""
    table = models.config_of(model).table
    return quantize.spec_nbytes(table, 8) if method in CTR_BYTES_ONLY else 4 * embeddings.num_params(table)


def _describe(table) -> str:
    """The ``dims`` column: MD block dimensions, or a per-field scheme's size."""
    if isinstance(table, embeddings.MDSpec):
        return "-".join(str(d) for d in table.dims)
    parts = [p for p in table.parts if not isinstance(p, embeddings.MDSpec)]
    if not parts:
        return "plain"
    first = parts[0]
    if isinstance(first, embeddings.HashSpec):
        detail = f"buckets/rows {sum(p.n_buckets for p in parts) / sum(p.n_rows for p in parts):.3f}"
    elif isinstance(first, embeddings.QRSpec):
        detail = f"m={first.collisions}"
    else:
        detail = f"r={max(max(p.ranks) for p in parts)}"
    return f"{fields.SCHEME.name}: {len(parts)}/{len(table.parts)} {embeddings.scheme(first).name} {detail}"


def _train_one(model, method: str, parts: data.CTRSplit, config: CTRSweepConfig, seed: int) -> dict:
    started = time.perf_counter()
    result = train.fit(model, parts.train, parts.validation, epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, seed=seed, progress=False)
    best = dict(result.history[result.best_epoch - 1])
    params = result.params
    if method in CTR_BYTES_ONLY:  # the stored model is the quantised one: validate and test it
        params = quantized_params(model, params, 8)
        val = train.evaluate(model, params, parts.validation)
        best.update(val_logloss=val["logloss"], val_auc=val["auc"])
    test = train.evaluate(model, params, parts.test)
    structure = models.config_of(model)
    return {
        "embedding_params": embeddings.num_params(structure.table),
        "embedding_bytes": embedding_nbytes(model, method), "params": models.num_params(model),
        "base_dim": structure.dim, "dims": _describe(structure.table),
        "train_logloss": result.history[-1]["train_logloss"], "val_logloss": best["val_logloss"],
        "val_auc": best["val_auc"], "test_logloss": test["logloss"], "test_accuracy": test["accuracy"],
        "test_auc": test["auc"], "epochs": len(result.history), "best_epoch": result.best_epoch,
        "train_seconds": round(sum(h["seconds"] for h in result.history), 3),
        "seconds": round(time.perf_counter() - started, 2),
        "train_curve": " ".join(f"{v:.5f}" for h in result.history for v in h["train_curve"]), "status": "ok",
    }


def run_ctr_sweep(config: CTRSweepConfig, out_dir, *, parts: data.CTRSplit | None = None, progress: bool = True,
                  log=print) -> list[dict]:
    """Run (or resume) a click sweep; returns all result rows, earlier ones included.

    Writes ``config.json`` and ``results.csv`` in ``out_dir``. A folder holding finished
    runs whose settings differ in more than the grid (dims, alphas, seeds, methods,
    factors, control) is refused; one that differs only there is extended: the runs of
    ``config``'s grid that are missing train, and ``config.json`` records the union of
    both grids. A diverged run is recorded with status ``diverged``, an unreachable
    budget with ``infeasible``; the sweep goes on.
    """
    out_dir = Path(out_dir)
    with io.folder_lock(out_dir, "this sweep folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path, results_path = out_dir / "config.json", out_dir / "results.csv"
        previous = read_ctr_results(results_path, set_aside=True)
        saved = config
        if previous and config_path.is_file():
            saved = _merge(config_path, config)
        parts = load_clicks(config) if parts is None else parts
        with io.atomic_write(config_path, "w") as f:
            f.write(saved.to_json())
        done = {_key(r) for r in previous}
        cells = [(seed, dim, method, alpha, factor) for seed in config.seeds for dim in config.dims
                 for method, alpha, factor in config.runs()]
        name = "synthetic" if config.dataset == "synthetic" else Path(config.dataset).name
        per_dim = 4 if config.budget_unit == "bytes" else 1  # the budget column's unit
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), desc=f"ctr sweep {name}", unit="run")
        with bar if bar is not None else contextlib.nullcontext():
            for seed, dim, method, alpha, factor in cells:
                row = {"dataset": name, "model": "dlrm", "method": method, "budget_dim": dim,
                       "budget": per_dim * dim * sum(parts.field_rows), "alpha": alpha, "factor": factor,
                       "seed": seed, "learning_rate": config.learning_rate}
                if _key(row) not in done:
                    try:
                        model = ctr_model(parts.field_rows, method, dim, alpha=alpha, factor=factor,
                                          base_dim=config.base_dim, counts=parts.counts, n_dense=parts.train.n_dense,
                                          bottom=config.bottom, top=config.top, unit=config.budget_unit)
                    except ValueError as err:
                        row["status"] = f"infeasible: {err}"[:300]
                    else:
                        try:
                            row.update(_train_one(model, method, parts, config, seed))
                        except train.TrainingDivergedError as err:
                            row["status"] = f"diverged: {err}"[:300]
                            log(f"{method} d={dim} alpha={alpha:g} factor={factor} seed={seed}: {err}")
                    append_result(results_path, row, CTR_COLUMNS)
                    jax.clear_caches()  # each model compiles its own functions
                if bar is not None:
                    bar.update(1)
        return read_ctr_results(results_path)


def _merge(config_path: Path, config: CTRSweepConfig) -> CTRSweepConfig:
    """The union of the saved settings and ``config`` when they differ only in the grid."""
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}, line {err.lineno}: not valid JSON ({err.msg}); mend the file or use "
                         "another output folder") from None
    new = json.loads(config.to_json())
    # a folder from before these fields ran no other methods, in parameters
    saved = {"methods": ["uniform", "md"], "factors": [], "budget_unit": "params", **saved}
    fixed = sorted(k for k in set(saved) | set(new) if k not in (*_GRID, "control") and saved.get(k) != new.get(k))
    if fixed:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {new.get(k)!r}" for k in fixed)
        raise ValueError(f"{config_path} holds a sweep with other settings ({details}); results would not be "
                         "comparable: use another output folder")
    merged = {k: tuple(list(saved[k]) + [v for v in new[k] if v not in saved[k]]) for k in _GRID}
    return replace(config, control=bool(saved.get("control")) or config.control, **merged)


def _finished(rows) -> list[dict]:
    return [r for r in rows if r["status"] == "ok"]


def ctr_cells(rows) -> dict[tuple, list[dict]]:
    """Finished uniform and MD runs (``uniform``, ``md``, ``md-frequency``) grouped by cell
    ``(budget_dim, method, alpha)``, in order; the other methods: :func:`ctr_method_cells`."""
    cells: dict[tuple, list[dict]] = {}
    order = {"uniform": 0, "md": 1, "md-frequency": 2}
    finished = [r for r in _finished(rows) if r["method"] in order]
    for r in sorted(finished, key=lambda r: (r["budget_dim"], order[r["method"]], r["alpha"], r["seed"])):
        cells.setdefault((r["budget_dim"], r["method"], r["alpha"]), []).append(r)
    return cells


def ctr_table(rows) -> str:
    """A markdown table: per cell the embedding parameters, test logloss, accuracy and AUC
    (mean +- std over seeds), and the accuracy difference paired by seed (mean +- std; n
    pairs) of ``md`` against ``uniform`` at the same budget and of the control
    ``md-frequency`` against ``md`` at the same budget and alpha."""
    cells = ctr_cells(rows)
    by_run = {(r["budget_dim"], r["method"], r["alpha"], r["seed"]): r for r in _finished(rows)}
    lines = ["| budget (uniform d) | method | alpha | embedding params | test logloss | test accuracy | test AUC "
             "| accuracy difference (paired) | train s |", "|" + "---|" * 9]

    def spread(values, digits=4):
        values = np.asarray(values, float)
        return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"

    for (dim, method, alpha), runs in cells.items():
        against = {"md": ("uniform", 0.0), "md-frequency": ("md", alpha)}.get(method)
        pairs = [] if against is None else [
            r["test_accuracy"] - by_run[(dim, *against, r["seed"])]["test_accuracy"]
            for r in runs if (dim, *against, r["seed"]) in by_run]
        paired = f"{spread(pairs)} vs {against[0]} (n={len(pairs)})" if pairs else ""
        lines.append(f"| {dim} | {method} | {alpha:g} | {int(np.mean([r['embedding_params'] for r in runs])):,} | "
                     f"{spread([r['test_logloss'] for r in runs])} | {spread([r['test_accuracy'] for r in runs])} | "
                     f"{spread([r['test_auc'] for r in runs])} | {paired} | "
                     f"{np.mean([r['train_seconds'] for r in runs]):.1f} |")
    return "\n".join(lines)


def ctr_method_cells(rows) -> dict[tuple[int, str], tuple[str, list[dict]]]:
    """Per ``(budget_dim, method)``: the setting chosen on validation (lowest mean validation
    logloss over seeds, never test) as text, and its runs (one per seed)."""
    settings: dict[tuple[int, str], dict[tuple, list[dict]]] = {}
    for r in _finished(rows):
        settings.setdefault((r["budget_dim"], r["method"]), {}).setdefault((r["alpha"], r.get("factor") or 0),
                                                                           []).append(r)
    out = {}
    for (dim, method), by_setting in settings.items():
        (alpha, factor), runs = min(by_setting.items(),
                                    key=lambda kv: float(np.mean([r["val_logloss"] for r in kv[1]])))
        label = f"α={alpha:g}" if alpha > 0 else f"m={factor}" if method == "qr" else f"×{factor}" if factor else ""
        out[dim, method] = (label, sorted(runs, key=lambda r: r["seed"]))
    return out


def ctr_methods_table(rows, unit: str = "params") -> str:
    """A markdown table: per budget, every method at its validation-chosen setting, with its
    embedding parameters (embedding bytes with ``unit="bytes"``; and their share of the
    budget when below 99%), test logloss and AUC (mean +- std over seeds), and the per-seed
    (paired) logloss and AUC differences from uniform and from MD (each at its own
    validation-chosen setting)."""
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    cells = ctr_method_cells(rows)
    order = {m: i for i, m in enumerate(CTR_METHODS)}

    def stat(values, digits=4):
        values = np.asarray(values, float)
        return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"

    def paired(runs, other, metric):
        if other is None:
            return "–"
        by_seed = {r["seed"]: r[metric] for r in other[1]}
        diffs = [r[metric] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed]
        if not diffs:
            return "–"
        return f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f} (n={len(diffs)})"

    lines = [f"| budget (uniform d) | method | setting (on validation) | embedding {unit} | test logloss | test AUC "
             "| logloss − uniform | AUC − uniform | logloss − MD | AUC − MD |", "|---:|---|---|---:|---|---|---|---|---|---|"]
    for dim, method in sorted(cells, key=lambda k: (k[0], order.get(k[1], 99))):
        label, runs = cells[dim, method]
        size = float(np.mean([r[f"embedding_{unit}"] for r in runs]))
        fill = size / runs[0]["budget"]
        share = "" if fill >= 0.99 else f" ({fill:.0%})"
        uniform = cells.get((dim, "uniform")) if method != "uniform" else None
        md = cells.get((dim, "md")) if method != "md" else None
        lines.append(f"| {dim} | {method} | {label or '–'} | {int(size):,}{share} | "
                     f"{stat([r['test_logloss'] for r in runs])} | {stat([r['test_auc'] for r in runs])} | "
                     f"{paired(runs, uniform, 'test_logloss')} | {paired(runs, uniform, 'test_auc')} | "
                     f"{paired(runs, md, 'test_logloss')} | {paired(runs, md, 'test_auc')} |")
    return "\n".join(lines)
