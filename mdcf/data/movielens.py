"""MovieLens: checksum-verified downloads, a package-index fallback for ml-100k, parsed caches.

Files live under the data folder: the ``data_dir`` argument, else
``$MDCF_DATA_DIR``, else ``~/.cache/mdcf``::

    <data folder>/ml-1m.zip                 official archive, MD5-verified
    <data folder>/ml-1m.ratings.mdcf        parsed arrays (CRC-checked, near-instant reload)
    <data folder>/ml-100k/u.data            ml-100k from the package-index fallback

Every file is written atomically (see :func:`mdcf.io.atomic_write`), so an
interrupted download or parse never leaves a file that later passes as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import io as mdcf_io
from .ratings import Ratings
from .readers import read_ratings

__all__ = [
    "MovieLensInfo",
    "MOVIELENS",
    "ChecksumError",
    "DatasetUnavailableError",
    "data_home",
    "download_file",
    "load_movielens",
    "movielens_archive",
]

_DEFAULT_URL = "https://files.grouplens.org/datasets/movielens"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class MovieLensInfo:
    """Facts about one MovieLens release."""

    name: str
    member: str  # the ratings file inside the archive
    md5: str | None  # published MD5 of the archive; None: read the official .md5 sidecar
    scale: tuple[float, float]
    n_ratings: int | None  # checked after parsing; None for releases that change over time
    n_users: int | None
    n_items: int | None

    @property
    def archive(self) -> str:
        return f"{self.name}.zip"

    def url(self) -> str:
        """Where the archive is downloaded from (``$MDCF_MOVIELENS_URL`` overrides the host)."""
        base = os.environ.get("MDCF_MOVIELENS_URL", _DEFAULT_URL).rstrip("/")
        return f"{base}/{self.archive}"


MOVIELENS: dict[str, MovieLensInfo] = {
    info.name: info
    for info in (
        MovieLensInfo("ml-100k", "ml-100k/u.data", "0e33842e24a9c977be4e0107933c0723", (1, 5), 100_000, 943, 1_682),
        MovieLensInfo("ml-1m", "ml-1m/ratings.dat", "c4d9eecfca2ab87c1945afe126590906", (1, 5), 1_000_209, 6_040, 3_706),
        MovieLensInfo("ml-10m", "ml-10M100K/ratings.dat", "ce571fd55effeba0271552578f2648bd", (0.5, 5), 10_000_054, 69_878, 10_677),
        MovieLensInfo("ml-20m", "ml-20m/ratings.csv", "cd245b17a1ae2cc31bb14903e1204af3", (0.5, 5), 20_000_263, 138_493, 26_744),
        MovieLensInfo("ml-25m", "ml-25m/ratings.csv", "6b51fb2759a8657d3bfcbfc42b592ada", (0.5, 5), 25_000_095, 162_541, 59_047),
        MovieLensInfo("ml-32m", "ml-32m/ratings.csv", None, (0.5, 5), 32_000_204, 200_948, None),
        MovieLensInfo("ml-latest-small", "ml-latest-small/ratings.csv", None, (0.5, 5), None, None, None),
    )
}

# ml-100k inside the RecBole 1.2.1 wheel on PyPI: the same 100,000 rows as u.data,
# in u.data's order, as a RecBole atomic file with a typed header.
_RECBOLE_REQUIREMENT = "recbole==1.2.1"
_RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
_RECBOLE_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
_RECBOLE_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
# SHA-256 of the u.data content rebuilt from that member (1,979,173 bytes).
_UDATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


class ChecksumError(ValueError):
    """A downloaded or cached file does not have its published checksum."""


class DatasetUnavailableError(RuntimeError):
    """A data set could not be found locally nor fetched; the message says where to put it."""


def data_home(data_dir: os.PathLike | str | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$MDCF_DATA_DIR``, else ``~/.cache/mdcf``."""
    if data_dir is None:
        data_dir = os.environ.get("MDCF_DATA_DIR") or Path.home() / ".cache" / "mdcf"
    return Path(data_dir).expanduser()


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(f"mdcf: {message}", file=sys.stderr, flush=True)


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: os.PathLike | str,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying a checksum before the file appears.

    The bytes go to a temporary file beside ``dest``; only when the download is
    complete and its checksum matches is it renamed to ``dest``. A mismatch
    deletes the temporary file and raises :class:`ChecksumError`.

    Raises:
      OSError (including ``urllib.error.URLError``): the download failed.
      ChecksumError: the content does not match ``md5`` / ``sha256``.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "mdcf"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        digests = {name: hashlib.new(name) for name, want in (("md5", md5), ("sha256", sha256)) if want}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False)
        received = 0
        try:
            with mdcf_io.atomic_write(dest, "wb") as f:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    received += len(block)
                    for digest in digests.values():
                        digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
                if total is not None and received != total:
                    raise OSError(f"download of {url} stopped after {received} of {total} bytes")
                for name, want in (("md5", md5), ("sha256", sha256)):
                    if want and digests[name].hexdigest() != want.lower():
                        raise ChecksumError(
                            f"{url}: {name} {digests[name].hexdigest()} does not match the expected "
                            f"{want}; the download was discarded"
                        )
        finally:
            if bar is not None:
                bar.close()
    return dest


