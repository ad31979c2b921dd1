"""Click logs in the Criteo format: a streaming reader, a memory-mapped cache, splits.

Criteo's Kaggle (``train.txt``, 45.8M lines over 7 days) and Terabyte (``day_0`` ..
``day_23``) files are not redistributable: mdcf never downloads them. Get them from
Criteo (https://ailab.criteo.com/ressources/) and pass the local path.

:func:`load_criteo` reads a file once, in blocks (memory does not grow with the file),
and caches the result as memory-mapped arrays that later calls open in well under a
second whatever the size:

* ``labels`` (float32, 0 or 1);
* ``dense``: the 13 integer features as ``log(1 + max(x, 0))``, 0 where empty
  (dlrm's Kaggle preprocessing), float32;
* ``categorical``: per field, int32 codes ordered by training frequency (code 0 the
  most frequent). With ``threshold=t`` a category seen fewer than ``t`` times in the
  training part (or never) shares one out-of-vocabulary row, the field's last; with
  ``threshold=0`` every category of the file keeps its own row (dlrm's table sizes).
  An empty field is a category of its own.

Splits: ``"day"`` (the Kaggle protocol of dlrm: lines cut into ``days`` equal days in
file order, the last day halved into validation and test) or ``"random"`` (seeded).

Example::

    parts = mdcf.data.load_criteo("train.txt", threshold=15)
    parts.train.categorical[:3], parts.field_rows[:5], len(parts.test)
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import CorruptFileError, read_arrays, write_arrays
from .criteo_parse import MISSING, N_CATEGORICAL, N_DENSE, CriteoFormatError, parse_block, read_blocks
from .movielens import data_home

__all__ = ["CTRData", "CTRSplit", "load_criteo", "CTR_SPLITS", "transform_dense", "split_ctr"]

CTR_SPLITS = ("day", "random")
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_CACHE_VERSION = 1
_WHERE = "Criteo data is not redistributable; download it from https://ailab.criteo.com/ressources/ " \
         "(Kaggle: dac.tar.gz, train.txt) and pass the local path"


@dataclass(frozen=True)
class CTRData:
    """Click-through examples (arrays may be memory-mapped; treat them as read-only).

    Attributes:
      labels: ``[n]`` float32, 1 for a click.
      dense: ``[n, 13]`` float32 transformed integer features.
      categorical: ``[n, 26]`` int32 codes, per field in ``0 .. field_rows[f] - 1``.
      field_rows: rows of each field's table.
      counts: per field, ``[field_rows[f]]`` int64 occurrences of each code in the
        training part (the popularity that blocking and sizing use).
      name: a label for messages and results.
    """

    labels: np.ndarray
    dense: np.ndarray
    categorical: np.ndarray
    field_rows: tuple[int, ...]
    counts: tuple[np.ndarray, ...]
    name: str = "ctr"

    def __post_init__(self):
        n = len(self.labels)
        if self.dense.shape != (n, self.dense.shape[1]) or self.categorical.shape != (n, len(self.field_rows)):
            raise ValueError(f"CTRData {self.name}: labels {self.labels.shape}, dense {self.dense.shape} and "
                             f"categorical {self.categorical.shape} must have one length, and categorical one "
                             f"column per field ({len(self.field_rows)})")
        if len(self.counts) != len(self.field_rows):
            raise ValueError(f"CTRData {self.name}: {len(self.counts)} count arrays for {len(self.field_rows)} fields")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_fields(self) -> int:
        return len(self.field_rows)

    @property
    def n_dense(self) -> int:
        return self.dense.shape[1]

    @property
    def positive_rate(self) -> float:
        return float(np.mean(self.labels, dtype=np.float64)) if len(self) else float("nan")

    def take(self, rows) -> "CTRData":
        """A copy holding the examples ``rows`` (an index array or slice), in memory."""
        return CTRData(np.ascontiguousarray(self.labels[rows]), np.ascontiguousarray(self.dense[rows]),
                       np.ascontiguousarray(self.categorical[rows]), self.field_rows, self.counts, self.name)


@dataclass(frozen=True)
class CTRSplit:
    """Training, validation and test parts sharing one set of tables."""

    train: CTRData
    validation: CTRData
    test: CTRData

    @property
    def field_rows(self) -> tuple[int, ...]:
        return self.train.field_rows

    @property
    def counts(self) -> tuple[np.ndarray, ...]:
        return self.train.counts


def transform_dense(raw: np.ndarray) -> np.ndarray:
    """dlrm's transform of the integer features: ``log(1 + max(x, 0))``, 0 where missing (NaN)."""
    raw = np.nan_to_num(np.asarray(raw, np.float64), nan=0.0)
    return np.log1p(np.maximum(raw, 0.0)).astype(np.float32)


