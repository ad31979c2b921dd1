"""The Ratings container and from_dataframe."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import data


def test_ratings_is_immutable_and_validated():
    r = data.from_arrays([5, 3, 5], ["b", "a", "a"], [1.0, 2.0, 3.0], [10, 20, 30])
    assert (r.n_users, r.n_items, len(r)) == (2, 2, 3)
    assert list(r.user_ids) == [3, 5] and list(r.item_ids) == ["a", "b"]
    np.testing.assert_array_equal(r.user_counts(), [1, 2])
    np.testing.assert_array_equal(r.item_counts(), [2, 1])
    with pytest.raises(ValueError):
        r.ratings[0] = 5.0
    with pytest.raises(AttributeError):
        r.users = np.zeros(3)
    with pytest.raises(ValueError, match="codes must lie in"):
        data.Ratings(np.array([0, 2]), np.array([0, 0]), np.ones(2), None, np.arange(2), np.arange(1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        data.Ratings(np.array([0]), np.array([0]), np.array([np.nan]), None, np.arange(1), np.arange(1))
    with pytest.raises(ValueError, match="has 1 entries but ratings has 2"):
        data.Ratings(np.array([0]), np.array([0, 0]), np.ones(2), None, np.arange(1), np.arange(1))
    with pytest.raises(ValueError, match="outside the declared scale"):
        data.Ratings(np.array([0]), np.array([0]), np.array([6.0]), None, np.arange(1), np.arange(1), scale=(1, 5))


def test_encode_ids_matches_numpy_unique():
    rng = np.random.default_rng(0)
    for raw in (rng.integers(0, 50, 200), rng.integers(-5, 10**12, 200), np.array(["x", "a", "x", "q"])):
        codes, uniques = data.encode_ids(raw)
        want_uniques, want_codes = np.unique(raw, return_inverse=True)
        np.testing.assert_array_equal(uniques, want_uniques)
        np.testing.assert_array_equal(codes, want_codes)
        assert codes.dtype == np.int32


def test_from_dataframe_round_trip():
    df = pd.DataFrame({
        "who": ["u2", "u1", "u2"], "what": [7, 7, 9], "stars": [4.5, 3.0, 1.0],
        "when": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
    })
    r = data.from_dataframe(df, user="who", item="what", rating="stars", timestamp="when", scale=(0.5, 5))
    back = r.to_dataframe()
    assert back["user"].tolist() == ["u2", "u1", "u2"] and back["item"].tolist() == [7, 7, 9]
    assert back["timestamp"].tolist() == [1577836800, 1577923200, 1578009600]
    assert "3 ratings, 2 users, 2 items" in r.summary()


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("rating", "lots", r"non-numeric rating 'lots' at row 'r2'"),
        ("rating", np.nan, r"NaN or infinite rating at row 'r2'"),
        ("rating", 9.0, r"rating 9 outside the declared scale \[1, 5\] at row 'r2'"),
        ("user", None, r"missing user id in column 'user' at row 'r2'"),
    ],
)
def test_from_dataframe_bad_values(column, value, message):
    df = pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 1], "rating": [1.0, 2.0, 3.0]}, index=["r0", "r1", "r2"])
    df[column] = df[column].astype(object)
    df.loc["r2", column] = value
    with pytest.raises(ValueError, match=message):
        data.from_dataframe(df, scale=(1, 5))


def test_from_dataframe_time_zones_and_float32_range():
    instants = pd.to_datetime(["2020-01-01 00:00", "2020-06-01 12:30"])
    naive = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [1.0, 2.0], "t": instants})
    aware = naive.assign(t=instants.tz_localize("UTC").tz_convert("Asia/Tokyo"))  # same instants, other zone
    want = data.from_dataframe(naive, timestamp="t").timestamps
    np.testing.assert_array_equal(data.from_dataframe(aware, timestamp="t").timestamps, want)
    assert want.tolist() == [1577836800, 1591014600]
    with pytest.raises(ValueError, match=r"rating 1e\+40 beyond the float32 range .* at row 1"):
        data.from_dataframe(naive.assign(rating=[1.0, 1e40]))


def test_ids_of_one_type_only():
    # An object column of integers keeps integer ids, sorted as numbers.
    df = pd.DataFrame({"user": pd.Series([10, 2, 1], dtype=object), "item": [1, 1, 1], "rating": [1.0, 2.0, 3.0]})
    r = data.from_dataframe(df)
    assert r.user_ids.tolist() == [1, 2, 10] and r.user_ids.dtype.kind == "i" and r.users.tolist() == [2, 1, 0]
    # 1 and "1" would print alike: refused instead of merged, from lists and from DataFrames.
    with pytest.raises(ValueError, match=r"user ids mix types \(int, str"):
        data.from_arrays([1, "1", "a"], [1, 1, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"ids in column 'user' mix types \(int, str"):
        data.from_dataframe(df.assign(user=pd.Series([1, "1", "a"], dtype=object)))
    # Floats: whole values are integer ids, others are refused (as from_dataframe refuses them).
    assert data.from_arrays([1.0, 2.0], [1, 1], [1.0, 2.0]).user_ids.tolist() == [1, 2]
    with pytest.raises(ValueError, match="non-integer id 1.5 at position 1"):
        data.from_arrays([1.0, 1.5], [1, 1], [1.0, 2.0])
    for bad, message in (([True, False], "must be integers or strings, got bool"),
                         ([b"a", b"b"], "must be integers or strings, got bytes"),
                         (["a", None], r"missing id \(None\) at position 1")):
        with pytest.raises(ValueError, match=message):
            data.from_arrays(bad, [1, 1], [1.0, 2.0])


def test_from_dataframe_missing_column():
    with pytest.raises(KeyError, match="no column rating='score'"):
        data.from_dataframe(pd.DataFrame({"user": [1], "item": [2]}), rating="score")
    with pytest.raises(ValueError, match="no rows"):
        data.from_dataframe(pd.DataFrame({"user": [], "item": [], "rating": []}))


def naive_resolution(rows, policy):
    """Pure-Python reference: rows are (user, item, rating, time, position)."""
    groups = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    kept = []
    for members in groups.values():
        members = sorted(members, key=lambda r: (r[3], r[4]))
        chosen = members[0] if policy == "first" else members[-1]
        value = sum(m[2] for m in members) / len(members) if policy == "mean" else chosen[2]
        kept.append((chosen[0], chosen[1], value, chosen[3], chosen[4]))
    return sorted(kept, key=lambda r: r[4])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=40),
    policy=st.sampled_from(["last", "first", "mean"]),
)
def test_duplicate_resolution_matches_naive(rows, policy):
    import warnings

    users, items, values, times = (list(c) for c in zip(*rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DuplicateRatingsWarning)
        r = data.from_arrays(users, items, values, times, duplicates=policy)
    want = naive_resolution([(u, i, v, t, p) for p, (u, i, v, t) in enumerate(rows)], policy)
    got = r.to_dataframe()
    assert got["user"].tolist() == [w[0] for w in want]
    assert got["item"].tolist() == [w[1] for w in want]
    np.testing.assert_allclose(got["rating"].to_numpy(), [w[2] for w in want], rtol=1e-6)
    assert got["timestamp"].tolist() == [w[3] for w in want]
