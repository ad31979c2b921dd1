"""The MD layer against naive per-id references, under jit, grad and vmap."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import embeddings
from mdcf.embeddings import routing
from mdcf.embeddings import MDParams, MDSpec, init, lookup, lookup_bag, materialize, num_params

CAPACITIES = [None, "auto", 1, 3, 1000]


@pytest.fixture(autouse=True)
def _strict_dtypes():
    """The layer's arithmetic must be explicit about dtypes (no silent promotion)."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@st.composite
def specs(draw, max_blocks=4):
    k = draw(st.integers(1, max_blocks))
    base_dim = draw(st.integers(1, 6))
    sizes = tuple(draw(st.lists(st.integers(1, 9), min_size=k, max_size=k)))
    dims = tuple(draw(st.lists(st.integers(1, base_dim), min_size=k, max_size=k)))
    loads = draw(st.none() | st.lists(st.floats(0.01, 1), min_size=k, max_size=k).map(tuple))
    return MDSpec(sizes, dims, base_dim, loads)


def naive_lookup(params, spec, ids):
    """Algorithm 1, one id at a time."""
    tables = [np.asarray(t, np.float64) for t in params.tables]
    projections = [None if p is None else np.asarray(p, np.float64) for p in params.projections]
    out = np.zeros(np.shape(ids) + (spec.base_dim,))
    for index, x in np.ndenumerate(np.asarray(ids)):
        for i, (t, n) in enumerate(zip(spec.offsets, spec.sizes)):
            if t <= x < t + n:
                row = tables[i][x - t]
                out[index] = row if projections[i] is None else row @ projections[i]
    return out


def naive_grads(params, spec, ids, cotangent):
    """d/dparams of sum(lookup * cotangent), accumulated one id at a time."""
    tables = [np.asarray(t, np.float64) for t in params.tables]
    projections = [None if p is None else np.asarray(p, np.float64) for p in params.projections]
    d_tables = [np.zeros_like(t) for t in tables]
    d_projections = [None if p is None else np.zeros_like(p) for p in projections]
    flat_ids = np.asarray(ids).reshape(-1)
    flat_ct = np.asarray(cotangent, np.float64).reshape(len(flat_ids), spec.base_dim)
    for x, g in zip(flat_ids, flat_ct):
        for i, (t, n) in enumerate(zip(spec.offsets, spec.sizes)):
            if t <= x < t + n:
                if projections[i] is None:
                    d_tables[i][x - t] += g
                else:
                    d_tables[i][x - t] += projections[i] @ g
                    d_projections[i] += np.outer(tables[i][x - t], g)
    return d_tables, d_projections


@settings(max_examples=30, deadline=None)
@given(spec=specs(), seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(7,), (3, 5), (2, 3, 4), (1,), (40,)]),
       capacity=st.sampled_from(CAPACITIES))
