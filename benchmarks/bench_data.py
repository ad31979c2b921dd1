"""Data-layer benchmark: synthetic generation, ratings.csv parsing, cached reload.

Prints, in one run, each figure beside its target:

* synthetic generation of 25M ratings over 160k users and 60k items (target <= 60 s);
* parsing a 25M-row MovieLens-style ratings.csv written from that data, and the
  parser's peak RSS, measured in a fresh process (targets <= 15 s, <= 3 GB);
* reloading the parsed cache through ``load_movielens`` in a fresh process (target <= 2 s).

Usage::

    python benchmarks/bench_data.py                 # full size (needs ~4 GB of disk, a few minutes)
    python benchmarks/bench_data.py --n-ratings 1e6  # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def _child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python; it prints one JSON line with its figures."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


PARSE = """
import json, resource, sys, time
from mdcf.data import read_ratings
start = time.perf_counter()
r = read_ratings(sys.argv[1], scale=(0.5, 5.0))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "n": len(r), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

LOAD = """
import json, sys, time
from mdcf.data import movielens as ml
ml.MOVIELENS["ml-25m"] = ml.MovieLensInfo("ml-25m", "ml-25m/ratings.csv", sys.argv[2], (0.5, 5.0), None, None, None)
start = time.perf_counter()
r = ml.load_movielens("ml-25m", data_dir=sys.argv[1], download=False, verbose=False)
print(json.dumps({"seconds": time.perf_counter() - start, "n": len(r)}))
"""


def write_csv(ratings, path: Path, chunk: int = 2_000_000) -> None:
    """A ratings.csv laid out like MovieLens-25M's (1-based ids, sorted by user then item)."""
    import pandas as pd

    with open(path, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for start in range(0, len(ratings), chunk):
            part = slice(start, start + chunk)
            pd.DataFrame({
                "userId": ratings.users[part] + 1,
                "movieId": ratings.items[part] + 1,
                "rating": ratings.ratings[part],
                "timestamp": ratings.timestamps[part],
            }).to_csv(f, header=False, index=False, float_format="%g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ratings", type=float, default=25e6)
    parser.add_argument("--n-users", type=int, default=160_000)
    parser.add_argument("--n-items", type=int, default=60_000)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    n = int(args.n_ratings)

    from mdcf import data

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        ratings, _ = data.synthetic(
            args.n_users, args.n_items, n, rank=32, user_zipf=0.9, item_zipf=1.1,
            spectrum_decay=1.0, noise=0.7, step=0.5, scale=(0.5, 5.0), seed=0,
        )
        rows.append(("synthetic generation", f"{time.perf_counter() - start:.1f} s", "<= 60 s"))
        print(f"generated {len(ratings):,} ratings; writing ratings.csv ...", file=sys.stderr)

        csv = tmp / "ratings.csv"
        write_csv(ratings, csv)
        del ratings
        size_mb = csv.stat().st_size / 1e6
        parse = _child(PARSE, str(csv))
        assert parse["n"] == n, parse
        rows.append((f"parse ratings.csv ({size_mb:,.0f} MB)", f"{parse['seconds']:.1f} s", "<= 15 s"))
        rows.append(("parse peak RSS", f"{parse['peak_rss'] / 1e9:.2f} GB", "<= 3 GB"))

        # The same file as an ml-25m archive: the first load parses and caches, the second reloads.
        archive = tmp / "ml-25m.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
            z.write(csv, "ml-25m/ratings.csv")
        csv.unlink()
        md5 = hashlib.md5()
        with open(archive, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                md5.update(block)
        first = _child(LOAD, str(tmp), md5.hexdigest())
        rows.append(("first load_movielens (MD5, parse, cache)", f"{first['seconds']:.1f} s", "-"))
        again = _child(LOAD, str(tmp), md5.hexdigest())
        assert again["n"] == n
        rows.append(("cached reload", f"{again['seconds']:.2f} s", "<= 2 s"))

    width = max(len(r[0]) for r in rows)
    print(f"\nbench_data: {n:,} ratings, {args.n_users:,} users, {args.n_items:,} items, {os.cpu_count()} CPUs")
    print(f"{'measure':<{width}}  {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")


if __name__ == "__main__":
    main()
