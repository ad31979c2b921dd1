"""Parsing Criteo-format text in blocks of bytes, vectorised with numpy (no Python per line).

A line is 40 tab-separated fields: the label (``0`` or ``1``), 13 integer features
(decimal, may be negative, may be empty) and 26 categorical features (hexadecimal
hashes of at most 8 digits, may be empty). :func:`parse_block` turns a block of
whole lines into arrays, or raises :class:`CriteoFormatError` naming the file, the
line and the field.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO, Iterator, NamedTuple

import numpy as np

__all__ = ["CriteoFormatError", "N_DENSE", "N_CATEGORICAL", "N_FIELDS", "MISSING", "Block", "parse_block",
           "read_blocks", "open_text", "field_name"]

N_DENSE = 13
N_CATEGORICAL = 26
N_FIELDS = 1 + N_DENSE + N_CATEGORICAL
MISSING = -1  # a categorical field left empty (raw values are the hash's value, 0 .. 2**32 - 1)
_MAX_DIGITS = 18  # decimals longer than this do not fit exactly (and are not Criteo data)

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, np.uint8)
_DEC[ord("0"): ord("9") + 1] = np.arange(10, dtype=np.uint8)


class CriteoFormatError(ValueError):
    """A Criteo-format file could not be read: what was wrong, in which file, line and field."""

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}, line {line:,}"
        if field is not None:
            where += f", field {field}"
        super().__init__(f"{where}: {message}")


def field_name(column: int) -> str:
    """The name of a line's column: ``label``, ``I1`` .. ``I13``, ``C1`` .. ``C26``."""
    if column == 0:
        return "label"
    return f"I{column}" if column <= N_DENSE else f"C{column - N_DENSE}"


class Block(NamedTuple):
    """One parsed block of lines.

    Attributes:
      labels: ``[n]`` uint8, 0 or 1.
      dense: ``[n, 13]`` float64 raw integer features; NaN where empty.
      categorical: ``[n, 26]`` int64 hash values; :data:`MISSING` where empty.
    """

    labels: np.ndarray
    dense: np.ndarray
    categorical: np.ndarray


