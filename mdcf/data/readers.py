"""Reading ratings files: MovieLens formats, RecBole ``.inter``, csv, and zip archives.

Parsing takes pandas' C engine for speed; when anything looks wrong (a parse
error, a missing field, a NaN, a value outside the scale) a plain line-by-line
validator reruns over the file to report the *first* offending line with its
number and content. Errors never degrade into silently wrong data.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from .ratings import Ratings, from_arrays

__all__ = ["RatingsFormatError", "read_ratings", "FORMATS"]

FORMATS = ("udata", "dat", "csv", "tsv", "inter", "zip")

# Members of the official MovieLens archives that hold the ratings.
_RATINGS_MEMBERS = ("ratings.csv", "ratings.dat", "u.data")

_COLUMN_ALIASES = {
    "user": ("userid", "user", "uid", "useridtoken", "userids"),
    "item": ("movieid", "itemid", "item", "iid", "movie", "itemids"),
    "rating": ("rating", "ratings", "score", "stars"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
}
_ROLES = ("user", "item", "rating", "timestamp")


class RatingsFormatError(ValueError):
    """A ratings file could not be read: what was wrong, in which file, on which line."""

    def __init__(self, path: str, line: int | None, message: str, text: str | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        self.text = text
        where = self.path if line is None else f"{self.path}, line {line}"
        full = f"{where}: {message}"
        if text is not None:
            shown = text if len(text) <= 120 else text[:117] + "..."
            full += f"\n    {shown!r}"
        super().__init__(full)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class _Layout:
    """How a delimited ratings file is laid out."""

    sep: str
    header: bool
    columns: tuple[int, ...]  # positions of user, item, rating[, timestamp]
    n_fields: int  # fields per line

    @property
    def has_timestamp(self) -> bool:
        return len(self.columns) == 4


class _Source:
    """A file on disk or a member of a zip archive, opened as bytes."""

    def __init__(self, path: Path, member: str | None = None):
        self.path = path
        self.member = member
        self.label = str(path) if member is None else f"{path}:{member}"

    def open(self) -> IO[bytes]:
        if self.member is None:
            return open(self.path, "rb")
        archive = _open_zip(self.path)
        return io.BufferedReader(_SizedMember(archive.open(self.member), archive.getinfo(self.member).file_size))

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()

    def head(self, n_bytes: int = 1 << 16) -> bytes:
        with self.open() as f:
            return f.read(n_bytes)


class _SizedMember(io.RawIOBase):
    """A zip member's stream that ends with EOFError when it holds fewer bytes than its
    header claims (zipfile itself checks this for stored members, not for deflated ones)."""

    def __init__(self, member: IO[bytes], size: int):
        self._member, self._size, self._count = member, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._member.read(len(buffer))
        if not data and len(buffer) and self._count != self._size:
            raise EOFError(f"the member ends after {self._count:,} bytes; its header claims {self._size:,} "
                           "(a damaged archive)")
        buffer[: len(data)] = data
        self._count += len(data)
        return len(data)

    def close(self) -> None:
        self._member.close()
        super().close()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise RatingsFormatError(
            str(path), None, f"not a readable zip archive (truncated or corrupt?): {err}"
        ) from None


def _choose_member(path: Path, member: str | None) -> str:
    archive = _open_zip(path)
    names = [n for n in archive.namelist() if not n.endswith("/")]
    if member is not None:
        matches = [n for n in names if n == member or n.endswith("/" + member)]
        if len(matches) != 1:
            raise RatingsFormatError(
                str(path), None,
                f"expected exactly one member named {member!r}, found {len(matches)}; members: "
                + ", ".join(names[:20]),
            )
        return matches[0]
    found = [n for n in names if n.rsplit("/", 1)[-1] in _RATINGS_MEMBERS]
    if not found:
        raise RatingsFormatError(
            str(path), None,
            f"no ratings file ({', '.join(_RATINGS_MEMBERS)}) in the archive; it has: "
            + ", ".join(names[:20]) + ("..." if len(names) > 20 else "")
            + "; pass member= to choose one",
        )
    return min(found, key=lambda n: (n.count("/"), n))


def _normalise(name: str) -> str:
    name = name.strip().strip('"').split(":", 1)[0]
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _first_line(source: _Source) -> tuple[int, str]:
    """The first non-blank line and its 1-based number."""
    text = source.head().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return number, line
    raise RatingsFormatError(source.label, None, "the file is empty (no ratings)")


def _detect_format(source: _Source) -> str:
    name = (source.member or source.path.name).lower()
    if source.member is None:
        with open(source.path, "rb") as f:
            if f.read(4) == b"PK\x03\x04" or name.endswith(".zip"):
                return "zip"
    if name.endswith(".inter"):
        return "inter"
    if name.endswith(".dat"):
        return "dat"
    _, line = _first_line(source)
    if "::" in line:
        return "dat"
    if "\t" in line:
        fields = line.split("\t")
        if all(":" in f for f in fields):
            return "inter"
        return "udata" if len(fields) >= 3 and _is_number(fields[2]) else "tsv"
    if "," in line:
        return "csv"
    raise RatingsFormatError(
        source.label, None,
        "could not recognise the format: expected tab-separated (u.data), '::'-separated "
        "(ratings.dat), comma-separated with a header (ratings.csv), RecBole .inter or a zip "
        f"archive; the first line is {line[:80]!r}. Pass format= one of {FORMATS}, or load the "
        "data with pandas and call mdcf.data.from_dataframe",
    )


def _layout(source: _Source, fmt: str) -> _Layout:
    sep = {"udata": "\t", "tsv": "\t", "inter": "\t", "dat": "::", "csv": ","}[fmt]
    number, line = _first_line(source)
    fields = line.rstrip("\r\n").split(sep)
    header = fmt == "inter" or (fmt in ("csv", "tsv") and not all(_is_number(f) for f in fields[2:3]))
    if fmt in ("udata", "dat") and len(fields) >= 3 and not _is_number(fields[2]):
        raise RatingsFormatError(
            source.label, number,
            f"expected user{sep}item{sep}rating[{sep}timestamp] with a numeric rating "
            f"(format {fmt!r} has no header line)", line,
        )
    if not header:
        if len(fields) not in (3, 4):
            raise RatingsFormatError(
                source.label, number,
                f"expected 3 or 4 fields (user, item, rating[, timestamp]) separated by {sep!r}, "
                f"found {len(fields)}", line,
            )
        return _Layout(sep, False, tuple(range(len(fields))), len(fields))
    names = [_normalise(f) for f in fields]
    positions = []
    for role in _ROLES:
        hits = [i for i, n in enumerate(names) if n in _COLUMN_ALIASES[role]]
        if not hits:
            if role == "timestamp":
                break
            raise RatingsFormatError(
                source.label, number,
                f"the header has no {role} column (looked for {', '.join(_COLUMN_ALIASES[role])}); "
                "load the file with pandas and call mdcf.data.from_dataframe to name columns yourself",
                line,
            )
        positions.append(hits[0])
    return _Layout(sep, True, tuple(positions), len(fields))


def _header_names(source: _Source, layout: _Layout) -> list[str]:
    _, line = _first_line(source)
    return line.rstrip("\r\n").split(layout.sep)


def _validate_lines(
    source: _Source,
    layout: _Layout,
    scale: tuple[float, float] | None,
    stop_at_row: int | None = None,
) -> int | None:
    """Check every line the slow, exact way; raise RatingsFormatError at the first bad one.

    With ``stop_at_row``, return the line number of that data row instead.
    """
    with source.open() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
        row = -1
        saw_header = not layout.header
        for number, line in enumerate(text, start=1):
            content = line.rstrip("\n")
            if not content.strip():
                continue
            if not saw_header:
                saw_header = True
                continue
            row += 1
            if stop_at_row is not None and row == stop_at_row:
                return number
            fields = content.split(layout.sep)
            if len(fields) != layout.n_fields:
                raise RatingsFormatError(
                    source.label, number,
                    f"expected {layout.n_fields} fields separated by {layout.sep!r}, found {len(fields)}",
                    content,
                )
            values = [fields[i].strip() for i in layout.columns]
            for role, value in zip(_ROLES, values):
                if not value:
                    raise RatingsFormatError(source.label, number, f"missing {role}", content)
            try:
                rating = float(values[2])
            except ValueError:
                raise RatingsFormatError(
                    source.label, number, f"rating {values[2]!r} is not a number", content
                ) from None
            if not math.isfinite(rating):
                raise RatingsFormatError(source.label, number, f"rating is {values[2]!r}", content)
            if abs(rating) > _FLOAT32_MAX:
                raise RatingsFormatError(
                    source.label, number, f"rating {values[2]} does not fit float32 (largest {_FLOAT32_MAX:.4g})", content)
            if scale is not None and not scale[0] <= rating <= scale[1]:
                raise RatingsFormatError(
                    source.label, number,
                    f"rating {rating:g} is outside the declared scale [{scale[0]:g}, {scale[1]:g}]",
                    content,
                )
            if layout.has_timestamp:
                try:
                    stamp = float(values[3])
                    ok = math.isfinite(stamp) and stamp == int(stamp)
                except (ValueError, OverflowError):
                    ok = False
                if not ok:
                    raise RatingsFormatError(
                        source.label, number,
                        f"timestamp {values[3]!r} is not an integer number of seconds", content,
                    )
            for role, value in zip(("user", "item"), values[:2]):
                if _is_number(value) and not (math.isfinite(float(value)) and float(value) == int(float(value))):
                    raise RatingsFormatError(
                        source.label, number, f"{role} id {value!r} is a non-integer number", content
                    )
        if row < 0:
            raise RatingsFormatError(source.label, None, "the file is empty (no ratings)")
    return None


def _fast_parse(source: _Source, layout: _Layout, scale):
    """Parse with pandas' C engine. Returns column arrays, or None if anything looked wrong."""
    if layout.sep == "::":
        # The C engine takes single-character separators only; pandas would
        # otherwise fall back to its (very slow) python engine.
        data = source.read_bytes().replace(b"::", b"\t")
        stream: IO[bytes] = io.BytesIO(data)
        sep = "\t"
    else:
        stream = source.open()
        sep = layout.sep
    rating_column = layout.columns[2]
    if layout.header:
        rating_column = _header_names(source, layout)[rating_column]
    try:
        with warnings.catch_warnings():
            # Mixed-type id columns are resolved below (ids become strings).
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # A rating beyond float32 overflows to inf: caught below, and the line-by-line check names it.
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = pd.read_csv(
                stream,
                sep=sep,
                header=0 if layout.header else None,
                names=None if layout.header else list(range(layout.n_fields)),
                # No usecols: with it pandas silently drops surplus fields of a malformed line.
                engine="c",
                skip_blank_lines=True,
                on_bad_lines="error",
                quoting=3,  # csv.QUOTE_NONE: ids and numbers are never quoted in these formats
                dtype={rating_column: np.float32},
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, TypeError, UnicodeDecodeError):
        return None
    finally:
        stream.close()
    if len(frame) == 0:
        return None
    if frame.shape[1] != layout.n_fields:
        return None
    columns = [frame.iloc[:, p].to_numpy() for p in layout.columns]
    del frame

    def as_ids(array):
        if array.dtype.kind in "iu":
            return array
        if array.dtype.kind == "f":
            if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
                return None
            return array.astype(np.int64)
        if array.dtype.kind == "O":
            if pd.isna(array).any():
                return None
            return array.astype(str)  # strings, or ints and strings mixed across chunks
        return None

    users, items = as_ids(columns[0]), as_ids(columns[1])
    if users is None or items is None:
        return None
    if columns[2].dtype.kind not in "fiu":
        return None
    ratings = columns[2].astype(np.float32, copy=False)
    if not np.isfinite(ratings).all():
        return None
    if scale is not None and ((ratings < scale[0]) | (ratings > scale[1])).any():
        return None
    timestamps = None
    if layout.has_timestamp:
        stamps = columns[3]
        if stamps.dtype.kind == "f":
            if not np.isfinite(stamps).all() or not np.array_equal(stamps, np.round(stamps)):
                return None
        elif stamps.dtype.kind not in "iu":
            return None
        timestamps = stamps.astype(np.int64)
    return users, items, ratings, timestamps


