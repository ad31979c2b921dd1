"""Row-wise int8 / int4 quantisation of trained MD layers: error bound, lookups, byte counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import embeddings
from mdcf.embeddings import quantize as qz


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 20), st.integers(1, 9), st.sampled_from([8, 4]), st.integers(0, 2**31 - 1),
       st.floats(1e-3, 1e3))
def test_round_trip_error_is_within_half_a_step(n, d, bits, seed, spread):
    table = np.random.default_rng(seed).normal(0, spread, (n, d)).astype(np.float32)
    rows = qz.quantize_rows(table, bits)
    back = np.asarray(qz.dequantize_rows(rows))
    step = (table.max(axis=1) - table.min(axis=1)) / (2**bits - 1)
    assert np.all(np.abs(back - table) <= step[:, None] / 2 * (1 + 1e-5) + 1e-6 * spread)
    assert rows.codes.dtype == jnp.uint8 and rows.codes.shape == (n, d if bits == 8 else (d + 1) // 2)
    ids = jnp.array([n - 1, 0])
    np.testing.assert_array_equal(qz.dequantize_rows(rows, ids), back[np.asarray(ids)])


def test_constant_rows_and_errors():
    rows = qz.quantize_rows(np.full((2, 3), 1.5, np.float32), 4)
    np.testing.assert_array_equal(qz.dequantize_rows(rows), np.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="bits must be one of"):
        qz.quantize_rows(np.zeros((2, 2)), 2)
    with pytest.raises(TypeError, match="MDSpec"):
        qz.quantize(embeddings.HashSpec(10, 4, 2), None)


@pytest.mark.parametrize("bits", [8, 4])
def test_md_lookup_reads_codes_of_each_block(bits):
    spec = embeddings.MDSpec((30, 50, 120), (8, 4, 2), 8)
    params = embeddings.init(jax.random.key(0), spec)
    q = qz.quantize(spec, params, bits)
    ids = jnp.array([[0, 29, 30], [79, 80, 199]])
    want = embeddings.lookup(qz.dequantize(q), spec, ids, None)
    np.testing.assert_allclose(jax.jit(lambda q_, i: qz.lookup(q_, spec, i))(q, ids), want, rtol=1e-5, atol=1e-6)
    exact = embeddings.lookup(params, spec, ids, None)
    assert float(jnp.max(jnp.abs(want - exact))) < (0.05 if bits == 8 else 0.5)
    codes = sum(n * (d if bits == 8 else (d + 1) // 2) for n, d in zip(spec.sizes, spec.dims))
    assert qz.nbytes(q) == codes + 8 * 200 + 4 * (4 * 8 + 2 * 8)  # codes, scale + offset a row, projections
    assert qz.float_nbytes(spec) == 4 * embeddings.num_params(spec)
