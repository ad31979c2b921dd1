"""Running a sweep and its results store: one CSV row per training run, appended atomically."""

from __future__ import annotations

import contextlib
import csv
import io as stdio
import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path

import jax

from .. import data, io, models, train
from .budget import natural_budgets
from .config import SweepConfig, load_dataset
from .methods import BYTES_ONLY, describe, model_for_method, model_nbytes, quantized_params, settings

__all__ = ["COLUMNS", "run_sweep", "read_results", "append_result"]

COLUMNS = (
    "dataset", "model", "method", "budget_unit", "budget", "params", "nbytes", "alpha", "factor", "blocks",
    "base_dim", "user_dims", "item_dims", "seed", "l2", "learning_rate", "train_mse", "train_mse_popular",
    "train_mse_rare", "val_mse", "test_mse", "test_mse_popular", "test_mse_rare", "test_rmse", "epochs",
    "best_epoch", "seconds", "status",
)
_KEY = ("dataset", "model", "method", "budget", "alpha", "factor", "blocks", "seed", "l2", "learning_rate")
_TEXT_KEYS = ("dataset", "model", "method")

# The layout before methods and byte budgets: read, and rewritten in today's layout by a sweep.
_COLUMNS_V1 = (
    "dataset", "model", "budget", "params", "alpha", "blocks", "base_dim", "user_dims", "item_dims", "seed",
    "l2", "learning_rate", "train_mse", "train_mse_popular", "train_mse_rare", "val_mse", "test_mse",
    "test_mse_popular", "test_mse_rare", "test_rmse", "epochs", "best_epoch", "seconds", "status",
)

# Per results layout, the columns read as integers and those kept as text (the rest are floats).
_INTS = ("budget", "params", "nbytes", "factor", "blocks", "base_dim", "seed", "epochs", "best_epoch")
_TEXTS = ("dataset", "model", "method", "budget_unit", "user_dims", "item_dims", "status")


def _from_v1(row: dict) -> dict:
    """A row of the first layout in today's: uniform (alpha 0) or MD, in parameters."""
    params = row.get("params", "")
    return {**row, "method": "uniform" if float(row["alpha"]) == 0 else "md", "budget_unit": "params",
            "nbytes": str(4 * int(float(params))) if params not in ("", None) else "", "factor": "0"}


