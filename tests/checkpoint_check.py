"""Run by test_checkpoint_sharded.py in subprocesses with simulated CPU devices.

Modes (first argument):

* ``mesh FOLDER``: one process, 4 devices. fit on a row-split mesh with a checkpoint
  folder, resumed, against an uninterrupted run; the folder restored on other meshes;
  a single-file checkpoint resumed on the mesh. Prints one JSON report.
* ``process ID PORT FOLDER``: one of two processes (2 devices each) joined through
  ``sharding.initialize_distributed``; tables split over all 4 devices, so no process
  holds a whole table. fit for 2 epochs with a checkpoint folder, resumed to 3, against
  an uninterrupted 3-epoch run. Process 0 prints a JSON report with each parameter's
  fingerprint.
* ``saver FOLDER``: saves a large state to FOLDER over and over, printing ``saved N``
  after each complete save (the test kills it during one).
"""

import json
import os
import sys

DEVICES = {"process": 2}.get(sys.argv[1] if len(sys.argv) > 1 else "", 4)  # (imported by pytest: argv is its own)
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mdcf import checkpoint, data, models, sharding, train  # noqa: E402
from mdcf.checkpoint import sharded  # noqa: E402

FIT = dict(batch_size=128, progress=False, sparse=True, validation=None, patience=None, seed=3,
           optimizer_name="adam", learning_rate=1e-2)


def fingerprints(params, config):
    """Each parameter's fingerprint over its model's rows (placement and padding aside)."""
    trimmed = jax.eval_shape(lambda p: checkpoint.common.trim(config, p), params)
    return [sharded.fingerprint(x, t.shape[0] if t.ndim else None)
            for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(trimmed))]


def mesh_mode(folder):
    ratings, _ = data.synthetic(301, 203, 4_000, seed=0)  # odd sizes: tables padded on the mesh
    model = models.build_model(ratings, "mf", dim=8, alpha=0.5, blocks=3)
    mesh = sharding.make_mesh(1, 4)
    path = os.path.join(folder, "run")
    report = {}
    train.fit(model, ratings, epochs=2, mesh=mesh, checkpoint=path, **FIT)
    report["folder"] = os.path.isdir(path) and sorted(os.listdir(path))
    resumed = train.fit(model, ratings, epochs=3, mesh=mesh, checkpoint=path, **FIT)
    straight = train.fit(model, ratings, epochs=3, mesh=mesh, **FIT)
    report["resumed_epochs"] = [h["epoch"] for h in resumed.history]
    report["resumed_equal"] = fingerprints(resumed.params, model.config) == fingerprints(straight.params, model.config)
    report["steps_kept"] = sorted(os.listdir(path))
    want = fingerprints(straight.params, model.config)
    opt = train.optimizer("adam", 1e-2, sparse=True)
    placements = {}
    for name, where in {"none": None, "2x2": sharding.make_mesh(2, 2), "4x1": sharding.make_mesh(4, 1),
                        "1x4": mesh}.items():
        ckpt = checkpoint.load(path, opt, model=model, mesh=where)
        shapes = [list(x.shape) for x in jax.tree.leaves(ckpt.state.params["tables"])]
        placements[name] = {"equal": fingerprints(ckpt.state.params, model.config) == want, "shapes": shapes,
                            "devices": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(ckpt.state)})}
    report["placements"] = placements
    # A single-file checkpoint (the format of one device) resumes on the mesh and keeps its format.
    single = os.path.join(folder, "single.ckpt")
    train.fit(model, ratings, epochs=2, checkpoint=single, **FIT)
    on_mesh = train.fit(model, ratings, epochs=3, mesh=mesh, checkpoint=single, **FIT)
    report["single_resumed_epochs"] = [h["epoch"] for h in on_mesh.history]
    report["single_still_file"] = os.path.isfile(single)
    report["single_difference"] = max(  # one device's 2 epochs then the mesh's: not bitwise the mesh's 3
        float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))
        for a, b in zip(jax.tree.leaves(on_mesh.params), jax.tree.leaves(straight.params)))
    print(json.dumps(report))


def process_mode(process_id, port, folder):
    sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
    ratings, _ = data.synthetic(301, 203, 4_000, seed=0)
    model = models.build_model(ratings, "mf", dim=8, alpha=0.5, blocks=3)
    mesh = sharding.make_mesh(1, 4)  # rows over both processes' devices
    path = os.path.join(folder, "run")
    first = train.fit(model, ratings, epochs=1, mesh=mesh, checkpoint=path, **FIT)
    table = jax.tree.leaves(first.state.params["tables"])[0]
    resumed = train.fit(model, ratings, epochs=2, mesh=mesh, checkpoint=path, **FIT)
    straight = train.fit(model, ratings, epochs=2, mesh=mesh, **FIT)
    report = {
        "table_addressable": bool(table.is_fully_addressable),
        "resumed_epochs": [h["epoch"] for h in resumed.history],
        "resumed_equal": fingerprints(resumed.params, model.config) == fingerprints(straight.params, model.config),
        "fingerprints": fingerprints(checkpoint.load(path, mesh=mesh).params, model.config),
        "straight": fingerprints(straight.params, model.config),
    }
    if jax.process_index() == 0:
        print(json.dumps(report))
    jax.distributed.shutdown()


def saver_mode(folder):
    ratings, _ = data.synthetic(200_003, 2_001, 20_000, seed=0)
    model = models.build_model(ratings, "mf", dim=64)
    opt = train.optimizer("adam", 1e-2, sparse=True)
    state = sharding.shard_state(train.init_state(jax.random.key(0), model, opt), sharding.make_mesh(1, 4))
    for n in range(1, 1_000):
        state = state._replace(step=state.step + 1)
        checkpoint.save(folder, model, state, meta={"n": n})
        print(f"saved {n}", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"mesh": mesh_mode, "process": process_mode, "saver": saver_mode}[mode](*args)
