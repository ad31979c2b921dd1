"""Faults a careless or hostile user meets: each gives a clear error or a safe outcome, never a silent one."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mdcf import checkpoint, data, io, models, train


@pytest.fixture(scope="module")
def ratings():
    return data.synthetic(120, 80, 3_000, seed=3)[0]


FIT = dict(epochs=2, batch_size=256, progress=False, patience=None, refit=False, sparse=True, learning_rate=1e-2)


@pytest.mark.parametrize("other", [dict(alpha=0.5), dict(dim=16, alpha=0.3), dict(kind="gmf", alpha=0.3),
                                   dict(alpha=0.3, blocks=3)])
def test_resuming_another_models_checkpoint_names_the_file_and_the_difference(ratings, tmp_path, other):
    path = tmp_path / "run.mdcf"
    first = models.build_model(ratings, "mf", dim=8, alpha=0.3, blocks=4)
    train.fit(first, ratings, None, checkpoint=str(path), **FIT)
    kwargs = dict(kind="mf", dim=8, blocks=4) | other
    second = models.build_model(ratings, kwargs.pop("kind"), **kwargs)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=rf"cannot resume: {path} holds another model: "
                                                                  r"(kind|user|item)"):
        train.fit(second, ratings, None, epochs=4, checkpoint=str(path), **{k: v for k, v in FIT.items() if k != "epochs"})


def test_resuming_a_model_built_from_other_data_is_refused(ratings, tmp_path):
    path = tmp_path / "run.mdcf"
    train.fit(models.build_model(ratings, "mf", dim=8), ratings, None, checkpoint=str(path), **FIT)
    other = data.synthetic(120, 80, 3_000, seed=4)[0]
    model = models.build_model(other, "mf", dim=8)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="ids or their rows"):
        train.fit(model, other, None, checkpoint=str(path), **FIT)


@pytest.mark.parametrize("change, named", [
    (dict(learning_rate=3e-2), "optimizer"), (dict(seed=1), "seed"), (dict(l2=0.5), "l2"),
    (dict(batch_size=128), "batch_size"), (dict(optimizer_name="sgd"), "optimizer"),
])
def test_resuming_with_other_trajectory_settings_is_refused(ratings, tmp_path, change, named):
    path = tmp_path / "run.mdcf"
    model = models.build_model(ratings, "mf", dim=8, alpha=0.3, blocks=4)
    train.fit(model, ratings, None, checkpoint=str(path), **FIT)
    settings = FIT | {"epochs": 3} | change
    with pytest.raises(checkpoint.CheckpointMismatchError, match=rf"other settings \({named}: saved"):
        train.fit(model, ratings, None, checkpoint=str(path), **settings)
    resumed = train.fit(model, ratings, None, checkpoint=str(path), **(FIT | {"epochs": 3}))  # the same: resumes
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


@pytest.mark.parametrize("member", ["step", "model/item_rows"])
def test_a_checkpoint_missing_a_member_names_it(ratings, tmp_path, member):
    path = tmp_path / "run.mdcf"
    model = models.build_model(ratings, "mf", dim=8)
    opt = train.optimizer("adam", 1e-2)
    checkpoint.save(path, model, train.init_state(jax.random.key(0), model, opt))
    arrays, header = io.read_arrays(path)
    del arrays[member]
    io.write_arrays(path, arrays, header)
    with pytest.raises(io.CorruptFileError, match=rf"{path}: the checkpoint has no member '{member}'"):
        checkpoint.load(path, opt=opt)


def test_the_same_model_loads_with_a_model_check(ratings, tmp_path):
    model = models.build_model(ratings, "mf", dim=8, alpha=0.3, blocks=4)
    params = models.init(jax.random.key(0), model.config, 3.0)
    checkpoint.save(tmp_path / "m.mdcf", model, params)
    loaded = checkpoint.load(tmp_path / "m.mdcf", model=model)
    for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    assert checkpoint.model_differences(loaded.model, model) == []


# ------------------------------------------------------------------- sweeps
def _tiny_sweep(ratings, out, **kwargs):
    from mdcf import sweep

    config = sweep.SweepConfig(dataset="synthetic", dims=(2,), alphas=(0.0,), l2_grid=(0.1,), epochs=1, patience=1,
                               batch_size=512, **kwargs)
    return sweep.run_sweep(config, out, ratings=ratings, progress=False)


def test_a_damaged_results_row_is_set_aside_and_its_run_trained_again(ratings, tmp_path):
    from mdcf import sweep

    rows = _tiny_sweep(ratings, tmp_path, seeds=(0, 1))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    path = tmp_path / "results.csv"
    text = path.read_text()
    damaged_line = text.splitlines()[-1][:40]
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1] + damaged_line)  # a truncated last line
    with pytest.raises(ValueError, match=rf"{path}, line 3: damaged row \(28 fields expected"):
        sweep.read_results(path)
    with pytest.warns(UserWarning, match=r"set aside 1 damaged row\(s\) \(lines \[3\]"):
        again = _tiny_sweep(ratings, tmp_path, seeds=(0, 1))
    assert sorted(r["seed"] for r in again) == [0, 1] and all(r["status"] == "ok" for r in again)
    assert (tmp_path / "results.csv.damaged").read_text() == damaged_line + "\n"  # kept, not deleted


def test_a_damaged_settings_file_is_named(ratings, tmp_path):
    _tiny_sweep(ratings, tmp_path)
    (tmp_path / "config.json").write_text('{"dataset": "synthetic",')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'}, line 1: not valid JSON"):
        _tiny_sweep(ratings, tmp_path)


# --------------------------------------------------------------- divergence
def test_a_finite_explosion_under_adam_stops_the_run(ratings):
    """Adam with a far too large step keeps the loss finite (about 6e4 here, 1e27 on ml-100k):
    still a diverged run, named by epoch and step."""
    model = models.build_model(ratings, "mf", dim=8)
    with pytest.raises(train.TrainingDivergedError, match=r"at epoch 1, step \d+ of \d+ \(more than .*the run diverged"):
        train.fit(model, ratings, None, epochs=3, batch_size=256, learning_rate=10.0, progress=False, refit=False)


def test_a_large_l2_is_not_taken_for_divergence(ratings):
    """The first step's loss is part of the reference: a heavily regularised run starts high."""
    model = models.build_model(ratings, "mf", dim=8)
    result = train.fit(model, ratings, None, epochs=2, batch_size=256, l2=1e5, progress=False, refit=False)
    assert result.history[0]["train_loss"] > 100 * float(np.mean(np.square(ratings.ratings)))


