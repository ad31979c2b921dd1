"""Command line: ``python -m mdcf summary [DATASET]`` prints a data set's summary."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdcf", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    summary = commands.add_parser("summary", help="load a MovieLens data set (or a ratings file) and describe it")
    summary.add_argument("dataset", nargs="?", default="ml-100k", help="a MovieLens name or a ratings file path")
    summary.add_argument("--data-dir", default=None, help="data folder (default $MDCF_DATA_DIR or ~/.cache/mdcf)")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["summary", *(argv or [])])

    from mdcf import data

    if args.dataset in data.MOVIELENS:
        ratings = data.load_movielens(args.dataset, data_dir=args.data_dir)
    else:
        ratings = data.read_ratings(args.dataset)
    print(ratings.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
