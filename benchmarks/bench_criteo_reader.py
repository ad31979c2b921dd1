"""Criteo reader: lines per second converting plain text, peak memory, and cached reload time.

For each size, a Criteo-shaped file is generated (mdcf.data.synthetic_ctr with the Kaggle
cardinalities scaled down, written by write_criteo_text), then converted by
mdcf.data.load_criteo in a fresh subprocess (so its peak resident memory is its own), and
reopened from the cache. Prints one row per size and the verdicts of the targets:
at least 300k lines/s, memory flat in the file's size, reload within 2 s.

    python benchmarks/bench_criteo_reader.py --lines 1000000 4000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mdcf import data
path, cache = sys.argv[1], sys.argv[2]
started = time.perf_counter()
parts = data.load_criteo(path, data_dir=cache, progress=False)
convert = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
again = data.load_criteo(path, data_dir=cache, progress=False)
reload = time.perf_counter() - started
n = len(again.train) + len(again.validation) + len(again.test)
print(json.dumps({"n": n, "convert": convert, "reload": reload, "peak_mb": peak}))
"""


def make_file(folder: Path, lines: int) -> Path:
    from mdcf import data

    path = folder / f"criteo-{lines}.txt"
    done = 0
    with open(path, "wb") as out:
        while done < lines:  # in pieces of 500k: the generator's memory stays small
            n = min(500_000, lines - done)
            examples, truth = data.synthetic_ctr(n, scale=0.01, seed=done)
            piece = data.write_criteo_text(folder / "piece.txt", examples, truth)
            out.write(piece.read_bytes())
            done += n
    (folder / "piece.txt").unlink()
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--folder", default=None, help="where the generated files and caches go (default: a temp dir)")
    args = parser.parse_args(argv)
    if min(args.lines) < 1:
        parser.error("--lines must be positive")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        print(f"{'lines':>12} {'MB':>8} | {'convert s':>9} {'lines/s':>10} {'peak MB':>8} | {'reload s':>8}")
        results = []
        for lines in args.lines:
            path = make_file(folder, lines)
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
            done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(folder / "cache")], env=env,
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["mb"] = path.stat().st_size / 1e6
            results.append(row)
            print(f"{row['n']:>12,} {row['mb']:>8.0f} | {row['convert']:>9.2f} {row['n'] / row['convert']:>10,.0f} "
                  f"{row['peak_mb']:>8.0f} | {row['reload']:>8.3f}", flush=True)
            path.unlink()
        slowest = min(r["n"] / r["convert"] for r in results)
        print(f"target >= 300,000 lines/s: {'met' if slowest >= 300_000 else 'not met'} (slowest {slowest:,.0f})")
        if len(results) > 1:
            growth = results[-1]["peak_mb"] / results[0]["peak_mb"]
            size = results[-1]["n"] / results[0]["n"]
            print(f"peak memory grows {growth:.2f}x for {size:.1f}x the lines")
        print(f"reload within 2 s: {'met' if max(r['reload'] for r in results) <= 2 else 'not met'} "
              f"(slowest {max(r['reload'] for r in results):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