def read_ratings(
    path: os.PathLike | str,
    format: str | None = None,
    *,
    member: str | None = None,
    scale: tuple[float, float] | None = None,
    duplicates: str = "last",
    name: str | None = None,
) -> Ratings:
    """Read a ratings file into :class:`~mdcf.data.Ratings`.

    Formats (detected from the name and first line when ``format`` is None):

    * ``"udata"``: MovieLens-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``,
      no header (3 fields without timestamps also work).
    * ``"dat"``: MovieLens-1M/10M ``ratings.dat``: ``user::item::rating::timestamp``.
    * ``"csv"`` / ``"tsv"``: comma / tab separated with a header naming the columns
      (``userId,movieId,rating,timestamp`` as in MovieLens-20M and later; common
      aliases such as ``user_id``, ``item_id`` are recognised).
    * ``"inter"``: RecBole atomic files with typed headers (``user_id:token ...``).
    * ``"zip"``: an official MovieLens archive; the ratings member (``u.data``,
      ``ratings.dat`` or ``ratings.csv``) is found automatically, or named by ``member``.

    Args:
      path: the file.
      format: one of :data:`FORMATS`, or None to detect.
      member: inside a zip archive, the member to read (path or file name).
      scale: inclusive ``(low, high)``; a rating outside it is an error.
      duplicates: policy for repeated (user, item) pairs, see
        :func:`mdcf.data.from_arrays` (default: keep the latest rating, with a warning).
      name: label for summaries (default: the file name).

    Raises:
      FileNotFoundError: no such file.
      RatingsFormatError: unknown format, empty file, malformed line (wrong field
        count, missing value), non-numeric, NaN or infinite rating, rating outside
        ``scale``, non-integer timestamp, corrupt archive. The message gives the
        file, the line number and the line.

    Example:
      >>> r = read_ratings("u.data", scale=(1, 5))  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the ratings file in it (u.data, ratings.dat, ratings.csv, "
                                "a RecBole .inter file or a MovieLens zip)")
    if not path.is_file():
        raise FileNotFoundError(f"no ratings file at {path}")
    if scale is not None and not (len(scale) == 2 and all(math.isfinite(float(v)) for v in scale)
                                  and float(scale[0]) <= float(scale[1])):
        raise ValueError(f"read_ratings: scale must be (low, high) with low <= high, got {tuple(scale)!r}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    source = _Source(path)
    if path.stat().st_size == 0:
        raise RatingsFormatError(source.label, None, "the file is empty (no ratings)")
    try:
        fmt = format or _detect_format(source)
        if fmt == "zip" or member is not None:
            source = _Source(path, _choose_member(path, member))
            fmt = format if format not in (None, "zip") else _detect_format(source)
        layout = _layout(source, fmt)
        parsed = _fast_parse(source, layout, scale)
        if parsed is None:
            _validate_lines(source, layout, scale)
            raise RatingsFormatError(
                source.label, None,
                "could not be parsed, although every line passes validation; "
                "please report this file layout",
            )
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        reason = str(err) or ("it ends before the size its header gives (a truncated archive)"
                              if isinstance(err, EOFError) else type(err).__name__)
        raise RatingsFormatError(source.label, None, f"corrupt archive member: {reason}") from None
    users, items, ratings, timestamps = parsed
    return from_arrays(
        users, items, ratings, timestamps,
        scale=scale, duplicates=duplicates,
        name=name or (source.member or path.name).rsplit("/", 1)[-1],
        source=source.label,
    )
