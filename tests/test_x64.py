"""64-bit mode (``jax_enable_x64``): run in a subprocess, so the rest of the suite keeps 32 bits."""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mdcf.embeddings import as_rows

ROOT = Path(__file__).resolve().parents[1]


def test_lookups_gradients_and_train_steps_under_x64():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "x64_check.py")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"


def test_as_rows_keeps_int32_and_marks_out_of_range_ids_of_other_dtypes():
    ids = jnp.asarray(np.array([0, 9, 10, -1], np.int32))
    assert as_rows(ids, 10) is ids  # int32: nothing to narrow, out-of-range ids left for the caller
    for dtype in (np.int8, np.int16, np.uint8, np.uint16):  # narrower: every value kept, exactly
        got = as_rows(jnp.asarray(np.array([0, 9, 10, 100], dtype)), 1000)
        assert got.dtype == jnp.int32 and got.tolist() == [0, 9, 10, 100], dtype
    got = as_rows(jnp.asarray(np.array([0, 9, 10, 2**32 - 1, 2**31 + 5], np.uint32)), 10)
    assert got.dtype == jnp.int32 and got.tolist() == [0, 9, -1, -1, -1]  # 2**31 + 5 would narrow to a negative