def test_lookup_and_gradients_match_naive(spec, seed, shape, capacity):
    rng = np.random.default_rng(seed)
    params = init(jax.random.key(seed % 1000), spec)
    ids = rng.integers(0, spec.n_rows, size=shape)
    cotangent = rng.standard_normal(shape + (spec.base_dim,)).astype(np.float32)

    def loss(p, i):
        vectors = lookup(p, spec, i, capacity=capacity)
        return jnp.sum(vectors * cotangent), vectors

    # One compiled function per example (eager, every op would compile on its own);
    # test_jit_and_eager_agree_and_no_recompilation checks that eager gives the same.
    (_, vectors), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, ids)
    np.testing.assert_allclose(vectors, naive_lookup(params, spec, ids), rtol=1e-5, atol=1e-6)
    want_tables, want_projections = naive_grads(params, spec, ids, cotangent)
    for got, want in zip(grads.tables, want_tables):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads.projections, want_projections):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_grouped_path_with_realistic_loads_and_overflow():
    # Large enough for the grouped path: blocks 0-1 form the head (served from one stacked
    # table), blocks 2-3 are routed; one batch fits the capacities, one overflows block 2.
    spec = MDSpec((10, 40, 1500, 3000), (16, 8, 4, 2), 16, loads=(0.25, 0.25, 0.25, 0.25))
    params = init(jax.random.key(1), spec)
    rng = np.random.default_rng(0)
    bounds = np.cumsum((0,) + spec.sizes)
    fitting = np.concatenate([rng.integers(bounds[i], bounds[i + 1], 300) for i in range(4)])
    overflowing = np.concatenate([rng.integers(50, 1550, 900), rng.integers(0, 4550, 300)])
    for ids in (rng.permutation(fitting), rng.permutation(overflowing)):
        capacities = embeddings.block_capacities(spec, len(ids))
        assert embeddings.head_blocks(spec, capacities) == 2 and capacities[2] < 900
        np.testing.assert_allclose(lookup(params, spec, ids), naive_lookup(params, spec, ids), rtol=1e-5, atol=1e-6)
        ct = rng.standard_normal((len(ids), 16)).astype(np.float32)
        grads = jax.jit(jax.grad(lambda p, i: jnp.sum(lookup(p, spec, i) * ct)))(params, ids)
        want_tables, want_projections = naive_grads(params, spec, ids, ct)
        for got, want in zip(grads.tables, want_tables):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_project_matches_the_plain_product_under_every_transformation():
    """embeddings.project (a custom JVP that lays out vectors.T for the projection's gradient)
    against ``v @ p``: values, gradients, forward mode, second order, vmap, and a gradient
    with respect to one operand only."""
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.standard_normal((37, 5)), jnp.float32)
    p = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((37, 8)), jnp.float32)
    fast = lambda v, p: jnp.sum(jnp.sin(embeddings.project(v, p)) * w)  # noqa: E731
    plain = lambda v, p: jnp.sum(jnp.sin(v @ p) * w)  # noqa: E731
    close = partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
    close(embeddings.project(v, p), v @ p)
    for got, want in zip(jax.jit(jax.grad(fast, (0, 1)))(v, p), jax.grad(plain, (0, 1))(v, p)):
        close(got, want)
    close(jax.grad(fast, 1)(v, p), jax.grad(plain, 1)(v, p))
    close(jax.grad(fast, 0)(v, p), jax.grad(plain, 0)(v, p))
    close(jax.jvp(fast, (v, p), (w[:, :5], p))[1], jax.jvp(plain, (v, p), (w[:, :5], p))[1])
    close(jax.hessian(fast, 1)(v, p), jax.hessian(plain, 1)(v, p))
    stacked = jnp.stack([v, 2 * v])
    close(jax.vmap(jax.grad(fast, 1), (0, None))(stacked, p), jax.vmap(jax.grad(plain, 1), (0, None))(stacked, p))


def test_capacity_none_differentiates_in_forward_mode_and_to_second_order():
    # The default (grouped) path has a custom VJP: first-order reverse mode only. capacity=None
    # must give the same values through every transformation: jvp against the hand-accumulated
    # gradient (adjoint identity), and Hessian-vector products, forward over reverse and reverse
    # over reverse, against central differences of the default path's gradient.
    spec = MDSpec((10, 40, 1500, 3000), (16, 8, 4, 2), 16, loads=(0.25, 0.25, 0.25, 0.25))
    params = init(jax.random.key(3), spec)
    rng = np.random.default_rng(1)
    bounds = np.cumsum((0,) + spec.sizes)
    ids = rng.permutation(np.concatenate([rng.integers(bounds[i], bounds[i + 1], 300) for i in range(4)]))
    assert embeddings.head_blocks(spec, embeddings.block_capacities(spec, len(ids))) == 2  # blocks 2-3 routed
    keys = iter(jax.random.split(jax.random.key(4), 8))
    direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), params)
    ct = rng.standard_normal((len(ids), 16)).astype(np.float32)

    np.testing.assert_allclose(lookup(params, spec, ids, capacity=None), lookup(params, spec, ids),
                               rtol=1e-5, atol=1e-6)
    tangent = jax.jit(lambda p, v: jax.jvp(lambda q: lookup(q, spec, ids, capacity=None), (p,), (v,))[1])(
        params, direction)
    want_tables, want_projections = naive_grads(params, spec, ids, ct)
    pairs = list(zip(direction.tables, want_tables)) + [
        (v, g) for v, g in zip(direction.projections, want_projections) if v is not None]
    adjoint = sum(float(np.sum(np.asarray(v, np.float64) * g)) for v, g in pairs)
    np.testing.assert_allclose(float(np.sum(np.asarray(tangent, np.float64) * ct)), adjoint, rtol=1e-4)

    def loss(p, capacity):
        return jnp.sum(lookup(p, spec, ids, capacity) ** 2 * ct)

    def along(step):
        return jax.tree.map(lambda x, v: x + jnp.float32(step) * v, params, direction)

    grad_default = jax.jit(jax.grad(partial(loss, capacity="auto")))
    eps = 1e-3
    want = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) - np.asarray(b, np.float64)) / (2 * eps),
                        grad_default(along(eps)), grad_default(along(-eps)))
    grad_none = jax.grad(partial(loss, capacity=None))
    forward_over_reverse = jax.jit(lambda p, v: jax.jvp(grad_none, (p,), (v,))[1])(params, direction)
    reverse_over_reverse = jax.jit(jax.grad(lambda p, v: sum(
        jnp.vdot(g, x) for g, x in zip(jax.tree.leaves(grad_none(p)), jax.tree.leaves(v)))))(params, direction)
    for hvp in (forward_over_reverse, reverse_over_reverse):
        for got, expected in zip(jax.tree.leaves(hvp), jax.tree.leaves(want)):
            scale = np.max(np.abs(expected))
            np.testing.assert_allclose(np.asarray(got) / scale, expected / scale, atol=5e-4)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6), capacity=st.integers(1, 30),
       limit=st.sampled_from([None, 0.5, 1.0, 2.0, 3.0]))
