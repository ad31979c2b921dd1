"""Reading ratings files: every format, auto-detection, and a clear error for every bad input."""

import struct
import zipfile

import numpy as np
import pandas as pd
import pytest

from mdcf import data
from mdcf.data import RatingsFormatError, read_ratings

from conftest import UDATA_ROWS, udata_text, write


def expected_frame(rows=UDATA_ROWS):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def assert_matches_rows(ratings, rows=UDATA_ROWS):
    frame = ratings.to_dataframe()
    want = expected_frame(rows)
    assert len(ratings) == len(want)
    np.testing.assert_array_equal(frame["user"].to_numpy(), want["user"].to_numpy())
    np.testing.assert_array_equal(frame["item"].to_numpy(), want["item"].to_numpy())
    np.testing.assert_array_equal(frame["rating"].to_numpy(), want["rating"].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(frame["timestamp"].to_numpy(), want["timestamp"].to_numpy())


def test_udata(tmp_path):
    r = read_ratings(write(tmp_path / "u.data", udata_text()), scale=(1, 5))
    assert_matches_rows(r)
    assert r.users.dtype == np.int32 and r.items.dtype == np.int32
    assert r.ratings.dtype == np.float32 and r.timestamps.dtype == np.int64
    # Codes follow the sorted original ids.
    assert list(r.user_ids) == sorted({row[0] for row in UDATA_ROWS})
    assert r.n_users == 10 and r.n_items == 10
    assert r.scale == (1.0, 5.0)


def test_dat_csv_inter_and_zip_give_the_same_ratings(tmp_path):
    reference = read_ratings(write(tmp_path / "u.data", udata_text()))
    dat = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in UDATA_ROWS)
    csv = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in UDATA_ROWS)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + udata_text()
    paths = [
        write(tmp_path / "ratings.dat", dat),
        write(tmp_path / "ratings.csv", csv),
        write(tmp_path / "ml.inter", inter),
        write(tmp_path / "noext", dat),  # detected from content
    ]
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as z:
        z.writestr("ml-1m/movies.dat", "1::Toy Story::Animation\n")
        z.writestr("ml-1m/ratings.dat", dat)
    paths.append(tmp_path / "ml-1m.zip")
    for path in paths:
        r = read_ratings(path)
        for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
            np.testing.assert_array_equal(getattr(r, field), getattr(reference, field), err_msg=str(path))


def test_dat_files_use_the_c_parser(tmp_path, monkeypatch):
    calls = []
    original = pd.read_csv

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)
    dat = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in UDATA_ROWS)
    read_ratings(write(tmp_path / "ratings.dat", dat))
    assert calls and all(c["engine"] == "c" and len(c["sep"]) == 1 for c in calls)


def test_three_columns_string_ids_and_csv_aliases(tmp_path):
    r = read_ratings(write(tmp_path / "r.tsv", "a\tx\t4.5\nb\tx\t3\na\ty\t1\n"), format="udata")
    assert r.timestamps is None
    assert list(r.user_ids) == ["a", "b"] and list(r.item_ids) == ["x", "y"]
    assert list(r.ratings) == [4.5, 3.0, 1.0]
    r = read_ratings(write(tmp_path / "c.csv", "item_id,user_id,score\n10,1,2\n11,2,5\n"))
    assert list(r.user_ids[r.users]) == [1, 2] and list(r.item_ids[r.items]) == [10, 11]
    r = read_ratings(write(tmp_path / "blank.data", "1\t2\t3\t4\n\n5\t6\t1\t8\n"))
    assert len(r) == 2


