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
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

__all__ = [
    "CorruptFileError",
    "CheckpointMismatchError",
    "Checkpoint",
    "atomic_write",
    "write_arrays",
    "read_arrays",
    "save",
    "load",
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
      deleted and ``path`` is left untouched.

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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
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
    import ml_dtypes

    if dtype.names is None and isinstance(getattr(ml_dtypes, dtype.name, None), type):
        return dtype.name
    raise TypeError(f"write_arrays: array {name!r} has dtype {dtype}, which cannot be stored; "
                    "use numbers or fixed-width strings")


def _dtype_from_tag(tag: str) -> np.dtype:
    import ml_dtypes

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


# ------------------------------------------------------------- checkpoints
_CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit what it is loaded into (structure, shapes or optimiser)."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns.

    Attributes:
      model: the :class:`~mdcf.models.Model` (structure and id maps).
      params: the saved parameters.
      state: the :class:`~mdcf.train.TrainState` (None unless an optimiser was given
        and the checkpoint holds one).
      best_params: the best parameters saved beside the state (by ``fit``), or None.
      meta: the JSON ``meta`` saved with it (``fit`` keeps its epoch and history there).
    """

    model: Any
    params: Any
    state: Any
    best_params: Any
    meta: dict


def _flatten(prefix: str, tree, out: dict) -> None:
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def _unflatten(prefix: str, template, arrays: dict, path: Path):
    import jax

    leaves = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = prefix + jax.tree_util.keystr(key_path)
        if name not in arrays:
            raise CheckpointMismatchError(f"{path}: no array {name!r}; the checkpoint was saved from another model or optimiser")
        value = arrays[name]
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise CheckpointMismatchError(
                f"{path}: {name!r} has shape {value.shape} {value.dtype}, expected {tuple(leaf.shape)} {leaf.dtype}"
            )
        leaves.append(value)
    expected = {prefix + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]}
    extra = sorted(k for k in arrays if k.startswith(prefix) and k not in expected)
    if extra:
        raise CheckpointMismatchError(f"{path}: unexpected arrays {extra[:3]}; saved from another model or optimiser")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), [_to_jax(x) for x in leaves])


def _to_jax(value):
    import jax.numpy as jnp

    return jnp.asarray(value)


def _ids_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype.hasobject else ids


def save(path: os.PathLike | str, model, state_or_params, *, best_params=None, meta: Mapping[str, Any] | None = None) -> None:
    """Atomically save a model with its parameters or full train state.

    Args:
      path: destination file.
      model: the :class:`~mdcf.models.Model`.
      state_or_params: a :class:`~mdcf.train.TrainState` (parameters, optimiser
        state and step: enough to resume exactly) or a params dict.
      best_params: optional second parameter set (``fit`` keeps its best epoch here).
      meta: JSON-serialisable extras.
    """
    from .models import check_params
    from .train import TrainState

    has_state = isinstance(state_or_params, TrainState)
    params = state_or_params.params if has_state else state_or_params
    check_params(model.config, params, f"save {path}: params")  # never a checkpoint that cannot be used
    if best_params is not None:
        check_params(model.config, best_params, f"save {path}: best_params")
    arrays: dict[str, np.ndarray] = {
        "model/user_ids": _ids_array(model.user_ids),
        "model/item_ids": _ids_array(model.item_ids),
        "model/user_rows": np.asarray(model.user_rows),
        "model/item_rows": np.asarray(model.item_rows),
    }
    _flatten("params", params, arrays)
    if has_state:
        _flatten("dense_state", state_or_params.dense_state, arrays)
        _flatten("row_state", state_or_params.row_state, arrays)
        arrays["step"] = np.asarray(state_or_params.step)
    if best_params is not None:
        _flatten("best", best_params, arrays)
    header = {
        "checkpoint_version": _CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "scale": None if model.scale is None else list(model.scale),
        "global_mean": model.global_mean,
        "has_state": has_state,
        "sparse_state": has_state and bool(state_or_params.row_state),
        "has_best": best_params is not None,
        "meta": dict(meta or {}),
    }
    write_arrays(path, arrays, header)


def load(path: os.PathLike | str, opt=None) -> Checkpoint:
    """Load a checkpoint written by :func:`save`.

    Args:
      path: the file.
      opt: the optimiser used for training (an :class:`~mdcf.train.Optimizer` or
        optax transformation) to restore the optimiser state; without it only
        parameters are restored.

    Raises:
      FileNotFoundError: no such file.
      CorruptFileError: truncated or corrupt file (checksums), or not a checkpoint.
      CheckpointMismatchError: the optimiser does not match the saved state.
    """
    import jax

    from . import models
    from .models import Model, ModelConfig
    from .train import TrainState, _as_optimizer, init_state

    path = Path(path)
    arrays, header = read_arrays(path)
    if header.get("checkpoint_version") != _CHECKPOINT_VERSION or "config" not in header:
        raise CorruptFileError(path, "not an mdcf checkpoint (or written by an incompatible version)")
    config = ModelConfig.from_dict(header["config"])
    model = Model(
        config, arrays["model/user_ids"], arrays["model/item_ids"], arrays["model/user_rows"],
        arrays["model/item_rows"], None if header["scale"] is None else tuple(header["scale"]), header["global_mean"],
    )
    template = jax.eval_shape(lambda: models.init(jax.random.key(0), config, 0.0))
    params = _unflatten("params", template, arrays, path)
    best = _unflatten("best", template, arrays, path) if header.get("has_best") else None
    state = None
    if opt is not None and header.get("has_state"):
        opt = _as_optimizer(opt)
        if (opt.rows is not None) != header.get("sparse_state"):
            raise CheckpointMismatchError(
                f"{path}: saved with a {'row-sparse' if header.get('sparse_state') else 'dense'} optimiser, "
                f"loaded with a {'row-sparse' if opt.rows is not None else 'dense'} one"
            )
        shape = jax.eval_shape(lambda: init_state(jax.random.key(0), config, opt, 0.0))
        state = TrainState(
            params,
            _unflatten("dense_state", shape.dense_state, arrays, path),
            _unflatten("row_state", shape.row_state, arrays, path),
            _to_jax(arrays["step"]),
        )
    return Checkpoint(model, params, state, best, header.get("meta", {}))
