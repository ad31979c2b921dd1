"""The click sweep: exact budgets, resumable results, the paired table, usage errors.

Training itself is replaced by a stand-in here (the notebook ``notebooks/ctr.ipynb`` runs
the script end to end in fast mode, with real training, under ``test_notebooks.py``)."""

import importlib.util
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
                "base_dim": structure.dim, "dims": "-".join(str(d) for d in structure.table.dims),
                "train_logloss": 0.5, "val_logloss": 0.5, "val_auc": 0.7, "test_logloss": 0.5,
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
    with pytest.raises(ValueError, match="holds a sweep with other settings"):
        sweep.run_ctr_sweep(sweep.CTRSweepConfig(**{**vars(config), "seeds": (5,)}), tmp_path, progress=False)


def test_ctr_sweep_script_refuses_bad_settings(capsys, tmp_path):
    assert load_script().main(["--alphas", "0", "--out", str(tmp_path / "x")]) == 2
    assert "alphas must be > 0" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert load_script().main(["--fields", "30", "--out", str(tmp_path / "x")]) == 2
    assert "fields must be 1 to 26" in capsys.readouterr().err
    assert load_script().main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")]) == 2
    assert "cannot load" in capsys.readouterr().err and not (tmp_path / "y").exists()
