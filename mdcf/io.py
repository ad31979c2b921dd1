"""Files: atomic writes and a checksummed container for named numpy arrays.

Every file mdcf writes (downloaded archives, parsed-data caches, results,
checkpoints) goes through :func:`atomic_write`: the content is written to a
temporary file in the destination folder, flushed to disk and only then
renamed over the destination, so an interrupted write never leaves a partial
file under the final name.

:func:`write_arrays` / :func:`read_arrays` store a dict of numpy arrays plus a
JSON-serialisable ``meta`` dict in one file. Each array carries a CRC-32, the
header (names, shapes, ``meta``) carries one too, the file records its own
total size, and :func:`read_arrays` raises :class:`CorruptFileError` for a
truncated, padded or bit-flipped file instead of returning wrong numbers.

Layout of an array file (all integers little-endian)::

    b"MDCFARR1" | uint64 header length | header JSON (utf-8) | uint32 CRC-32 of
    the header JSON | padding | array 0 bytes | padding | array 1 bytes | ...

Arrays start at 64-byte aligned offsets, recorded in the header. Files of
format version 1 (no header CRC) are still read.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

__all__ = [
    "CorruptFileError",
    "FolderLockedError",
    "atomic_write",
    "create_exclusive",
    "append_text",
    "folder_lock",
    "write_arrays",
    "read_arrays",
]

_MAGIC = b"MDCFARR1"
_ALIGN = 64
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: the header has no CRC-32 of its own


class CorruptFileError(ValueError):
    """A file mdcf wrote earlier is truncated, corrupt or not an mdcf file."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file that replaces ``path`` only if the block succeeds.

    Args:
      path: the destination. Its folder is created if needed.
      mode: ``"wb"`` (default) or ``"w"`` (text, utf-8).

    Yields:
      The open temporary file. On normal exit it is flushed, fsync'ed and
      renamed over ``path`` (atomic on POSIX and Windows); on an exception it is
      deleted and ``path`` is left untouched. Temporaries of earlier writes to
      ``path`` whose process no longer runs (killed mid-write) are deleted first.

    Example:
      >>> with atomic_write("/tmp/example.txt", "w") as f:  # doctest: +SKIP
      ...     f.write("all or nothing")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if path.is_dir():  # checked first: the rename would fail only after the whole write
        raise IsADirectoryError(f"atomic_write: {path} is a folder; give the path of a file in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _writer_tag(pid: int | None = None) -> str:
    """``HOST~PID`` of a writer, as temporary file names carry it (no dots in it)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    return f"{host}~{os.getpid() if pid is None else pid}"


def _remove_stale_parts(path: Path) -> None:
    """Delete ``.NAME.HOST~PID.*.part`` temporaries of ``path`` left by processes of this
    host that no longer run (a write killed midway); other hosts' are never touched."""
    host = _writer_tag().split("~")[0]
    for part in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}~*.part"):
        pid = part.name[len(path.name) + len(host) + 3:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def create_exclusive(path: os.PathLike | str, text: str) -> bool:
    """Create ``path`` holding ``text`` if it does not exist, atomically: a reader sees
    no file or the whole text. Returns False (and changes nothing) when it exists."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.new-{os.getpid()}")
    with atomic_write(staged, "w") as f:
        f.write(text)
    try:
        os.link(staged, path)  # fails if path exists: never replaces another writer's file
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(staged)


def append_text(path: os.PathLike | str, text: str, header: str = "") -> None:
    """Append ``text`` (whole lines) to ``path`` in one ``write`` of an append-mode file,
    flushed to disk; a missing file is first created holding ``header``
    (:func:`create_exclusive`). Appends of several processes never lose or merge each
    other's lines; a crash can leave at most a partial last line."""
    path = Path(path)
    if not path.exists():
        create_exclusive(path, header)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        data = text.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"append to {path}: wrote {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderLockedError(RuntimeError):
    """Another process holds a folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: os.PathLike | str, what: str = "this folder") -> Iterator[Path]:
    """Hold ``folder/.lock`` while the block runs: one writer per folder.

    The lock file records the holder's pid, host and start time. A lock left by a
    process of this host that no longer runs is stale: it is taken over, with a
    warning. A live holder, or one on another host (whose liveness cannot be
    checked here), raises :class:`FolderLockedError` naming it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not create_exclusive(path, json.dumps(me)):
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):  # half-gone or garbled: the lock of a writer that died
            holder = {}
        if holder.get("host") == me["host"] and _alive(holder.get("pid")):
            raise FolderLockedError(
                f"{folder}: {what} is in use by process {holder['pid']} on this host (since {holder.get('started')}); "
                "wait for it to finish, or use another folder")
        if holder and holder.get("host") != me["host"]:
            raise FolderLockedError(
                f"{folder}: {what} is locked by process {holder.get('pid')} on host {holder.get('host')} (since "
                f"{holder.get('started')}); if no process there uses it any more, delete {path}")
        warnings.warn(f"{folder}: taking over the lock of process {holder.get('pid')}, which no longer runs",
                      stacklevel=3)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _byte_view(array: np.ndarray) -> memoryview:
    """The raw bytes of a C-contiguous array (any shape, including 0-d and empty)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(_byte_view(array))


def _dtype_tag(dtype: np.dtype, name: str) -> str:
    """How the header records ``dtype``: numpy's type string, or for the extended
    floats JAX uses (bfloat16, float8 types from ``ml_dtypes``), whose type string
    is a bare void ``'<V2'``, their name."""
    if dtype.kind != "V":
        return dtype.str
    if dtype.names is None and isinstance(getattr(ml_dtypes, dtype.name, None), type):
        return dtype.name
    raise TypeError(f"write_arrays: array {name!r} has dtype {dtype}, which cannot be stored; "
                    "use numbers or fixed-width strings")


def _dtype_from_tag(tag: str) -> np.dtype:
    extended = getattr(ml_dtypes, tag, None) if tag.isidentifier() else None
    return np.dtype(extended) if isinstance(extended, type) else np.dtype(tag)


def write_arrays(
    path: os.PathLike | str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write named numpy arrays and a JSON ``meta`` dict to ``path``.

    Args:
      path: destination file.
      arrays: name -> array. Object dtypes are refused (they would need pickle);
        use fixed-width strings (``np.str_``) for text.
      meta: JSON-serialisable metadata, returned unchanged by :func:`read_arrays`.
    """
    entries = []
    prepared = []
    for name, value in arrays.items():
        array = np.asarray(value, order="C")
        if array.dtype.hasobject:
            raise TypeError(
                f"write_arrays: array {name!r} has dtype object, which cannot be stored "
                "without pickle; convert it to numbers or fixed-width strings first"
            )
        entries.append(
            {
                "name": str(name),
                "dtype": _dtype_tag(array.dtype, name),
                "shape": list(array.shape),
                "nbytes": int(array.nbytes),
                "crc32": _crc32(array),
            }
        )
        prepared.append(array)
    header: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "meta": dict(meta or {}),
        "arrays": entries,
    }
    # The header records offsets, whose values depend on the header's own length:
    # iterate until the length is stable (converges after at most a few rounds).
    header_len = 0
    while True:
        offset = _aligned(len(_MAGIC) + 8 + header_len + 4)
        for entry in entries:
            entry["offset"] = offset
            offset = _aligned(offset + entry["nbytes"])
        header["total_size"] = offset
        blob = json.dumps(header, sort_keys=True).encode("utf-8")
        if len(blob) == header_len:
            break
        header_len = len(blob)
    with atomic_write(path, "wb") as f:
        f.write(_MAGIC)
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.write(zlib.crc32(blob).to_bytes(4, "little"))
        for entry, array in zip(entries, prepared):
            f.write(b"\0" * (entry["offset"] - f.tell()))
            f.write(_byte_view(array))
        f.write(b"\0" * (header["total_size"] - f.tell()))


