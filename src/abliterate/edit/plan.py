"""From trial parameters and refusal directions to one (direction, strength) per writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from abliterate.directions import interpolate, normalize, orthonormal_rows, remove_subspace
from abliterate.edit.kernel import Kernel
from abliterate.model.arch import Writer


@dataclass(frozen=True)
class Directions:
    """Refusal directions of a model, ready to edit with.

    `per_layer[l]` is the unit direction at decoder layer l for the chosen stream (already
    projected against the harmless mean when that option is on); `benign[l]` an orthonormal
    basis (k, d) to keep the edit out of at layer l, or None; `embedding` the direction at the
    embedding output; `extra[l]` further unit directions at layer l (several directions per
    layer, see stages/directions.py), each orthogonal to `per_layer[l]`, or None. `raw` and
    `raw_embedding` are the plain mean differences before that projection (None where the
    directions came from elsewhere): a trial's `projection` mixes the two."""

    per_layer: Tensor  # (L, d) float32
    embedding: Tensor  # (d,) float32
    benign: Tensor | None = None  # (L, k, d) float32
    extra: Tensor | None = None  # (L, m, d) float32
    raw: Tensor | None = None  # (L, d) float32
    raw_embedding: Tensor | None = None  # (d,) float32

    @property
    def n_layers(self) -> int:
        return self.per_layer.shape[0]

    def projected(self, amount: float | None) -> tuple[Tensor, Tensor]:
        """(per-layer, embedding) directions with `amount` of the harmless-mean projection:
        1 (or None, or no raw directions) = `per_layer` as stored, 0 = the plain mean
        difference, between = the normalized blend of the two unit directions (which turns
        from one to the other in the plane they span)."""
        if amount is None or amount == 1.0 or self.raw is None or self.raw_embedding is None:
            return self.per_layer, self.embedding
        return (
            normalize(torch.lerp(self.raw, self.per_layer, amount), "blended direction"),
            normalize(torch.lerp(self.raw_embedding, self.embedding, amount), "blended direction"),
        )


@dataclass(frozen=True)
class EditParams:
    """What one trial edits: the direction scope and a kernel per component."""

    scope: str  # "global" | "per_layer"
    kernels: dict[str, Kernel] = field(default_factory=dict)  # component -> kernel
    direction_index: float | None = None  # layer index of the global direction
    embed_weight: float = 0.0
    # strength of the extra directions (Directions.extra), as a fraction of the kernel's
    extra_weight: float = 0.0
    # how much of the harmless-mean projection the direction keeps (Directions.projected);
    # None = the directions as computed
    projection: float | None = None

    def __post_init__(self) -> None:
        if self.scope not in ("global", "per_layer"):
            raise ValueError(f"scope must be global or per_layer, not {self.scope!r}")
        if self.scope == "global" and self.direction_index is None:
            raise ValueError("a global scope needs a direction_index")

    def to_dict(self) -> dict:
        data = {
            "scope": self.scope,
            "direction_index": self.direction_index,
            "embed_weight": self.embed_weight,
            "kernels": {c: vars(k) for c, k in sorted(self.kernels.items())},
        }
        # records of trials without these options stay as they were
        if self.extra_weight:
            data["extra_weight"] = self.extra_weight
        if self.projection is not None:
            data["projection"] = self.projection
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EditParams:
        return cls(
            scope=data["scope"],
            direction_index=data.get("direction_index"),
            embed_weight=data.get("embed_weight", 0.0),
            extra_weight=data.get("extra_weight", 0.0),
            projection=data.get("projection"),
            kernels={c: Kernel(**k) for c, k in data.get("kernels", {}).items()},
        )


@dataclass(frozen=True)
class WriterEdit:
    """One writer's edit: a unit direction (d,) and its strength, or orthonormal rows (k, d),
    the main direction first with `strength` and the others with `extra_strength`."""

    writer: Writer
    direction: Tensor  # in residual space, before the writer's output-norm gain
    strength: float
    extra_strength: float = 0.0

    @property
    def lam(self) -> float | Tensor:
        """The strength of each direction: a float for one, a (k,) tensor for several."""
        if self.direction.ndim == 1:
            return self.strength
        k = self.direction.shape[0]
        return torch.tensor([self.strength] + [self.extra_strength] * (k - 1))


def plan(writers: list[Writer], directions: Directions, params: EditParams) -> list[WriterEdit]:
    """Every writer with a non-zero strength, with the direction(s) it is edited against."""
    n = directions.n_layers
    strengths = {c: k.strengths(n) for c, k in params.kernels.items()}
    per_layer, embedding = directions.projected(params.projection)
    shared = (
        interpolate(per_layer, params.direction_index)
        if params.direction_index is not None and params.scope == "global"
        else None
    )
    edits = []
    for w in writers:
        if w.component == "embed":
            lam = params.embed_weight
            v = embedding if shared is None else shared
        elif w.component in strengths:
            lam = float(strengths[w.component][w.layer])
            v = per_layer[w.layer] if shared is None else shared
            if directions.benign is not None:
                v = remove_subspace(v, directions.benign[w.layer])
        else:
            continue
        if lam == 0.0:
            continue
        extra = _extra(directions, params, w, v)
        if extra is None:
            edits.append(WriterEdit(w, v, lam))
        else:
            edits.append(WriterEdit(w, extra, lam, lam * params.extra_weight))
    return edits


def _extra(directions: Directions, params: EditParams, w: Writer, v: Tensor) -> Tensor | None:
    """`v` and the extra directions of the writer's layer (of the global direction's nearest
    layer for a global scope), orthonormalized with `v` first; None when there are none."""
    if directions.extra is None or not params.extra_weight or w.component == "embed":
        return None
    layer = w.layer if params.direction_index is None else round(params.direction_index)
    rows = directions.extra[layer]
    if directions.benign is not None:
        basis = directions.benign[w.layer]
        rows = rows - (rows @ basis.T) @ basis
    found = orthonormal_rows(torch.cat([v[None], rows]))
    return found if found.shape[0] > 1 else None


def strength_table(n_layers: int, params: EditParams) -> dict[str, list[float]]:
    """Per-layer strength for each component (the "mountain" of the report)."""
    return {
        c: [round(float(x), 6) for x in k.strengths(n_layers)] for c, k in params.kernels.items()
    }
