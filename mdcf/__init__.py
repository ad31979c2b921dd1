"""mdcf: mixed-dimension embeddings for memory-efficient collaborative filtering, in JAX.

Submodules:

* :mod:`mdcf.data`: ratings in (MovieLens, custom files, splits, a synthetic generator);
* :mod:`mdcf.blocking`: rows into blocks (frequency equipartition, table stacking);
* :mod:`mdcf.sizing`: dimensions per block (popularity rule, dlrm's solver, exact budgets);
* :mod:`mdcf.embedding`: the MD layer as pure JAX functions;
* :mod:`mdcf.models`: MF, GMF, MLP and NeuMF rating models;
* :mod:`mdcf.train`: optimisers with row-sparse updates, train steps, ``fit``, ``evaluate``, ``predict``;
* :mod:`mdcf.metrics`: rating metrics;
* :mod:`mdcf.sharding`: data- and row-parallel training on device meshes;
* :mod:`mdcf.sweep`: equal-budget experiments (uniform against MD);
* :mod:`mdcf.plots`: the paper's figures (matplotlib, imported on demand);
* :mod:`mdcf.io`: atomic files, checksummed arrays, checkpoints.
"""

from . import blocking, data, embedding, io, metrics, models, sharding, sizing, sweep, train

__version__ = "0.1.0"

__all__ = ["blocking", "data", "embedding", "io", "metrics", "models", "sharding", "sizing", "sweep", "train",
           "__version__"]
