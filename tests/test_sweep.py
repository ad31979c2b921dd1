"""Equal-budget sweeps: exact budgets, one tuning protocol, resumable atomic results, plots, scripts."""

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdcf import data, models, plots, sweep, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ratings():
    return data.synthetic(1_500, 800, 12_000, rank=4, noise=0.5, seed=0)[0]


def small_config(**overrides):
    settings = dict(dataset="synthetic", model="mf", dims=(4, 8), alphas=(0.0, 0.5), blocks=3, l2_grid=(0.05, 0.2),
                    epochs=3, patience=2, batch_size=512, base_dims=(32, 24, 16))
    settings.update(overrides)
    return sweep.SweepConfig(**settings)


@pytest.mark.parametrize("kind", ["mf", "neumf"])
def test_models_for_a_budget_are_within_one_percent(kind):
    ratings = data.synthetic(2_000, 1_000, 20_000, rank=4, seed=1)[0]
    budgets = sweep.natural_budgets(ratings, kind, (4, 12), layers=(8, 4))
    for budget in budgets:
        uniform, _ = sweep.model_for_budget(ratings, kind, budget, 0.0, 3, (16, 8), layers=(8, 4))
        assert models.num_params(uniform.config) == budget  # natural budgets are met exactly
        md, reason = sweep.model_for_budget(ratings, kind, budget, 0.5, 3, (32, 16, 8), layers=(8, 4))
        assert md is not None, reason
        assert 0.99 * budget <= models.num_params(md.config) <= budget
        assert md.config.user.n_blocks == 3 and md.config.item.n_blocks == 3


@pytest.fixture
def scored(monkeypatch):
    """Every run 'trained' by a stand-in (the resume and selection logic do not need real
    training; ``test_experiment_scripts_run_end_to_end_in_fast_mode`` trains for real):
    validation favours a small l2 and test a large one, and each call gets its own
    ``seconds``. Returns the list of runs trained, as ``(budget params, alpha, l2)``."""
    calls = []

    def stand_in(model, method, fit_part, val, test, config, seed, l2, lr, mesh=None):
        calls.append((models.num_params(model.config), l2))
        user, item = model.config.user, model.config.item
        return {"params": models.num_params(model.config), "nbytes": sweep.model_nbytes(model, method),
                "base_dim": user.base_dim, "user_dims": sweep.methods.describe(user),
                "item_dims": sweep.methods.describe(item), "train_mse": 0.5, "train_mse_popular": 0.4,
                "train_mse_rare": 0.6, "val_mse": 1.0 + l2, "test_mse": 1.0 - l2, "test_mse_popular": 0.9,
                "test_mse_rare": 1.1, "test_rmse": (1.0 - l2) ** 0.5, "epochs": 3, "best_epoch": 3,
                "seconds": float(len(calls)), "status": "ok"}

    monkeypatch.setattr(sweep.runs, "_train_one", stand_in)
    return calls


def test_sweep_rows_resume_and_selection(ratings, tmp_path, scored):
    config = small_config()
    swept = sweep.run_sweep(config, tmp_path, ratings=ratings, progress=False)
    rows = sweep.run_sweep(config, tmp_path, ratings=ratings, progress=False)  # all done: read back
    assert [r["seconds"] for r in rows] == [r["seconds"] for r in swept] and len(scored) == 8
    assert len(rows) == 2 * 2 * 2  # budgets x alphas x l2 grid
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 0.99 * r["budget"] <= r["params"] <= r["budget"]
    with open(tmp_path / "results.csv") as f:
        assert list(next(csv.reader(f))) == list(sweep.COLUMNS)
    # A rerun skips finished runs; a lost row is redone.
    lines = (tmp_path / "results.csv").read_text().splitlines()
    (tmp_path / "results.csv").write_text("\n".join(lines[:-1]) + "\n")
    again = sweep.run_sweep(config, tmp_path, ratings=ratings, progress=False)
    assert len(again) == len(rows) and len(scored) == 9
    assert [r["seconds"] for r in again[:-1]] == [r["seconds"] for r in rows[:-1]]
    chosen = sweep.select(again)
    assert len(chosen) == 4
    for cell in chosen:
        peers = [r for r in again if r["budget"] == cell["budget"] and r["alpha"] == cell["alpha"]]
        assert cell["val_mse"] == min(r["val_mse"] for r in peers)  # chosen on validation, never on test
        assert cell["l2"] == 0.05  # the stand-in's test MSE would pick 0.2
    table = sweep.summary_table(again)
    assert "best MD alpha" in table and len(table.splitlines()) == 3
    with pytest.raises(ValueError, match="other settings .*epochs: saved"):
        sweep.run_sweep(small_config(epochs=7), tmp_path, ratings=ratings, progress=False)
    # A subset of the grid trains nothing new; an extended grid trains only the new runs.
    subset = sweep.run_sweep(small_config(l2_grid=config.l2_grid[:1]), tmp_path, ratings=ratings, progress=False)
    assert [r["seconds"] for r in subset] == [r["seconds"] for r in again] and len(scored) == 9
    extended = sweep.run_sweep(small_config(dims=(4,), l2_grid=(0.3,)), tmp_path, ratings=ratings, progress=False)
    assert len(extended) == len(again) + 2 and len(scored) == 11  # one budget x two alphas
    assert [r["seconds"] for r in extended[:len(again)]] == [r["seconds"] for r in again]
    assert {r["l2"] for r in extended[len(again):]} == {0.3}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["l2_grid"] == list(config.l2_grid) + [0.3]


