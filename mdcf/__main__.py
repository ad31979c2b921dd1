"""Command line: ``python -m mdcf summary [DATASET]`` prints a data set's summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdcf import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdcf", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    summary = commands.add_parser("summary", help="load a MovieLens data set (or a ratings file) and describe it")
    summary.add_argument("dataset", nargs="?", default="ml-100k", help="a MovieLens name or a ratings file path")
    summary.add_argument("--data-dir", default=None, help="data folder (default $MDCF_DATA_DIR or ~/.cache/mdcf)")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["summary", *(argv or [])])

    try:
        if args.dataset in data.MOVIELENS:
            ratings = data.load_movielens(args.dataset, data_dir=args.data_dir)
        else:
            ratings = data.read_ratings(args.dataset)
    except (OSError, ValueError, data.DatasetUnavailableError) as err:  # bad input: a message, not a traceback
        hint = ""
        if args.dataset not in data.MOVIELENS and not Path(args.dataset).exists():
            hint = f" (MovieLens names: {', '.join(data.MOVIELENS)})"
        print(f"mdcf: error: {err}{hint}", file=sys.stderr)
        return 1
    print(ratings.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
