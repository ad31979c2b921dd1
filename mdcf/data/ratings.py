"""The :class:`Ratings` container and building one from raw ids."""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "Ratings",
    "DuplicateRatingsWarning",
    "DUPLICATE_POLICIES",
    "encode_ids",
    "from_arrays",
    "from_dataframe",
]

DUPLICATE_POLICIES = ("last", "first", "mean", "error", "keep")


class DuplicateRatingsWarning(UserWarning):
    """Some (user, item) pairs were rated more than once; the duplicates were resolved."""


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False, repr=False)
class Ratings:
    """Explicit ratings with users and items coded densely as ``0..n-1``.

    Codes are assigned in the sorted order of the original ids, so two data sets
    with the same ids get the same codes. Every array is read-only. Subsets
    (splits, folds) keep the full code space of their parent, so a code means the
    same user or item in train and test.

    Attributes:
      users: int32 ``[n]``, user code of each rating.
      items: int32 ``[n]``, item code of each rating.
      ratings: float32 ``[n]``, the rating values.
      timestamps: int64 ``[n]`` (seconds since the epoch) or ``None``.
      user_ids: ``[n_users]``, the original id of each user code.
      item_ids: ``[n_items]``, the original id of each item code.
      scale: ``(low, high)`` inclusive rating scale, or ``None`` if undeclared.
      name: a short label used in summaries.
      source: where the data came from (file, archive, generator).
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    scale: tuple[float, float] | None = None
    name: str = "ratings"
    source: str = ""

    def __post_init__(self):
        def fix(field, dtype):
            value = np.asarray(getattr(self, field))
            if value.ndim != 1:
                raise ValueError(f"Ratings.{field} must be one-dimensional, got shape {value.shape}")
            if dtype is not None and value.dtype != dtype:
                if dtype != np.float32 and not np.issubdtype(value.dtype, np.integer):
                    raise TypeError(f"Ratings.{field} must hold integers, got dtype {value.dtype}")
                value = value.astype(dtype)
            object.__setattr__(self, field, _readonly(value))

        fix("users", np.int32)
        fix("items", np.int32)
        fix("ratings", np.float32)
        fix("user_ids", None)
        fix("item_ids", None)
        if self.timestamps is not None:
            fix("timestamps", np.int64)
        n = len(self.ratings)
        lengths = {"users": len(self.users), "items": len(self.items)}
        if self.timestamps is not None:
            lengths["timestamps"] = len(self.timestamps)
        for field, length in lengths.items():
            if length != n:
                raise ValueError(f"Ratings.{field} has {length} entries but ratings has {n}")
        for field, codes, bound in (
            ("users", self.users, len(self.user_ids)),
            ("items", self.items, len(self.item_ids)),
        ):
            if n and (codes.min() < 0 or codes.max() >= bound):
                raise ValueError(
                    f"Ratings.{field} codes must lie in [0, {bound}) (the length of "
                    f"{field[:-1]}_ids), found [{codes.min()}, {codes.max()}]"
                )
        if n and not np.isfinite(self.ratings).all():
            raise ValueError("Ratings.ratings contains NaN or infinite values")
        if self.scale is not None:
            low, high = (float(s) for s in self.scale)
            if not low <= high:
                raise ValueError(f"Ratings.scale must be (low, high) with low <= high, got {self.scale}")
            object.__setattr__(self, "scale", (low, high))
            if n and (self.ratings.min() < low or self.ratings.max() > high):
                raise ValueError(
                    f"Ratings.ratings span [{self.ratings.min()}, {self.ratings.max()}], "
                    f"outside the declared scale [{low}, {high}]"
                )

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return len(self.ratings)

    @property
    def n_users(self) -> int:
        """Number of user codes (the size of a user embedding table)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of item codes (the size of an item embedding table)."""
        return len(self.item_ids)

    def user_counts(self) -> np.ndarray:
        """int64 ``[n_users]``: how many ratings each user code has here."""
        return np.bincount(self.users, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        """int64 ``[n_items]``: how many ratings each item code has here."""
        return np.bincount(self.items, minlength=self.n_items)

    # -------------------------------------------------------------- subsets
    def subset(self, index: np.ndarray, name: str | None = None) -> "Ratings":
        """The ratings at ``index`` (integer positions or a boolean mask), same code space."""
        index = np.asarray(index)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"boolean mask has shape {index.shape}, expected ({len(self)},)")
        return Ratings(
            users=self.users[index],
            items=self.items[index],
            ratings=self.ratings[index],
            timestamps=None if self.timestamps is None else self.timestamps[index],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            scale=self.scale,
            name=self.name if name is None else name,
            source=self.source,
        )

    def to_dataframe(self):
        """A pandas DataFrame with original ids: columns user, item, rating[, timestamp]."""
        columns = {
            "user": self.user_ids[self.users],
            "item": self.item_ids[self.items],
            "rating": self.ratings,
        }
        if self.timestamps is not None:
            columns["timestamp"] = self.timestamps
        return pd.DataFrame(columns)

    # -------------------------------------------------------------- reports
    def summary(self) -> str:
        """A short human-readable description: sizes, density, rating and activity statistics."""
        n = len(self)
        lines = [
            f"{self.name}: {n:,} ratings, {self.n_users:,} users, {self.n_items:,} items"
            + (f" (density {n / (self.n_users * self.n_items):.2%})" if self.n_users and self.n_items else "")
        ]
        if n:
            r = self.ratings.astype(np.float64)
            values = np.unique(self.ratings)
            shown = ", ".join(f"{v:g}" for v in values) if len(values) <= 10 else f"{len(values)} distinct"
            lines.append(
                f"  ratings: min {r.min():g}, max {r.max():g}, mean {r.mean():.3f}, std {r.std():.3f}"
                f" (values: {shown})"
                + (f"; declared scale {self.scale[0]:g}..{self.scale[1]:g}" if self.scale else "")
            )
            for label, counts in (("user", self.user_counts()), ("item", self.item_counts())):
                seen = counts[counts > 0]
                lines.append(
                    f"  ratings per {label}: min {seen.min()}, median {np.median(seen):g}, "
                    f"max {seen.max()}; {len(counts) - len(seen):,} {label}s without ratings"
                )
            if self.timestamps is not None:
                first, last = (
                    _dt.datetime.fromtimestamp(int(t), _dt.timezone.utc).date()
                    for t in (self.timestamps.min(), self.timestamps.max())
                )
                lines.append(f"  timestamps: {first} .. {last}")
        if self.source:
            lines.append(f"  source: {self.source}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Ratings(name={self.name!r}, n={len(self):,}, n_users={self.n_users:,}, "
            f"n_items={self.n_items:,}, timestamps={self.timestamps is not None}, scale={self.scale})"
        )


def _id_array(raw, what: str) -> np.ndarray:
    """``raw`` ids as an array of integers or strings. Python sequences and object
    arrays must hold one kind of id (all integers or all strings): ``1`` and ``"1"``
    would otherwise become one id. Whole floats become integers; other floats raise."""
    if isinstance(raw, (list, tuple)):
        raw = np.asarray(raw, dtype=object)  # np.asarray alone turns [1, "a"] into strings
    raw = np.asarray(raw)
    if raw.dtype.kind == "O":
        values = raw.ravel().tolist()
        kinds = {type(v) for v in values}
        if type(None) in kinds:
            raise ValueError(f"{what}: missing id (None) at position {values.index(None)}")

        def integer(k):
            return issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_))

        if all(issubclass(k, str) for k in kinds):
            raw = raw.astype(str)
        elif all(integer(k) for k in kinds):
            for dtype in (np.int64, np.uint64):
                try:
                    raw = np.asarray(values, dtype=dtype).reshape(raw.shape)
                    break
                except OverflowError:
                    continue
            else:
                raise ValueError(f"{what}: integer ids beyond 64 bits, e.g. {max(values, key=abs)!r}")
        elif all(integer(k) or issubclass(k, (float, np.floating)) for k in kinds):
            raw = np.asarray(values, dtype=np.float64).reshape(raw.shape)  # checked below
        else:
            names = sorted({k.__name__ for k in kinds})
            examples = {}
            for v in values:
                examples.setdefault(type(v).__name__, v)
            shown = ", ".join(repr(examples[n]) for n in names[:3])
            if len(names) == 1 or not any(issubclass(k, str) for k in kinds):
                raise ValueError(f"{what} must be integers or strings, got {', '.join(names)} (e.g. {shown})")
            raise ValueError(
                f"{what} mix types ({', '.join(names)}; e.g. {shown}): ids of different types can print "
                "alike (1 and '1') and would be merged; convert them to one type (all strings or all "
                "integers) first"
            )
    if raw.dtype.kind == "b":
        raise ValueError(f"{what} must be integers or strings, got booleans")
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw) | (raw != np.round(raw)) | (np.abs(raw) >= 2.0**63)
        if bad.any():
            where = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(f"{what}: non-integer id {raw.ravel()[where].item()!r} at position {where} "
                             f"({int(bad.sum())} such ids); ids are integers or strings")
        raw = raw.astype(np.int64)
    return raw


def encode_ids(raw, what: str = "ids") -> tuple[np.ndarray, np.ndarray]:
    """Dense codes for raw ids.

    Args:
      raw: ``[n]`` ids: integers or strings (whole floats count as integers).
      what: how error messages name the ids.

    Returns:
      ``(codes, uniques)``: int32 codes in ``0..len(uniques)-1`` and the sorted
      distinct ids, so that ``uniques[codes] == raw``.

    Raises:
      ValueError: non-integer floats, or ids of mixed types (``[1, "1"]``).
    """
    raw = _id_array(raw, what)
    if raw.size and np.issubdtype(raw.dtype, np.integer):
        low, high = int(raw.min()), int(raw.max())
        # Dense non-negative ids (MovieLens-style): an O(n) presence table
        # instead of an O(n log n) sort.
        if low >= 0 and high < 4 * raw.size + (1 << 20):
            present = np.zeros(high + 1, dtype=bool)
            present[raw] = True
            uniques = np.flatnonzero(present).astype(raw.dtype)
            code_of = np.cumsum(present, dtype=np.int64) - 1
            return code_of[raw].astype(np.int32), uniques
    uniques, codes = np.unique(raw, return_inverse=True)
    return codes.astype(np.int32).reshape(-1), uniques


def resolve_duplicates(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray | None,
    n_items: int,
    policy: str,
    where: str,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Find repeated (user, item) pairs and resolve them by ``policy``.

    Returns ``(keep, new_ratings, n_dropped)``: ``keep`` are the sorted positions
    to keep (``None`` when nothing changes), ``new_ratings`` the rating values for
    the kept rows when the policy averages (else ``None``).
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}")
    if policy == "keep" or len(users) < 2:
        return None, None, 0
    key = users.astype(np.int64) * n_items + items
    if (key[1:] > key[:-1]).all():  # already sorted and distinct (e.g. MovieLens csv files)
        return None, None, 0
    sorted_key = np.sort(key)
    repeated = sorted_key[1:] == sorted_key[:-1]
    if not repeated.any():
        return None, None, 0
    # Only rows whose pair occurs more than once take part in the (costlier) resolution.
    repeated_keys = np.unique(sorted_key[1:][repeated])
    del sorted_key, repeated
    # Cheap O(n) pre-filters on the user and item of a repeated pair, then an exact check.
    candidate = np.zeros(int(users.max()) + 1, dtype=bool)
    candidate[repeated_keys // n_items] = True
    maybe = candidate[users]
    candidate = np.zeros(n_items, dtype=bool)
    candidate[repeated_keys % n_items] = True
    maybe &= candidate[items]
    rows = np.flatnonzero(maybe)
    slot = np.minimum(np.searchsorted(repeated_keys, key[rows]), len(repeated_keys) - 1)
    rows = rows[repeated_keys[slot] == key[rows]]
    sub_key = key[rows]
    sort_keys = [rows] + ([timestamps[rows]] if timestamps is not None else []) + [sub_key]
    order = rows[np.lexsort(sort_keys)]  # by pair, then time, then file position
    ordered_key = key[order]
    new_group = np.empty(len(order), dtype=bool)
    new_group[0] = True
    np.not_equal(ordered_key[1:], ordered_key[:-1], out=new_group[1:])
    n_groups = int(new_group.sum())
    n_dropped = len(order) - n_groups
    if policy == "error":
        first_dup = order[np.flatnonzero(~new_group)[0]]
        if user_ids is not None and item_ids is not None:
            user, item = (np.asarray(ids)[code].item() for ids, code in
                          ((user_ids, users[first_dup]), (item_ids, items[first_dup])))
            pair = f"user {user!r} item {item!r}"
        else:
            pair = f"user {users[first_dup]} item {items[first_dup]} (codes)"
        raise ValueError(
            f"{where}: {n_dropped} duplicate (user, item) pairs, e.g. {pair} at row {first_dup}; "
            "pass duplicates='last', 'first' or 'mean' to resolve them"
        )
    last_of_group = np.empty(len(order), dtype=bool)
    last_of_group[-1] = True
    last_of_group[:-1] = new_group[1:]
    pick = order[new_group] if policy == "first" else order[last_of_group]
    keep_mask = np.ones(len(key), dtype=bool)
    keep_mask[rows] = False
    keep_mask[pick] = True
    keep = np.flatnonzero(keep_mask)
    if policy != "mean":
        return keep, None, n_dropped
    group_id = np.cumsum(new_group) - 1
    sums = np.bincount(group_id, weights=ratings[order].astype(np.float64), minlength=n_groups)
    means = (sums / np.bincount(group_id, minlength=n_groups)).astype(np.float32)
    new_ratings = ratings.copy()
    new_ratings[pick] = means
    return keep, new_ratings[keep], n_dropped


def from_arrays(
    users: Sequence[Any] | np.ndarray,
    items: Sequence[Any] | np.ndarray,
    ratings: Sequence[float] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray | None = None,
    *,
    scale: tuple[float, float] | None = None,
    duplicates: str = "last",
    name: str = "ratings",
    source: str = "",
) -> Ratings:
    """Build :class:`Ratings` from raw id, rating and timestamp arrays.

    Raw ids may be integers or strings; they are coded densely in sorted order.

    Duplicate (user, item) pairs are resolved by ``duplicates``:

    * ``"last"`` (default): keep the most recent rating of each pair (latest
      timestamp; ties, or no timestamps, go to the later row), the usual reading
      of a re-rating. A :class:`DuplicateRatingsWarning` reports the count.
    * ``"first"``: keep the earliest one; ``"mean"``: average the values (keeping
      the latest timestamp); ``"error"``: raise ``ValueError``; ``"keep"``: keep
      every row as is.
    """
    user_codes, user_ids = encode_ids(users, f"{name}: user ids")
    item_codes, item_ids = encode_ids(items, f"{name}: item ids")
    values = np.asarray(ratings, dtype=np.float32)
    times = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
    keep, new_values, dropped = resolve_duplicates(
        user_codes, item_codes, values, times, len(item_ids), duplicates, name, user_ids, item_ids
    )
    if keep is not None:
        user_codes, item_codes = user_codes[keep], item_codes[keep]
        values = values[keep] if new_values is None else new_values
        times = None if times is None else times[keep]
        warnings.warn(
            f"{name}: {dropped} duplicate (user, item) ratings resolved with duplicates="
            f"{duplicates!r}; {len(values):,} ratings remain",
            DuplicateRatingsWarning,
            stacklevel=3,
        )
    return Ratings(
        users=user_codes,
        items=item_codes,
        ratings=values,
        timestamps=times,
        user_ids=user_ids,
        item_ids=item_ids,
        scale=scale,
        name=name,
        source=source,
    )


def from_dataframe(
    df,
    user: str = "user",
    item: str = "item",
    rating: str = "rating",
    timestamp: str | None = None,
    *,
    scale: tuple[float, float] | None = None,
    duplicates: str = "last",
    name: str = "ratings",
) -> Ratings:
    """Build :class:`Ratings` from any pandas DataFrame.

    Args:
      df: the data, one rating per row.
      user, item, rating: column names of the user id, item id and rating value.
      timestamp: optional column of integer seconds or datetimes.
      scale: optional inclusive ``(low, high)``; values outside raise ``ValueError``.
      duplicates: policy for repeated (user, item) pairs, see :func:`from_arrays`.
      name: label used in summaries and messages.

    Raises:
      KeyError: a named column is missing.
      ValueError: missing ids, non-numeric, NaN or infinite ratings, or ratings
        outside ``scale``; the message names the first offending row label.

    Example:
      >>> import pandas as pd
      >>> df = pd.DataFrame({"u": ["a", "b"], "i": [10, 20], "r": [4.0, 3.5]})
      >>> from_dataframe(df, user="u", item="i", rating="r").n_users
      2
    """
    wanted = {"user": user, "item": item, "rating": rating}
    if timestamp is not None:
        wanted["timestamp"] = timestamp
    missing = [f"{role}={col!r}" for role, col in wanted.items() if col not in df.columns]
    if missing:
        raise KeyError(f"{name}: no column {', '.join(missing)}; the DataFrame has columns {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{name}: the DataFrame has no rows")

    def first_bad(mask, what):
        label = df.index[int(np.flatnonzero(np.asarray(mask))[0])]
        return ValueError(f"{name}: {what} at row {label!r} ({int(np.sum(mask))} such rows)")

    for role in ("user", "item"):
        column = df[wanted[role]]
        if column.isna().any():
            raise first_bad(column.isna(), f"missing {role} id in column {wanted[role]!r}")
    values = pd.to_numeric(df[rating], errors="coerce")
    non_numeric = values.isna() & df[rating].notna()
    if non_numeric.any():
        raise first_bad(non_numeric, f"non-numeric rating {df[rating][non_numeric].iloc[0]!r}")
    values = values.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise first_bad(~np.isfinite(values), "NaN or infinite rating")
    too_large = np.abs(values) > np.finfo(np.float32).max
    if too_large.any():
        raise first_bad(too_large, f"rating {values[too_large][0]:g} beyond the float32 range ratings are stored in")
    if scale is not None:
        low, high = scale
        outside = (values < low) | (values > high)
        if outside.any():
            bad = values[outside][0]
            raise first_bad(outside, f"rating {bad:g} outside the declared scale [{low:g}, {high:g}]")
    times = None
    if timestamp is not None:
        column = df[timestamp]
        if column.isna().any():
            raise first_bad(column.isna(), f"missing timestamp in column {timestamp!r}")
        if pd.api.types.is_datetime64_any_dtype(column):
            if getattr(column.dtype, "tz", None) is not None:  # time-zone aware: the same instants in UTC
                column = column.dt.tz_convert("UTC").dt.tz_localize(None)
            times = (column.astype("datetime64[s]").to_numpy().astype(np.int64))
        else:
            numeric = pd.to_numeric(column, errors="coerce")
            if numeric.isna().any():
                raise first_bad(numeric.isna(), "non-numeric timestamp")
            times = numeric.to_numpy()
            if not np.array_equal(times, np.round(times)):
                raise first_bad(times != np.round(times), "non-integer timestamp")
            times = times.astype(np.int64)

    def ids(column):
        array = df[column].to_numpy()
        if array.dtype.kind == "f":
            if not np.array_equal(array, np.round(array)):
                raise first_bad(array != np.round(array), f"non-integer id in column {column!r}")
            array = array.astype(np.int64)
        return _id_array(array, f"{name}: ids in column {column!r}")

    return from_arrays(
        ids(user), ids(item), values, times, scale=scale, duplicates=duplicates, name=name,
        source="DataFrame",
    )
