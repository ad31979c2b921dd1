"""The rating models, one entry each in :data:`REGISTRY`: their tables, dense parameters and score.

Every model predicts ``bias + b_u + b_i + score`` (biases optional); a kind gives the score:

* ``mf``: ``<e_u, e_i>``;
* ``gmf``: ``h . (e_u * e_i)`` (NCF's generalised MF, ``h`` starts at ones);
* ``mlp``: ``h . MLP([e_u, e_i])``, hidden layers ``layers`` with LeakyReLU;
* ``neumf``: ``h . [e_u^g * e_i^g, MLP([e_u^m, e_i^m])]`` with separate GMF and MLP embeddings.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Kind", "REGISTRY", "KINDS"]


class Kind(NamedTuple):
    """One model kind.

    Attributes:
      tables: ``(name, side)`` of each embedding table; side is ``"user"`` or ``"item"``.
      multiplies: whether user and item vectors are multiplied (their base dims must match).
      mlp: whether the kind has an MLP (``layers`` must be positive sizes).
      init_dense: ``(keys, config) -> dict``: the kind's dense parameters, drawing
        keys from the iterator ``keys`` in a fixed order.
      score: ``(dense, config, vectors) -> [B]`` from ``{table name: [B, d0]}``.
      num_dense: ``config -> int``, the parameters ``init_dense`` makes.
    """

    tables: tuple[tuple[str, str], ...]
    multiplies: bool
    mlp: bool
    init_dense: Callable[[Iterator, Any], dict]
    score: Callable[[dict, Any, dict], jax.Array]
    num_dense: Callable[[Any], int]


def _mlp_input_dim(config) -> int:
    return config.user.base_dim + config.item.base_dim


def _init_mlp(keys: Iterator, config) -> list[dict]:
    """He-normal weights for LeakyReLU, zero biases."""
    layers = []
    width = _mlp_input_dim(config)
    he = jax.nn.initializers.he_normal()
    for size in config.layers:
        layers.append({"w": he(next(keys), (width, size), jnp.float32), "b": jnp.zeros(size, jnp.float32)})
        width = size
    return layers


def _mlp_params(config) -> int:
    total, width = 0, _mlp_input_dim(config)
    for size in config.layers:
        total += width * size + size
        width = size
    return total


def _mlp(dense: dict, config, x: jax.Array) -> jax.Array:
    for layer in dense["mlp"]:
        x = jax.nn.leaky_relu(x @ layer["w"] + layer["b"], config.negative_slope)
    return x


def _lecun_out(keys: Iterator, config) -> jax.Array:
    return jax.nn.initializers.lecun_normal()(next(keys), (config.layers[-1], 1), jnp.float32)[:, 0]


_PAIR = (("user", "user"), ("item", "item"))

REGISTRY: dict[str, Kind] = {
    "mf": Kind(
        _PAIR, True, False,
        lambda keys, config: {},
        lambda dense, config, v: jnp.sum(v["user"] * v["item"], axis=-1),
        lambda config: 0,
    ),
    "gmf": Kind(
        _PAIR, True, False,
        lambda keys, config: {"out": jnp.ones(config.user.base_dim, jnp.float32)},
        lambda dense, config, v: (v["user"] * v["item"]) @ dense["out"],
        lambda config: config.user.base_dim,
    ),
    "mlp": Kind(
        _PAIR, False, True,
        lambda keys, config: {"mlp": _init_mlp(keys, config), "out": _lecun_out(keys, config)},
        lambda dense, config, v: _mlp(dense, config, jnp.concatenate([v["user"], v["item"]], axis=-1)) @ dense["out"],
        lambda config: _mlp_params(config) + config.layers[-1],
    ),
    "neumf": Kind(
        (("user_gmf", "user"), ("item_gmf", "item"), ("user_mlp", "user"), ("item_mlp", "item")), True, True,
        lambda keys, config: {"mlp": _init_mlp(keys, config), "out": jnp.concatenate(
            [jnp.ones(config.user.base_dim, jnp.float32), _lecun_out(keys, config)])},
        lambda dense, config, v: jnp.concatenate([
            v["user_gmf"] * v["item_gmf"],
            _mlp(dense, config, jnp.concatenate([v["user_mlp"], v["item_mlp"]], axis=-1)),
        ], axis=-1) @ dense["out"],
        lambda config: _mlp_params(config) + config.user.base_dim + config.layers[-1],
    ),
}

KINDS = tuple(REGISTRY)
