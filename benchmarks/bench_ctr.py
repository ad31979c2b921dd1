"""Click-model throughput and memory: DLRM with uniform and MD tables, and beside facebookresearch/dlrm.

Prints, in one run, the sections chosen with ``--sections`` (all by default):

* ``kaggle``: DLRM (dlrm's Kaggle configuration: bottom 13-512-256-64-16, top
  367-512-256-1) at the full Criteo Kaggle cardinalities (33.76M rows over 26
  tables), uniform d = 16 against MD (alpha 0.3, one block per field) at 1/8 of its
  embedding parameters (1/16 is below MD's floor: 26 blocks at d = 1 with their
  projections need 416 parameters more), and MD with base 32 at 1/16 of uniform
  d = 32 (the paper's first claim), trained row-sparse with the paper's Amsgrad at
  batch 4,096: parameters, training samples/s (the best timed epoch after a compile
  epoch) and the peak resident memory of the process while it built and trained the
  model (the examples, drawn before, are measured apart).
* ``sweep``: the click sweep's scale (26 fields capped at 200k rows, batch 1,024 as
  in RESULTS.md's run): uniform at d = 2, 8, 32 against MD at the same budgets (base
  dimension 32, alpha 0.3), samples/s side by side in one process, alternating over
  rounds; the ratio MD / uniform is each round's, its median over rounds printed;
  and the first epoch's seconds (compilation included), which dominate short runs.
* ``dlrm``: mdcf against ``dlrm_s_pytorch.py`` on the same synthetic examples and
  configuration (d0 = 16, SGD, binary cross-entropy), uniform and with
  ``--md-flag`` (alpha 0.3, dlrm's own dimensions, which mdcf's
  ``dlrm_config(dim=16, alpha=0.3)`` reproduces), at the batch sizes of
  ``--dlrm-batches``. dlrm reads the examples from its own preprocessed-file layout
  (written here from the same arrays); its ``--print-time`` figure (ms per
  iteration, data loading excluded) is read from its log, after its first report
  interval (warm-up). mdcf's figure is its best timed epoch with the batches
  already in memory (also loading excluded). Needs ``--dlrm PATH`` (a checkout of
  facebookresearch/dlrm) and ``--dlrm-python`` (an interpreter with PyTorch,
  scikit-learn and tensorboard); skipped with a note otherwise.

Each model is measured in a fresh Python process (its peak memory is its own).
Machines are shared and noisy: compare the ratios of one run.

Usage::

    python benchmarks/bench_ctr.py                                   # kaggle and sweep (about 15 minutes)
    python benchmarks/bench_ctr.py --sections kaggle --kaggle-batches 20
    python benchmarks/bench_ctr.py --sections dlrm --dlrm ~/dlrm --dlrm-python ~/torch/bin/python
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECTIONS = ("kaggle", "sweep", "dlrm")
BOTTOM, TOP = (512, 256, 64), (512, 256)


# ----------------------------------------------------------------------------- the measuring process


def _examples(spec: dict):
    from mdcf import data

    cards = data.KAGGLE_CARDINALITIES[:spec.get("fields", 26)]
    return data.synthetic_ctr(spec["examples"], cardinalities=cards, cap=spec.get("cap"), seed=spec.get("seed", 0))


def _config(rows, variant: dict, layers=(BOTTOM, TOP)):
    """``variant``: ``{"dim": d}`` uniform, or ``{"dim": d0, "alpha": a}`` MD with dlrm's
    dimensions, or ``{"dim": d0, "alpha": a, "budget": params}`` MD scaled to a budget."""
    from mdcf.models import dlrm

    return dlrm.dlrm_config(rows, dim=variant["dim"], alpha=variant.get("alpha", 0.0), budget=variant.get("budget"),
                            bottom=layers[0], top=layers[1])


def _best_epoch(config, encoded: dict, n: int, opt_name: str, lr: float, batch_size: int, epochs: int):
    """``(seconds of the first epoch, compilation included; of the fastest of ``epochs``
    timed epochs after it)``."""
    import jax
    import jax.numpy as jnp

    from mdcf import train

    opt = train.optimizer(opt_name, lr, sparse=True)
    run = train.make_epoch_fn(lambda l2: train.make_train_step(config, opt), n, batch_size, metric="logloss")
    data = train.pack(encoded)
    state = train.init_state(jax.random.key(0), config, opt)
    zero = jnp.zeros((), jnp.float32)
    start = time.perf_counter()
    state, losses, *_ = run(state, data, train.epoch_order(0, 0, n, batch_size), zero)
    losses.block_until_ready()
    first = time.perf_counter() - start
    times = []
    for epoch in range(1, epochs + 1):
        order = train.epoch_order(0, epoch, n, batch_size)
        start = time.perf_counter()
        state, losses, *_ = run(state, data, order, zero)
        losses.block_until_ready()
        times.append(time.perf_counter() - start)
    if not np.isfinite(np.asarray(losses)).all():
        raise FloatingPointError(f"the training loss is not finite: {np.asarray(losses)[-3:]}")
    return first, min(times)


def _peak_mb(reset: bool = False) -> float:
    """This process's peak resident memory so far (MB); with ``reset``, the peak is then
    set back to the current size (Linux), so that the next reading covers only what
    follows (training, not the data generation before it)."""
    import resource

    status = Path("/proc/self/status")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if status.is_file():
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        peak = int(found.group(1)) / 1024 if found else peak
        if reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
    return peak


def child(spec: dict) -> dict:
    """One model's measurement in this process: ``spec`` names the data, the variant(s)
    and the training settings; returns params and samples/s per variant, and the
    process's peak resident memory."""
    from mdcf import embeddings, models
    from mdcf.models import dlrm

    examples, _ = _examples(spec)
    n = len(examples) if "train" not in spec else int(spec["train"])
    rows = examples.field_rows
    configs = [_config(rows, v, spec.get("layers", (BOTTOM, TOP))) for v in spec["variants"]]
    # The same examples, encoded once per config (the stacked rows depend only on the field sizes).
    encoded = {key: value[:n] for key, value in dlrm.encode(configs[0], examples).items()}
    del examples
    gc.collect()
    out = {"variants": [], "data_peak_mb": _peak_mb(reset=True)}
    for config in configs:
        out["variants"].append({"embedding_params": embeddings.num_params(config.table),
                                "params": models.num_params(config), "dims": sorted(set(config.table.dims)),
                                "rates": [], "first_seconds": []})
    for _ in range(spec.get("rounds", 1)):
        for config, result in zip(configs, out["variants"]):
            first, seconds = _best_epoch(config, encoded, n, spec["optimizer"], spec["lr"], spec["batch"],
                                         spec["epochs"])
            result["rates"].append(n / seconds)
            result["first_seconds"].append(first)
    out["peak_mb"] = _peak_mb()
    out["train_examples"] = n
    return out


