"""Criteo-format click logs: the vectorised parser against a naive one, the cached reader,
splits and thresholds, every malformed-line error, the synthetic generator, CTR metrics."""

import gzip
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import data, metrics
from mdcf.data import criteo, criteo_parse
from mdcf.data.criteo_parse import CriteoFormatError


def naive_parse(text: str):
    """One line at a time, in plain Python: the reference for parse_block."""
    labels, dense, cats = [], [], []
    for line in text.split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if not line:
            continue
        fields = line.split("\t")
        assert len(fields) == 40
        labels.append(int(fields[0]))
        dense.append([float(int(x)) if x else math.nan for x in fields[1:14]])
        cats.append([int(x, 16) if x else -1 for x in fields[14:]])
    return np.array(labels), np.array(dense, float).reshape(-1, 13), np.array(cats, np.int64).reshape(-1, 26)


def parse_text(text: str, path="f.txt"):
    block = np.frombuffer(text.encode(), np.uint8)
    return criteo_parse.parse_block(block, 1, path)


def line(label="1", dense=("",) * 13, cats=("",) * 26):
    return "\t".join([label, *dense, *cats])


def check_same(text):
    got = parse_text(text)
    want = naive_parse(text)
    np.testing.assert_array_equal(got.labels, want[0])
    np.testing.assert_array_equal(got.dense, want[1])  # NaN where empty, on both sides
    np.testing.assert_array_equal(got.categorical, want[2])


def test_parser_matches_a_naive_one_on_edge_cases():
    lines = [
        line("0", ("1", "-1", "", "0", "123456789", "-987654321", "999999999999999999", "7", "", "", "", "42", "-0"),
             ("ffffffff", "0", "A", "DeadBeef", "", "00000001", "abc", *(["68fd1e64"] * 19))),
        line("1"),  # every feature empty
        line("1", ("5",) * 13, ("1",) * 26) + "\r",  # CRLF
        "",  # a blank line is skipped
        line("0", ("12345678",) * 13, ("12345678",) * 26),
    ]
    check_same("\n".join(lines) + "\n")


hex_field = st.one_of(st.just(""), st.text("0123456789abcdefABCDEF", min_size=1, max_size=8))
int_field = st.one_of(st.just(""), st.integers(-10**17, 10**18 - 1).map(str))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("01"), st.lists(int_field, min_size=13, max_size=13),
                          st.lists(hex_field, min_size=26, max_size=26)), min_size=1, max_size=30))
def test_parser_matches_a_naive_one_on_random_lines(rows):
    check_same("".join(line(label, dense, cats) + "\n" for label, dense, cats in rows))


@pytest.mark.parametrize("text, line_no, field, message", [
    (line() + "\n" + line()[:-1] + "\t\t\n", 2, None, "expected 40 tab-separated fields"),
    (line("2") + "\n", 1, "label", "label must be 0 or 1"),
    (line("") + "\n", 1, "label", "label must be 0 or 1"),
    (line("1", ("",) * 5 + ("1.5",) + ("",) * 7) + "\n", 1, "I6", "decimal integer"),
    (line("1", ("-",) + ("",) * 12) + "\n", 1, "I1", "decimal integer"),
    (line("1", ("",) * 12 + ("12a",)) + "\n", 1, "I13", "decimal integer"),
    (line("1", ("",) * 12 + ("1" * 19,)) + "\n", 1, "I13", "more than 18 digits"),
    (line("1", ("",) * 12 + ("1" * 12 + "x",)) + "\n", 1, "I13", "decimal integer"),
    (line("1", cats=("",) * 25 + ("xyz",)) + "\n", 1, "C26", "hex hash"),
    (line("1", cats=("123456789",) + ("",) * 25) + "\n", 1, "C1", "hex hash"),
])
def test_malformed_lines_name_file_line_and_field(text, line_no, field, message):
    with pytest.raises(CriteoFormatError, match=message) as err:
        parse_text(line() + "\n" + line() + "\n" + text, path="day_3")
    assert err.value.line == line_no + 2 and err.value.field == field and err.value.path == "day_3"
    assert f"day_3, line {line_no + 2}" in str(err.value)


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("criteo")
    examples, truth = data.synthetic_ctr(6_000, cap=300, seed=1)
    plain = data.write_criteo_text(folder / "train.txt", examples, truth, empty_code=2)
    zipped = data.write_criteo_text(folder / "train.txt.gz", examples, truth, empty_code=2, compress=True)
    return examples, truth, plain, zipped, folder


