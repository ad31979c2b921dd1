"""Rating models on any embedding scheme: MF, GMF, MLP and NeuMF, as pure functions.

The public contract::

    ModelConfig                         the static structure (hashable, JSON round-trip)
    KINDS, REGISTRY, Kind               the model kinds, one registry entry each
    init, apply, embed, head            parameters and predictions
    num_params, check_params            counting and checking parameters
    Model, build_model                  a model bound to its data's id maps and popularity
    dlrm                                click-through-rate prediction: DLRM on stacked fields

Users and items are *rows in block order* (most frequent first); :class:`Model`
carries the maps from original ids, and :func:`mdcf.train.predict` works on
original ids. The global bias starts at the training mean.

Example:
  >>> from mdcf import data, models
  >>> ratings, _ = data.synthetic(200, 100, 2_000, seed=0)
  >>> model = models.build_model(ratings, "mf", dim=16, alpha=0.3, blocks=4)
  >>> model.config.user.n_blocks, model.config.user.base_dim
  (4, 16)
"""

from . import dlrm
from .config import ModelConfig
from .core import apply, check_params, embed, head, init, layer_params, num_params
from .kinds import KINDS, REGISTRY, Kind
from .model import Model, build_model

__all__ = ["KINDS", "REGISTRY", "Kind", "ModelConfig", "Model", "init", "embed", "head", "apply", "num_params",
           "check_params", "layer_params", "build_model", "dlrm"]