def open_text(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it starts with gzip's magic number."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_blocks(path: Path, block_bytes: int = 4 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """``(first line number, bytes)`` of consecutive blocks of whole lines (the last line
    may lack its newline: one is added). Memory stays at about two blocks."""
    line = 1
    rest = b""
    with open_text(path) as f:
        while True:
            try:
                data = f.read(block_bytes)
            except (EOFError, OSError) as err:  # a truncated or corrupt gzip stream
                raise CriteoFormatError(str(path), None, f"cannot be read to its end: {err}") from None
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            block = np.frombuffer(data, np.uint8, count=cut)
            yield line, block
            line += int(np.count_nonzero(block == 10))
            rest = data[cut:]
    if rest:
        yield line, np.frombuffer(rest + b"\n", np.uint8)


def _field_text(block: np.ndarray, start: int, end: int) -> str:
    return bytes(block[start:end]).decode("utf-8", errors="replace")


def parse_block(block: np.ndarray, first_line: int, path: str) -> Block:
    """Parse whole lines (``block`` ends with a newline). Blank lines are skipped."""
    ends = np.flatnonzero(block == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    line_numbers = first_line + np.arange(len(ends))
    # A carriage return before the newline belongs to no field.
    ends = ends - (block[np.maximum(ends - 1, 0)] == 13) * (ends > starts)
    keep = ends > starts
    starts, ends, line_numbers = starts[keep], ends[keep], line_numbers[keep]
    tabs = np.flatnonzero(block == 9)
    per_line = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts)
    wrong = np.flatnonzero(per_line != N_FIELDS - 1)
    if len(wrong):
        i = wrong[0]
        raise CriteoFormatError(path, int(line_numbers[i]),
                                f"expected {N_FIELDS} tab-separated fields (label, 13 integer, 26 categorical), "
                                f"found {per_line[i] + 1}: {_field_text(block, starts[i], ends[i])[:120]!r}")
    n = len(starts)
    if n == 0:
        return Block(np.zeros(0, np.uint8), np.zeros((0, N_DENSE)), np.zeros((0, N_CATEGORICAL), np.int64))
    tab_at = tabs[np.searchsorted(tabs, starts)[:, None] + np.arange(N_FIELDS - 1)]  # [n, 39]
    field_start = np.concatenate([starts[:, None], tab_at + 1], axis=1)
    field_end = np.concatenate([tab_at, ends[:, None]], axis=1)
    width = field_end - field_start

    def fail(rows, columns, message):
        row, column = int(rows[0]), int(columns[0])
        text = _field_text(block, field_start[row, column], field_end[row, column])
        raise CriteoFormatError(path, int(line_numbers[row]), f"{message}, got {text[:40]!r}", field_name(column))

    bad = np.flatnonzero((width[:, 0] != 1) | ((block[field_start[:, 0]] != 48) & (block[field_start[:, 0]] != 49)))
    if len(bad):
        fail(bad, [0], "the label must be 0 or 1")
    labels = (block[field_start[:, 0]] - 48).astype(np.uint8)
    padded = np.concatenate([np.zeros(_MAX_DIGITS, np.uint8), block])  # windows may start before byte 0
    dense = _decimals(padded, field_end[:, 1: 1 + N_DENSE], width[:, 1: 1 + N_DENSE], fail)
    categorical = _hashes(padded, field_end[:, 1 + N_DENSE:], width[:, 1 + N_DENSE:], fail)
    return Block(labels, dense, categorical)


def _windows(padded: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """``[*ends.shape, size]`` bytes: the ``size`` bytes before each field end (a field of
    width ``w`` fills the last ``w``)."""
    view = np.lib.stride_tricks.sliding_window_view(padded, size)
    return view[ends + (_MAX_DIGITS - size)]


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)


def _has_ff_byte(words: np.ndarray) -> np.ndarray:
    """Whether any byte of each uint64 is 0xFF (a character outside the digit table)."""
    flipped = ~words
    return ((flipped - _ONES) & ~flipped & _HIGHS) != 0


_MASKS = np.array([0] + [(~0 << (8 * (8 - w))) & 0xFFFFFFFFFFFFFFFF for w in range(1, 9)], np.uint64)


def _field_masks(width: np.ndarray) -> np.ndarray:
    """uint64 masks keeping the last ``width`` bytes of an 8-byte window (little-endian words)."""
    return _MASKS[np.clip(width, 0, 8)]


def _where(condition: np.ndarray) -> np.ndarray:
    """``np.argwhere``, skipping the scan when nothing is set (the usual case)."""
    return np.argwhere(condition) if condition.any() else np.zeros((0, condition.ndim), np.int64)


def _hashes(padded, ends, width, fail):
    """Hexadecimal hashes of at most 8 digits as int64; :data:`MISSING` where empty."""
    problem = _where(width > 8)
    if len(problem):
        fail(problem[:, 0], problem[:, 1] + 1 + N_DENSE, "a categorical feature must be a hex hash of at most 8 digits")
    words = np.ascontiguousarray(_HEX[_windows(padded, ends, 8)]).view("<u8")[..., 0] & _field_masks(width)
    problem = _where(_has_ff_byte(words))
    if len(problem):
        fail(problem[:, 0], problem[:, 1] + 1 + N_DENSE, "a categorical feature must be a hex hash of at most 8 digits")
    # Byte k holds the k-th digit (most significant first): pack nibble pairs, then byte pairs, then halves.
    low4 = np.uint64(0x000F000F000F000F)
    pairs = ((words & low4) << np.uint64(4)) | ((words >> np.uint64(8)) & low4)
    low8 = np.uint64(0x000000FF000000FF)
    quads = ((pairs & low8) << np.uint64(8)) | ((pairs >> np.uint64(16)) & low8)
    values = ((quads & np.uint64(0xFFFF)) << np.uint64(16)) | (quads >> np.uint64(32))
    return np.where(width == 0, MISSING, values.astype(np.int64))


def _decimals(padded, ends, width, fail):
    """Signed decimal integers as float64 (each the nearest double to the integer); NaN where empty."""
    problem = _where(width > _MAX_DIGITS + 1)
    if len(problem):
        fail(problem[:, 0], problem[:, 1] + 1, f"an integer feature has more than {_MAX_DIGITS} digits")
    raw = _windows(padded, ends, 8)  # [n, 13, 8]
    first = 8 - np.minimum(width, 8)
    negative = (width > 0) & (np.take_along_axis(raw, np.minimum(first, 7)[..., None], axis=-1)[..., 0] == 45)
    digits = np.ascontiguousarray(_DEC[raw]).view("<u8")[..., 0]
    keep = _field_masks(width - negative)  # the '-' is not a digit
    words = digits & keep
    bad = _has_ff_byte(words) | (negative & (width == 1))
    problem = _where(bad & (width <= 8))
    if len(problem):
        fail(problem[:, 0], problem[:, 1] + 1, "an integer feature must be a decimal integer")
    # Eight digits, most significant first: combine pairs, then fours, then eights.
    words = (words * np.uint64(10) + (words >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    words = (words * np.uint64(100) + (words >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    words = (words * np.uint64(10000) + (words >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    out = np.where(negative, -words.astype(np.float64), words.astype(np.float64))
    wide = width > 8
    if wide.any():  # rare: more than 8 characters, read digit by digit
        rows, columns = np.nonzero(wide)
        w = width[rows, columns]
        window = _windows(padded, ends[rows, columns], _MAX_DIGITS + 1)
        start = _MAX_DIGITS + 1 - w
        minus = window[np.arange(len(w)), start] == 45
        position = np.arange(_MAX_DIGITS + 1)
        part = (position >= start[:, None]) & ~((position == start[:, None]) & minus[:, None])
        values = _DEC[window]
        broken = np.any(part & (values == 255), axis=-1) | (~minus & (w > _MAX_DIGITS))
        if broken.any():
            i = np.flatnonzero(broken)
            message = ("an integer feature must be a decimal integer" if np.any(part[i[0]] & (values[i[0]] == 255))
                       else f"an integer feature has more than {_MAX_DIGITS} digits")
            fail(rows[i], columns[i] + 1, message)
        powers = 10 ** np.arange(_MAX_DIGITS, -1, -1, dtype=np.int64)  # int64: exact to 18 digits
        magnitude = (np.where(part, values, 0).astype(np.int64) @ powers).astype(np.float64)
        out[rows, columns] = np.where(minus, -magnitude, magnitude)
    return np.where(width == 0, np.nan, out)
