"""MD layer speed against a uniform table at the same base dimension.

For each (rows, batch, blocks) configuration this prints, in one run, the
forward+backward time per batch of

* a uniform ``[rows, d0]`` table (``jax.grad`` of a plain gather),
* an MD layer at the same ``d0`` (dimensions from :func:`mdcf.sizing.popularity_dims`),
* an MD layer with 8x fewer parameters than the uniform table
  (:func:`mdcf.sizing.solve_budget`, projections counted),

as ratios to the uniform time, plus forward-only (inference) ratios for the MD
layer and for its pre-projected table (:func:`mdcf.embeddings.materialize`, one
gather with :func:`mdcf.embeddings.take_rows`), and the memory each compiled
forward+backward takes for its temporary buffers.

The ``prod`` columns time, for each MD layer, its projection products alone: per
projected block ``E_i[rows] @ P_i`` and the two gradient products (as
:func:`mdcf.embeddings.project` runs them), on as many rows as the batch has distinct
ids in the block, and nothing else (no gather, scatter or grouping of ids). Every
exact MD step runs at least these products, so this ratio is a floor under the MD
ratio as XLA runs the products on this machine: where it nears the target, no
arrangement of the rest of the step meets it.

The ``arith`` columns give what those products' arithmetic alone costs: their
floating-point operations at this machine's dense matrix product rate (measured at
the start of the run, the best of several 2048 x 2048 products, and printed in the
header), relative to the uniform step. Where ``prod`` is far above ``arith``, the
products' cost is not their arithmetic but running many small products one by one
(each a separate call into a matrix library): a kernel that fused them would lower
that floor.

Rows are frequency-sorted with Zipf popularity and cut into equal-mass blocks; ids
are drawn from that popularity. Each variant is timed on the same batches, four to a
jitted call, with the projections rescaled between batches by a factor the compiler
cannot see is 1.0: with parameters constant through the call, it would hoist the
products ``E_i @ P_i`` of the blocks projected whole out of the loop, which a
training step, whose parameters change, cannot do. Each round times every variant
once, in turn (the order reversed every other round), and a ratio is taken within
the round, so that the machine's slow and fast spells hit both sides of it alike;
the median over rounds is reported, with the range for the two targets.

Each forward+backward variant is compiled ``--copies`` times (3 by default), each copy
with its own executable and parameter buffers, and a round times every copy and takes
their median. Where a program's buffers land in memory changes its speed: two copies of
the same MD layer with 8x fewer parameters, timed in the same rounds (10^5 rows, batch
4,096, k=16), took 1.56x and 1.21x the uniform time in one process, 1.41x and 1.18x in
another. With one copy a ratio near a target falls on either side of it from run to run;
the median of three copies is steadier.

Memory is reused from call to call, as in a training loop (``--allocator steady``,
the default): on Linux the script runs itself again with glibc tunables that keep
freed memory in one arena and map any fresh memory in transparent huge pages. With
glibc's defaults (``--allocator system``), buffers above 32 MB (and, depending on
the process's history, smaller ones) are returned to the system after every call
and mapped afresh on the next, and every first touch of a 4 KB page faults: at
10^6 rows that made up more than half of the uniform step's time (1M rows, batch
65,536: 170-210 ms per call of four batches with the faults, 70-85 ms without),
and it came and went between runs at 10^5 rows. The ``faults`` column gives the page
faults per timed call (the most of any variant): near 0 when memory is reused.

Targets on a 2-core CPU: MD <= 1.5x the uniform step at the same d0; MD with 8x
fewer parameters <= 1.0x.

With ``--methods``, the script instead compares the ways to shrink a table, each at 1/8
of the uniform table's parameters (every parameter counted): MD (``md``), low-rank
(``lowrank``), quotient-remainder (``qr``), the hashing trick (``hash``), tensor-train
(``tt``) and MD with post-training int8 rows (``md-int8``, forward only), on the
``--rows`` x ``--batches`` grid (k is the first ``--blocks``): per method its
parameters, its stored bytes, and its forward+backward and forward-only time as
ratios to the uniform table's, in alternating rounds as above (one compiled copy each).

With ``--torch`` (PyTorch installed), the same rounds also time the PyTorch layers a
researcher would use today, on the same ids, specs and cotangent: ``nn.Embedding``
(dense gradients, as ``jax.grad`` gives, and sparse ones), and an MD layer built
as facebookresearch/dlrm builds one (per block an ``nn.Embedding`` of ``d_i``
columns and a bias-free ``nn.Linear`` to ``d0``), its ids grouped by block. A
second table gives PyTorch's MD/uniform ratios beside mdcf's, and how long
mdcf's MD step takes against PyTorch's MD step. PyTorch runs with its default
threading, whose OpenMP threads keep spinning for a while after each call and
slow the JAX call timed next (``OMP_WAIT_POLICY=PASSIVE`` stops that but makes
PyTorch's small calls 1.5-2.5x slower): mdcf's figures in a ``--torch`` run are
pessimistic, so check the targets in a run without it.

Usage::

    python benchmarks/bench_embedding.py            # full grid (several minutes)
    python benchmarks/bench_embedding.py --quick    # three configurations
    python benchmarks/bench_embedding.py --copies 1 # one copy of each variant (faster, noisier)
    python benchmarks/bench_embedding.py --allocator system   # glibc's defaults: page faults on every call
    python benchmarks/bench_embedding.py --methods md lowrank qr hash tt md-int8 --rows 1e5 1e6 --batches 4096
    pip install torch --index-url https://download.pytorch.org/whl/cpu
    python benchmarks/bench_embedding.py --rows 1e4 1e5 --torch
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

# glibc's allocator hands large freed blocks (above 32 MB, or above a threshold that
# moves with the process's history) back to the system and maps them afresh on the next
# call, whose first touch of every 4 KB page then faults: a uniform table's gradient
# (256 MB at 10^6 rows) costs more in page faults than in arithmetic, and whether a
# 30-60 MB buffer faults changes from run to run. A training loop reuses its memory, so
# by default this script runs with freed memory kept in one arena for reuse, and any
# fresh mapping in transparent huge pages (where the system allows them).
_STEADY_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=1099511627776:"
                    "glibc.malloc.trim_threshold=1099511627776:glibc.malloc.hugetlb=1")
_STEADY_FLAG = "MDCF_BENCH_STEADY_ALLOCATOR"

# The ways to shrink a table that --methods compares, each at 1/8 of the uniform table's parameters.
METHODS = ("md", "lowrank", "qr", "hash", "tt", "md-int8")


def _page_faults() -> int:
    """Minor page faults of this process so far (0 where the system does not say)."""
    try:
        import resource
    except ImportError:  # not a Unix system
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--batches", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--blocks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--base-dim", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent of the rows")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--copies", type=int, default=3,
                        help="compiled copies of each forward+backward variant, timed in every round "
                             "(the median of the copies is taken; see the module docstring)")
    parser.add_argument("--quick", action="store_true", help="three configurations only")
    parser.add_argument("--torch", action="store_true", help="also time PyTorch's table and a dlrm-style MD layer")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="instead of the MD grid: these ways to shrink a table at 1/8 of the uniform table's "
                             "parameters, against the uniform table (see the module docstring)")
    parser.add_argument("--allocator", choices=("steady", "system"), default="steady",
                        help="steady (default): keep freed memory in the process, as in a training loop; "
                             "system: the C library's defaults (see the module docstring)")
    args = parser.parse_args()
    if args.copies < 1 or args.rounds < 1:
        parser.error(f"--copies and --rounds must be at least 1, got {args.copies} and {args.rounds}")
    if not sys.platform.startswith("linux"):
        args.allocator = "system"  # the tunables are glibc's
    if args.allocator == "steady" and os.environ.get(_STEADY_FLAG) != "1":
        # glibc reads these at start-up: run this script again with them set.
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), _STEADY_TUNABLES]))
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "GLIBC_TUNABLES": tunables, _STEADY_FLAG: "1"})
    if args.torch:
        try:
            import torch
        except ImportError:
            parser.error("--torch needs PyTorch: pip install torch --index-url https://download.pytorch.org/whl/cpu")

    import jax
    import jax.numpy as jnp

    from mdcf import blocking, sizing
    from mdcf.data import zipf_weights
    from mdcf.embeddings import MDSpec, init, lookup, materialize, num_params, project, take_rows

    configs = list(itertools.product([int(r) for r in args.rows], args.batches, args.blocks))
    if args.quick:
        configs = [(10_000, 4096, 8), (200_000, 16384, 8), (1_000_000, 16384, 16)]
    d0 = args.base_dim
    steps = 4  # batches per timed call, run as one jitted scan

    def timed(spec, params, ids, cotangent, forward_only=False, pre_projected=False):
        def one(params, batch):
            if pre_projected:
                return jnp.sum(take_rows(params, batch) * cotangent)
            return jnp.sum(lookup(params, spec, batch) * cotangent)

        @jax.jit
        def run(params, ids):
            def body(carry, batch):
                total, projections = carry
                step_params = params if pre_projected else params._replace(projections=projections)
                if forward_only:
                    total = total + one(step_params, batch)
                else:
                    # The value is consumed too: with jax.grad alone the compiler drops the
                    # forward pass (the loss is linear in the lookup), timing the backward only.
                    value, grads = jax.value_and_grad(one)(step_params, batch)
                    total = total + value + sum(jnp.sum(g[:1]) for g in jax.tree.leaves(grads))
                # The projections change from step to step, as in training: scaled by a factor
                # that is 1.0 when it runs but that the compiler cannot know. Constant, they
                # would let it compute the products E_i @ P_i of the blocks projected whole once,
                # outside the loop, and leave them untimed. (Only the small projections are
                # carried: carrying the tables would copy them on every call.)
                factor = 1.0 + 1e-30 * total
                projections = tuple(None if p is None else p * factor for p in projections)
                return (total, projections), None

            projections = () if pre_projected else params.projections
            return jax.lax.scan(body, (0.0, projections), ids)[0][0]

        compiled = run.lower(params, ids).compile()
        compiled(params, ids).block_until_ready()
        call = lambda: compiled(params, ids).block_until_ready()  # noqa: E731
        memory = compiled.memory_analysis()
        call.temp_mb = float("nan") if memory is None else memory.temp_size_in_bytes / 1e6
        return call

    def product_rows(spec, ids):
        """``(block, rows)`` per projected block with ids in the batch: as many rows as the
        batch has distinct ids in the block (the mean over the call's batches)."""
        bounds = np.asarray(spec.offsets[1:] + (spec.n_rows,))
        distinct = np.mean([np.bincount(np.searchsorted(bounds, np.unique(b), side="right"),
                                        minlength=spec.n_blocks) for b in np.asarray(ids)], axis=0)
        return [(i, int(distinct[i])) for i in range(spec.n_blocks) if spec.projected[i] and int(distinct[i]) > 0]

    def product_flops(spec, ids):
        """Floating-point operations per batch of the products :func:`products_timed` runs."""
        return sum(3 * 2 * m * spec.dims[i] * spec.base_dim for i, m in product_rows(spec, ids))

    def matmul_rate():
        """This machine's dense float32 matrix product rate, FLOP/s: the best of several
        ``[2048, 2048] @ [2048, 2048]`` products. The step's small products run slower than
        large square ones (``[4096, 32] @ [32, 64]``: about 130 GFLOP/s on a 2-core CPU that
        runs these at 410-470), so the arithmetic costs at least its ``arith`` share."""
        a = jnp.ones((2048, 2048), jnp.float32)
        product = jax.jit(lambda a: a @ a).lower(a).compile()
        product(a).block_until_ready()
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            product(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return 2 * 2048 ** 3 / best

    def products_timed(spec, params, ids, cotangent):
        """The projection products alone: per projected block ``i``, ``E_i[rows] @ P_i`` and the
        gradient products ``G @ P_i^T`` and ``E_i[rows]^T @ G``, on as many rows as the batch
        has distinct ids in the block (:func:`product_rows`), through
        :func:`mdcf.embeddings.project` as the MD layer runs them. Any exact MD step runs at
        least these, so their time is a floor under the MD step's, as XLA runs them."""
        chosen = product_rows(spec, ids)
        # Sliced once, outside the timed call: a slice inside it would add a copy.
        rows = tuple(params.tables[i][:m] for i, m in chosen)
        grads = tuple(cotangent[:m] for _, m in chosen)

        @jax.jit
        def run(rows, grads, projections, ids):
            def body(carry, _):
                total, projections = carry
                for x, g, p in zip(rows, grads, projections):
                    # x changes from step to step (by a factor of 1.0 the compiler cannot know),
                    # as a batch's rows do: else it would compute x^T @ g once, outside the loop.
                    x = x * (1.0 + 1e-30 * total)
                    out, backward = jax.vjp(project, x, p)  # the products as the MD layer runs them
                    dx, dp = backward(g)
                    total = total + jnp.sum(out) + jnp.sum(dx) + jnp.sum(dp)
                factor = 1.0 + 1e-30 * total  # changing projections, as in `timed`
                return (total, tuple(p * factor for p in projections)), None

            return jax.lax.scan(body, (0.0, projections), ids)[0][0]

        projections = tuple(params.projections[i] for i, _ in chosen)
        compiled = run.lower(rows, grads, projections, ids).compile()
        compiled(rows, grads, projections, ids).block_until_ready()
        return lambda: compiled(rows, grads, projections, ids).block_until_ready()

    def torch_timed(sizes, dims, ids, cotangent, sparse):
        """PyTorch forward+backward of the same batches: a table when ``sizes`` has one
        block, else a table and a bias-free Linear per projected block, ids grouped by block."""
        torch.manual_seed(0)
        tables = [torch.nn.Embedding(n, d, sparse=sparse) for n, d in zip(sizes, dims)]
        linears = [torch.nn.Linear(d, d0, bias=False) if d < d0 else None for d in dims]
        params = [p for m in tables + linears if m is not None for p in m.parameters()]
        starts = torch.tensor(np.cumsum(sizes)[:-1].astype(np.int64))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        batches = torch.from_numpy(np.asarray(ids).astype(np.int64))
        grad_out = torch.from_numpy(np.array(cotangent))  # a writable copy

        def forward(batch):
            if len(sizes) == 1:
                return tables[0](batch)
            block = torch.bucketize(batch, starts, right=True)
            out = torch.empty(batch.shape[0], d0)
            for i, (table, linear) in enumerate(zip(tables, linears)):
                where = torch.nonzero(block == i, as_tuple=True)[0]
                vectors = table(batch[where] - offsets[i])
                out = out.index_copy(0, where, vectors if linear is None else linear(vectors))
            return out

        def call():
            for batch in batches:
                for p in params:
                    p.grad = None
                (forward(batch) * grad_out).sum().backward()

        call()
        call.temp_mb = float("nan")
        return call

    def generic_timed(spec, params, ids, cotangent, forward_only=False, look=None):
        """As :func:`timed` for a scheme without projections (its parameters are all tables,
        nothing the compiler could hoist), or any ``look(params, batch)``."""
        look = look or (lambda p, b: lookup(p, spec, b))

        def one(params, batch):
            return jnp.sum(look(params, batch) * cotangent)

        @jax.jit
        def run(params, ids):
            def body(total, batch):
                if forward_only:
                    return total + one(params, batch), None
                value, grads = jax.value_and_grad(one)(params, batch)
                return total + value + sum(jnp.sum(g[:1]) for g in jax.tree.leaves(grads)), None

            return jax.lax.scan(body, 0.0, ids)[0]

        compiled = run.lower(params, ids).compile()
        compiled(params, ids).block_until_ready()
        return lambda: compiled(params, ids).block_until_ready()

    if args.methods:
        from mdcf.embeddings import hashing, lowrank, nbytes, qr, quantize, tt

        rng = np.random.default_rng(0)
        k = args.blocks[0]
        configs = [(int(r), b) for r in args.rows for b in args.batches]
        if args.quick:
            configs = [(100_000, 4096), (1_000_000, 16384)]
        print(f"bench_embedding --methods: d0={d0}, every method at 1/8 of the uniform table's parameters "
              f"(MD: alpha {args.alpha}, k={k}), Zipf {args.zipf}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
              f"uniform: ms per batch; the others: median (range) over {args.rounds} rounds of per-round ratios to "
              "the uniform table's time, forward+backward and forward alone")
        header = (f"{'rows':>9} {'batch':>6} | {'method':<8} | {'params':>11} {'share':>6} {'MB':>8} | "
                  f"{'fwd+bwd':>7} {'range':>9} | {'fwd':>6}")
        print(header)
        print("-" * len(header))
        for n, batch in configs:
            counts = zipf_weights(n, args.zipf) * n * 20
            blocks = blocking.equipartition(counts, k)
            budget = n * d0 // 8
            try:
                md = sizing.solve_budget(budget, blocks.sizes, blocks.row_probs, d0, args.alpha)
            except ValueError:
                md = sizing.solve_budget(budget, blocks.sizes, blocks.row_probs, d0, args.alpha, tolerance=0.05)
            md = md.with_loads(tuple(blocks.probs))
            def sized(solver):  # within 1% below the budget, else the nearest below within 20%
                try:
                    return solver(budget, n, d0)
                except ValueError:
                    return solver(budget, n, d0, tolerance=0.2)

            specs = {"uniform": MDSpec.uniform(n, d0), "md": md, "lowrank": sized(lowrank.for_budget),
                     "qr": sized(qr.for_budget), "hash": hashing.for_budget(budget, n, d0, seed=1),
                     "tt": sized(tt.for_budget)}
            probs = counts[blocks.order] / counts.sum()
            ids = jnp.asarray(rng.choice(n, size=(steps, batch), p=probs).astype(np.int32))
            cotangent = jnp.asarray(rng.standard_normal((batch, d0)).astype(np.float32))
            key = jax.random.key(0)
            calls, memory = {}, {}
            for name in ("uniform",) + tuple(m for m in args.methods if m != "md-int8"):
                spec, params = specs[name], init(key, specs[name])
                mine = timed if isinstance(spec, MDSpec) else generic_timed
                calls[name] = mine(spec, params, ids, cotangent)
                calls[name + " fwd"] = mine(spec, params, ids, cotangent, forward_only=True)
                memory[name] = (num_params(spec), nbytes(spec))
            if "md-int8" in args.methods:  # post-training rows: forward only
                q = quantize.quantize(md, init(key, md), bits=8)
                calls["md-int8 fwd"] = generic_timed(md, q, ids, cotangent, forward_only=True,
                                                     look=lambda q, b: quantize.lookup(q, md, b))
                memory["md-int8"] = (num_params(md), quantize.nbytes(q))
            start = time.perf_counter()
            calls["uniform"]()
            reps = max(1, int(0.03 / max(time.perf_counter() - start, 1e-6)))
            times = {name: [] for name in calls}
            order = list(calls)
            for round_ in range(args.rounds):
                for name in (order if round_ % 2 == 0 else order[::-1]):
                    start = time.perf_counter()
                    for _ in range(reps):
                        calls[name]()
                    times[name].append((time.perf_counter() - start) / reps)
            times = {name: np.asarray(t) for name, t in times.items()}
            uniform_ms = float(np.median(times["uniform"])) / steps * 1e3
            for name in ("uniform",) + tuple(args.methods):
                n_params, n_bytes = memory[name]
                share = n_params / memory["uniform"][0]
                if name == "uniform":
                    both = f"{uniform_ms:>6.2f}ms {'':>9}"
                elif name in times:
                    r = times[name] / times["uniform"]
                    both = f"{np.median(r):>6.2f}x {r.min():.2f}-{r.max():.2f}"
                else:
                    both = f"{'-':>7} {'':>9}"
                fwd = "" if name == "uniform" else f"{np.median(times[name + ' fwd'] / times['uniform fwd']):>5.2f}x"
                print(f"{n:>9,} {batch:>6} | {name:<8} | {n_params:>11,} {share:>6.3f} {n_bytes / 1e6:>8.2f} | "
                      f"{both} | {fwd:>6}", flush=True)
        print("share: parameters relative to the uniform table (projections, scales and offsets included; where a "
              "method's sizes step too coarsely to land within 1% below 1/8, the nearest below); MB: "
              "stored bytes (float32; md-int8: int8 codes, a float32 scale and offset per row, float32 "
              "projections); md-int8 is post-training (forward only)")
        return

    rows_out = []
    torch_rows = []
    rate = matmul_rate()
    print(f"bench_embedding: d0={d0}, alpha={args.alpha}, Zipf {args.zipf}, {os.cpu_count()} CPUs, "
          f"{args.allocator} allocator, {args.copies} copies of each forward+backward variant, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, dense matmul {rate / 1e9:.0f} GFLOP/s; "
          f"uniform: ms per batch of forward+backward (median of {args.rounds} rounds); "
          f"the others: median (range) of per-round ratios to it")
    header = (f"{'rows':>9} {'batch':>6} {'k':>3} | {'uniform':>8} | {'MD params':>9} {'MD':>6} {'range':>9} | "
              f"{'MD/8 params':>11} {'MD/8':>6} {'range':>9} | {'fwd MD':>6} {'fwd pre':>7} | {'prod MD':>7} {'MD/8':>6} | {'arith MD':>8} {'MD/8':>6} | {'temp MB':>11} | {'faults':>8}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for n, batch, k in configs:
        counts = zipf_weights(n, args.zipf) * n * 20
        blocks = blocking.equipartition(counts, k)
        loads = tuple(blocks.probs)
        dims = sizing.popularity_dims(blocks.row_probs, args.alpha, base_dim=d0)
        md = MDSpec(blocks.sizes, dims, d0, loads)
        uniform = MDSpec.uniform(n, d0)
        try:
            small = sizing.solve_budget(n * d0 // 8, blocks.sizes, blocks.row_probs, d0, args.alpha).with_loads(loads)
        except ValueError:
            small = sizing.solve_budget(n * d0 // 8, blocks.sizes, blocks.row_probs, d0, args.alpha,
                                        tolerance=0.05).with_loads(loads)
        probs = counts[blocks.order] / counts.sum()
        ids = jnp.asarray(rng.choice(n, size=(steps, batch), p=probs).astype(np.int32))
        cotangent = jnp.asarray(rng.standard_normal((batch, d0)).astype(np.float32))
        key = jax.random.key(0)
        md_params = init(key, md)
        # name -> copies (each a compiled call with its own parameter buffers: `init` makes new
        # ones); the forward-only variants are reported, not targets, and get one copy.
        variants = {
            "uniform": [timed(uniform, init(key, uniform), ids, cotangent) for _ in range(args.copies)],
            "md": [timed(md, jax.tree.map(jnp.copy, md_params), ids, cotangent) for _ in range(args.copies)],
            "small": [timed(small, init(key, small), ids, cotangent) for _ in range(args.copies)],
            "uniform_fwd": [timed(uniform, init(key, uniform), ids, cotangent, forward_only=True)],
            "md_fwd": [timed(md, md_params, ids, cotangent, forward_only=True)],
            "pre_fwd": [timed(md, materialize(md_params, md), ids, cotangent, forward_only=True, pre_projected=True)],
            "md_prod": [products_timed(md, md_params, ids, cotangent)],
            "small_prod": [products_timed(small, init(key, small), ids, cotangent)],
        }
        if args.torch:
            for sparse in (False, True):
                tag = "sparse" if sparse else "dense"
                variants[f"torch_uniform_{tag}"] = [torch_timed((n,), (d0,), ids, cotangent, sparse)]
                variants[f"torch_md_{tag}"] = [torch_timed(md.sizes, md.dims, ids, cotangent, sparse)]
        # Each timing repeats its call until the uniform step has run for about 30 ms, so
        # that the small configurations are not measured at the timer's grain.
        start = time.perf_counter()
        variants["uniform"][0]()
        reps = max(1, int(0.03 / max(time.perf_counter() - start, 1e-6)))
        times = {name: [[] for _ in calls] for name, calls in variants.items()}
        faults = {name: [[] for _ in calls] for name, calls in variants.items()}
        order = [(name, copy) for name, calls in variants.items() for copy in range(len(calls))]
        for round_ in range(args.rounds):
            for name, copy in (order if round_ % 2 == 0 else order[::-1]):
                call = variants[name][copy]
                before = _page_faults()
                start = time.perf_counter()
                for _ in range(reps):
                    call()
                times[name][copy].append(time.perf_counter() - start)
                faults[name][copy].append((_page_faults() - before) / reps)
        # Page faults per call, the most of any variant and copy (median over rounds): near 0
        # when memory is reused, about one per 4 KB of temporaries when it is mapped afresh.
        faults_per_call = max(float(np.median(f)) for copies in faults.values() for f in copies)
        # Per round, the median over a variant's copies.
        times = {name: np.median(np.asarray(t), axis=0) / reps for name, t in times.items()}
        uniform_ms = float(np.median(times["uniform"])) / steps * 1e3
        ratios = {name: times[name] / times[base] for name, base in
                  (("md", "uniform"), ("small", "uniform"), ("md_fwd", "uniform_fwd"), ("pre_fwd", "uniform_fwd"),
                   ("md_prod", "uniform"), ("small_prod", "uniform"))}
        ratio = {name: float(np.median(r)) for name, r in ratios.items()}
        spread = {name: f"{r.min():.2f}-{r.max():.2f}" for name, r in ratios.items()}
        # The products' arithmetic at the dense matmul rate, against the uniform step.
        arith = {name: product_flops(spec, ids) / rate / (uniform_ms / 1e3)
                 for name, spec in (("md", md), ("small", small))}
        share = num_params(md) / num_params(uniform)
        share_small = num_params(small) / num_params(uniform)
        rows_out.append((n, batch, k, ratio["md"], ratio["small"]))
        if args.torch:
            med = {name: float(np.median(t)) / steps * 1e3 for name, t in times.items()}
            within = {name: float(np.median(times[a] / times[b])) for name, (a, b) in {
                "dense": ("torch_md_dense", "torch_uniform_dense"), "sparse": ("torch_md_sparse", "torch_uniform_sparse"),
                "vs_dense": ("md", "torch_md_dense"), "vs_sparse": ("md", "torch_md_sparse")}.items()}
            torch_rows.append((n, batch, k, med, within))
        print(f"{n:>9,} {batch:>6} {k:>3} | {uniform_ms:>8.2f} | {share:>9.3f} {ratio['md']:>5.2f}x {spread['md']:>9} | "
              f"{share_small:>11.3f} {ratio['small']:>5.2f}x {spread['small']:>9} | "
              f"{ratio['md_fwd']:>5.2f}x {ratio['pre_fwd']:>6.2f}x | {ratio['md_prod']:>6.2f}x {ratio['small_prod']:>5.2f}x | "
              f"{arith['md']:>7.2f}x {arith['small']:>5.2f}x | "
              f"{'/'.join(f'{variants[v][0].temp_mb:.0f}' for v in ('uniform', 'md', 'small')):>11} | "
              f"{faults_per_call:>8.0f}", flush=True)
    met_md = sum(r[3] <= 1.5 for r in rows_out)
    met_small = sum(r[4] <= 1.0 for r in rows_out)
    print(f"\nMD at the same d0 <= 1.5x uniform: {met_md}/{len(rows_out)} configurations")
    print(f"MD with 8x fewer parameters <= 1.0x uniform: {met_small}/{len(rows_out)} configurations")
    print("MD params / MD/8 params: parameter count relative to the uniform table (projections included); "
          "fwd: forward-only time relative to the uniform forward; pre: gathers from the pre-projected table; "
          "prod: the projection products alone (three per projected block, on the block's distinct ids of the "
          "batch), relative to the uniform step: a floor under the MD step's time, as XLA runs the products; "
          "arith: those products' floating-point operations at the dense matmul rate, relative to the uniform "
          "step (at least what the arithmetic itself costs; what prod adds is running them as many small products); "
          "temp MB: the compiled forward+backward's temporary buffers, uniform/MD/MD/8 (allocated on every call); "
          "faults: page faults per timed call, the most of any variant")
    if torch_rows:
        print(f"\nPyTorch {torch.__version__} ({torch.get_num_threads()} threads), the same batches: ms per batch "
              "of forward+backward (medians); ratios: medians of per-round ratios")
        columns = ("torch table ms", "torch MD/table", "mdcf ms", "mdcf MD/table", "mdcf MD / torch MD")
        under = ("dense / sparse", "dense / sparse", "table / MD", "", "dense / sparse")
        widths = (15, 15, 13, 13, 18)
        print(f"{'rows':>9} {'batch':>6} {'k':>3} | " + " | ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
        print(f"{'':>20} | " + " | ".join(f"{c:>{w}}" for c, w in zip(under, widths)))
        print("-" * (24 + sum(widths) + 3 * (len(widths) - 1)))
        for (n, batch, k, med, within), row in zip(torch_rows, rows_out):
            cells = (f"{med['torch_uniform_dense']:.2f} / {med['torch_uniform_sparse']:.2f}",
                     f"{within['dense']:.2f}x / {within['sparse']:.2f}x",
                     f"{med['uniform']:.2f} / {med['md']:.2f}", f"{row[3]:.2f}x",
                     f"{within['vs_dense']:.2f}x / {within['vs_sparse']:.2f}x")
            print(f"{n:>9,} {batch:>6} {k:>3} | " + " | ".join(f"{c:>{w}}" for c, w in zip(cells, widths)), flush=True)
        print("torch MD: a table and a bias-free Linear per block, ids grouped by block (as dlrm builds it); dense / "
              "sparse: nn.Embedding(sparse=False / True); mdcf differentiates whole tables (dense gradients)")


if __name__ == "__main__":
    main()