def _part_bounds(n: int, split: str, days: int, validation: float, test: float) -> tuple[int, int]:
    """``(end of train, end of validation)`` in the cached (part-ordered) rows."""
    if split == "day":
        train_end = (n * (days - 1)) // days
        return train_end, train_end + (n - train_end) // 2
    n_test = int(round(n * test))
    n_val = int(round(n * validation))
    return n - n_val - n_test, n - n_test


def _order(n: int, split: str, seed: int, validation: float, test: float) -> np.ndarray | None:
    """Rows of the file in cached order (train, validation, test; file order inside each), or
    None for the day split (the file's order)."""
    if split == "day":
        return None
    part = np.zeros(n, np.uint8)
    chosen = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test)), int(round(n * validation))
    part[chosen[:n_val]] = 1
    part[chosen[n_val: n_val + n_test]] = 2
    return np.argsort(part, kind="stable")


def _check_options(split, days, validation, test, threshold, seed):
    if split not in CTR_SPLITS:
        raise ValueError(f"split must be one of {CTR_SPLITS}, got {split!r}")
    if isinstance(days, bool) or not isinstance(days, (int, np.integer)) or days < 2:
        raise ValueError(f"days must be an integer of at least 2 (the last is halved into validation and test), got {days!r}")
    for name, value in (("validation", validation), ("test", test)):
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    if validation + test >= 1:
        raise ValueError(f"validation + test must leave training examples, got {validation} + {test}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative integer (0: keep every category), got {threshold!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _cache_key(path: Path, options: dict) -> str:
    stat = path.stat()
    identity = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **options,
                "version": _CACHE_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def load_criteo(path: os.PathLike | str, *, threshold: int = 0, split: str = "day", days: int = 7,
                validation: float = 0.05, test: float = 0.05, seed: int = 0, data_dir=None,
                progress: bool = True, verify: bool = False, block_bytes: int = 4 << 20) -> CTRSplit:
    """Read a Criteo-format file (plain or gzip) into a cached, memory-mapped :class:`CTRSplit`.

    Args:
      path: the local file (Kaggle ``train.txt``, a Terabyte ``day_N``, or any file in
        their layout).
      threshold: categories seen fewer times in the training part share one
        out-of-vocabulary row per field (dlrm's ``--max-ind-range`` alternative);
        0 keeps every category.
      split: ``"day"`` (``days`` equal days in file order; the last halved into
        validation and test) or ``"random"`` (``validation`` and ``test`` fractions,
        drawn with ``seed``).
      data_dir: where the cache goes (default :func:`mdcf.data.data_home` / ``criteo``).
      progress: a progress bar while converting.
      verify: recompute every cached file's CRC-32 on load (reads everything; the
        default checks sizes and the metadata's own checksum).
      block_bytes: bytes parsed at a time (memory while converting is a few times this,
        plus about 24 bytes per line while coding one field).

    Raises:
      FileNotFoundError: no such file (the message says where to get Criteo data).
      CriteoFormatError: a malformed line (file, line number and field named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Criteo file at {path}{' (a folder)' if path.is_dir() else ''}. {_WHERE}")
    _check_options(split, days, validation, test, threshold, seed)
    options = {"threshold": int(threshold), "split": split}
    options.update({"days": int(days)} if split == "day" else
                   {"validation": float(validation), "test": float(test), "seed": int(seed)})
    folder = data_home(data_dir) / "criteo" / f"{path.name}-{_cache_key(path, options)}"
    if folder.is_dir():
        try:
            return _open_cache(folder, verify, path.name)
        except CorruptFileError:
            shutil.rmtree(folder, ignore_errors=True)  # rebuilt below
    _convert(path, folder, options, progress, block_bytes)
    return _open_cache(folder, verify, path.name)


# ------------------------------------------------------------------ conversion

def _convert(path: Path, folder: Path, options: dict, progress: bool, block_bytes: int) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.with_name(f"{folder.name}.part-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        n = _first_pass(path, work, progress, block_bytes)
        if n == 0:
            raise CriteoFormatError(str(path), None, "the file holds no examples")
        _second_pass(work, n, options)
        if not folder.exists():  # else another process finished the same cache first: keep theirs
            os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _first_pass(path: Path, work: Path, progress: bool, block_bytes: int) -> int:
    """Parse every block; append labels, transformed dense features and raw hashes to files."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"reading {path.name}", unit=" lines", unit_scale=True, leave=False)
    files = [open(work / "labels.raw", "wb"), open(work / "dense.raw", "wb")]
    files += [open(work / f"hash{f}.raw", "wb") for f in range(N_CATEGORICAL)]
    n = 0
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=_WORKERS)  # numpy releases the GIL: blocks parse side by side

    def drain(limit: int):
        nonlocal n
        while len(pending) > limit:
            parsed = pending.popleft().result()
            files[0].write(parsed.labels.astype(np.float32).tobytes())
            files[1].write(transform_dense(parsed.dense).tobytes())
            for f in range(N_CATEGORICAL):
                files[2 + f].write(np.ascontiguousarray(parsed.categorical[:, f]).tobytes())
            n += len(parsed.labels)
            if bar is not None:
                bar.update(len(parsed.labels))

    try:
        for first_line, block in read_blocks(path, block_bytes):
            pending.append(pool.submit(parse_block, block, first_line, str(path)))
            drain(2 * _WORKERS)
        drain(0)
    finally:
        pool.shutdown(cancel_futures=True)
        for f in files:
            f.close()
        if bar is not None:
            bar.close()
    return n