def read_results(path, *, set_aside: bool = False, columns: tuple[str, ...] = COLUMNS,
                 ints: tuple[str, ...] = _INTS, texts: tuple[str, ...] = _TEXTS, upgrades: dict | None = None
                 ) -> list[dict]:
    """The rows of a results CSV (numbers as floats/ints); ``[]`` when there is no file.

    ``columns``, ``ints`` and ``texts`` describe the layout (default: the rating sweep's
    :data:`COLUMNS`; the click sweep passes its own). ``upgrades`` maps the header of an
    earlier layout to a function bringing its rows (dicts of text) to ``columns``
    (default: the rating sweep's first layout); such a file is read in today's layout,
    and with ``set_aside`` rewritten in it atomically, the old file kept as ``<file>.v1``.

    A damaged row (a truncated or garbled line, a number that does not parse) raises
    ``ValueError`` naming the file and line. With ``set_aside=True`` (what
    :func:`run_sweep` does) damaged lines move to ``<file>.damaged`` beside it
    (appended there, never deleted), the file is rewritten without them, a warning
    names them, and their runs count as not done: a rerun trains them again.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    reader = csv.DictReader(stdio.StringIO(text))
    if upgrades is None:
        upgrades = {_COLUMNS_V1: _from_v1} if columns == COLUMNS else {}
    if tuple(reader.fieldnames or ()) in upgrades:
        return _upgrade(path, text, set_aside, upgrades[tuple(reader.fieldnames)], columns, ints, texts)
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"{path}: columns {reader.fieldnames} do not match this version's {list(columns)}; "
                         "use another output folder")
    rows, damaged = [], {}
    for row in reader:
        try:
            rows.append(_parse_row(row, columns, ints, texts))
        except ValueError as err:
            if not set_aside:
                raise ValueError(f"{path}, line {reader.line_num}: damaged row ({err}); rerun the sweep to set it "
                                 "aside and train its run again, or mend the line") from None
            damaged[reader.line_num] = str(err)
    if damaged:
        _set_aside(path, text, damaged)
    return rows


def _upgrade(path: Path, text: str, rewrite: bool, convert, columns, ints, texts) -> list[dict]:
    """The rows of an earlier layout's file in today's (``convert``); with ``rewrite`` (a sweep
    about to append) the file is rewritten in it, atomically, and the old one kept as ``<file>.v1``."""
    reader = csv.DictReader(stdio.StringIO(text))
    raw = []
    for row in reader:
        try:
            raw.append(convert(row))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {reader.line_num}: damaged row ({err}) in a file of an earlier layout; "
                             "mend the line before the file can be brought to this version's layout") from None
    if rewrite:
        out = stdio.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in columns} for row in raw)
        with io.atomic_write(path.with_name(path.name + ".v1"), "w") as f:
            f.write(text)
        with io.atomic_write(path, "w") as f:
            f.write(out.getvalue())
        return read_results(path, set_aside=True, columns=columns, ints=ints, texts=texts, upgrades={})
    return [_parse_row(row, columns, ints, texts) for row in raw]


def _parse_row(row: dict, columns, ints, texts) -> dict:
    if None in row or any(value is None for value in row.values()):
        raise ValueError(f"{len(columns)} fields expected, found {len(row) - (None in row)} "
                         f"{'and more' if None in row else 'or fewer'}")
    for name in ints:
        row[name] = int(float(row[name])) if row[name] != "" else None
    for name in columns:
        if name not in texts and isinstance(row[name], str):
            row[name] = float(row[name]) if row[name] != "" else math.nan
    if row["dataset"] == "" or row["model"] == "" or row["status"] == "":
        raise ValueError("dataset, model or status is empty")
    return row


def _set_aside(path: Path, text: str, damaged: dict[int, str]) -> None:
    """Move the damaged lines of a results file to ``<file>.damaged``, keeping the rest."""
    lines = text.splitlines(keepends=True)
    side = path.with_name(path.name + ".damaged")
    moved = "".join(line if line.endswith("\n") else line + "\n" for n, line in enumerate(lines, 1) if n in damaged)
    with io.atomic_write(side, "w") as f:
        f.write((side.read_text() if side.is_file() else "") + moved)
    with io.atomic_write(path, "w") as f:
        f.write("".join(line for n, line in enumerate(lines, 1) if n not in damaged))
    warnings.warn(f"{path}: set aside {len(damaged)} damaged row(s) (lines {sorted(damaged)}: "
                  f"{next(iter(damaged.values()))}) in {side}; their runs train again", stacklevel=3)


def append_result(path: Path, row: dict, columns: tuple[str, ...] = COLUMNS) -> None:
    """Append one result row (``columns``, default :data:`COLUMNS`) with one atomic append
    (:func:`mdcf.io.append_text`); a missing file is created with the header first."""
    header, line = stdio.StringIO(), stdio.StringIO()
    csv.DictWriter(header, fieldnames=columns, lineterminator="\n").writeheader()
    csv.DictWriter(line, fieldnames=columns, lineterminator="\n").writerow({k: row.get(k, "") for k in columns})
    io.append_text(path, line.getvalue(), header=header.getvalue())


def _key(row: dict) -> tuple:
    return tuple(str(row[k]) if k in _TEXT_KEYS else float(row[k]) for k in _KEY)


_GRID_FIELDS = ("seeds", "budgets", "dims", "alphas", "l2_grid", "learning_rates", "methods", "factors")


def _read_settings(path: Path) -> dict:
    """A sweep folder's saved settings; a clear error when the file is damaged."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); the folder's results cannot be "
                         "checked against this sweep's settings: mend the file, or use another output folder") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object of sweep settings, found {type(value).__name__}")
    return value