def test_zip_member_selection(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/u1.base", udata_text(UDATA_ROWS[:5]))
        z.writestr("x/u.data", udata_text())
    assert len(read_ratings(path)) == len(UDATA_ROWS)
    assert len(read_ratings(path, member="u1.base")) == 5
    with pytest.raises(RatingsFormatError, match="exactly one member named 'u9.base'"):
        read_ratings(path, member="u9.base")


# ----------------------------------------------------------------- bad input
BAD_LINE_CASES = [
    # (content, expected line, message fragment)
    ("1\t2\t3\t4\n5\t6\t4\n7\t8\t1\t9\n", 2, "expected 4 fields"),
    ("1\t2\t3\t4\n5\t6\t4\t1\t1\n", 2, "expected 4 fields"),
    ("1\t2\t3\t4\n5\t6\tgood\t4\n", 2, "rating 'good' is not a number"),
    ("1\t2\t3\t4\n5\t6\t2\t4\n5\t7\tnan\t4\n", 3, "rating is 'nan'"),
    ("1\t2\t3\t4\n5\t6\tinf\t4\n", 2, "rating is 'inf'"),
    ("1\t2\t3\t4\n5\t\t3\t4\n", 2, "missing item"),
    ("1\t2\t3\t4\n5\t6\t3\t4.5\n", 2, "timestamp '4.5' is not an integer"),
    ("1\t2\t3\t4\n5\t6\t3\tyesterday\n", 2, "timestamp 'yesterday'"),
    ("1\t2\t3\t4\n5.5\t6\t3\t7\n", 2, "user id '5.5' is a non-integer number"),
]


@pytest.mark.parametrize("content, line, message", BAD_LINE_CASES)
def test_malformed_lines_are_reported_with_file_and_line(tmp_path, content, line, message):
    path = write(tmp_path / "u.data", content)
    with pytest.raises(RatingsFormatError, match=message) as info:
        read_ratings(path, format="udata")
    assert info.value.line == line
    assert f"{path}, line {line}:" in str(info.value)


def test_bad_lines_in_dat_and_csv_and_zip(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::2::3::4\n1::3::x::4\n")
    with pytest.raises(RatingsFormatError, match=r"line 2: rating 'x' is not a number"):
        read_ratings(path)
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,3,,5\n")
    with pytest.raises(RatingsFormatError, match=r"line 3: missing rating"):
        read_ratings(path)
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        z.writestr("m/ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,3,NaN,5\n")
    with pytest.raises(RatingsFormatError, match=r"m\.zip:m/ratings\.csv, line 3: rating is 'NaN'"):
        read_ratings(tmp_path / "m.zip")


def test_rating_outside_scale(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t5\t4\n2\t2\t6\t4\n")
    assert len(read_ratings(path)) == 3  # no declared scale: accepted
    with pytest.raises(RatingsFormatError, match=r"line 3: rating 6 is outside the declared scale \[1, 5\]"):
        read_ratings(path, scale=(1, 5))
    with pytest.raises(RatingsFormatError, match=r"line 1: rating 3 is outside"):
        read_ratings(path, scale=(4, 5))


@pytest.mark.parametrize("content", ["", "\n\n", "userId,movieId,rating,timestamp\n"])
def test_empty_files(tmp_path, content):
    name = "r.csv" if content.startswith("user") else "u.data"
    with pytest.raises(RatingsFormatError, match="the file is empty"):
        read_ratings(write(tmp_path / name, content))


def test_unknown_format(tmp_path):
    with pytest.raises(RatingsFormatError, match="could not recognise the format") as info:
        read_ratings(write(tmp_path / "notes.txt", "hello world\nthis is not ratings\n"))
    assert "from_dataframe" in str(info.value)
    with pytest.raises(ValueError, match="format must be one of"):
        read_ratings(write(tmp_path / "u.data", udata_text()), format="parquet")
    with pytest.raises(RatingsFormatError, match="no user column"):
        read_ratings(write(tmp_path / "h.csv", "a,b,rating\n1,2,3\n"))
    with pytest.raises(FileNotFoundError, match="no ratings file"):
        read_ratings(tmp_path / "missing.csv")


def test_truncated_and_corrupt_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml/u.data", udata_text() * 50)
    raw = good.read_bytes()
    truncated = write(tmp_path / "truncated.zip", raw[: len(raw) // 2])
    with pytest.raises(RatingsFormatError, match="not a readable zip archive"):
        read_ratings(truncated)
    # Flip bytes inside the compressed member: the archive opens but the member is corrupt.
    corrupt = bytearray(raw)
    start = raw.index(b"ml/u.data") + len("ml/u.data") + 10
    for k in range(start, start + 40):
        corrupt[k] ^= 0xFF
    corrupt_path = write(tmp_path / "corrupt.zip", bytes(corrupt))
    with pytest.raises(RatingsFormatError, match="corrupt"):
        read_ratings(corrupt_path)
    # A member whose size fields claim more (or fewer) bytes than it holds, stored or deflated.
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(good, "w", compression=compression) as z:
            z.writestr("ml/u.data", udata_text() * 50)
        raw = good.read_bytes()
        central = raw.rindex(b"PK\x01\x02")
        size = struct.unpack_from("<I", raw, central + 24)[0]
        for claimed, message in ((size + 100, f"ends after {size:,} bytes; its header claims {size + 100:,}"),
                                 (size - 100, "corrupt archive member")):
            lying = bytearray(raw)
            struct.pack_into("<I", lying, central + 24, claimed)  # the central directory's size
            struct.pack_into("<I", lying, 22, claimed)  # the local header's
            with pytest.raises(RatingsFormatError, match=message if compression == zipfile.ZIP_DEFLATED
                               or claimed < size else "corrupt archive member"):
                read_ratings(write(tmp_path / "lying.zip", bytes(lying)))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "nothing here")
    with pytest.raises(RatingsFormatError, match="no ratings file"):
        read_ratings(tmp_path / "other.zip")


# ---------------------------------------------------------------- duplicates
DUP_ROWS = "1\t10\t2\t100\n2\t10\t3\t100\n1\t10\t4\t50\n1\t10\t5\t300\n"


def test_duplicates_default_keeps_latest_with_warning(tmp_path):
    path = write(tmp_path / "u.data", DUP_ROWS)
    with pytest.warns(data.DuplicateRatingsWarning, match="2 duplicate"):
        r = read_ratings(path)
    assert len(r) == 2
    frame = r.to_dataframe().sort_values("user")
    assert frame["rating"].tolist() == [5.0, 3.0]  # the rating at t=300 is the latest


@pytest.mark.parametrize("policy, value", [("first", 4.0), ("mean", (2 + 4 + 5) / 3)])
def test_duplicate_policies(tmp_path, policy, value):
    with pytest.warns(data.DuplicateRatingsWarning):
        r = read_ratings(write(tmp_path / "u.data", DUP_ROWS), duplicates=policy)
    frame = r.to_dataframe().set_index("user")
    assert frame.loc[1, "rating"] == pytest.approx(value)
    assert frame.loc[2, "rating"] == 3.0


def test_duplicate_policies_keep_and_error(tmp_path):
    path = write(tmp_path / "u.data", DUP_ROWS)
    assert len(read_ratings(path, duplicates="keep")) == 4
    with pytest.raises(ValueError, match=r"2 duplicate \(user, item\) pairs, e.g. user 1 item 10 at row"):
        read_ratings(path, duplicates="error")  # original ids, not codes
    with pytest.raises(ValueError, match="duplicates must be one of"):
        read_ratings(path, duplicates="drop")


def test_duplicates_without_timestamps_keep_the_later_row(tmp_path):
    with pytest.warns(data.DuplicateRatingsWarning, match="1 duplicate"):
        r = read_ratings(write(tmp_path / "u.data", "1\t1\t2\n1\t1\t4\n2\t1\t1\n"))
    assert r.to_dataframe().set_index("user").loc[1, "rating"] == 4.0
