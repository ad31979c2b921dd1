"""Type tests for argument checks: Python and numpy numbers, never booleans or strings."""

from __future__ import annotations

import math
import operator

import numpy as np


def is_int(value) -> bool:
    """An integer (Python, numpy or anything with ``__index__``), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def is_real(value) -> bool:
    """A finite real number (anything ``float()`` takes but strings, bytes and bools)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
