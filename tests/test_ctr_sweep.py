"""The click sweep: equal embedding budgets, resumable results, the script end to end in fast mode."""

import importlib.util
from pathlib import Path

import pytest

from mdcf import sweep, train

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ctr_sweep", ROOT / "experiments" / "ctr_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ctr_sweep_script_runs_in_fast_mode_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert load_script().main(["--fast", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| budget (uniform d) | method | alpha |" in printed and "plot:" in printed
    assert (out / "ctr_curves.png").is_file() and (out / "ctr_curves.pdf").is_file()
    rows = sweep.read_ctr_results(out / "results.csv")
    config = sweep.ctr_fast_mode(sweep.CTRSweepConfig())
    assert len(rows) == len(config.dims) * (1 + len(config.alphas)) * len(config.seeds)
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    for r in rows:
        if r["method"] == "uniform":  # the budget is the uniform table, exactly
            assert r["embedding_params"] == r["budget"] and r["base_dim"] == r["budget_dim"]
        else:  # MD within 1% below it, one block per field, at the configured base dimension
            assert 0.99 * r["budget"] <= r["embedding_params"] <= r["budget"]
            assert r["base_dim"] == config.base_dim and len(r["dims"].split("-")) == 26
        assert 0 < r["test_logloss"] < 1 and 0 <= r["test_auc"] <= 1 and r["epochs"] == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    again = sweep.run_ctr_sweep(config, out, progress=False)
    assert len(again) == len(rows)
    with pytest.raises(ValueError, match="holds a sweep with other settings"):
        sweep.run_ctr_sweep(sweep.CTRSweepConfig(**{**vars(config), "seeds": (5,)}), out, progress=False)


def test_ctr_sweep_refuses_bad_settings(capsys, tmp_path):
    assert load_script().main(["--alphas", "0", "--out", str(tmp_path / "x")]) == 2
    assert "alphas must be > 0" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert load_script().main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")]) == 2
    assert "cannot load" in capsys.readouterr().err and not (tmp_path / "y").exists()