def test_head_is_the_prefix_of_blocks_within_the_rows_per_slot_limit(sizes, capacity, limit):
    spec = MDSpec(tuple(sizes), (1,) * len(sizes), 1)
    capacities = tuple(capacity + i for i in range(len(sizes)))
    head = embeddings.head_blocks(spec, capacities, limit)
    per_slot = embeddings.HEAD_ROWS_PER_SLOT if limit is None else limit
    assert all(sizes[i] <= per_slot * capacities[i] for i in range(head))
    assert head == len(sizes) or sizes[head] > per_slot * capacities[head]


@pytest.mark.parametrize("head", [0, 1, 2, 3])
def test_every_split_into_head_and_routed_blocks_agrees(head):
    """Capacities chosen so that 0 to 3 of the 3 blocks form the head; out-of-range ids give NaN."""
    spec = MDSpec((6, 20, 50), (8, 4, 2), 8)
    params = init(jax.random.key(2), spec)
    capacity = {0: 2, 1: 4, 2: 12, 3: 29}[head]
    assert embeddings.head_blocks(spec, (capacity,) * 3) == head
    rng = np.random.default_rng(head)
    ids = rng.integers(0, spec.n_rows, 60).astype(np.int32)
    ct = rng.standard_normal((60, 8)).astype(np.float32)
    f = jax.jit(lambda p, i: lookup(p, spec, i, capacity=capacity))
    np.testing.assert_allclose(f(params, ids), naive_lookup(params, spec, ids), rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(lambda p, i: jnp.sum(lookup(p, spec, i, capacity=capacity) * ct)))(params, ids)
    want_tables, want_projections = naive_grads(params, spec, ids, ct)
    for got, want in zip(grads.tables + grads.projections[1:], want_tables + want_projections[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    bad = ids.copy()
    bad[[3, 7]] = [-1, spec.n_rows]
    out = np.asarray(f(params, bad))
    assert np.isnan(out[[3, 7]]).all() and not np.isnan(np.delete(out, [3, 7], axis=0)).any()


def test_small_layer_projects_whole_tables_and_agrees():
    spec = MDSpec((3, 5), (4, 2), 4)
    params = init(jax.random.key(0), spec)
    ids = np.random.default_rng(0).integers(0, 8, 64)  # batch larger than the layer
    np.testing.assert_allclose(lookup(params, spec, ids), naive_lookup(params, spec, ids), rtol=1e-5, atol=1e-6)


def test_uniform_is_the_one_block_layer():
    spec = MDSpec.uniform(20, 6)
    params = init(jax.random.key(0), spec)
    assert params.projections == (None,) and params.tables[0].shape == (20, 6)
    ids = np.array([[3, 19], [0, 0]])
    np.testing.assert_array_equal(lookup(params, spec, ids), params.tables[0][ids])


def test_materialize():
    spec = MDSpec((4, 6, 2), (5, 3, 1), 5)
    params = init(jax.random.key(2), spec)
    table = materialize(params, spec)
    assert table.shape == (12, 5)
    np.testing.assert_allclose(table, naive_lookup(params, spec, np.arange(12)), rtol=1e-6, atol=1e-7)


def test_jit_and_eager_agree_and_no_recompilation():
    spec = MDSpec((30, 70), (8, 2), 8)
    params = init(jax.random.key(0), spec)
    traces = []

    @jax.jit
    def f(p, ids):
        traces.append(1)
        return lookup(p, spec, ids)

    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = rng.integers(0, 100, 64)
        np.testing.assert_allclose(f(params, ids), lookup(params, spec, ids), rtol=1e-6)
    assert len(traces) == 1  # new batches of the same shape reuse the compiled function
    f(params, rng.integers(0, 100, 32))
    assert len(traces) == 2
    ct = rng.standard_normal((64, 8)).astype(np.float32)
    for capacity in ("auto", 3):  # gradients too: grouped, and grouped with the overflow fallback
        grad = jax.grad(lambda p, i: jnp.sum(lookup(p, spec, i, capacity=capacity) * ct))
        for got, want in zip(jax.tree.leaves(jax.jit(grad)(params, ids)), jax.tree.leaves(grad(params, ids))):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("capacity, head", [(14, 0), (30, 1)])
def test_vmap_over_parameters_and_ids(capacity, head):
    """With 14 slots both blocks are routed, and one of the mapped batches fits its slots
    while the others overflow (the fallback loop runs under vmap)."""
    spec = MDSpec((30, 70), (8, 2), 8)
    stacked = jax.vmap(lambda key: init(key, spec))(jax.random.split(jax.random.key(0), 3))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (3, 24))
    ids[0, :16] = 5  # 16 ids in block 0
    ids[1] = rng.permutation(np.concatenate([rng.integers(0, 30, 12), rng.integers(30, 100, 12)]))
    ids[2, :20] = 30 + np.arange(20)  # at least 20 ids in block 1
    capacities = (min(capacity, 24),) * 2
    assert embeddings.head_blocks(spec, capacities) == head
    if head == 0:
        assert [bool(embeddings.route(spec, jnp.asarray(i), capacities).fits) for i in ids] == [False, True, False]
    out = jax.vmap(lambda p, i: lookup(p, spec, i, capacity=capacity))(stacked, ids)
    for j in range(3):
        single = jax.tree.map(lambda x: x[j], stacked)
        np.testing.assert_allclose(out[j], naive_lookup(single, spec, ids[j]), rtol=1e-5, atol=1e-6)
    ct = np.random.default_rng(1).standard_normal((3, 24, 8)).astype(np.float32)
    grads = jax.vmap(jax.grad(lambda p, i, c: jnp.sum(lookup(p, spec, i, capacity=capacity) * c)))(stacked, ids, ct)
    assert grads.tables[0].shape == (3, 30, 8)
    for j in range(3):
        single = jax.tree.map(lambda x: x[j], stacked)
        want_tables, want_projections = naive_grads(single, spec, ids[j], ct[j])
        for got, want in zip((grads.tables[0][j], grads.tables[1][j], grads.projections[1][j]),
                             (want_tables[0], want_tables[1], want_projections[1])):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [MDSpec((30, 70), (8, 2), 8), MDSpec.uniform(10, 4)], ids=["md", "uniform"])
