"""MovieLens loading: verified atomic downloads, the package-index fallback, parsed caches."""

import hashlib
import io as stdio
import zipfile

import numpy as np
import pytest

from mdcf import data
from mdcf.data import movielens as ml

from conftest import UDATA_ROWS, fake_ml100k_zip, write


# ------------------------------------------------------------ real ml-100k
def test_real_ml100k_summary(ml100k_dir):
    r = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    assert (len(r), r.n_users, r.n_items) == (100_000, 943, 1_682)
    summary = r.summary()
    assert "100,000 ratings, 943 users, 1,682 items" in summary
    assert r.scale == (1.0, 5.0)
    assert sorted(np.unique(r.ratings)) == [1, 2, 3, 4, 5]
    assert r.timestamps is not None and r.timestamps.min() > 870_000_000
    # The first u.data rows, in u.data order.
    frame = r.to_dataframe()
    assert frame.iloc[:3][["user", "item", "rating", "timestamp"]].values.tolist() == [
        [196, 242, 3, 881250949], [186, 302, 3, 891717742], [22, 377, 1, 878887116]]
    # The popularity facts of REFERENCE section 5: a k=8 equipartition of items cuts after
    # rank 31, ..., 686; here we only check the head of the frequency curve.
    counts = np.sort(r.item_counts())[::-1]
    assert counts[0] == 583


def test_real_ml100k_reload_comes_from_cache(ml100k_dir, capsys):
    first = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    second = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=True)
    assert "parsed cache" in capsys.readouterr().err
    for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert first.source == second.source


def test_fallback_says_which_source(ml100k_dir):
    r = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    if not (ml100k_dir / "ml-100k.zip").exists():
        assert "RecBole 1.2.1 wheel" in r.source and "SHA-256 verified" in r.source
        assert hashlib.sha256((ml100k_dir / "ml-100k" / "u.data").read_bytes()).hexdigest() == ml._UDATA_SHA256
    else:
        assert "GroupLens archive, MD5 verified" in r.source


# ------------------------------------------------------- downloads (local)
@pytest.fixture
def fake_release(monkeypatch, http_server, tmp_path):
    """Serve a small archive as 'ml-1m' from a local mirror, with its MD5 pinned."""
    dat = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in UDATA_ROWS)
    buffer = stdio.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ml-1m/ratings.dat", dat)
    body = buffer.getvalue()
    md5 = hashlib.md5(body).hexdigest()
    info = ml.MovieLensInfo("ml-1m", "ml-1m/ratings.dat", md5, (1, 5), len(UDATA_ROWS), 10, 10)
    monkeypatch.setitem(ml.MOVIELENS, "ml-1m", info)
    monkeypatch.setenv("MDCF_MOVIELENS_URL", http_server.url + "/movielens")
    http_server.files["/movielens/ml-1m.zip"] = body
    return body


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_download_verify_parse_and_cache(fake_release, _isolated_data_dir):
    r = data.load_movielens("ml-1m", verbose=False)
    assert len(r) == len(UDATA_ROWS) and "MD5 verified" in r.source
    assert leftovers(_isolated_data_dir) == ["ml-1m.ratings.mdcf", "ml-1m.zip"]
    assert (_isolated_data_dir / "ml-1m.zip").read_bytes() == fake_release


def test_checksum_mismatch_deletes_and_raises(fake_release, http_server, _isolated_data_dir):
    http_server.files["/movielens/ml-1m.zip"] = fake_release[:-1] + b"?"
    with pytest.raises(data.ChecksumError, match="does not match the expected"):
        data.load_movielens("ml-1m", verbose=False)
    assert leftovers(_isolated_data_dir) == []


def test_interrupted_download_leaves_nothing(fake_release, http_server, _isolated_data_dir):
    http_server.truncate.add("/movielens/ml-1m.zip")
    with pytest.raises(data.DatasetUnavailableError, match="could not download ml-1m"):
        data.load_movielens("ml-1m", verbose=False)
    assert leftovers(_isolated_data_dir) == []


def test_corrupt_archive_in_cache_is_deleted_and_fetched_again(fake_release, _isolated_data_dir):
    write(_isolated_data_dir / "ml-1m.zip", fake_release[: len(fake_release) // 2])
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        r = data.load_movielens("ml-1m", verbose=False)
    assert len(r) == len(UDATA_ROWS)
    assert (_isolated_data_dir / "ml-1m.zip").read_bytes() == fake_release


def test_corrupt_archive_offline_is_deleted_and_raises(fake_release, _isolated_data_dir):
    write(_isolated_data_dir / "ml-1m.zip", b"PK\x03\x04garbage")
    with pytest.warns(UserWarning, match="it was deleted"):
        with pytest.raises(data.DatasetUnavailableError, match="failed its checksum and was deleted"):
            data.load_movielens("ml-1m", download=False, verbose=False)
    assert leftovers(_isolated_data_dir) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_parsed_cache_is_rebuilt(fake_release, _isolated_data_dir, damage):
    first = data.load_movielens("ml-1m", verbose=False)
    cache = _isolated_data_dir / "ml-1m.ratings.mdcf"
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 10]
    elif damage == "flip":
        raw[-70] ^= 0x01
    else:
        raw = bytearray(b"nonsense")
    cache.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="ignoring the unreadable cache"):
        again = data.load_movielens("ml-1m", verbose=False)
    np.testing.assert_array_equal(first.ratings, again.ratings)
    np.testing.assert_array_equal(first.users, again.users)
    assert data.load_movielens("ml-1m", verbose=False).source == first.source  # cache is good again


