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

Results go to ``results.csv`` (one row per run, appended atomically); a rerun
skips the runs already there.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import numpy as np

from .. import data, embeddings, io, models, train
from ..models import dlrm
from .runs import append_result, read_results

__all__ = ["CTRSweepConfig", "CTR_COLUMNS", "run_ctr_sweep", "read_ctr_results", "load_clicks", "ctr_fast_mode",
           "ctr_cells", "ctr_table"]

CTR_COLUMNS = (
    "dataset", "model", "method", "budget_dim", "budget", "embedding_params", "params", "alpha", "base_dim", "dims",
    "seed", "learning_rate", "train_logloss", "val_logloss", "val_auc", "test_logloss", "test_accuracy", "test_auc",
    "epochs", "best_epoch", "train_seconds", "seconds", "train_curve", "status",
)
_INTS = ("budget_dim", "budget", "embedding_params", "params", "base_dim", "seed", "epochs", "best_epoch")
_TEXTS = ("dataset", "model", "method", "dims", "train_curve", "status")
_KEY = ("dataset", "method", "budget_dim", "alpha", "seed")


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

    def __post_init__(self):
        for name in ("dims", "alphas", "seeds", "bottom", "top"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not 1 <= self.fields <= 26:
            raise ValueError(f"fields must be 1 to 26 (the first Kaggle fields of the synthetic set), got {self.fields}")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"dims must be positive dimensions, got {self.dims}")
        if any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be > 0 (alpha 0 is the uniform run at each budget), got {self.alphas}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def ctr_fast_mode(config: CTRSweepConfig) -> CTRSweepConfig:
    """A tiny version of ``config`` for tests and notebooks: a small synthetic set of six
    fields, one budget, one alpha, one seed, small MLPs and one epoch (a smoke run: too
    small to tell the methods apart)."""
    return CTRSweepConfig(dataset="synthetic", examples=4_000, cap=100, fields=6, data_seed=config.data_seed,
                          dims=(2,), alphas=(0.4,), seeds=(0,), base_dim=16, epochs=1, batch_size=512,
                          learning_rate=3e-3, bottom=(16,), top=(16,))


def load_clicks(config: CTRSweepConfig) -> data.CTRSplit:
    """The sweep's training, validation and test parts."""
    if config.dataset == "synthetic":
        examples, _ = data.synthetic_ctr(config.examples, cardinalities=data.KAGGLE_CARDINALITIES[:config.fields],
                                         cap=config.cap, seed=config.data_seed)
        return data.split_ctr(examples, "random", seed=config.data_seed)
    return data.load_criteo(config.dataset, threshold=config.threshold, split="day")


def read_ctr_results(path, *, set_aside: bool = False) -> list[dict]:
    """The rows of a click sweep's ``results.csv`` (:data:`CTR_COLUMNS`)."""
    return read_results(path, set_aside=set_aside, columns=CTR_COLUMNS, ints=_INTS, texts=_TEXTS)


def _key(row: dict) -> tuple:
    return tuple(str(row[k]) if k in ("dataset", "method") else float(row[k]) for k in _KEY)


def _model_for(config: CTRSweepConfig, parts: data.CTRSplit, method: str, dim: int, alpha: float):
    layers = dict(bottom=config.bottom, top=config.top)
    rows = parts.field_rows
    if method == "uniform":
        return dlrm.dlrm_config(rows, dim=dim, **layers)
    if method == "md-frequency":
        return dlrm.frequency_blocked(rows, parts.counts, blocks=len(rows), dim=config.base_dim, alpha=alpha,
                                      budget=dim * sum(rows), **layers)
    return dlrm.dlrm_config(rows, dim=config.base_dim, alpha=alpha, budget=dim * sum(rows), **layers)


def _train_one(model, parts: data.CTRSplit, config: CTRSweepConfig, seed: int) -> dict:
    started = time.perf_counter()
    result = train.fit(model, parts.train, parts.validation, epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, seed=seed, progress=False)
    test = train.evaluate(model, result.params, parts.test)
    best = result.history[result.best_epoch - 1]
    structure = models.config_of(model)
    return {
        "embedding_params": embeddings.num_params(structure.table), "params": models.num_params(model),
        "base_dim": structure.dim, "dims": "-".join(str(d) for d in structure.table.dims),
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

    Writes ``config.json`` and ``results.csv`` in ``out_dir``; a folder holding finished
    runs of other settings is refused. A diverged run is recorded with status
    ``diverged``, an unreachable budget with ``infeasible``; the sweep goes on.
    """
    out_dir = Path(out_dir)
    with io.folder_lock(out_dir, "this sweep folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path, results_path = out_dir / "config.json", out_dir / "results.csv"
        previous = read_ctr_results(results_path, set_aside=True)
        if previous and config_path.is_file() and config_path.read_text() != config.to_json():
            raise ValueError(f"{config_path} holds a sweep with other settings; results would not be comparable: "
                             "use another output folder")
        parts = load_clicks(config) if parts is None else parts
        with io.atomic_write(config_path, "w") as f:
            f.write(config.to_json())
        done = {_key(r) for r in previous}
        methods = [("uniform", 0.0)] + [("md", a) for a in config.alphas]
        if config.control:
            methods += [("md-frequency", a) for a in config.alphas]
        cells = [(seed, dim, method, alpha) for seed in config.seeds for dim in config.dims
                 for method, alpha in methods]
        name = "synthetic" if config.dataset == "synthetic" else Path(config.dataset).name
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), desc=f"ctr sweep {name}", unit="run")
        with bar if bar is not None else contextlib.nullcontext():
            for seed, dim, method, alpha in cells:
                row = {"dataset": name, "model": "dlrm", "method": method, "budget_dim": dim,
                       "budget": dim * sum(parts.field_rows), "alpha": alpha, "seed": seed,
                       "learning_rate": config.learning_rate}
                if _key(row) not in done:
                    try:
                        model = _model_for(config, parts, method, dim, alpha)
                    except ValueError as err:
                        row["status"] = f"infeasible: {err}"[:300]
                    else:
                        try:
                            row.update(_train_one(model, parts, config, seed))
                        except train.TrainingDivergedError as err:
                            row["status"] = f"diverged: {err}"[:300]
                            log(f"{method} d={dim} alpha={alpha:g} seed={seed}: {err}")
                    append_result(results_path, row, CTR_COLUMNS)
                    jax.clear_caches()  # each model compiles its own functions
                if bar is not None:
                    bar.update(1)
        return read_ctr_results(results_path)


def _finished(rows) -> list[dict]:
    return [r for r in rows if r["status"] == "ok"]


def ctr_cells(rows) -> dict[tuple, list[dict]]:
    """Finished runs grouped by cell ``(budget_dim, method, alpha)``, in order."""
    cells: dict[tuple, list[dict]] = {}
    order = {"uniform": 0, "md": 1, "md-frequency": 2}
    for r in sorted(_finished(rows), key=lambda r: (r["budget_dim"], order.get(r["method"], 3), r["alpha"], r["seed"])):
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