def _merge_configs(saved: dict, config: SweepConfig, where) -> SweepConfig:
    """The union of a saved configuration and ``config`` when they differ only in grid lists."""
    new = json.loads(config.to_json())
    defaults = json.loads(SweepConfig().to_json())  # settings a folder of an earlier version did not save
    saved = {**{k: defaults[k] for k in ("methods", "factors", "budget_unit")}, **saved}
    fixed = sorted(k for k in set(saved) | set(new) if k not in _GRID_FIELDS and saved.get(k) != new.get(k))
    if bool(saved.get("budgets")) != bool(new.get("budgets")):
        fixed.append("budgets (explicit budgets against natural budgets from dims)")
    if fixed:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {new.get(k)!r}" for k in fixed if k in new)
        raise ValueError(f"{where} holds a sweep with other settings ({details or ', '.join(fixed)}); results "
                         "would not be comparable: use another output folder")
    merged = {}
    for key in _GRID_FIELDS:
        values = list(saved.get(key, []))
        merged[key] = tuple(values + [v for v in new[key] if v not in values])
    return replace(config, **merged)


def run_sweep(config: SweepConfig, out_dir, *, ratings=None, progress: bool = True, log=print,
              mesh=None) -> list[dict]:
    """Run (or resume) a sweep; returns all result rows, including earlier ones.

    Writes ``config.json`` and ``results.csv`` in ``out_dir``. A rerun with the
    same folder skips finished runs. A run whose training diverges is recorded
    with status ``diverged`` (and skipped by :func:`select`); the sweep goes on.

    A configuration that differs from the saved one only in its grid lists
    (seeds, budgets, dims, alphas, l2_grid, learning_rates) extends the sweep:
    the saved configuration becomes the union of both and only the missing runs
    are trained. Any other difference is refused (the runs would not be
    comparable), unless the folder holds no finished run yet: then the new
    configuration replaces the saved one.

    With a ``mesh`` (:func:`mdcf.sharding.make_mesh`) every run trains on it
    (batches split over its ``data`` axis; a ``model`` axis larger than one
    splits table rows and uses the row-sparse optimiser); results equal the
    one-device run up to float rounding. In a multi-host run every process
    calls this with the same arguments and only process 0 writes; the output
    folder must be one all hosts read (resuming reads it).

    One sweep writes a folder at a time: the writer holds the folder's lock
    (:func:`mdcf.io.folder_lock`) while it runs, and a second sweep started on the
    same folder raises :class:`mdcf.io.FolderLockedError` naming the holder.
    """
    out_dir = Path(out_dir)
    writer = jax.process_index() == 0  # in a multi-host run only process 0 writes
    with io.folder_lock(out_dir, "this sweep folder") if writer else contextlib.nullcontext():
        return _run_sweep(config, out_dir, ratings, progress, log, mesh, writer)


