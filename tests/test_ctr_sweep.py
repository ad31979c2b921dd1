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

    def stand_in(model, parts, config, seed):
        seen.append(model)
        structure = models.config_of(model)
        accuracy = 0.7 + 0.01 * structure.dim + 0.001 * seed
        return {"embedding_params": embeddings.num_params(structure.table), "params": models.num_params(model),
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
    """A folder written before the other methods (no factor column, no methods in its
    settings) is read, rewritten in today's layout (the old file kept), and extended: only
    the new runs train, and the saved settings become the union of both grids."""
    config = sweep.CTRSweepConfig(examples=2_000, cap=50, fields=4, dims=(2,), alphas=(0.4,), seeds=(0,),
                                  base_dim=8, bottom=(8,), top=(8,))
    sweep.run_ctr_sweep(config, tmp_path, progress=False)
    results = tmp_path / "results.csv"
    lines = [line.split(",") for line in results.read_text().splitlines()]
    drop = lines[0].index("factor")
    old_text = "\n".join(",".join(v for i, v in enumerate(line) if i != drop) for line in lines) + "\n"
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