def test_empty_batches(spec):
    params = init(jax.random.key(0), spec)
    for shape in ((0,), (3, 0), (0, 5)):
        ids = np.zeros(shape, np.int64)
        assert lookup(params, spec, ids).shape == shape + (spec.base_dim,)
        assert jax.jit(lambda p, i: lookup(p, spec, i))(params, ids).shape == shape + (spec.base_dim,)
        grads = jax.grad(lambda p: jnp.sum(lookup(p, spec, ids)))(params)
        assert all(not np.any(g) for g in jax.tree.leaves(grads))
    bags = lookup_bag(params, spec, np.zeros((4, 0), np.int64), mode="mean")
    np.testing.assert_array_equal(bags, np.zeros((4, spec.base_dim)))


@pytest.mark.parametrize("spec", [MDSpec((5, 5), (4, 2), 4), MDSpec.uniform(10, 4), MDSpec((10,), (2,), 4)],
                         ids=["md", "uniform", "one-projected-block"])
def test_out_of_range_ids(spec):
    params = init(jax.random.key(0), spec)
    with pytest.raises(IndexError, match=r"2 ids outside \[0, 10\)"):
        lookup(params, spec, np.array([0, 10, -1]))
    with pytest.raises(TypeError, match="ids must be integers"):
        lookup(params, spec, np.array([0.5]))
    with pytest.raises(TypeError, match="ids must be integers, got dtype float32"):  # dtypes are static under jit
        jax.jit(lambda p, i: lookup(p, spec, i))(params, np.array([0.5], np.float32))
    for capacity in CAPACITIES:
        f = jax.jit(lambda p, i: lookup(p, spec, i, capacity=capacity))
        out = f(params, np.array([1, 10, -1, 7]))
        assert np.isfinite(out[0]).all() and np.isfinite(out[3]).all()
        assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
        # Bad ids get no gradient.
        grads = jax.grad(lambda p: jnp.nansum(f(p, np.array([10, -1]))))(params)
        assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads))