def test_settings_bind_a_folder_only_once_a_run_finished(ratings, tmp_path):
    # A data set that fails to load writes nothing; a folder with settings but no finished
    # run (a failed or killed start) takes new settings instead of refusing them.
    with pytest.raises(ValueError, match="got 'no-such-set'"):
        sweep.run_sweep(small_config(dataset="no-such-set"), tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()
    (tmp_path / "config.json").write_text(small_config(epochs=9).to_json())
    rows = sweep.run_sweep(small_config(dims=(4,), l2_grid=(0.1,)), tmp_path, ratings=ratings, progress=False)
    assert len(rows) == 2 and json.loads((tmp_path / "config.json").read_text())["epochs"] == 3
    with pytest.raises(ValueError, match="other settings .*epochs: saved 3, now 9"):
        sweep.run_sweep(small_config(epochs=9), tmp_path, ratings=ratings, progress=False)


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(ratings, tmp_path, monkeypatch):
    real_fit = train.fit

    def fit(model, *args, learning_rate, **kwargs):  # the large learning rate diverges
        if learning_rate > 1:
            raise train.TrainingDivergedError("the training loss is nan at epoch 1")
        return real_fit(model, *args, learning_rate=learning_rate, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    config = small_config(dims=(4,), alphas=(0.0, 0.5), l2_grid=(0.1,), learning_rates=(10.0, 3e-3))
    logged = []
    rows = sweep.run_sweep(config, tmp_path, ratings=ratings, progress=False, log=logged.append)
    assert [(r["alpha"], r["learning_rate"], r["status"].split(":")[0]) for r in rows] == [
        (0.0, 10.0, "diverged"), (0.0, 3e-3, "ok"), (0.5, 10.0, "diverged"), (0.5, 3e-3, "ok")]
    assert len(logged) == 2 and "loss is nan" in logged[0]
    assert {r["learning_rate"] for r in sweep.select(rows)} == {3e-3}
    again = sweep.run_sweep(config, tmp_path, ratings=ratings, progress=False)  # diverged runs are not retried
    assert [(r["status"], r["seconds"] if r["status"] == "ok" else None) for r in again] == [
        (r["status"], r["seconds"] if r["status"] == "ok" else None) for r in rows]


def test_infeasible_cells_are_recorded(ratings, tmp_path):
    rows = sweep.run_sweep(small_config(dims=(1,), alphas=(0.5,), blocks=3, base_dims=(64,), l2_grid=(0.1,)),
                           tmp_path, ratings=ratings, progress=False)
    assert len(rows) == 1 and rows[0]["status"].startswith("infeasible")


def test_results_with_foreign_columns_are_refused(tmp_path):
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="do not match"):
        sweep.read_results(tmp_path / "results.csv")


def test_plots_write_png_and_pdf(ratings, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rows = []  # a sweep's rows: two budgets x two alphas x two l2 values x two seeds
    for budget, alpha, l2, seed in itertools.product((1_000, 4_000), (0.0, 0.5), (0.05, 0.2), (0, 1)):
        row = {column: 0 for column in sweep.COLUMNS}
        error = 1.0 - budget / 1e4 - alpha / 10 + l2 + seed / 100
        row.update(dataset="synthetic", model="mf", budget=budget, params=budget - 7, alpha=alpha, blocks=3, l2=l2,
                   seed=seed, learning_rate=3e-3, status="ok", train_mse=error - 0.2, val_mse=error,
                   test_mse=error + 0.01, test_mse_popular=error - 0.1, test_mse_rare=error + 0.1,
                   train_mse_popular=error - 0.3, train_mse_rare=error - 0.1)
        rows.append(row)
    for name, figure in (("curves", plots.budget_curves(rows)), ("ablation", plots.alpha_ablation(rows))):
        png, pdf = plots.save(figure, tmp_path / name)
        assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    model = models.build_model(ratings, "mf", dim=8, alpha=0.5, blocks=3)
    from mdcf import blocking

    plots.save(plots.block_dims(model.config.item), tmp_path / "dims")
    plots.save(plots.frequency_curve(ratings.item_counts(), blocking.equipartition(ratings.item_counts(), 3)),
               tmp_path / "freq")
    assert (tmp_path / "freq.png").is_file()
    unfinished = [{**r, "status": "diverged: nan"} for r in rows]  # nothing to plot: said, not an empty figure
    for plot in (plots.budget_curves, plots.alpha_ablation):
        with pytest.raises(ValueError, match="no finished run to plot"):
            plot(unfinished)


def test_ablation_budget_keeps_parameters_per_row():
    assert sweep.ablation_budget(sweep.PAPER_ABLATION_ROWS) == 2**21
    assert sweep.ablation_budget(2625) == round(2**21 * 2625 / sweep.PAPER_ABLATION_ROWS)


@pytest.mark.parametrize("script", ["budget_sweep.py", "alpha_ablation.py"])
def test_experiment_scripts_run_end_to_end_in_fast_mode(script, ml100k_dir, tmp_path):
    env = {"MDCF_FAST": "1", "MDCF_DATA_DIR": str(ml100k_dir), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plot:" in done.stdout and (out / "results.csv").is_file() and (out / "config.json").is_file()
    assert len(list(out.glob("*.png"))) == 1 and len(list(out.glob("*.pdf"))) == 1
    for flags in ([], ["--markdown"]):
        report = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), *flags, str(out)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert report.returncode == 0, report.stderr[-2000:]
        table = [line for line in report.stdout.splitlines() if line.startswith("|")]
        if flags:  # header, rule, then one row per budget (sweep) or per alpha (ablation)
            rows = sweep.select(sweep.read_results(out / "results.csv"))
            groups = {r["alpha"] for r in rows} if script == "alpha_ablation.py" else {r["budget"] for r in rows}
            assert len(table) == 2 + len(groups) and "±" in table[2]
        else:
            assert "test" in report.stdout and not table


@pytest.mark.parametrize("field, value", [
    ("model", "svd"), ("alphas", (-0.1,)), ("alphas", ()), ("dims", (0, 8)), ("budgets", (100, -5)),
    ("blocks", 0), ("epochs", 0), ("patience", 0), ("batch_size", 2.5), ("l2_grid", (float("nan"),)),
    ("learning_rates", (0.0,)), ("seeds", (-1,)), ("test_fraction", 1.0), ("val_fraction", 0),
])
def test_sweep_configs_out_of_range_are_refused_up_front(field, value):
    with pytest.raises(ValueError, match=rf"SweepConfig: {field} must be"):
        small_config(**{field: value})


def test_experiment_scripts_turn_bad_arguments_into_usage_errors(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "budget_sweep.py"), "--epochs", "0",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "budget_sweep.py: error: SweepConfig: epochs must be an integer >= 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    for script in ("budget_sweep.py", "alpha_ablation.py"):  # a typo in the data set: refused before any work
        done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--dataset", "ml-100", "--out",
                               str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert f"{script}: error: dataset must be a MovieLens name" in done.stderr and "got 'ml-100'" in done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    report = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path / "nothing")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 2 and "no results.csv in" in report.stderr and not report.stdout


def _cell(budget, alpha, seed, val, test):
    return {"dataset": "d", "model": "mf", "budget": budget, "params": budget, "alpha": alpha, "blocks": 8,
            "seed": seed, "val_mse": val, "test_mse": test, "status": "ok"}


def test_claim_checks_pair_seeds_and_pick_alpha_on_validation():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):  # seed 1's split is harder for every model
        rows += [
            _cell(1000, 0.0, seed, 0.90 + shift, 0.90 + shift),
            _cell(8000, 0.0, seed, 0.85 + shift, 0.85 + shift),
            # alpha 0.2 has the better test MSE but the worse validation MSE: not chosen
            _cell(1000, 0.2, seed, 0.99 + shift, 0.70 + shift),
            _cell(1000, 0.4, seed, 0.88 + shift, 0.84 + shift + 0.01 * seed),
            _cell(1000, 0.4, seed, 0.95 + shift, 0.50),  # a worse l2 for the same cell: ignored
            _cell(8000, 0.4, seed, 0.86 + shift, 0.86 + shift),
        ]
    claim = sweep.claim_check(rows).splitlines()
    assert "MD alpha 0.4 0.8950" in claim[0] and "per seed -0.0550 +- 0.0050 (n=2)" in claim[0]
    assert "matches or beats uniform at up to 8.0x" in claim[0]
    assert "does not match uniform at any larger budget" in claim[1]
    fraction = sweep.fraction_check(rows).splitlines()
    assert len(fraction) == 1
    assert "uniform at     8,000 params 0.9000" in fraction[0] and "at 1,000 params (8.0x fewer) 0.8950" in fraction[0]
    assert "per seed -0.0050 +- 0.0050 (n=2): MD matches or beats it" in fraction[0]
    assert "no MD budget" in sweep.fraction_check(rows, factor=9)
