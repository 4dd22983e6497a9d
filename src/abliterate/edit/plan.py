"""From trial parameters and refusal directions to one (direction, strength) per writer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from abliterate.directions import interpolate, remove_subspace
from abliterate.edit.kernel import Kernel
from abliterate.model.arch import Writer


@dataclass(frozen=True)
class Directions:
    """Refusal directions of a model, ready to edit with.

    `per_layer[l]` is the unit direction at decoder layer l for the chosen stream (already
    projected against the harmless mean when that option is on); `benign[l]` an orthonormal
    basis (k, d) to keep the edit out of at layer l, or None; `embedding` the direction at the
    embedding output."""

    per_layer: Tensor  # (L, d) float32
    embedding: Tensor  # (d,) float32
    benign: Tensor | None = None  # (L, k, d) float32

    @property
    def n_layers(self) -> int:
        return self.per_layer.shape[0]


@dataclass(frozen=True)
class EditParams:
    """What one trial edits: the direction scope and a kernel per component."""

    scope: str  # "global" | "per_layer"
    kernels: dict[str, Kernel] = field(default_factory=dict)  # component -> kernel
    direction_index: float | None = None  # layer index of the global direction
    embed_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.scope not in ("global", "per_layer"):
            raise ValueError(f"scope must be global or per_layer, not {self.scope!r}")
        if self.scope == "global" and self.direction_index is None:
            raise ValueError("a global scope needs a direction_index")

    def to_dict(self) -> dict:
        return {
            "scope": self.scope,
            "direction_index": self.direction_index,
            "embed_weight": self.embed_weight,
            "kernels": {c: vars(k) for c, k in sorted(self.kernels.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> EditParams:
        return cls(
            scope=data["scope"],
            direction_index=data.get("direction_index"),
            embed_weight=data.get("embed_weight", 0.0),
            kernels={c: Kernel(**k) for c, k in data.get("kernels", {}).items()},
        )


@dataclass(frozen=True)
class WriterEdit:
    writer: Writer
    direction: Tensor  # unit vector in residual space, before the writer's output-norm gain
    strength: float


def plan(writers: list[Writer], directions: Directions, params: EditParams) -> list[WriterEdit]:
    """Every writer with a non-zero strength, with the direction it is edited against."""
    n = directions.n_layers
    strengths = {c: k.strengths(n) for c, k in params.kernels.items()}
    shared = (
        interpolate(directions.per_layer, params.direction_index)
        if params.direction_index is not None and params.scope == "global"
        else None
    )
    edits = []
    for w in writers:
        if w.component == "embed":
            lam = params.embed_weight
            v = directions.embedding if shared is None else shared
        elif w.component in strengths:
            lam = float(strengths[w.component][w.layer])
            v = directions.per_layer[w.layer] if shared is None else shared
            if directions.benign is not None:
                v = remove_subspace(v, directions.benign[w.layer])
        else:
            continue
        if lam != 0.0:
            edits.append(WriterEdit(w, v, lam))
    return edits


def strength_table(n_layers: int, params: EditParams) -> dict[str, list[float]]:
    """Per-layer strength for each component (the "mountain" of the report)."""
    return {
        c: [round(float(x), 6) for x in k.strengths(n_layers)] for c, k in params.kernels.items()
    }