def test_reader_gives_the_generated_examples_plain_and_gzip(synthetic_file):
    examples, truth, plain, zipped, folder = synthetic_file
    for path in (plain, zipped):
        parts = data.load_criteo(path, data_dir=folder / "cache", progress=False)
        whole = [np.concatenate([getattr(p, name) for p in (parts.train, parts.validation, parts.test)])
                 for name in ("labels", "dense", "categorical")]
        np.testing.assert_array_equal(whole[0], examples.labels)
        np.testing.assert_array_equal(whole[1], examples.dense)
        for f in range(26):  # codes are relabelled by frequency: one to one with the generator's
            pairs = set(zip(whole[2][:, f].tolist(), examples.categorical[:, f].tolist()))
            assert len(pairs) == len(set(examples.categorical[:, f].tolist())) == len(set(whole[2][:, f].tolist()))
            assert whole[2][:, f].max() < parts.field_rows[f]
            train_counts = np.bincount(parts.train.categorical[:, f], minlength=parts.field_rows[f])
            np.testing.assert_array_equal(parts.counts[f], train_counts)
            assert np.all(np.diff(parts.counts[f]) <= 0)  # code 0 the most frequent in training
        # The day split: six sevenths for training, the last seventh halved.
        assert len(parts.train) == 6_000 * 6 // 7 and abs(len(parts.validation) - len(parts.test)) <= 1


def test_threshold_sends_rare_and_unseen_categories_to_one_last_row(synthetic_file):
    examples, _, plain, _, folder = synthetic_file
    full = data.load_criteo(plain, data_dir=folder / "cache", progress=False, split="random", seed=4)
    cut = data.load_criteo(plain, data_dir=folder / "cache", progress=False, split="random", seed=4, threshold=5)
    for f in range(26):
        kept = int(np.sum(full.counts[f] >= 5))
        assert cut.field_rows[f] == kept + 1
        assert cut.counts[f][-1] == full.counts[f][full.counts[f] < 5].sum()
        rare = full.counts[f][full.train.categorical[:, f]] < 5
        assert np.all(cut.train.categorical[rare, f] == kept)
        assert np.all(cut.train.categorical[~rare, f] < kept)
        unseen = full.counts[f][full.test.categorical[:, f]] == 0
        assert np.all(cut.test.categorical[unseen, f] == kept)
    # Random split: seeded, the asked fractions, every example once.
    assert (len(cut.validation), len(cut.test)) == (300, 300)
    again = data.load_criteo(plain, data_dir=folder / "cache2", progress=False, split="random", seed=4, threshold=5)
    np.testing.assert_array_equal(again.test.labels, cut.test.labels)
    assert sorted(np.concatenate([cut.train.labels, cut.validation.labels, cut.test.labels]).tolist()) == \
        sorted(examples.labels.tolist())