def read_arrays(path: os.PathLike | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`write_arrays`.

    Returns:
      ``(arrays, meta)``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CorruptFileError: the file is not an mdcf array file, is truncated or
        padded, or any array fails its CRC-32 check.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(len(_MAGIC))
        if magic != _MAGIC:
            raise CorruptFileError(path, "not an mdcf array file (bad magic bytes)")
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise CorruptFileError(path, "truncated header")
        header_len = int.from_bytes(raw_len, "little")
        if header_len > size:
            raise CorruptFileError(path, f"header length {header_len} exceeds file size {size}")
        blob = f.read(header_len)
        stored_crc = f.read(4)
        try:
            header = json.loads(blob.decode("utf-8"))
            entries = header["arrays"]
            total_size = int(header["total_size"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptFileError(path, f"unreadable header ({err})") from None
        version = header.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise CorruptFileError(
                path, f"format version {version!r}, expected one of {_READABLE_VERSIONS}"
            )
        if version >= 2 and int.from_bytes(stored_crc, "little") != zlib.crc32(blob):
            raise CorruptFileError(path, "the header (array names, shapes, meta) fails its CRC-32 check")
        if size != total_size:
            raise CorruptFileError(
                path, f"file is {size} bytes but its header says {total_size} (truncated or padded)"
            )
        arrays = {}
        for entry in entries:
            try:
                dtype = _dtype_from_tag(entry["dtype"])
                shape = tuple(int(s) for s in entry["shape"])
                array = np.empty(shape, dtype=dtype)
                if array.nbytes != entry["nbytes"]:
                    raise ValueError("byte count does not match dtype and shape")
                f.seek(entry["offset"])
                got = f.readinto(_byte_view(array)) if array.nbytes else 0
            except (ValueError, KeyError, TypeError) as err:
                raise CorruptFileError(path, f"bad entry for array {entry.get('name')!r} ({err})") from None
            if got != array.nbytes:
                raise CorruptFileError(path, f"array {entry['name']!r} is truncated")
            if _crc32(array) != entry["crc32"]:
                raise CorruptFileError(path, f"array {entry['name']!r} fails its CRC-32 check")
            arrays[entry["name"]] = array
    return arrays, header["meta"]