def test_padding_rows_of_a_uniform_table_are_out_of_range():
    """Tables padded for row sharding (mdcf.sharding) carry rows past the spec's: ids there are bad ids."""
    spec = MDSpec.uniform(10, 4)
    params = init(jax.random.key(0), spec)
    padded = params._replace(tables=(jnp.concatenate([params.tables[0], jnp.ones((2, 4), jnp.float32)]),))
    out = jax.jit(lambda p, i: lookup(p, spec, i))(padded, np.array([9, 10, 11]))
    np.testing.assert_array_equal(out[0], params.tables[0][9])
    assert np.isnan(out[1:]).all()


def test_lookup_bag_matches_naive():
    spec = MDSpec((6, 10), (4, 2), 4)
    params = init(jax.random.key(3), spec)
    ids = np.array([[0, 7, -1], [15, -1, -1], [-1, -1, -1]])
    weights = np.array([[1.0, 2.0, 5.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
    vectors = naive_lookup(params, spec, np.where(ids < 0, 0, ids))
    present = (ids >= 0)[..., None]
    want_sum = np.sum(vectors * present * weights[..., None], axis=1)
    got = lookup_bag(params, spec, ids, weights, mode="sum")
    np.testing.assert_allclose(got, want_sum, rtol=1e-5, atol=1e-6)
    norm = np.sum(present[..., 0] * weights, axis=1, keepdims=True)
    want_mean = want_sum / np.where(norm == 0, 1, norm)
    np.testing.assert_allclose(lookup_bag(params, spec, ids, weights, mode="mean"), want_mean, rtol=1e-5, atol=1e-6)
    assert np.all(lookup_bag(params, spec, ids, mode="mean")[2] == 0)  # an all-padding bag
    with pytest.raises(ValueError, match="mode must be"):
        lookup_bag(params, spec, ids, mode="max")
    with pytest.raises(IndexError):
        lookup_bag(params, spec, np.array([[16]]))
    # Padding's weights are ignored, whatever they hold, and so is the row padding reads.
    junk = np.where(ids < 0, np.nan, weights).astype(np.float32)
    junk[1, 1] = np.inf
    for mode, want in (("sum", want_sum), ("mean", want_mean)):
        np.testing.assert_allclose(lookup_bag(params, spec, ids, junk, mode=mode), want, rtol=1e-5, atol=1e-6)
    broken = params._replace(tables=(params.tables[0].at[0].set(jnp.inf),) + params.tables[1:])
    np.testing.assert_allclose(lookup_bag(broken, spec, np.array([[7, -1]]))[0], vectors[0, 1], rtol=1e-5)


def test_init_scale_and_param_count():
    spec = MDSpec((2000, 6000), (32, 4), 32)
    params = init(jax.random.key(0), spec, stddev=0.1)
    assert sum(x.size for x in jax.tree.leaves(params)) == num_params(spec)
    table = np.asarray(materialize(params, spec))
    for block in (table[:2000], table[2000:]):
        assert block.std() == pytest.approx(0.1, rel=0.1)
    p = np.asarray(params.projections[1])
    np.testing.assert_allclose(p @ p.T, np.eye(4) * 32 / 4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_init_in_half_precision_rounds_the_float32_layer(dtype):
    """Half-precision layers (QR has no half-precision kernel on the CPU) hold the float32
    layer's values, rounded, and look up and differentiate in their own dtype."""
    spec = MDSpec((3, 5, 40), (8, 4, 2), 8)
    full = init(jax.random.key(0), spec)
    half = init(jax.random.key(0), spec, dtype=dtype)
    for x, y in zip(jax.tree.leaves(half), jax.tree.leaves(full)):
        assert x.dtype == dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(dtype)))
    ids = np.arange(spec.n_rows)
    out = jax.jit(lambda p: lookup(p, spec, ids, 4))(half)  # routed blocks
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out), np.asarray(materialize(half, spec)))
    grads = jax.grad(lambda p: jnp.sum(lookup(p, spec, ids, 4).astype(jnp.float32)))(half)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}
    with pytest.raises(TypeError, match="dtype must be a floating type"):
        init(jax.random.key(0), spec, dtype=jnp.int32)