def in_fresh_process(spec: dict) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_ctr: the measurement {spec} failed (exit status {done.returncode}); "
                         "its error is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sections


def kaggle(batches: int, epochs: int) -> None:
    from mdcf import data

    rows = data.KAGGLE_CARDINALITIES
    total = sum(rows)
    print(f"\n## kaggle: DLRM at the full Kaggle cardinalities ({total:,} rows, 26 tables), row-sparse Amsgrad "
          f"lr 1e-3, batch 4,096, {batches} batches an epoch, the best of {epochs} timed epochs; one process each; "
          "peak resident memory while building and training the model (after the examples were drawn), and while "
          "drawing them", flush=True)
    # MD at exactly 1/16 of uniform d = 16 is below MD's floor: every one of the 26 blocks at d = 1 plus its
    # 1 x 16 projection already needs total + 26 * 16 parameters.
    print(f"(MD at 1/16 of uniform d = 16, {total:,} parameters, is out of reach: every block at d = 1 with its "
          f"1 x 16 projection needs {total + 26 * 16:,}; measured at 1/8 instead, and at 1/16 of uniform d = 32, "
          "the paper's setting)")
    print(f"{'embedding':<44} | {'embedding params':>16} {'table MB':>9} {'dims':>6} | {'samples/s':>10} "
          f"{'train peak MB':>13} {'data peak MB':>12}")
    found = []
    for label, variant in [("uniform d = 16", {"dim": 16}),
                           ("MD alpha 0.3, base 16, 1/8 of uniform d = 16", {"dim": 16, "alpha": 0.3,
                                                                             "budget": 2 * total}),
                           ("MD alpha 0.3, base 32, 1/16 of uniform d = 32", {"dim": 32, "alpha": 0.3,
                                                                              "budget": 2 * total})]:
        spec = {"examples": batches * 4096, "variants": [variant], "optimizer": "amsgrad", "lr": 1e-3,
                "batch": 4096, "epochs": epochs}
        result = in_fresh_process(spec)
        v = result["variants"][0]
        found.append((label, v["rates"][0], result["peak_mb"]))
        dims = f"{min(v['dims'])}-{max(v['dims'])}"
        print(f"{label:<44} | {v['embedding_params']:>16,} {4 * v['embedding_params'] / 2**20:>9,.0f} {dims:>6} | "
              f"{v['rates'][0]:>10,.0f} {result['peak_mb']:>13,.0f} {result['data_peak_mb']:>12,.0f}", flush=True)
    _, u_rate, u_mem = found[0]
    for label, rate, mem in found[1:]:
        print(f"{label} / uniform d = 16: samples/s {rate / u_rate:.2f}x, train peak memory {mem / u_mem:.2f}x")