def _fetch_text(url: str, timeout: float = 30.0) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "mdcf"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(1 << 16).decode("utf-8", errors="replace")


def _expected_md5(info: MovieLensInfo, root: Path, allow_network: bool) -> str | None:
    """The archive's MD5: published, else from the official sidecar (cached beside the archive)."""
    if info.md5:
        return info.md5
    sidecar = root / f"{info.archive}.md5"
    if sidecar.is_file():
        text = sidecar.read_text(errors="replace")
    elif allow_network:
        text = _fetch_text(info.url() + ".md5")
    else:
        return None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not found:
        raise ChecksumError(f"no MD5 found in the checksum file for {info.archive}: {text[:200]!r}")
    if not sidecar.is_file():
        with mdcf_io.atomic_write(sidecar, "w") as f:
            f.write(text)
    return found.group(0).lower()


def _check_archive(info: MovieLensInfo, archive: Path, root: Path, allow_network: bool) -> bool:
    """True if the archive passes its checksum; a failing archive is deleted (with a warning)."""
    try:
        want = _expected_md5(info, root, allow_network)
    except (OSError, ChecksumError):
        want = None
    if want is None:
        warnings.warn(
            f"{archive}: no checksum available offline for {info.name}; using the archive unverified",
            stacklevel=3,
        )
        return True
    got = _file_digest(archive, "md5")
    if got == want:
        return True
    archive.unlink()
    warnings.warn(
        f"{archive} has MD5 {got}, expected {want} (truncated or corrupt); it was deleted",
        stacklevel=3,
    )
    return False


def movielens_archive(name: str, data_dir=None, download: bool = True, verbose: bool = True) -> Path:
    """Path to the verified official archive of ``name``, downloading it if needed.

    Raises:
      DatasetUnavailableError: not in the data folder and it cannot be downloaded;
        the message says where to put the archive.
      ChecksumError: the downloaded archive does not match its published MD5.
    """
    info = _info(name)
    root = data_home(data_dir)
    archive = root / info.archive
    corrupt_note = ""
    if archive.is_file():
        if _check_archive(info, archive, root, allow_network=download):
            return archive
        corrupt_note = f" (the archive found at {archive} failed its checksum and was deleted)"
    if not download:
        raise DatasetUnavailableError(
            f"{info.name} is not in the data folder and download=False{corrupt_note}. "
            f"Put the official archive at {archive} (from {info.url()}), or allow downloading"
        )
    try:
        want = _expected_md5(info, root, allow_network=True)
        _say(verbose, f"downloading {info.url()}")
        download_file(info.url(), archive, md5=want)
    except ChecksumError as err:
        raise ChecksumError(f"{err}{corrupt_note}") from None
    except OSError as err:
        raise DatasetUnavailableError(
            f"could not download {info.name} from {info.url()} ({type(err).__name__}: {err}){corrupt_note}. "
            f"Download the archive yourself and put it at {archive} "
            f"(or set MDCF_DATA_DIR / data_dir, or MDCF_MOVIELENS_URL for a mirror), then load again"
        ) from None
    return archive


def _info(name: str) -> MovieLensInfo:
    if name not in MOVIELENS:
        raise ValueError(f"unknown MovieLens data set {name!r}; known: {', '.join(MOVIELENS)}")
    return MOVIELENS[name]