def _run_sweep(config: SweepConfig, out_dir: Path, ratings, progress: bool, log, mesh, writer: bool) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "config.json"
    results_path = out_dir / "results.csv"
    previous = read_results(results_path, set_aside=writer)
    saved = config
    if config_path.is_file() and previous:  # with no finished run, the saved settings bind nothing
        saved = _merge_configs(_read_settings(config_path), config, config_path)
    if ratings is None:  # before config.json is written: a data set that fails to load leaves no trace
        ratings = load_dataset(config.dataset, config.synthetic)
    if writer:
        with io.atomic_write(config_path, "w") as f:
            f.write(saved.to_json())
    done = {_key(r) for r in previous}
    cells = _cells(config)
    bar = None
    total_runs = len(config.seeds) * (len(config.budgets) or len(config.dims)) * len(cells) * \
        len(config.l2_grid) * len(config.learning_rates)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_runs, desc=f"sweep {config.dataset} {config.model}", unit="run")
    try:
        for seed in config.seeds:
            train_all, test = data.split(ratings, "random", config.test_fraction, seed=seed)
            fit_part, val = data.split(train_all, "random", config.val_fraction, seed=seed + 1)
            budgets = list(config.budgets) or natural_budgets(fit_part, config.model, config.dims)
            if not config.budgets and config.budget_unit == "bytes":
                budgets = [4 * b for b in budgets]  # the uniform models' float32 bytes
            for budget in budgets:
                for method, alpha, factor in cells:
                    base = {"dataset": config.dataset, "model": config.model, "method": method,
                            "budget_unit": config.budget_unit, "budget": int(budget), "alpha": float(alpha),
                            "factor": int(factor), "blocks": config.blocks, "seed": seed}
                    grid = [(l2, lr) for l2 in config.l2_grid for lr in config.learning_rates]
                    todo = [(l2, lr) for l2, lr in grid if _key({**base, "l2": l2, "learning_rate": lr}) not in done]
                    if bar is not None:
                        bar.update(len(grid) - len(todo))
                    if not todo:
                        continue
                    model, reason = model_for_method(fit_part, config.model, budget, method, alpha, factor,
                                                     unit=config.budget_unit, blocks=config.blocks,
                                                     base_dims=config.base_dims)
                    for l2, lr in todo:
                        row = {**base, "l2": l2, "learning_rate": lr}
                        if model is None:
                            row.update(status=f"infeasible: {reason}"[:300])
                        else:
                            try:
                                row.update(_train_one(model, method, fit_part, val, test, config, seed, l2, lr,
                                                      mesh))
                            except train.TrainingDivergedError as err:  # a grid point, not the sweep, fails
                                row.update(status=f"diverged: {err}"[:300])
                                log(f"{method}, budget {budget:,}, alpha {alpha:g}, factor {factor}, seed {seed}, "
                                    f"l2 {l2:g}, lr {lr:g}: {err}")
                        if writer:
                            append_result(results_path, row)
                        done.add(_key(row))
                        if bar is not None:
                            bar.update(1)
                            if "test_mse" in row:
                                bar.set_postfix(budget=budget, method=method, test_mse=round(row["test_mse"], 4))
                    # Every model compiles its own functions; long sweeps would otherwise
                    # accumulate compiled code until memory runs out. The runs of one model
                    # share what they can before it is dropped: its compiled initial state,
                    # epoch (l2 is an argument of it) and evaluation.
                    jax.clear_caches()
    finally:
        if bar is not None:
            bar.close()
    return read_results(results_path)


def _cells(config: SweepConfig) -> list[tuple[str, float, int]]:
    """``(method, alpha, factor)`` of every cell at a budget, the uniform baseline first."""
    cells = [("uniform", 0.0, 0)] if "uniform" in config.methods or 0 in config.alphas else []
    for method in config.methods:
        if method != "uniform":
            cells += [(method, alpha, factor) for alpha, factor in settings(method, config.alphas, config.factors)]
    return cells


def _train_one(model, method: str, fit_part, val, test, config: SweepConfig, seed: int, l2: float, lr: float,
               mesh=None) -> dict:
    started = time.perf_counter()
    if mesh is not None and mesh.shape.get("model", 1) > 1 and not train.auto_sparse(model, config.batch_size):
        rows = model.config.user.n_rows + model.config.item.n_rows
        raise ValueError(
            f"a mesh with a model axis of {mesh.shape['model']} splits table rows, which needs row-sparse updates, "
            f"but these tables ({rows:,} rows, fewer than 8 batches of {config.batch_size}) train with dense "
            "ones: use a data-only mesh (--mesh DATA 1), which also gives the one-device results")
    result = train.fit(model, fit_part, val, epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=lr, l2=l2, patience=config.patience, seed=seed, progress=False, mesh=mesh)
    params = quantized_params(model, result.params) if method in BYTES_ONLY else result.params
    on_train = train.evaluate(model, params, fit_part)
    on_val = train.evaluate(model, params, val)
    on_test = train.evaluate(model, params, test)
    return {
        "params": models.num_params(model.config),
        "nbytes": model_nbytes(model, method),
        "base_dim": model.config.user.base_dim,
        "user_dims": describe(model.config.user),
        "item_dims": describe(model.config.item),
        "train_mse": on_train["mse"],
        "train_mse_popular": on_train["mse_popular"],
        "train_mse_rare": on_train["mse_rare"],
        "val_mse": on_val["mse"],
        "test_mse": on_test["mse"],
        "test_mse_popular": on_test["mse_popular"],
        "test_mse_rare": on_test["mse_rare"],
        "test_rmse": on_test["rmse"],
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started, 2),
        "status": "ok",
    }
