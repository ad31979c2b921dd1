"""Run by test_sharding.py in a subprocess: the multi-host entry point with one process.

Initialises jax.distributed with a local coordinator (one process, as one
machine allows), builds a mesh over its 2 simulated CPU devices and trains a
tiny model with row-sharded tables.
"""

import os
import socket
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

from mdcf import data, models, sharding, train  # noqa: E402


def main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=1, process_id=0)
    import jax

    assert jax.process_count() == 1 and len(jax.devices()) == 2, jax.devices()
    ratings, _ = data.synthetic(101, 53, 1_000, seed=0)
    model = models.build_model(ratings, "mf", dim=4, alpha=0.5, blocks=2)
    result = train.fit(model, ratings, epochs=2, batch_size=128, progress=False, sparse=True,
                       mesh=sharding.make_mesh(1, 2))
    print("ok", len(result.history), result.params["tables"]["user"][0].shape)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