# ------------------------------------------------------------------ fallback
def _download_recbole_wheel(folder: Path, verbose: bool) -> Path:
    """Fetch the RecBole wheel from the package index: pip first (it honours the
    user's index and proxy settings), else PyPI's JSON API directly."""
    reasons = []
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(folder), _RECBOLE_REQUIREMENT,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = sorted(folder.glob("recbole-1.2.1-*.whl"))
        if done.returncode == 0 and wheels:
            return wheels[0]
        reasons.append(f"pip download failed: {(done.stderr or done.stdout).strip()[-300:]}")
    except (OSError, subprocess.SubprocessError) as err:
        reasons.append(f"pip download failed: {err}")
    try:
        meta = json.loads(_fetch_json("https://pypi.org/pypi/recbole/1.2.1/json"))
        wheel = next(u for u in meta["urls"] if u["filename"].endswith(".whl"))
        _say(verbose, f"downloading {wheel['url']}")
        return download_file(
            wheel["url"], folder / wheel["filename"], sha256=wheel["digests"]["sha256"], progress=verbose
        )
    except (OSError, ValueError, KeyError, StopIteration) as err:
        reasons.append(f"PyPI download failed: {type(err).__name__}: {err}")
    raise OSError("; ".join(reasons))


def _fetch_json(url: str) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "mdcf", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode("utf-8")


def _inter_to_udata(data: bytes) -> bytes:
    """Rebuild u.data (``user\\titem\\trating\\ttimestamp``, integers) from RecBole's ml-100k.inter."""
    lines = data.decode("ascii").splitlines()
    if not lines or lines[0] != _RECBOLE_HEADER:
        raise ChecksumError(f"unexpected header in {_RECBOLE_MEMBER}: {lines[:1]!r}")
    out = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 4 or not all(f.isdigit() for f in fields):
            raise ChecksumError(f"{_RECBOLE_MEMBER}, line {number}: unexpected content {line!r}")
        out.append("\t".join(str(int(f)) for f in fields))
    return ("\n".join(out) + "\n").encode("ascii")


def _fallback_udata(root: Path) -> Path:
    return root / "ml-100k" / "u.data"


