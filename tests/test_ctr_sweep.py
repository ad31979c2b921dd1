"""The click sweep: exact budgets, resumable results, the paired table, usage errors.

Training itself is replaced by a stand-in here (the notebook ``notebooks/ctr.ipynb`` runs
the script end to end in fast mode, with real training, under ``test_notebooks.py``)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mdcf import embeddings, models, sweep
from mdcf.sweep import ctr

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ctr_sweep", ROOT / "experiments" / "ctr_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trained(monkeypatch):
    """Every run 'trained' by a stand-in scoring 0.7 + 0.01 * base dimension, recording the models."""
    seen = []

    def stand_in(model, method, parts, config, seed):
        seen.append(model)
        structure = models.config_of(model)
        accuracy = 0.7 + 0.01 * structure.dim + 0.001 * seed
        return {"embedding_params": embeddings.num_params(structure.table),
                "embedding_bytes": ctr.embedding_nbytes(model, method), "params": models.num_params(model),
                "base_dim": structure.dim, "dims": ctr._describe(structure.table),
                "train_logloss": 0.5, "val_logloss": 0.5 - 0.001 * structure.dim, "val_auc": 0.7, "test_logloss": 0.5 - 0.001 * structure.dim + 0.01 * seed,
                "test_accuracy": accuracy, "test_auc": 0.7, "epochs": 1, "best_epoch": 1, "train_seconds": 1.0,
                "seconds": 1.0, "train_curve": "0.6 0.5", "status": "ok"}

    monkeypatch.setattr(ctr, "_train_one", stand_in)
    return seen


def test_budgets_are_exact_and_the_control_is_frequency_blocked(trained, tmp_path):
    config = sweep.CTRSweepConfig(examples=3_000, cap=300, fields=8, dims=(2, 4), alphas=(0.3,), seeds=(0, 1),
                                  base_dim=16, bottom=(8,), top=(8,))
    rows = sweep.run_ctr_sweep(config, tmp_path / "out", progress=False)
    assert len(rows) == 2 * 3 * 2 and all(r["status"] == "ok" for r in rows)
    parts = sweep.load_clicks(config)
    for r in rows:
        assert r["budget"] == r["budget_dim"] * sum(parts.field_rows)
        if r["method"] == "uniform":
            assert r["embedding_params"] == r["budget"] and r["base_dim"] == r["budget_dim"]
        else:
            assert 0.99 * r["budget"] <= r["embedding_params"] <= r["budget"] and r["base_dim"] == 16
            assert len(r["dims"].split("-")) == config.fields  # one block per field, or as many by frequency
    control = [m for m in trained if hasattr(m, "rows")]
    assert len(control) == 4
    counts = np.concatenate(parts.counts)[np.argsort(control[0].rows)]
    assert np.all(np.diff(counts) <= 0)  # table rows in frequency order across fields
    table = sweep.ctr_table(rows)
    assert "0.0000 vs md (n=2)" in table  # the stand-in scores by base dimension: control = md
    assert f"{0.01 * (16 - 2):.4f} ± 0.0000 vs uniform (n=2)" in table  # md at d=2's budget: +0.14


def test_a_rerun_resumes_and_other_settings_are_refused(trained, tmp_path):
    config = sweep.CTRSweepConfig(examples=2_000, cap=50, fields=4, dims=(2,), alphas=(0.4,), seeds=(0,),
                                  base_dim=8, bottom=(8,), top=(8,))
    first = sweep.run_ctr_sweep(config, tmp_path, progress=False)
    trained.clear()
    again = sweep.run_ctr_sweep(config, tmp_path, progress=False)
    assert trained == [] and len(again) == len(first) == 3
    with pytest.raises(ValueError, match="holds a sweep with other settings .learning_rate: saved 0.003, now 0.01"):
        sweep.run_ctr_sweep(sweep.CTRSweepConfig(**{**vars(config), "learning_rate": 0.01}), tmp_path, progress=False)


def test_methods_extend_a_folder_of_the_first_layout(trained, tmp_path):
    """A folder written before the other methods (no factor or embedding_bytes column, no
    methods in its settings) is read, rewritten in today's layout (the old file kept), and
    extended: only the new runs train, and the saved settings become the union of both grids."""
    config = sweep.CTRSweepConfig(examples=2_000, cap=50, fields=4, dims=(2,), alphas=(0.4,), seeds=(0,),
                                  base_dim=8, bottom=(8,), top=(8,))
    sweep.run_ctr_sweep(config, tmp_path, progress=False)
    results = tmp_path / "results.csv"
    lines = [line.split(",") for line in results.read_text().splitlines()]
    drop = (lines[0].index("factor"), lines[0].index("embedding_bytes"))
    old_text = "\n".join(",".join(v for i, v in enumerate(line) if i not in drop) for line in lines) + "\n"
    results.write_text(old_text)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in ("methods", "factors")}))
    trained.clear()
    more = sweep.CTRSweepConfig(**{**vars(config), "methods": ("hash", "qr"), "factors": (2,), "seeds": (0, 1)})
    rows = sweep.run_ctr_sweep(more, tmp_path, progress=False)
    assert (tmp_path / "results.csv.v1").read_text() == old_text
    assert sorted((m, s) for m in ("hash", "qr", "md-frequency") for s in (1, 0) if (m, s) != ("md-frequency", 0)) == \
        sorted((r["method"], r["seed"]) for r in rows if (r["method"], r["seed"]) not in
               {("uniform", 0), ("md", 0), ("md-frequency", 0)})
    assert len(trained) == 5  # hash and qr at seeds 0 and 1, the control at seed 1: not the first runs again
    assert [r["factor"] for r in rows[:3]] == [0, 0, 0]
    assert all(r["embedding_bytes"] == 4 * r["embedding_params"] for r in rows if r["status"] == "ok")  # float32
    union = json.loads((tmp_path / "config.json").read_text())
    assert union["methods"] == ["uniform", "md", "hash", "qr"] and union["factors"] == [2] and union["seeds"] == [0, 1]


def test_every_method_lands_within_its_budget():
    rows = (5_000, 700, 40, 3)
    budget = 4 * sum(rows)
    seen = {}
    for method, factor in (("hash", 2), ("qr", 8), ("lowrank", 2), ("tt", 2), ("uniform", 0)):
        config = sweep.ctr_model(rows, method, 4, factor=factor, bottom=(8,), top=(8,))
        size = embeddings.num_params(config.table)
        assert size <= budget, method
        seen[method] = config
    hashed = seen["hash"].table
    assert seen["hash"].dim == 8 and budget - 8 * len(rows) <= embeddings.num_params(hashed)
    assert [type(p).__name__ for p in hashed.parts] == ["HashSpec"] * 4
    qr = seen["qr"].table  # the largest base dimension that fits, QR where it saves
    assert [type(p).__name__ for p in qr.parts] == ["QRSpec", "QRSpec", "QRSpec", "MDSpec"]
    per_dim = (625 + 8) + (88 + 8) + (5 + 8) + 3
    assert qr.base_dim == budget // per_dim and embeddings.num_params(qr) == per_dim * (budget // per_dim)
    assert seen["lowrank"].table.dims == (3,) * 4 and seen["lowrank"].dim == 8  # 4 * n > 3 * n + 4 * 3 * 8
    assert seen["tt"].dim == 8 and seen["uniform"].table == embeddings.MDSpec.uniform(sum(rows), 4)
    with pytest.raises(ValueError, match="needs a factor"):
        sweep.ctr_model(rows, "tt", 4)
    with pytest.raises(ValueError, match="needs an alpha"):
        sweep.ctr_model(rows, "md", 4)
    with pytest.raises(ValueError, match="method must be one of"):
        sweep.ctr_model(rows, "md-qr", 4)
    assert all(isinstance(p, embeddings.MDSpec) for p in sweep.ctr_model(rows, "qr", 1, factor=10_000).table.parts)
    with pytest.raises(ValueError, match="methods must be some of"):
        sweep.CTRSweepConfig(methods=("uniform", "pq"))


def test_each_method_is_read_at_its_validation_chosen_setting(trained, tmp_path):
    """The stand-in's validation logloss falls with the base dimension: factor 4 wins for hash,
    and the paired differences are per seed against uniform and MD at their own best settings."""
    config = sweep.CTRSweepConfig(examples=3_000, cap=300, fields=8, dims=(2,), alphas=(0.2, 0.4), seeds=(0, 1),
                                  base_dim=16, bottom=(8,), top=(8,), methods=("uniform", "md", "hash"),
                                  factors=(2, 4), control=False)
    rows = sweep.run_ctr_sweep(config, tmp_path, progress=False)
    cells = sweep.ctr_method_cells(rows)
    assert set(cells) == {(2, "uniform"), (2, "md"), (2, "hash")}
    label, runs = cells[2, "hash"]
    assert label == "×4" and [r["factor"] for r in runs] == [4, 4] and [r["seed"] for r in runs] == [0, 1]
    table = sweep.ctr_methods_table(rows)
    hash_line = next(line for line in table.splitlines() if "| hash |" in line)
    # test logloss 0.5 - 0.001 * d0 + 0.01 * seed: paired by seed, the seeds' offset cancels;
    # hash x4 has d0 = 8, uniform 2, MD 16
    assert "| -0.0060 ± 0.0000 (n=2) |" in hash_line and "| +0.0080 ± 0.0000 (n=2) |" in hash_line


def test_ctr_sweep_script_refuses_bad_settings(capsys, tmp_path):
    assert load_script().main(["--alphas", "0", "--out", str(tmp_path / "x")]) == 2
    assert "alphas must be > 0" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert load_script().main(["--fields", "30", "--out", str(tmp_path / "x")]) == 2
    assert "fields must be 1 to 26" in capsys.readouterr().err
    assert load_script().main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")]) == 2
    assert "cannot load" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_int8_methods_fill_a_byte_budget():
    """uniform-int8: d' = 4 d - 8 columns (codes 1 byte, scale and offset 8 bytes a row);
    md-int8 within 1% below, its base dimension doubled where the budget exceeds every row
    at d0; below one int8 column a row, neither fits."""
    rows = (2_000,) * 8 + (700, 40, 3)  # no field so large that one column of it is 1% of the budget
    n = sum(rows)
    uniform = sweep.ctr_model(rows, "uniform-int8", 4, bottom=(8,), top=(8,), unit="bytes")
    assert uniform.table == embeddings.MDSpec.uniform(n, 8)
    assert sweep.embedding_nbytes(uniform, "uniform-int8") == n * (8 + 8) == 4 * 4 * n
    assert sweep.embedding_nbytes(uniform, "uniform") == 4 * 8 * n
    for dim, base in ((4, 16), (8, 32)):  # at d = 8, 32 n bytes exceed every row at 16 (24 n): d0 = 32
        md = sweep.ctr_model(rows, "md-int8", dim, alpha=0.3, base_dim=16, bottom=(8,), top=(8,), unit="bytes")
        size = sweep.embedding_nbytes(md, "md-int8")
        assert 0.99 * 4 * dim * n <= size <= 4 * dim * n and md.dim == base
        by_hand = sum(r * (d + 8) + (4 * d * base if d < base else 0) for r, d in zip(md.table.sizes, md.table.dims))
        assert size == by_hand and len(set(md.table.dims)) > 1
    for method in ("uniform-int8", "md-int8"):
        with pytest.raises(ValueError, match="cannot hold"):
            sweep.ctr_model(rows, method, 2, alpha=0.3, unit="bytes")
        with pytest.raises(ValueError, match="its budget is in bytes"):
            sweep.ctr_model(rows, method, 4, alpha=0.3)
        with pytest.raises(ValueError, match="--budget-unit bytes"):
            sweep.CTRSweepConfig(methods=("uniform", method))
    float_md = sweep.ctr_model(rows, "md", 4, alpha=0.3, base_dim=16, bottom=(8,), top=(8,))
    assert sweep.ctr_model(rows, "md", 4, alpha=0.3, base_dim=16, bottom=(8,), top=(8,), unit="bytes") == float_md


def test_a_byte_sweep_records_bytes_and_keeps_its_unit(trained, tmp_path):
    config = sweep.CTRSweepConfig(examples=2_000, cap=50, fields=4, dims=(2, 4), alphas=(0.4,), seeds=(0,),
                                  base_dim=8, bottom=(8,), top=(8,), methods=("uniform", "md", "uniform-int8",
                                                                                "md-int8"), control=False,
                                  budget_unit="bytes")
    rows = sweep.run_ctr_sweep(config, tmp_path, progress=False)
    n = sum(sweep.load_clicks(config).field_rows)
    by = {(r["method"], r["budget_dim"]): r for r in rows}
    assert all(r["budget"] == 4 * r["budget_dim"] * n for r in rows)
    assert by["uniform", 2]["embedding_bytes"] == by["uniform", 2]["budget"]
    assert by["uniform-int8", 4]["embedding_bytes"] == by["uniform-int8", 4]["budget"]
    assert by["uniform-int8", 4]["embedding_params"] == 8 * n
    assert 0.99 <= by["md-int8", 4]["embedding_bytes"] / by["md-int8", 4]["budget"] <= 1
    assert by["uniform-int8", 2]["status"].startswith("infeasible") and by["md-int8", 2]["status"].startswith(
        "infeasible")
    table = sweep.ctr_methods_table(rows, unit="bytes")
    assert "| embedding bytes |" in table and "| 4 | uniform-int8 |" in table
    from mdcf import plots

    fig = plots.ctr_method_curves(rows, unit="bytes")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("embedding bytes")
    xs = {c.get_label(): list(c.lines[0].get_xdata()) for c in ax.containers}
    assert xs["uniform-int8"] == [by["uniform-int8", 4]["embedding_bytes"]]
    assert sweep.ctr_fast_mode(config).dims == (4,)  # in bytes, the smoke run's budget holds int8 rows
    with pytest.raises(ValueError, match="budget_unit: saved 'bytes', now 'params'"):
        sweep.run_ctr_sweep(sweep.CTRSweepConfig(**{**vars(config), "methods": ("uniform",), "budget_unit": "params"}),
                            tmp_path, progress=False)


def test_int8_runs_are_validated_and_tested_quantised(monkeypatch):
    """One trained model scored as ``uniform`` and as ``uniform-int8``: the int8 run's
    validation and test metrics are those of rows quantised by a naive per-row reference."""
    from mdcf import train

    config = sweep.CTRSweepConfig(examples=3_000, cap=60, fields=4, dims=(4,), seeds=(0,), base_dim=8, bottom=(8,),
                                  top=(8,), budget_unit="bytes", methods=("uniform-int8",))
    parts = sweep.load_clicks(config)
    model = sweep.ctr_model(parts.field_rows, "uniform-int8", 4, bottom=(8,), top=(8,), unit="bytes")
    result = train.fit(model, parts.train, parts.validation, epochs=1, batch_size=512, learning_rate=3e-3, seed=0,
                       progress=False)
    monkeypatch.setattr(ctr.train, "fit", lambda *args, **kwargs: result)
    as_float = ctr._train_one(model, "uniform", parts, config, 0)
    as_int8 = ctr._train_one(model, "uniform-int8", parts, config, 0)

    def naive(table):
        table = np.asarray(table, np.float64)
        low, high = table.min(axis=1, keepdims=True), table.max(axis=1, keepdims=True)
        scale = np.where(high > low, (high - low) / 255, 1.0)
        return (low + scale * np.round((table - low) / scale)).astype(np.float32)

    params = {**result.params, "tables": {"fields": tuple(naive(t) for t in result.params["tables"]["fields"])}}
    for part, key in ((parts.validation, "val"), (parts.test, "test")):
        expected = train.evaluate(model, params, part)
        assert as_int8[f"{key}_logloss"] == pytest.approx(expected["logloss"], abs=1e-6)
        assert as_int8[f"{key}_auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert as_int8["test_logloss"] != as_float["test_logloss"]
    assert as_float["val_logloss"] == result.history[result.best_epoch - 1]["val_logloss"]
    assert as_int8["embedding_bytes"] == 16 * sum(parts.field_rows) == as_float["embedding_bytes"] // 2
