"""Run a benchmark and keep its raw output for docs/performance.md, with the command, commit and date.

Usage::

    python benchmarks/record.py docs/performance/bench_train.txt -- python benchmarks/bench_train.py

The output file starts with a header (command, commit, whether the tree had
uncommitted changes, date, machine) and holds everything the command printed,
standard error included; it is written atomically when the command ends.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from mdcf import io


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the raw output file to write")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    root = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    header = [
        f"command: {shlex.join(command)}",
        f"commit:  {git('rev-parse', 'HEAD') or 'unknown'}" + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""),
        f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    with io.atomic_write(args.out, "w") as f:
        f.write("\n".join(header) + done.stdout + done.stderr)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