def test_cache_reloads_without_reading_and_rebuilds_when_damaged(synthetic_file, monkeypatch):
    _, _, plain, _, folder = synthetic_file
    cache = folder / "cache3"
    first = data.load_criteo(plain, data_dir=cache, progress=False)
    monkeypatch.setattr(criteo, "parse_block", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    started = time.perf_counter()
    again = data.load_criteo(plain, data_dir=cache, progress=False)
    assert time.perf_counter() - started < 1.0
    assert isinstance(again.train.categorical.base, np.memmap) or isinstance(again.train.categorical, np.memmap)
    np.testing.assert_array_equal(again.train.categorical, first.train.categorical)
    monkeypatch.undo()
    (stored,) = [p for p in (cache / "criteo").iterdir()]
    target = stored / "categorical.npy"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF  # same size: only a full check sees it
    target.write_bytes(bytes(raw))
    data.load_criteo(plain, data_dir=cache, progress=False)  # sizes and metadata hold: no re-read
    monkeypatch.setattr(criteo, "parse_block", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    with pytest.raises(AssertionError, match="re-read"):  # verify=True finds the damage and rebuilds
        data.load_criteo(plain, data_dir=cache, progress=False, verify=True)
    monkeypatch.undo()
    rebuilt = data.load_criteo(plain, data_dir=cache, progress=False, verify=True)
    np.testing.assert_array_equal(rebuilt.train.categorical, first.train.categorical)
    (stored / "dense.npy").write_bytes(b"short")  # a size check catches truncation on every load
    np.testing.assert_array_equal(data.load_criteo(plain, data_dir=cache, progress=False).test.dense,
                                  first.test.dense)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not redistributable.*ailab.criteo.com"):
        data.load_criteo(tmp_path / "train.txt", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="a folder"):
        data.load_criteo(tmp_path, data_dir=tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(CriteoFormatError, match="no examples"):
        data.load_criteo(empty, data_dir=tmp_path, progress=False)
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write((line("0") + "\n") * 3 + line("0", cats=("zz",) + ("",) * 25) + "\n")
    with pytest.raises(CriteoFormatError, match=r"bad.txt.gz, line 4, field C1: .*hex"):
        data.load_criteo(bad, data_dir=tmp_path, progress=False)
    assert not list((tmp_path / "criteo").glob("*.part-*"))  # no half-written cache left
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(CriteoFormatError, match="cannot be read to its end"):
        data.load_criteo(cut, data_dir=tmp_path, progress=False)
    good = tmp_path / "good.txt"
    good.write_text((line("1") + "\n") * 10)
    for kwargs, message in (({"split": "week"}, "split must be one of"), ({"threshold": -1}, "threshold"),
                            ({"days": 1}, "days"), ({"split": "random", "test": 1.2}, "test must be"),
                            ({"seed": 1.5}, "seed")):
        with pytest.raises(ValueError, match=message):
            data.load_criteo(good, data_dir=tmp_path, progress=False, **kwargs)


def test_synthetic_clicks_are_calibrated_and_seeded():
    examples, truth = data.synthetic_ctr(40_000, scale=1e-3, seed=5)
    assert examples.field_rows == tuple(max(2, round(n * 1e-3)) for n in data.KAGGLE_CARDINALITIES)
    assert abs(examples.positive_rate - 0.256) < 0.01
    assert abs(truth.probabilities.mean() - 0.256) < 1e-3  # the intercept is calibrated on the probabilities
    best = truth.best(examples.labels)
    constant = metrics.logloss(np.full(len(examples), examples.positive_rate), examples.labels)
    assert best["logloss"] < constant - 0.05 and best["auc"] > 0.7  # the features carry signal
    again, _ = data.synthetic_ctr(40_000, scale=1e-3, seed=5)
    np.testing.assert_array_equal(again.categorical, examples.categorical)
    capped, _ = data.synthetic_ctr(1_000, cap=50, seed=5, positive_rate=0.1)
    assert max(capped.field_rows) == 50 and capped.categorical.max() < 50
    counts = capped.counts[2]
    assert counts[:5].sum() > counts[-5:].sum()  # Zipf: code 0 popular
    with pytest.raises(ValueError, match="positive_rate"):
        data.synthetic_ctr(10, positive_rate=1.5)
    parts = data.split_ctr(examples, "random", validation=0.1, test=0.1, seed=0)
    assert (len(parts.train), len(parts.validation), len(parts.test)) == (32_000, 4_000, 4_000)
    np.testing.assert_array_equal(parts.counts[0], np.bincount(parts.train.categorical[:, 0],
                                                               minlength=examples.field_rows[0]))


def naive_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1)), min_size=2, max_size=60))
def test_auc_matches_pairwise_counting_with_ties(pairs):
    scores = np.array([p[0] / 6 for p in pairs])
    labels = np.array([p[1] for p in pairs], float)
    if labels.min() == labels.max():
        assert math.isnan(metrics.auc(scores, labels))
    else:
        assert metrics.auc(scores, labels) == pytest.approx(naive_auc(scores, labels))


def test_ctr_metrics():
    p = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1.0])
    want = -np.mean([math.log(0.9), math.log(0.8), math.log(0.4), math.log(0.4)])
    assert metrics.logloss(p, y) == pytest.approx(want)
    assert metrics.accuracy(p, y) == 0.5
    assert metrics.ctr_metrics(p, y)["auc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.logloss(p, np.array([1, 2, 0, 1.0]))
    assert math.isfinite(metrics.logloss(np.array([0.0, 1.0]), np.array([1.0, 0.0])))  # clipped
