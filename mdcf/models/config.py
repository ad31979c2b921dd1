"""The static structure of a rating model: :class:`ModelConfig`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import embeddings
from ..embeddings import MDSpec
from .kinds import KINDS, REGISTRY
from .task import RATING, Task

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Static structure of a rating model.

    Attributes:
      kind: one of :data:`KINDS`.
      user, item: embedding specs of any registered scheme (:mod:`mdcf.embeddings`;
        ``MDSpec.uniform(n, d)`` for plain tables).
        Their base dimensions must match for ``mf``, ``gmf`` and ``neumf``.
      biases: learn per-user and per-item biases.
      layers: MLP hidden sizes (``mlp`` and ``neumf``).
      negative_slope: LeakyReLU slope of the MLP.
      init_stddev: standard deviation of initial embedding coordinates.
    """

    kind: str
    user: MDSpec
    item: MDSpec
    biases: bool = True
    layers: tuple[int, ...] = (128, 128, 32)
    negative_slope: float = 0.01
    init_stddev: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for side in ("user", "item"):
            try:
                embeddings.scheme(getattr(self, side))
            except TypeError as err:
                raise TypeError(f"ModelConfig: {side} must be an embedding spec (e.g. MDSpec): {err}") from None
        if REGISTRY[self.kind].multiplies and self.user.base_dim != self.item.base_dim:
            raise ValueError(
                f"{self.kind} multiplies user and item embeddings, so their base dims must match: "
                f"user {self.user.base_dim}, item {self.item.base_dim}"
            )
        layers = tuple(int(x) for x in self.layers)
        if REGISTRY[self.kind].mlp and (not layers or min(layers) < 1):
            raise ValueError(f"layers must be positive sizes, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)

    @property
    def task(self) -> Task:
        """Rating regression (:data:`mdcf.models.RATING`)."""
        return RATING

    @property
    def sides(self) -> dict[str, MDSpec]:
        """The row spaces a batch indexes, by side: ``{"user": spec, "item": spec}``."""
        return {"user": self.user, "item": self.item}

    @property
    def id_keys(self) -> dict[str, str]:
        """The batch key holding each side's rows (``[B]`` int)."""
        return {"user": "users", "item": "items"}

    @property
    def id_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per side, the shape of one example's ids: ``()``, one row each."""
        return {"user": (), "item": ()}

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Per-example dense inputs a batch carries besides ids and targets: none."""
        return {}

    @property
    def embeddings(self) -> tuple[tuple[str, str, MDSpec], ...]:
        """``(name, side, spec)`` for every embedding table; side is ``"user"`` or ``"item"``."""
        specs = {"user": self.user, "item": self.item}
        return tuple((name, side, specs[side]) for name, side in REGISTRY[self.kind].tables)

    @property
    def row_tables(self) -> tuple[tuple[str, str], ...]:
        """``(name, side)`` of every row-indexed table: embeddings and biases (one
        value per row, gathered with the side's ids)."""
        out = tuple((name, side) for name, side, _ in self.embeddings)
        if self.biases:
            out += (("user_bias", "user"), ("item_bias", "item"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "user": self.user.to_dict(), "item": self.item.to_dict(), "biases": self.biases,
            "layers": list(self.layers), "negative_slope": self.negative_slope, "init_stddev": self.init_stddev,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "ModelConfig":
        value = dict(value)
        value["user"] = embeddings.spec_from_dict(value["user"])
        value["item"] = embeddings.spec_from_dict(value["item"])
        value["layers"] = tuple(value.get("layers", (128, 128, 32)))
        return cls(**value)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