def _fetch_ml100k_from_package_index(root: Path, verbose: bool) -> Path:
    """Write ml-100k's u.data, rebuilt from the RecBole 1.2.1 wheel and verified, to the data folder."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".recbole-") as tmp:
        wheel = _download_recbole_wheel(Path(tmp), verbose)
        try:
            with zipfile.ZipFile(wheel) as archive:
                member = archive.read(_RECBOLE_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as err:
            raise ChecksumError(f"{wheel.name}: cannot read {_RECBOLE_MEMBER}: {err}") from None
    got = hashlib.sha256(member).hexdigest()
    if got != _RECBOLE_SHA256:
        raise ChecksumError(f"{_RECBOLE_MEMBER} has SHA-256 {got}, expected {_RECBOLE_SHA256}")
    udata = _inter_to_udata(member)
    got = hashlib.sha256(udata).hexdigest()
    if got != _UDATA_SHA256:
        raise ChecksumError(f"u.data rebuilt from {_RECBOLE_MEMBER} has SHA-256 {got}, expected {_UDATA_SHA256}")
    path = _fallback_udata(root)
    with mdcf_io.atomic_write(path, "wb") as f:
        f.write(udata)
    return path


def _valid_fallback(root: Path) -> Path | None:
    path = _fallback_udata(root)
    if not path.is_file():
        return None
    if _file_digest(path, "sha256") == _UDATA_SHA256:
        return path
    path.unlink()
    warnings.warn(f"{path} failed its SHA-256 check and was deleted", stacklevel=3)
    return None


# --------------------------------------------------------------------- cache
def _cache_path(root: Path, name: str) -> Path:
    return root / f"{name}.ratings.mdcf"


def _stamp(path: Path | None) -> list | None:
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_cache(path: Path, info: MovieLensInfo, archive: Path) -> Ratings | None:
    if not path.is_file():
        return None
    try:
        arrays, meta = mdcf_io.read_arrays(path)
        if meta.get("cache_version") != _CACHE_VERSION or meta.get("name") != info.name:
            raise mdcf_io.CorruptFileError(path, "written by another mdcf version")
        # A replaced archive (e.g. a newer ml-latest-small) invalidates the cache.
        if meta.get("archive_stamp") is not None and archive.is_file() and _stamp(archive) != meta["archive_stamp"]:
            path.unlink()
            return None
        return Ratings(
            users=arrays["users"],
            items=arrays["items"],
            ratings=arrays["ratings"],
            timestamps=arrays.get("timestamps"),
            user_ids=arrays["user_ids"],
            item_ids=arrays["item_ids"],
            scale=tuple(meta["scale"]),
            name=info.name,
            source=meta["source"],
        )
    except (mdcf_io.CorruptFileError, KeyError, ValueError, TypeError) as err:
        warnings.warn(f"ignoring the unreadable cache {path} ({err}); parsing again", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _write_cache(path: Path, ratings: Ratings, info: MovieLensInfo, archive: Path | None) -> None:
    arrays = {
        "users": ratings.users,
        "items": ratings.items,
        "ratings": ratings.ratings,
        "user_ids": ratings.user_ids,
        "item_ids": ratings.item_ids,
    }
    if ratings.timestamps is not None:
        arrays["timestamps"] = ratings.timestamps
    meta = {
        "cache_version": _CACHE_VERSION,
        "name": info.name,
        "source": ratings.source,
        "scale": list(ratings.scale),
        "archive_stamp": _stamp(archive),
    }
    mdcf_io.write_arrays(path, arrays, meta)


# ---------------------------------------------------------------------- load
def load_movielens(
    name: str,
    data_dir: os.PathLike | str | None = None,
    download: bool = True,
    *,
    verbose: bool = True,
) -> Ratings:
    """Load a MovieLens release as :class:`~mdcf.data.Ratings`.

    The first call downloads the official archive from GroupLens, checks its
    MD5, parses the ratings and caches the parsed arrays; later calls read the
    cache (a fraction of a second even for ml-25m).

    When GroupLens cannot be reached, ``ml-100k`` falls back to the copy of its
    ratings inside the RecBole 1.2.1 wheel on the Python package index: the
    wheel is fetched with pip (or from PyPI directly), the member is checked
    against a pinned SHA-256 and rebuilt into exactly the u.data content. The
    other releases have no fallback: the error says where to put the archive.

    Args:
      name: one of ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``,
        ``ml-32m``, ``ml-latest-small``.
      data_dir: the data folder (default ``$MDCF_DATA_DIR`` or ``~/.cache/mdcf``).
      download: allow network access. With False, only local files are used.
      verbose: print which source was used to stderr.

    Returns:
      The ratings, with ``scale`` set (1..5, or 0.5..5 for ml-10m and later)
      and ``source`` saying where they came from.

    Raises:
      ValueError: unknown name.
      DatasetUnavailableError: the data is neither local nor obtainable.
      ChecksumError: a download does not match its published checksum (the
        file is deleted).

    Example:
      >>> ratings = load_movielens("ml-100k")  # doctest: +SKIP
      >>> print(ratings.summary())  # doctest: +SKIP
    """
    info = _info(name)
    root = data_home(data_dir)
    cache = _cache_path(root, info.name)
    archive = root / info.archive
    cached = _read_cache(cache, info, archive)
    if cached is not None:
        _say(verbose, f"{info.name}: parsed cache {cache} ({cached.source})")
        return cached

    path, member, used_archive = None, None, None
    if info.name == "ml-100k" and not archive.is_file():
        path = _valid_fallback(root)
        if path is not None:
            source = f"{path} (ml-100k u.data rebuilt from the RecBole 1.2.1 wheel, SHA-256 verified)"
    if path is None:
        try:
            path = movielens_archive(info.name, root, download=download, verbose=verbose)
            member, used_archive = info.member, path
            source = f"{path}:{info.member} (GroupLens archive, MD5 verified)"
        except DatasetUnavailableError as err:
            if info.name != "ml-100k" or not download:
                raise
            _say(verbose, "ml-100k: GroupLens unreachable; trying the copy in the RecBole 1.2.1 wheel "
                          "on the package index")
            try:
                path = _fetch_ml100k_from_package_index(root, verbose)
            except OSError as fallback_err:
                raise DatasetUnavailableError(
                    f"{err}\nThe package-index fallback failed too: {fallback_err}"
                ) from None
            source = f"{path} (ml-100k u.data rebuilt from the RecBole 1.2.1 wheel, SHA-256 verified)"
    _say(verbose, f"{info.name}: parsing {source}")
    ratings = read_ratings(path, member=member, scale=info.scale, name=info.name)
    ratings = Ratings(
        users=ratings.users, items=ratings.items, ratings=ratings.ratings,
        timestamps=ratings.timestamps, user_ids=ratings.user_ids, item_ids=ratings.item_ids,
        scale=info.scale, name=info.name, source=source,
    )
    expected = (info.n_ratings, info.n_users, info.n_items)
    found = (len(ratings), ratings.n_users, ratings.n_items)
    for what, want, got in zip(("ratings", "users", "items"), expected, found):
        if want is not None and want != got:
            raise RuntimeError(f"{info.name}: parsed {got:,} {what}, expected {want:,} ({source})")
    _write_cache(cache, ratings, info, used_archive)
    return ratings