def test_spec_is_static_hashable_and_round_trips():
    spec = MDSpec((3, 9), (4, 2), 4, loads=(3, 1))
    assert spec.loads == (0.75, 0.25)
    assert hash(spec) == hash(MDSpec((3, 9), (4, 2), 4, loads=(0.75, 0.25)))
    assert MDSpec.from_json(spec.to_json()) == spec
    assert MDSpec.from_dict(json.loads(MDSpec((3,), (3,), 3).to_json())) == MDSpec.uniform(3, 3)
    assert spec.offsets == (0, 3) and spec.n_rows == 12 and spec.projected == (False, True)
    params = init(jax.random.key(0), spec)
    jax.jit(lookup, static_argnums=(1,))(params, spec, np.array([0, 11]))


@pytest.mark.parametrize(
    "args, message",
    [
        (((3,), (4,), 3), r"block dims must lie in \[1, base_dim=3\]"),
        (((3, 4), (2,), 3), "one dim per block"),
        (((0,), (1,), 3), "sizes must be >= 1"),
        (((3,), (1,), 0), "base_dim must be >= 1"),
    ],
)
def test_spec_validation(args, message):
    with pytest.raises(ValueError, match=message):
        MDSpec(*args)
    with pytest.raises(ValueError, match="loads"):
        MDSpec((3,), (1,), 2, loads=(-1.0,))
    with pytest.raises(TypeError):
        MDSpec(("a",), (1,), 2)


@pytest.mark.parametrize("args", [((10.7,), (4,), 4), ((10,), (2.5,), 4), ((10,), (4,), 4.5), ((True,), (1,), 1),
                                  ((10,), (4,), "4")])
def test_spec_refuses_non_integers_instead_of_truncating(args):
    with pytest.raises(TypeError, match="MDSpec needs integer sizes, dims and base_dim"):
        MDSpec(*args)
    # Whole floats and numpy integers are integers.
    assert MDSpec((10.0, np.int64(3)), (np.uint8(4), 2.0), np.int32(4)) == MDSpec((10, 3), (4, 2), 4)


def test_params_are_a_pytree():
    spec = MDSpec((3, 9), (4, 2), 4)
    params = init(jax.random.key(0), spec)
    assert isinstance(params, MDParams)
    assert len(jax.tree.leaves(params)) == 3  # two tables, one projection
    doubled = jax.tree.map(lambda x: 2 * x, params)
    assert doubled.projections[0] is None


