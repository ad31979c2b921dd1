"""Deprecated: the MD layer moved to :mod:`mdcf.embeddings` (this alias goes in the next release)."""

import warnings

from .embeddings import *  # noqa: F401,F403
from .embeddings import __all__  # noqa: F401

warnings.warn("mdcf.embedding is deprecated; use mdcf.embeddings (the same names)", DeprecationWarning, stacklevel=2)
