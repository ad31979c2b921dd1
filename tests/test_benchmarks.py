"""The speed benchmark runs end to end on a tiny grid and prints every column.

Times are not checked (they belong to the benchmark, not to the tests): this only keeps
the script working, with its copies, its product floor and its summary lines.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_embedding_tiny_grid():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_embedding.py"), "--rows", "2000",
               "--batches", "256", "--blocks", "4", "--rounds", "2", "--copies", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "2 copies of each forward+backward variant" in out
    rows = [line for line in out.splitlines() if re.match(r"\s*2,000\s+256\s+4 \|", line)]
    assert len(rows) == 1, out
    # uniform ms, then MD, MD/8, fwd MD, fwd pre, prod MD, prod MD/8, arith MD, arith MD/8 as ratios
    ratios = [float(x) for x in re.findall(r"([\d.]+)x", rows[0])]
    assert len(ratios) == 8 and all(r > 0 for r in ratios[:6]) and all(r >= 0 for r in ratios[6:]), rows[0]
    rate = re.search(r"dense matmul (\d+) GFLOP/s", out)
    assert rate and int(rate.group(1)) > 0, out
    assert re.search(r"MD at the same d0 <= 1.5x uniform: [01]/1 configurations", out)
    assert re.search(r"MD with 8x fewer parameters <= 1.0x uniform: [01]/1 configurations", out)


def test_bench_embedding_rejects_zero_copies():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_embedding.py"), "--copies", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--copies and --rounds must be at least 1" in result.stderr


def test_bench_criteo_reader_tiny():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_criteo_reader.py"), "--lines", "3000", "6000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if re.match(r"\s*[36],000\s", line)]
    assert len(rows) == 2, result.stdout
    assert re.search(r"target >= 300,000 lines/s: (met|not met)", result.stdout)
    assert re.search(r"peak memory grows [\d.]+x for 2.0x the lines", result.stdout)
    assert re.search(r"reload within 2 s: (met|not met)", result.stdout)


def _bench_ctr():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ctr", ROOT / "benchmarks" / "bench_ctr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_ctr_measures_equal_budgets_and_writes_dlrm_layout(tmp_path):
    import numpy as np

    from mdcf import data

    bench = _bench_ctr()
    rows = [min(r, 400) for r in data.KAGGLE_CARDINALITIES[:6]]
    budget = 4 * sum(rows)
    spec = {"examples": 1_500, "fields": 6, "cap": 400, "train": 1_024, "layers": ((8,), (8,)),
            "variants": [{"dim": 4}, {"dim": 8, "alpha": 0.3, "budget": budget}], "optimizer": "amsgrad",
            "lr": 1e-3, "batch": 256, "epochs": 1, "rounds": 2}
    out = bench.child(spec)
    uniform, md = out["variants"]
    assert uniform["embedding_params"] == budget and uniform["dims"] == [4]
    assert 0.99 * budget <= md["embedding_params"] <= budget and len(md["dims"]) > 1
    assert out["train_examples"] == 1_024 and out["peak_mb"] > 0
    assert all(len(v["rates"]) == 2 and min(v["rates"]) > 0 for v in out["variants"])
    assert all(len(v["first_seconds"]) == 2 and min(v["first_seconds"]) > 0 for v in out["variants"])

    raw, processed = bench._write_dlrm_data(tmp_path, 700, cap=50)
    examples, truth = data.synthetic_ctr(700, cap=50, seed=0)
    with np.load(processed) as saved:
        np.testing.assert_array_equal(saved["X_cat"], examples.categorical)
        np.testing.assert_array_equal(saved["y"], examples.labels)
        assert saved["X_int"].min() >= 0 and saved["X_int"].shape == (700, 13)
        assert list(saved["counts"]) == list(examples.field_rows)
    with np.load(tmp_path / "train_day_count.npz") as days:
        assert len(days["total_per_file"]) == 7 and days["total_per_file"].sum() == 700
    assert raw.name == "train.txt" and not raw.exists()  # named for dlrm, never read


def test_bench_ctr_usage_errors_and_a_missing_dlrm(tmp_path):
    script = str(ROOT / "benchmarks" / "bench_ctr.py")
    result = subprocess.run([sys.executable, script, "--epochs", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--epochs must be at least 1, got 0" in result.stderr
    result = subprocess.run([sys.executable, script, "--sections", "dlrm", "--dlrm", str(tmp_path),
                             "--dlrm-python", sys.executable], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no dlrm_s_pytorch.py there" in result.stderr
    result = subprocess.run([sys.executable, script, "--sections", "dlrm"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "skipped: give --dlrm PATH" in result.stdout


def test_bench_train_fit_section_on_scaled_shapes():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--sections", "fit", "--shapes", "ml-1m",
               "ml-20m", "--scale", "0.005", "--rounds", "1", "--epochs", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for shape in ("ml-1m", "ml-20m"):
        rows = [line for line in out.splitlines() if line.startswith(shape)]
        assert len(rows) == 3 and "Surprise SVD" in rows[0] and "mdcf fit defaults" in rows[1], out
        assert "Surprise's update" in rows[2], out
        assert all(0 < float(row.split()[-1]) < 5 for row in rows[1:]), rows  # mdcf's test RMSEs
    assert out.count("host shuffle of an epoch") == 2
    if importlib.util.find_spec("surprise") is None:
        assert "not installed" in out and "target 1" not in out
    else:  # both timed, and a verdict per shape
        assert re.search(r"target 1: .*ml-1m: [\d.]+x, RMSE [\d.]+ vs [\d.]+ \((met|missed)\); ml-20m", out), out


def test_bench_train_refuses_bad_settings():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--epochs", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--epochs must be at least 1" in result.stderr


def test_bench_embedding_methods_at_an_eighth_of_the_table():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_embedding.py"), "--methods", "md", "lowrank", "qr",
               "hash", "tt", "md-int8", "--rows", "3000", "--batches", "128", "--rounds", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines()
            if re.match(r"\s*3,000\s+128 \|", line)}
    assert set(rows) == {"uniform", "md", "lowrank", "qr", "hash", "tt", "md-int8"}, result.stdout
    for name, line in rows.items():
        share, megabytes = (float(x) for x in line.split("|")[2].split()[1:3])
        assert (share == 1.0) if name == "uniform" else (0.09 <= share <= 0.125), line  # at most 1/8
        if name == "md-int8":  # int8 codes: fewer bytes than the float32 MD layer of the same parameters
            assert megabytes < float(rows["md"].split("|")[2].split()[2]), line
            assert line.split("|")[3].strip() == "-", line  # post-training: forward only
        elif name != "uniform":
            assert re.search(r"\d+\.\d+x", line.split("|")[3]) and re.search(r"\d+\.\d+x", line.split("|")[4]), line
