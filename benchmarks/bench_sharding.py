"""Per-device memory of a row-sharded 10M-row MD item table (parameters + row-wise optimiser state).

Simulates 4 CPU devices (``--xla_force_host_platform_device_count=4``) and, for
meshes with 1, 2 and 4 devices on the row (model) axis, prints the bytes each
device holds of the item embedding's tables, its bias and their lazy-Adam
state, measured from the placed arrays' shards, beside the single-device figure.

Usage::

    python benchmarks/bench_sharding.py               # 10M item rows
    python benchmarks/bench_sharding.py --rows 1e6
"""

from __future__ import annotations

import argparse
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--base-dim", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.3)
    args = parser.parse_args()

    import jax

    from mdcf import blocking, sharding, sizing, train
    from mdcf.data import zipf_weights
    from mdcf.embeddings import MDSpec
    from mdcf.models import ModelConfig

    n = int(args.rows)
    counts = zipf_weights(n, 1.0) * n
    blocks = blocking.equipartition(counts, 8)
    item = MDSpec(blocks.sizes, sizing.popularity_dims(blocks.row_probs, args.alpha, base_dim=args.base_dim),
                  args.base_dim, tuple(blocks.probs))
    config = ModelConfig("mf", MDSpec.uniform(1000, args.base_dim), item)
    opt = train.optimizer("adam", 1e-3, sparse=True)
    state = train.init_state(jax.random.key(0), config, opt)
    print(f"bench_sharding: MD item table of {n:,} rows, dims {item.dims}, "
          f"{sizing.num_params(item):,} parameters; lazy Adam (2 state arrays per table)")
    print(f"{'row shards':>10} {'bytes per device (item tables + state)':>40} {'vs 1 device':>12}")
    single = None
    for shards in (1, 2, 4):
        mesh = sharding.make_mesh(data=1, model=shards, devices=jax.devices()[:shards])
        placed = sharding.shard_state(state, mesh, "model" if shards > 1 else None)
        tree = (placed.params["tables"]["item"], placed.params["tables"]["item_bias"],
                placed.row_state["item"], placed.row_state["item_bias"])
        per_device = sharding.bytes_per_device(tree)
        worst = max(per_device.values())
        single = single or worst
        print(f"{shards:>10} {worst:>40,} {worst / single:>11.3f}x")
        del placed


if __name__ == "__main__":
    main()
