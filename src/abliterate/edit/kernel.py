"""The layer kernel: how strongly each layer is edited, for one component."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Kernel:
    """A "mountain" over layers: `max_weight` at `peak`, falling linearly to `min_weight` at
    distance `span`, zero beyond. ICONOCLAST's triangle is the case `min_weight = 0`."""

    max_weight: float
    peak: float  # layer index, may be fractional
    min_weight: float
    span: float  # in layers, > 0

    def __post_init__(self) -> None:
        if self.span <= 0:
            raise ValueError(f"kernel span must be positive, got {self.span}")

    def strengths(self, n_layers: int) -> Tensor:
        """lambda(l) for l = 0..n_layers-1, float64."""
        dist = (torch.arange(n_layers, dtype=torch.float64) - self.peak).abs()
        lam = self.max_weight + (self.min_weight - self.max_weight) * dist / self.span
        return torch.where(dist <= self.span, lam, torch.zeros_like(lam))
