"""What defines a sweep: :class:`SweepConfig`, the data sets it runs on, and the device options of the scripts."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import data, models, sharding
from .._checks import is_int, is_real
from .methods import BYTES_ONLY, METHODS

__all__ = ["SweepConfig", "fast_mode", "check_dataset", "load_dataset", "add_device_arguments", "mesh_from_arguments"]


def add_device_arguments(parser) -> None:
    """The experiment scripts' options for several devices and hosts."""
    group = parser.add_argument_group("several devices or hosts")
    group.add_argument("--mesh", type=int, nargs=2, metavar=("DATA", "MODEL"), default=None,
                       help="train every run on a DATA x MODEL device mesh: batches split over DATA devices, "
                            "table rows over MODEL devices (e.g. --mesh 8 1 on an 8-GPU machine)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="multi-host run: the address of process 0 (start the same command on every host)")
    group.add_argument("--num-processes", type=int, default=None, help="multi-host run: number of processes")
    group.add_argument("--process-id", type=int, default=None, help="multi-host run: this process's index")


def mesh_from_arguments(args):
    """Join a multi-host run when asked, then build the ``--mesh`` (None without one)."""
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.mesh is None:
        return None
    return sharding.make_mesh(*args.mesh)


def fast_mode() -> bool:
    """True when ``$MDCF_FAST`` is set (tests and notebooks use it to shrink runs)."""
    return os.environ.get("MDCF_FAST", "") not in ("", "0", "false", "False")


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep (saved as ``config.json`` beside the results).

    Attributes:
      dataset: a :data:`mdcf.data.MOVIELENS` name, a ratings file path, or ``"synthetic"``.
      model: a model kind (:data:`mdcf.models.KINDS`).
      budgets: total parameter budgets; empty means the natural budgets of ``dims``.
      dims: uniform dimensions whose model sizes are the natural budgets (d = 1 is
        left out by default: no MD layer with projections fits a one-dimension budget).
      alphas: temperatures; 0 is the uniform baseline.
      blocks: blocks per table for MD models.
      base_dims: candidate MD base dimensions (see :func:`model_for_budget`).
      seeds: split and initialisation seeds.
      l2_grid, learning_rates: the tuning grid every cell trains.
      epochs, patience, batch_size: ``fit`` settings.
      test_fraction, val_fraction: random test split, and validation carved from train.
      synthetic: generator arguments for ``dataset="synthetic"``.
      methods: the ways to shrink the tables (:data:`mdcf.sweep.METHODS`); the uniform
        baseline runs when ``alphas`` holds 0 or ``uniform`` is listed, ``md`` over the
        alphas above 0.
      factors: the settings of ``hash``, ``lowrank`` and ``tt`` (base dimension over the
        uniform one) and of ``qr`` (collisions), tuned on validation like alpha.
      budget_unit: ``"params"`` (budgets count parameters) or ``"bytes"`` (stored bytes:
        4 per float32 parameter; the int8 methods need it).
    """

    dataset: str = "ml-100k"
    model: str = "mf"
    budgets: tuple[int, ...] = ()
    dims: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4)
    blocks: int = 8
    base_dims: tuple[int, ...] = (128, 64, 32, 16, 8, 4, 2)
    seeds: tuple[int, ...] = (0,)
    l2_grid: tuple[float, ...] = (0.05, 0.1, 0.2)
    learning_rates: tuple[float, ...] = (3e-3,)
    epochs: int = 100
    patience: int = 5
    batch_size: int = 1024
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    synthetic: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ("md",)
    factors: tuple[int, ...] = (2, 4)
    budget_unit: str = "params"

    def __post_init__(self):
        def fail(name, wanted):
            raise ValueError(f"SweepConfig: {name} must be {wanted}, got {getattr(self, name)!r}")

        def sequence(value, ok, allow_empty=False):
            try:
                values = tuple(value)
            except TypeError:
                return False
            return (allow_empty or bool(values)) and all(ok(v) for v in values)

        if self.model not in models.KINDS:
            fail("model", f"one of {models.KINDS}")
        for name, low, allow_empty in (("budgets", 1, True), ("dims", 1, False), ("base_dims", 1, False),
                                       ("seeds", 0, False)):
            if not sequence(getattr(self, name), lambda v: is_int(v) and v >= low, allow_empty):
                fail(name, f"{'a' if allow_empty else 'a non-empty'} sequence of integers >= {low}")
        if not self.budgets and not self.dims:
            fail("dims", "non-empty when no budgets are given")
        for name, positive in (("alphas", False), ("l2_grid", False), ("learning_rates", True)):
            if not sequence(getattr(self, name), lambda v: is_real(v) and (v > 0 if positive else v >= 0)):
                fail(name, f"a non-empty sequence of finite numbers {'> 0' if positive else '>= 0'}")
        for name in ("blocks", "epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                fail(name, "an integer >= 1")
        if not sequence(self.methods, lambda v: v in METHODS):
            fail("methods", f"a non-empty sequence of {', '.join(METHODS)}")
        if not sequence(self.factors, lambda v: is_int(v) and v >= 1):
            fail("factors", "a non-empty sequence of integers >= 1")
        if self.budget_unit not in ("params", "bytes"):
            fail("budget_unit", "'params' or 'bytes'")
        in_bytes = [m for m in self.methods if m in BYTES_ONLY]
        if in_bytes and self.budget_unit != "bytes":
            raise ValueError(f"SweepConfig: {', '.join(in_bytes)} keep their float model's parameters and save bytes; "
                             "compare them with budget_unit='bytes' (--budget-unit bytes)")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not (is_real(value) and 0 < value < 1):
                fail(name, "a fraction strictly between 0 and 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def check_dataset(name: str) -> None:
    """Raise ``ValueError`` unless :func:`load_dataset` knows ``name`` (checked before any work)."""
    if name in data.MOVIELENS or name == "synthetic" or Path(name).is_file():
        return
    raise ValueError(f"dataset must be a MovieLens name ({', '.join(data.MOVIELENS)}), a ratings file, or "
                     f"'synthetic'; got {name!r}" + (" (no such file)" if ("/" in name or "." in name) else ""))


def load_dataset(name: str, synthetic: dict | None = None, data_dir=None):
    """A MovieLens name, a ratings file, or ``"synthetic"`` (MovieLens-20M-like popularity)."""
    check_dataset(name)
    if name in data.MOVIELENS:
        return data.load_movielens(name, data_dir=data_dir)
    if name == "synthetic":
        kwargs = dict(n_users=138_493, n_items=26_744, n_ratings=2_000_000, rank=32, user_zipf=0.8,
                      item_zipf=1.0, spectrum_decay=1.0, noise=0.8, seed=0)
        kwargs.update(synthetic or {})
        return data.synthetic(**kwargs)[0]
    return data.read_ratings(name)