def _codes(raw: np.ndarray, train: np.ndarray | slice, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes int32, counts int64)``: categories re-indexed by descending training
    frequency (ties: first appearance), rare ones (``threshold``) into a last shared row."""
    first, uniques = pd.factorize(raw, sort=False)
    train_counts = np.bincount(first[train], minlength=len(uniques)).astype(np.int64)
    by_count = np.argsort(-train_counts, kind="stable")
    if threshold > 0:
        kept = by_count[train_counts[by_count] >= threshold]
        remap = np.full(len(uniques), len(kept), np.int64)
        remap[kept] = np.arange(len(kept))
        counts = np.append(train_counts[kept], train_counts.sum() - train_counts[kept].sum())
    else:
        remap = np.empty(len(uniques), np.int64)
        remap[by_count] = np.arange(len(uniques))
        counts = train_counts[by_count]
    return remap[first].astype(np.int32), counts


def _second_pass(work: Path, n: int, options: dict) -> None:
    """Code every field; write the part-ordered arrays and the metadata."""
    split = options["split"]
    order = _order(n, split, options.get("seed", 0), options.get("validation", 0), options.get("test", 0))
    train_end, validation_end = _part_bounds(n, split, options.get("days", 7), options.get("validation", 0),
                                             options.get("test", 0))
    ordered = (lambda a: a) if order is None else (lambda a: a[order])  # noqa: E731
    labels = np.fromfile(work / "labels.raw", np.float32)
    np.save(work / "labels.npy", ordered(labels))
    del labels
    dense = np.memmap(work / "dense.raw", np.float32, "r", shape=(n, N_DENSE))
    out = np.lib.format.open_memmap(work / "dense.npy", "w+", np.float32, (n, N_DENSE))
    for start in range(0, n, 1 << 20):  # in pieces: memory stays flat
        rows = slice(start, min(n, start + (1 << 20)))
        out[rows] = dense[rows] if order is None else dense[order[rows]]
    out.flush()
    del out, dense
    (work / "labels.raw").unlink()
    (work / "dense.raw").unlink()
    codes_out = np.lib.format.open_memmap(work / "categorical.npy", "w+", np.int32, (N_CATEGORICAL, n))
    counts = {}
    for f in range(N_CATEGORICAL):
        raw = ordered(np.fromfile(work / f"hash{f}.raw", np.int64))
        codes, counts[f"field{f}"] = _codes(raw, slice(0, train_end), options["threshold"])
        codes_out[f] = codes
        del raw, codes
        (work / f"hash{f}.raw").unlink()
    codes_out.flush()
    del codes_out
    write_arrays(work / "counts.mdcf", counts, {})
    files = {name: {"bytes": (work / name).stat().st_size, "crc32": _file_crc(work / name)}
             for name in ("labels.npy", "dense.npy", "categorical.npy")}
    meta = {"version": _CACHE_VERSION, "n": n, "train_end": train_end, "validation_end": validation_end,
            "field_rows": [int(len(counts[f"field{f}"])) for f in range(N_CATEGORICAL)], "options": options,
            "files": files, "missing": MISSING}
    text = json.dumps(meta, sort_keys=True)
    (work / "meta.json").write_text(json.dumps({"meta": meta, "crc32": zlib.crc32(text.encode())}))


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _open_cache(folder: Path, verify: bool, name: str) -> CTRSplit:
    try:
        stored = json.loads((folder / "meta.json").read_text())
        meta = stored["meta"]
        if zlib.crc32(json.dumps(meta, sort_keys=True).encode()) != stored["crc32"] or meta["version"] != _CACHE_VERSION:
            raise ValueError("metadata checksum or version")
        for file, expected in meta["files"].items():
            if (folder / file).stat().st_size != expected["bytes"]:
                raise ValueError(f"{file} has {(folder / file).stat().st_size} bytes, expected {expected['bytes']}")
            if verify and _file_crc(folder / file) != expected["crc32"]:
                raise ValueError(f"{file} fails its CRC-32 check")
        counts_arrays, _ = read_arrays(folder / "counts.mdcf")
        labels = np.load(folder / "labels.npy", mmap_mode="r")
        dense = np.load(folder / "dense.npy", mmap_mode="r")
        categorical = np.load(folder / "categorical.npy", mmap_mode="r").T
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(folder, f"a damaged Criteo cache ({err}); it is rebuilt") from None
    counts = tuple(counts_arrays[f"field{f}"] for f in range(N_CATEGORICAL))
    rows = tuple(int(r) for r in meta["field_rows"])

    def part(start, end, label):
        return CTRData(labels[start:end], dense[start:end], categorical[start:end], rows, counts, f"{name} {label}")

    n, a, b = meta["n"], meta["train_end"], meta["validation_end"]
    return CTRSplit(part(0, a, "train"), part(a, b, "validation"), part(b, n, "test"))


def split_ctr(data: CTRData, method: str = "random", *, validation: float = 0.05, test: float = 0.05,
              seed: int = 0, days: int = 7) -> CTRSplit:
    """Split in-memory examples (e.g. :func:`mdcf.data.synthetic_ctr`'s) like :func:`load_criteo`
    does; ``counts`` are recounted on the training part (codes and table sizes unchanged)."""
    _check_options(method, days, validation, test, 0, seed)
    n = len(data)
    order = _order(n, method, seed, validation, test)
    train_end, validation_end = _part_bounds(n, method, days, validation, test)
    rows = np.arange(n) if order is None else order
    train_codes = data.categorical[rows[:train_end]]
    counts = tuple(np.bincount(train_codes[:, f], minlength=data.field_rows[f]).astype(np.int64)
                   for f in range(data.n_fields))

    def part(selected, label):
        taken = data.take(selected)
        return CTRData(taken.labels, taken.dense, taken.categorical, data.field_rows, counts, f"{data.name} {label}")

    return CTRSplit(part(rows[:train_end], "train"), part(rows[train_end:validation_end], "validation"),
                    part(rows[validation_end:], "test"))
