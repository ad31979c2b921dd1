"""mdcf: mixed-dimension embeddings for memory-efficient collaborative filtering, in JAX.

Submodules: :mod:`mdcf.data` (ratings in), :mod:`mdcf.io` (atomic files).
"""

from . import data, io

__version__ = "0.1.0"

__all__ = ["data", "io", "__version__"]
