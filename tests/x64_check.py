"""Run by test_x64.py in a subprocess with ``jax_enable_x64``: 64-bit ids (and a 64-bit
default dtype) give the same lookups, gradients and train steps, and ids that would wrap
into range when narrowed to 32 bits stay out of range."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdcf import train  # noqa: E402
from mdcf.embeddings import MDSpec, init, lookup, lookup_bag, materialize  # noqa: E402
from mdcf.models import ModelConfig  # noqa: E402

spec = MDSpec((3, 5, 40), (8, 4, 2), 8)
params = init(jax.random.key(0), spec)
table = np.asarray(materialize(params, spec))
ids = np.random.default_rng(0).integers(0, spec.n_rows, 200).astype(np.int64)
cotangent = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
grads = {}
# Head and routed blocks; every block routed, overflowing its slots; every block masked.
for capacity in ("auto", 16, None):
    def loss(p, i, capacity=capacity):
        return jnp.sum(lookup(p, spec, i, capacity) * cotangent)

    got = jax.jit(lambda p, i, capacity=capacity: lookup(p, spec, i, capacity))(params, ids)
    np.testing.assert_allclose(got, table[ids], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lookup(params, spec, ids, capacity), table[ids], rtol=1e-6, atol=1e-6)
    grads[capacity] = jax.jit(jax.grad(loss))(params, ids)
for capacity in ("auto", 16):
    for x, y in zip(jax.tree.leaves(grads[capacity]), jax.tree.leaves(grads[None])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

# Ids that wrap into [0, n_rows) when narrowed to 32 bits are out of range: NaN under jit.
wide = np.array([2**32 + 1, -(2**32) + 3, 2**31, 5], np.int64)
for capacity in ("auto", 2, None):
    got = np.asarray(jax.jit(lambda p, i, capacity=capacity: lookup(p, spec, i, capacity))(params, wide))
    assert np.isnan(got[:3]).all() and np.array_equal(got[3], table[5]), (capacity, got)
unsigned = np.asarray(jax.jit(lambda p, i: lookup(p, spec, i))(params, np.array([2**32 - 1, 4], np.uint32)))
assert np.isnan(unsigned[0]).all() and np.array_equal(unsigned[1], table[4])
try:
    lookup(params, spec, wide)
except IndexError:
    pass
else:
    raise AssertionError("lookup accepted ids outside the table outside jit")
bags = np.array([[1, 2**32 + 2, -1]], np.int64)
assert np.isnan(np.asarray(jax.jit(lambda p, i: lookup_bag(p, spec, i))(params, bags))).all()

# Train steps, dense and row-sparse, on 64-bit batches.
config = ModelConfig("mf", spec, MDSpec.uniform(30, 8))
rng = np.random.default_rng(2)
batch = {"users": rng.integers(0, spec.n_rows, 64), "items": rng.integers(0, 30, 64),
         "ratings": rng.uniform(1, 5, 64)}
for sparse in (False, True):
    opt = train.optimizer("adam", 0.05, sparse=sparse)
    step = jax.jit(train.make_train_step(config, opt))
    state = train.init_state(jax.random.key(0), config, opt, global_mean=3.0)
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])), (sparse, metrics)
    bad = dict(batch, items=batch["items"].copy())
    bad["items"][3] = 2**32 + 1  # row 1 once narrowed
    assert np.isnan(float(step(state, bad)[1]["loss"])), sparse
print("ok")