# Compiled once for all examples of the property test below.
_take_fill = jax.jit(partial(embeddings.take_rows, fill_value=-1.5))
_take_clip = jax.jit(partial(embeddings.take_rows, fill_value=None))
_scatter_add = jax.jit(embeddings.scatter_rows)
_scatter_set = jax.jit(partial(embeddings.scatter_rows, op="set", unique_indices=True))
_take_grad = jax.jit(jax.grad(lambda t, i, w: jnp.sum(embeddings.take_rows(t, i) * w)))
_take_clip_grad = jax.jit(jax.grad(lambda t, i, w: jnp.sum(embeddings.take_rows(t, i, None) * w)))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(7,), (7, 1), (7, 2), (7, 3), (7, 4), (7, 6), (7, 8), (7, 10), (7, 12), (7, 13),
                           (7, 18), (7, 24), (7, 56), (5, 64)]),
    # Two batch lengths, so that examples share compiled functions.
    ids=st.sampled_from([1, 20]).flatmap(lambda n: st.lists(st.integers(-3, 10), min_size=n, max_size=n)),
    seed=st.integers(0, 50),
)
def test_take_and_scatter_rows_match_numpy(shape, ids, seed):
    """The reshaped gathers and scatters of table rows against numpy, out-of-range ids included."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal(shape).astype(np.float32)
    ids = np.array(ids, np.int32)
    values = rng.standard_normal((len(ids),) + shape[1:]).astype(np.float32)
    valid = (ids >= 0) & (ids < shape[0])

    want = np.where(valid.reshape((-1,) + (1,) * (len(shape) - 1)), table[np.where(valid, ids, 0)], np.float32(-1.5))
    got = _take_fill(table, ids)
    np.testing.assert_array_equal(got, want)
    clipped = _take_clip(table, ids)  # clamped rows
    np.testing.assert_array_equal(clipped, table[np.clip(ids, 0, shape[0] - 1)])

    added = table.copy()
    np.add.at(added, ids[valid], values[valid])
    np.testing.assert_allclose(_scatter_add(table, ids, values), added, rtol=1e-6, atol=1e-6)

    _, first = np.unique(ids, return_index=True)  # one update per row for "set"
    unique = np.full_like(ids, shape[0] + 5)
    unique[first] = ids[first]
    unique_valid = (unique >= 0) & (unique < shape[0])
    written = table.copy()
    written[unique[unique_valid]] = values[unique_valid]
    got = _scatter_set(table, unique, values)
    np.testing.assert_array_equal(got, written)

    weights = rng.standard_normal(values.shape).astype(np.float32)
    grad = _take_grad(table, ids, weights)
    want_grad = np.zeros_like(table)
    np.add.at(want_grad, ids[valid], weights[valid])
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)
    grad = _take_clip_grad(table, ids, weights)
    want_grad = np.zeros_like(table)
    np.add.at(want_grad, np.clip(ids, 0, shape[0] - 1), weights)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_row_view_is_taken_on_cpu_only(monkeypatch, backend):
    """The [n, a, b] view of the rows speeds up CPU gathers and scatters but makes XLA
    copy the whole table per scatter on a GPU: other backends gather from the table as it is,
    with the same results."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    table = jnp.arange(84, dtype=jnp.float32).reshape(7, 12)
    ids = jnp.asarray([3, -1, 6, 3, 9], jnp.int32)
    values = jnp.ones((5, 12), jnp.float32)
    jaxprs = [str(jax.make_jaxpr(lambda t, i: embeddings.take_rows(t, i))(table, ids)),
              str(jax.make_jaxpr(lambda t, i, v: embeddings.scatter_rows(t, i, v))(table, ids, values))]
    for text in jaxprs:
        assert ("f32[7,2,6]" in text) == (backend == "cpu"), text
    got = jax.jit(lambda t, i: embeddings.take_rows(t, i, fill_value=-1.0))(table, ids)
    got = np.asarray(got)
    np.testing.assert_array_equal(got[[0, 2, 3]], np.asarray(table)[[3, 6, 3]])
    np.testing.assert_array_equal(got[[1, 4]], -1.0)
    added = np.asarray(table).copy()
    np.add.at(added, [3, 6, 3], 1.0)
    np.testing.assert_array_equal(jax.jit(embeddings.scatter_rows)(table, ids, values), added)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(-3, 18), min_size=1, max_size=700), k_extra=st.integers(-2, 3),
       chunk=st.sampled_from([1, 2, 7, 32, 64, 255]), shifted=st.booleans())
