"""Rating models on any embedding scheme: MF, GMF, MLP and NeuMF, as pure functions.

The public contract::

    ModelConfig                         the static structure (hashable, JSON round-trip)
    KINDS, REGISTRY, Kind               the model kinds, one registry entry each
    apply, embed, head                  predictions of the rating models
    Model, build_model                  a model bound to its data's id maps and popularity
    dlrm                                click-through-rate prediction: DLRM on stacked fields
    Task, RATING, CLICK, TASKS          what a model predicts: its targets, loss and metric
    Family, FAMILIES, family            every model family (rating models, DLRM) behind one interface
    init, forward, outputs, num_params, parameters, outputs (from vectors, from a batch), counts
    check_params, encode,               and checks of a model of any family; batches of
    config_from_dict, config_of         its data; configs from JSON

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
from .core import apply, embed, embed_batch, head, layer_params, value_tables
from .family import (FAMILIES, Family, check_params, config_from_dict, config_of, encode, family, forward, init,
                     num_params, outputs)
from .kinds import KINDS, REGISTRY, Kind
from .model import Model, build_model
from .task import CLICK, RATING, TASKS, Task

__all__ = ["KINDS", "REGISTRY", "Kind", "ModelConfig", "Model", "init", "embed", "head", "apply", "num_params",
           "check_params", "layer_params", "build_model", "dlrm", "Task", "RATING", "CLICK", "TASKS", "Family",
           "FAMILIES", "family", "forward", "outputs", "embed_batch", "value_tables", "encode", "config_from_dict",
           "config_of"]
