"""mdcf: mixed-dimension embeddings for memory-efficient collaborative filtering, in JAX.

Submodules, in the order data flows through them:

* :mod:`mdcf.data`: ratings in (MovieLens, custom files, splits, a synthetic generator);
* :mod:`mdcf.blocking`: rows into blocks (frequency equipartition, table stacking);
* :mod:`mdcf.sizing`: dimensions per block (popularity rule, dlrm's solver, exact budgets);
* :mod:`mdcf.embeddings`: the embedding interface, the MD layer as its first member;
* :mod:`mdcf.models`: MF, GMF, MLP and NeuMF rating models, one registry;
* :mod:`mdcf.train`: optimisers with row-sparse updates, train steps, ``fit``, ``evaluate``, ``predict``;
* :mod:`mdcf.sweep`: equal-budget experiments (uniform against MD);

and apart from the flow: :mod:`mdcf.io` (atomic files, checksummed arrays),
:mod:`mdcf.checkpoint` (models and train states on disk), :mod:`mdcf.metrics`,
:mod:`mdcf.sharding` (several devices) and :mod:`mdcf.plots` (matplotlib, imported on demand).
"""

import functools
import importlib
import warnings

from . import blocking, checkpoint, data, embeddings, io, metrics, models, sharding, sizing, sweep, train

__version__ = "0.1.0"

__all__ = ["blocking", "checkpoint", "data", "embeddings", "io", "metrics", "models", "sharding", "sizing", "sweep",
           "train", "__version__"]


def _deprecated(function, old: str, new: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    return wrapper


# Aliases kept for one release: checkpoints moved from mdcf.io to mdcf.checkpoint.
io.save = _deprecated(checkpoint.save, "mdcf.io.save", "mdcf.checkpoint.save")
io.load = _deprecated(checkpoint.load, "mdcf.io.load", "mdcf.checkpoint.load")
io.Checkpoint = checkpoint.Checkpoint
io.CheckpointMismatchError = checkpoint.CheckpointMismatchError


def __getattr__(name):
    if name == "embedding":  # the deprecated module (it warns when imported)
        return importlib.import_module(".embedding", __name__)
    raise AttributeError(f"module 'mdcf' has no attribute {name!r}")