def test_ranks_match_counting(values, k_extra, chunk, shifted):
    """Each entry's rank is the number of earlier entries with the same value (plus that value's
    start, when given), for every chunk size (and so every packing of groups into words),
    against a count; values outside ``[0, k)`` get 0 and are not counted, and the counts
    per value are returned."""
    values = np.array(values, np.int32)
    k = max(1, int(values.max()) + 1 + k_extra)
    start = np.arange(k) * 1000 + 7 if shifted else np.zeros(k, int)
    want = np.array([np.sum(values[:i] == v) + start[v] if 0 <= v < k else 0 for i, v in enumerate(values)])
    got, counts = jax.jit(partial(routing.ranks, k=k, chunk=chunk, start=start if shifted else None))(values)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, np.bincount(values[(values >= 0) & (values < k)], minlength=k))


@settings(max_examples=40, deadline=None)
@given(spec=specs(max_blocks=6), ids=st.lists(st.integers(-4, 60), min_size=1, max_size=300),
       capacity=st.integers(1, 120))
def test_route_groups_every_id_that_fits(spec, ids, capacity):
    """route: rows per block in batch order, distinct slots, and ``fits`` exactly when no block overflows."""
    ids = np.array(ids, np.int32)
    capacities = (capacity,) * spec.n_blocks
    routing = jax.jit(partial(embeddings.route, spec, capacities=capacities))(ids)
    offsets = np.array(spec.offsets + (spec.n_rows,))
    valid = (ids >= 0) & (ids < spec.n_rows)
    block = np.searchsorted(offsets, ids, side="right") - 1
    slot = np.asarray(routing.slot)
    for i, size in enumerate(spec.sizes):
        mine = ids[valid & (block == i)] - offsets[i]
        kept = mine[:capacity]
        rows = np.asarray(routing.rows[i])
        np.testing.assert_array_equal(rows[:len(kept)], kept)
        assert (rows[len(kept):] == size).all()
        positions = np.flatnonzero(valid & (block == i))[:capacity]
        np.testing.assert_array_equal(slot[positions], i * capacity + np.arange(len(positions)))
        placed = np.asarray(routing.positions[i])
        np.testing.assert_array_equal(placed[:len(positions)], positions)
        assert (placed[len(positions):] == len(ids)).all()
    has_slot = slot < capacity * spec.n_blocks
    assert len(set(slot[has_slot].tolist())) == has_slot.sum()
    assert not has_slot[~valid].any()
    overflow = any(np.sum(valid & (block == i)) > capacity for i in range(spec.n_blocks))
    assert bool(routing.fits) == (not overflow)


@settings(max_examples=10, deadline=None)
@given(spec=specs(max_blocks=5), ids=st.lists(st.integers(-3, 50), min_size=1, max_size=80),
       capacity=st.integers(1, 30), fill=st.sampled_from([0.0, float("nan")]), seed=st.integers(0, 99))
def test_assemble_by_positions_matches_stack_and_gather(spec, ids, capacity, fill, seed):
    """assemble's scatter into batch positions against the plain stack-and-gather, values and gradients."""
    ids = np.array(ids, np.int32)
    routing = jax.jit(partial(embeddings.route, spec, capacities=(capacity,) * spec.n_blocks))(ids)
    plain = routing._replace(positions=None)
    rng = np.random.default_rng(seed)
    vectors = tuple(jnp.asarray(rng.standard_normal((capacity, spec.base_dim)).astype(np.float32))
                    for _ in range(spec.n_blocks))
    weights = rng.standard_normal((len(ids), spec.base_dim)).astype(np.float32)

    def total(v, r):
        out = embeddings.assemble(spec, v, r, fill)
        return jnp.sum(jnp.where(jnp.isnan(out), 0, out) * weights), out

    both = jax.jit(lambda v: (jax.value_and_grad(total, has_aux=True)(v, plain),
                              jax.value_and_grad(total, has_aux=True)(v, routing)))
    ((want_sum, want), want_grads), ((got_sum, got), got_grads) = both(vectors)
    np.testing.assert_array_equal(got, want)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
