"""Data- and row-parallel training gives the single-device numbers (4 simulated CPU devices).

The multi-device runs happen in subprocesses, so the rest of the suite keeps one device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mdcf import data, models, sharding, sweep, train

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("kind, layouts", [("mf", ("data", "rows", "both", "step")), ("neumf", ("both", "step")),
                                           ("dlrm", ("both",))], ids=["mf", "neumf", "dlrm"])
def test_sharded_training_matches_one_device(kind, layouts):
    """One subprocess per model kind (so that the kinds can run on different test workers)."""
    report = json.loads(run("sharding_check.py", kind).strip().splitlines()[-1])
    assert sorted(report) == sorted(f"{kind}/{layout}" for layout in layouts)
    for layout in layouts:
        result = report[f"{kind}/{layout}"]
        assert result["params"] < 1e-5 and result["state"] < 1e-5, (layout, result)
        assert result.get("val_mse", result.get("val_logloss")) < 1e-5, (layout, result)
        shards = {"data": 1, "rows": 4, "both": 2, "step": 2}[layout]
        assert result["layout"]["devices"] == 4, (layout, result)
        assert result["layout"]["rows"] % shards == 0, (layout, result)  # padded to split evenly
        assert result["layout"]["shard_rows"] == [result["layout"]["rows"] // shards], (layout, result)


def test_distributed_entry_point_with_one_process():
    out = run("distributed_check.py", timeout=300)
    assert "ok 2" in out


def test_pad_and_trim_round_trip():
    ratings, _ = data.synthetic(31, 17, 300, seed=0)
    model = models.build_model(ratings, "mf", dim=4, alpha=0.5, blocks=3)
    opt = train.optimizer("adam", 1e-2, sparse=True)
    state = train.init_state(jax.random.key(0), model, opt)
    padded = sharding.pad_state(state, 4)
    for name, blocks in padded.params["tables"].items():
        for block in (blocks if isinstance(blocks, tuple) else (blocks,)):
            assert block.shape[0] % 4 == 0
    back = sharding.trim_state(padded, model.config)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="row-sparse optimiser"):
        sharding.pad_state(train.init_state(jax.random.key(0), model, train.optimizer("adam", 1e-2, sparse=False)), 4)


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 8 devices"):
        sharding.make_mesh(4, 2)
    with pytest.raises(ValueError, match="a 1 x 2 mesh needs 2 devices"):  # data defaults to devices // model
        sharding.make_mesh(model=2, devices=jax.devices()[:1])
    for data_, model_ in ((0, 1), (None, 0), (1, -1)):
        with pytest.raises(ValueError, match="at least one device on each axis"):
            sharding.make_mesh(data_, model_)
    ratings, _ = data.synthetic(31, 17, 300, seed=0)
    model = models.build_model(ratings, "mf", dim=4)
    mesh = sharding.make_mesh(1, 1)
    result = train.fit(model, ratings, epochs=1, batch_size=64, progress=False, mesh=mesh)
    assert len(result.history) == 1


def test_sweep_script_on_a_mesh_matches_one_device(tmp_path):
    """budget_sweep.py --mesh on 4 simulated devices, joined through the multi-host entry
    point (one process, as one machine allows), gives the one-device results."""
    import socket

    def ratings_file(name, *shape):
        ratings, _ = data.synthetic(*shape, seed=0)
        path = tmp_path / name
        ratings.to_dataframe().rename(columns={"user": "userId", "item": "movieId"}).to_csv(path, index=False)
        return str(path)

    # Over 8 batches of 1,024 rated rows: row-sparse updates, which row sharding needs.
    path = ratings_file("ratings.csv", 20_000, 4_000, 30_000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("MDCF_FAST", None)
    script = str(ROOT / "experiments" / "budget_sweep.py")
    # One MD cell (a uniform table is MD with one block): more cells would add only compile time.
    common = ["--dataset", path, "--no-progress", "--dims", "8", "--alphas", "0.4", "--blocks", "4",
              "--l2", "0.1", "--epochs", "2", "--patience", "1"]
    runs = {
        "one": [],
        "mesh": ["--mesh", "2", "2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "1",
                 "--process-id", "0"],
    }
    results = {}
    for name, extra in runs.items():
        out = tmp_path / name
        done = subprocess.run([sys.executable, script, *common, "--out", str(out), *extra], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = {(r["budget"], r["alpha"]): r for r in sweep.read_results(out / "results.csv")}
    assert results["one"].keys() == results["mesh"].keys() and len(results["one"]) == 1
    for key, one in results["one"].items():
        mesh = results["mesh"][key]
        assert one["status"] == mesh["status"] == "ok"
        assert (one["params"], one["user_dims"], one["epochs"]) == (mesh["params"], mesh["user_dims"], mesh["epochs"])
        for metric in ("train_mse", "val_mse", "test_mse"):
            assert abs(one[metric] - mesh[metric]) <= 1e-5 * one[metric], (key, metric, one[metric], mesh[metric])
    small = ratings_file("small.csv", 300, 200, 6_000)
    for dataset, mesh, message in ((path, ("3", "3"), "needs 9 devices; 4 are available"),
                                   (small, ("1", "2"), "use a data-only mesh")):
        with pytest.raises(subprocess.CalledProcessError) as err:
            subprocess.run([sys.executable, script, "--dataset", dataset, "--no-progress", "--out",
                            str(tmp_path / "bad"), "--mesh", *mesh], capture_output=True, text=True, env=env,
                           timeout=600, check=True)
        assert message in err.value.stderr