def test_a_sweep_records_an_exploding_run_as_diverged(ratings, tmp_path):
    rows = _tiny_sweep(ratings, tmp_path, learning_rates=(10.0,))
    assert len(rows) == 1 and rows[0]["status"].startswith("diverged: fit: the training loss became")


# ------------------------------------------------------ one writer per folder
def test_a_second_sweep_on_a_folder_in_use_is_refused(ratings, tmp_path):
    from mdcf import sweep

    with io.folder_lock(tmp_path, "this sweep folder"):
        with pytest.raises(io.FolderLockedError, match=rf"this sweep folder is in use by process {os.getpid()} on "
                                                          "this host"):
            _tiny_sweep(ratings, tmp_path)
    assert not (tmp_path / ".lock").exists() and sweep.read_results(tmp_path / "results.csv") == []
    _tiny_sweep(ratings, tmp_path)  # free again
    assert not (tmp_path / ".lock").exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_one_named(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    with pytest.warns(UserWarning, match=rf"taking over the lock of process {int(dead.stdout)}, which no longer runs"):
        with io.folder_lock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(io.FolderLockedError, match=rf"locked by process 1 on host elsewhere .*delete {lock}"):
        with io.folder_lock(tmp_path):
            pass


_APPENDER = """
import sys
from pathlib import Path
from mdcf.sweep import append_result
for i in range(int(sys.argv[2])):
    append_result(Path(sys.argv[1]), {"dataset": "d", "model": sys.argv[3], "budget": i, "status": "ok"})
"""


def test_appends_of_two_processes_lose_and_merge_no_row(tmp_path):
    from mdcf import sweep

    path = tmp_path / "results.csv"
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), "300", name]) for name in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(sweep.COLUMNS) and len(lines) == 601
    rows = list(csv.DictReader(lines))
    for name in ("a", "b"):
        assert sorted(int(r["budget"]) for r in rows if r["model"] == name) == list(range(300))


# ------------------------------------------------------------ smaller cases
@pytest.mark.parametrize("seed", [-1, 1.5, "0", None])
def test_split_seeds_are_named(ratings, seed):
    with pytest.raises(ValueError, match=rf"split: seed must be an integer >= 0 .*got {seed!r}"):
        data.split(ratings, "random", 0.1, seed=seed)
    with pytest.raises(ValueError, match="kfold: seed must be an integer >= 0"):
        data.kfold(ratings, 3, seed=seed)


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 2.5, "100"])
def test_budgets_that_are_not_whole_numbers_are_named(budget):
    from mdcf import sizing

    with pytest.raises(ValueError, match="budget must be a whole number of parameters"):
        sizing.solve_budget(budget, (5, 50), (0.1, 0.01), 8, 0.3)
    with pytest.raises(ValueError, match="budget must be a whole number of parameters"):
        sizing.uniform_dim_for_budget(budget, 5)


def test_ratings_files_errors_say_where(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\t100\n2\t10\t1e308\t200\n")
    with pytest.raises(data.RatingsFormatError, match=r"u.data, line 2: rating 1e308 does not fit float32"):
        data.read_ratings(path)
    with pytest.raises(ValueError, match=r"scale must be \(low, high\) with low <= high, got \(5, 1\)"):
        data.read_ratings(path, scale=(5, 1))
    with pytest.raises(IsADirectoryError, match="is a folder; give the ratings file in it"):
        data.read_ratings(tmp_path)


def test_empty_sets_and_foreign_id_types_are_named(ratings):
    model = models.build_model(ratings, "mf", dim=4)
    params = models.init(jax.random.key(0), model.config, 3.0)
    empty = ratings.subset(np.arange(0))
    with pytest.raises(ValueError, match="fit: the training set is empty"):
        train.fit(model, empty, progress=False)
    with pytest.raises(ValueError, match="evaluate: no examples to evaluate on"):
        train.evaluate(model, params, empty)
    with pytest.raises(TypeError, match=r"predict: ids of dtype <U1 cannot be the model's ids, which are numbers"):
        train.predict(model, params, ["1"], ["2"])


def test_a_sweep_script_with_an_unreadable_data_set_leaves_no_folder(tmp_path):
    bad = tmp_path / "bad.data"
    bad.write_text("garbage line here\n")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    for script in ("budget_sweep.py", "alpha_ablation.py"):
        done = subprocess.run([sys.executable, str(root / "experiments" / script), "--dataset", str(bad), "--out",
                               str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and f"{script}: error: cannot load" in done.stderr and "Traceback" not in done.stderr
        assert not out.exists()