def sweep(examples: int, rounds: int, epochs: int, batch: int) -> None:
    dims = (2, 8, 32)
    rows_cap = 200_000
    print(f"\n## sweep: the click sweep's scale (26 fields capped at {rows_cap:,} rows, {examples:,} examples), "
          f"row-sparse Amsgrad lr 1e-3, batch {batch:,}; uniform d against MD (base 32, alpha 0.3) at the same "
          f"budget; {rounds} round(s) in one process, the best of {epochs} timed epochs each", flush=True)
    from mdcf import data

    rows = [min(r, rows_cap) for r in data.KAGGLE_CARDINALITIES]
    variants = []
    for d in dims:
        variants += [{"dim": d}, {"dim": 32, "alpha": 0.3, "budget": d * sum(rows)}]
    spec = {"examples": examples, "cap": rows_cap, "variants": variants, "optimizer": "amsgrad", "lr": 1e-3,
            "batch": batch, "epochs": epochs, "rounds": rounds}
    result = in_fresh_process(spec)
    print("first epoch s: compilation and one epoch, median over rounds")
    print(f"{'budget (uniform d)':>18} | {'uniform samples/s':>17} {'MD samples/s':>14} | {'MD / uniform':>18} | "
          f"{'first epoch s, uniform':>22} {'MD':>6}")
    for i, d in enumerate(dims):
        uniform, md = result["variants"][2 * i], result["variants"][2 * i + 1]
        u, m = uniform["rates"], md["rates"]
        ratios = sorted(b / a for a, b in zip(u, m))
        spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
        print(f"{d:>18} | {np.median(u):>17,.0f} {np.median(m):>14,.0f} | {np.median(ratios):>8.2f}x{spread:<9} | "
              f"{np.median(uniform['first_seconds']):>22.1f} {np.median(md['first_seconds']):>6.1f}")
    print(f"peak memory of the process: {result['peak_mb']:,.0f} MB")


def _write_dlrm_data(folder: Path, examples: int, cap: int) -> tuple[Path, Path]:
    """The synthetic examples in dlrm's preprocessed Kaggle layout: ``train.txt`` is
    named but never read (dlrm takes the processed file when it exists); seven equal
    days, the first six of which dlrm trains on."""
    from mdcf import data

    ex, truth = data.synthetic_ctr(examples, cap=cap, seed=0)
    raw = np.nan_to_num(np.maximum(truth.raw_dense, 0), nan=0).astype(np.int32)  # dlrm's own preprocessing
    processed = folder / "kaggleAdDisplayChallenge_processed.npz"
    np.savez(processed, X_int=raw, X_cat=ex.categorical.astype(np.int32), y=ex.labels.astype(np.int32),
             counts=np.asarray(ex.field_rows, np.int32))
    days = np.diff(np.linspace(0, examples, 8).astype(np.int64))
    np.savez(folder / "train_day_count.npz", total_per_file=days)
    return folder / "train.txt", processed


# dlrm_s_pytorch.py passes ``use_cuda`` to the autograd profiler, which PyTorch 2.9 and later
# no longer take: this runs the script with a profiler that accepts and drops it.
_DLRM_SHIM = """
import runpy, sys
import torch.autograd.profiler as profiler

class _Profile(profiler.profile):
    def __init__(self, *args, use_cuda=False, **kwargs):
        super().__init__(*args, **kwargs)

profiler.profile = _Profile
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _dlrm_ms_per_it(dlrm: Path, python: str, raw: Path, processed: Path, batch: int, iterations: int,
                    md: bool) -> float:
    """dlrm's median ``ms/it`` over its report intervals after the first (warm-up)."""
    interval = max(1, iterations // 5)
    command = [python, "-c", _DLRM_SHIM, str(dlrm / "dlrm_s_pytorch.py"), "--arch-sparse-feature-size=16",
               "--arch-mlp-bot=13-512-256-64-16", "--arch-mlp-top=512-256-1", "--data-generation=dataset",
               "--data-set=kaggle", f"--raw-data-file={raw}", f"--processed-data-file={processed}",
               "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1", f"--mini-batch-size={batch}",
               f"--num-batches={iterations}", f"--print-freq={interval}", "--print-time", "--nepochs=1",
               "--numpy-rand-seed=0", "--test-freq=-1"]
    if md:
        command += ["--md-flag", "--md-temperature=0.3", "--md-threshold=0"]  # 200 would crash on small tables
    done = subprocess.run(command, cwd=raw.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONPATH=str(dlrm)))
    found = [float(m) for m in re.findall(r"([0-9.]+) ms/it", done.stdout)]
    if done.returncode != 0 or len(found) < 2:
        raise SystemExit(f"bench_ctr: dlrm_s_pytorch.py failed (exit status {done.returncode}); the end of its "
                         f"output:\n{done.stdout[-3000:]}")
    return float(np.median(found[1:]))


