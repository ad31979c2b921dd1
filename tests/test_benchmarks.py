"""The speed benchmark runs end to end on a tiny grid and prints every column.

Times are not checked (they belong to the benchmark, not to the tests): this only keeps
the script working, with its copies, its product floor and its summary lines.
"""

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