def test_sidecar_md5_for_releases_without_a_published_one(monkeypatch, http_server, _isolated_data_dir):
    body = stdio.BytesIO()
    with zipfile.ZipFile(body, "w") as z:
        z.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    body = body.getvalue()
    monkeypatch.setenv("MDCF_MOVIELENS_URL", http_server.url)
    http_server.files["/ml-latest-small.zip"] = body
    http_server.files["/ml-latest-small.zip.md5"] = f"MD5 (ml-latest-small.zip) = {hashlib.md5(body).hexdigest()}\n".encode()
    r = data.load_movielens("ml-latest-small", verbose=False)
    assert len(r) == 2 and r.scale == (0.5, 5.0)
    assert (_isolated_data_dir / "ml-latest-small.zip.md5").is_file()
    http_server.files["/ml-latest-small.zip.md5"] = b"0" * 32
    (_isolated_data_dir / "ml-latest-small.zip").unlink()
    (_isolated_data_dir / "ml-latest-small.zip.md5").unlink()
    (_isolated_data_dir / "ml-latest-small.ratings.mdcf").unlink()
    with pytest.raises(data.ChecksumError):
        data.load_movielens("ml-latest-small", verbose=False)


def test_unreachable_release_without_fallback_says_where_to_put_it(_isolated_data_dir):
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_movielens("ml-1m", verbose=False)
    message = str(info.value)
    assert str(_isolated_data_dir / "ml-1m.zip") in message and "MDCF_DATA_DIR" in message
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.load_movielens("ml-25m", download=False, verbose=False)
    with pytest.raises(ValueError, match="unknown MovieLens data set 'ml-3m'"):
        data.load_movielens("ml-3m")


def test_user_placed_archive_is_used(monkeypatch, _isolated_data_dir, tmp_path):
    archive = fake_ml100k_zip(tmp_path / "ml-100k.zip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(ml.MOVIELENS, "ml-100k", ml.MovieLensInfo("ml-100k", "ml-100k/u.data", md5, (1, 5), None, None, None))
    write(_isolated_data_dir / "ml-100k.zip", archive.read_bytes())
    r = data.load_movielens("ml-100k", download=False, verbose=False)
    assert len(r) == len(UDATA_ROWS) and "GroupLens archive" in r.source


# --------------------------------------------------------------- fallback
def fake_wheel(folder, inter: bytes):
    wheel = folder / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(ml._RECBOLE_MEMBER, inter)
    return wheel


def test_fallback_rejects_a_tampered_member(monkeypatch, _isolated_data_dir, tmp_path):
    inter = (ml._RECBOLE_HEADER + "\n1\t2\t3\t4\n").encode()
    monkeypatch.setattr(ml, "_download_recbole_wheel", lambda folder, verbose: fake_wheel(tmp_path, inter))
    with pytest.raises(data.ChecksumError, match="SHA-256"):
        data.load_movielens("ml-100k", verbose=False)
    assert not (_isolated_data_dir / "ml-100k" / "u.data").exists()


def test_fallback_conversion_is_exact_udata(monkeypatch, _isolated_data_dir, tmp_path):
    body = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in UDATA_ROWS)
    inter = (ml._RECBOLE_HEADER + "\n" + body).encode()
    assert ml._inter_to_udata(inter) == body.encode()
    with pytest.raises(data.ChecksumError, match="unexpected header"):
        ml._inter_to_udata(b"user\titem\n1\t2\n")
    with pytest.raises(data.ChecksumError, match="line 2"):
        ml._inter_to_udata((ml._RECBOLE_HEADER + "\n1\t2\t3.5\t4\n").encode())


def test_fallback_failure_reports_both_sources(monkeypatch, _isolated_data_dir):
    def fail(folder, verbose):
        raise OSError("no package index either")

    monkeypatch.setattr(ml, "_download_recbole_wheel", fail)
    with pytest.raises(data.DatasetUnavailableError, match="(?s)could not download ml-100k.*no package index either"):
        data.load_movielens("ml-100k", verbose=False)