def against_dlrm(dlrm: str | None, python: str | None, batches: list[int], examples: int, cap: int) -> None:
    print(f"\n## dlrm: mdcf against facebookresearch/dlrm's dlrm_s_pytorch.py, the same {examples:,} synthetic "
          f"examples (26 fields capped at {cap:,} rows), d0 = 16, SGD lr 0.1, BCE", flush=True)
    if not dlrm or not python:
        print("skipped: give --dlrm PATH (a checkout of facebookresearch/dlrm) and --dlrm-python (an interpreter "
              "with torch, scikit-learn and tensorboard)")
        return
    dlrm_path = Path(dlrm).expanduser().resolve()
    if not (dlrm_path / "dlrm_s_pytorch.py").is_file():
        raise SystemExit(f"bench_ctr: --dlrm {dlrm}: no dlrm_s_pytorch.py there")
    version = subprocess.run([python, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if version.returncode != 0:
        raise SystemExit(f"bench_ctr: --dlrm-python {python} cannot import torch:\n{version.stdout[-2000:]}")
    print(f"torch {version.stdout.split()[0]} with {version.stdout.split()[1]} threads")
    train_n = int(np.linspace(0, examples, 8).astype(np.int64)[6])  # dlrm trains on days 0-5 of 7
    print(f"{'batch':>6} {'embedding':<28} | {'dlrm samples/s':>14} {'mdcf samples/s':>14} | {'mdcf / dlrm':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        raw, processed = _write_dlrm_data(Path(tmp), examples, cap)
        for batch in batches:
            iterations = min(train_n // batch, 200)
            variants = [{"dim": 16}, {"dim": 16, "alpha": 0.3}]
            spec = {"examples": examples, "cap": cap, "train": iterations * batch, "variants": variants,
                    "optimizer": "sgd", "lr": 0.1, "batch": batch, "epochs": 2}
            mine = in_fresh_process(spec)
            for (label, md), result in zip([("uniform", False), ("MD alpha 0.3 (--md-flag)", True)],
                                           mine["variants"]):
                theirs = batch / (_dlrm_ms_per_it(dlrm_path, python, raw, processed, batch, iterations, md) / 1e3)
                rate = result["rates"][0]
                print(f"{batch:>6} {label:<28} | {theirs:>14,.0f} {rate:>14,.0f} | {rate / theirs:>10.2f}x",
                      flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=["kaggle", "sweep", "dlrm"])
    parser.add_argument("--kaggle-batches", type=int, default=40, help="batches of 4,096 an epoch (default 40)")
    parser.add_argument("--sweep-examples", type=int, default=200_000)
    parser.add_argument("--sweep-batch", type=int, default=1024, help="the sweep section's batch (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the sweep section (default 3)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the compile epoch (default 2)")
    parser.add_argument("--dlrm", default=None, help="a checkout of facebookresearch/dlrm")
    parser.add_argument("--dlrm-python", default=None, help="a Python with torch, scikit-learn and tensorboard")
    parser.add_argument("--dlrm-batches", type=int, nargs="+", default=[128, 4096])
    parser.add_argument("--dlrm-examples", type=int, default=200_000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    for name in ("kaggle_batches", "sweep_examples", "sweep_batch", "rounds", "epochs", "dlrm_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    from importlib.metadata import version

    print(f"bench_ctr: {os.cpu_count()} CPUs, jax {version('jax')}; every model in a fresh process", flush=True)
    if "kaggle" in args.sections:
        kaggle(args.kaggle_batches, args.epochs)
    if "sweep" in args.sections:
        sweep(args.sweep_examples, args.rounds, args.epochs, args.sweep_batch)
    if "dlrm" in args.sections:
        against_dlrm(args.dlrm, args.dlrm_python, args.dlrm_batches, args.dlrm_examples, 200_000)


if __name__ == "__main__":
    main()
