"""The search space: an Optuna trial's suggestions -> EditParams. Testable without a model.

Sampling choices kept from Heretic (https://github.com/p-e-w/heretic), with why:
- every parameter is suggested in every trial, even the direction index when the scope is
  per-layer: a fixed space lets multivariate TPE model the parameters jointly;
- a kernel's edge strength is sampled as a *fraction* of its peak strength, so the constraint
  min <= max holds by construction instead of wasting trials on invalid pairs;
- positions are fractions of the depth, so the same ranges suit 4 and 80 layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import optuna

from abliterate.config import field_default
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import EditParams
from abliterate.errors import AbliterateError

KERNEL_COMPONENTS = ("attn_out", "mlp_down")


@dataclass(frozen=True)
class SpaceConfig:
    """The search space of one model: its depth, the components it can edit, and the space
    settings (defaults are the settings' own)."""

    n_layers: int
    components: tuple[str, ...]  # subset of attn_out, mlp_down, embed
    direction_scope: str = field_default("direction_scope")  # search | global | per_layer
    max_weight_range: tuple[float, float] = field_default("max_weight_range")
    peak_range: tuple[float, float] = field_default("peak_range")
    span_range: tuple[float, float] = field_default("span_range")
    min_weight_range: tuple[float, float] = field_default("min_weight_range")
    direction_index_range: tuple[float, float] = field_default("direction_index_range")
    embed_weight_range: tuple[float, float] = field_default("embed_weight_range")
    extra_weight_range: tuple[float, float] = field_default("extra_weight_range")
    directions_per_layer: int = field_default("directions_per_layer")
    projection_range: tuple[float, float] = field_default("projection_range")
    orthogonalize_direction: bool = field_default("orthogonalize_direction")

    @property
    def searches_projection(self) -> bool:
        """Without the projection there is only the plain direction; a fixed range is no
        choice either."""
        lo, hi = self.projection_range
        return self.orthogonalize_direction and lo < hi

    @classmethod
    def from_settings(cls, settings, n_layers: int, components: tuple[str, ...]) -> SpaceConfig:
        given = {
            f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)
        }
        ranges = {k: tuple(v) for k, v in given.items() if k.endswith("_range")}
        return cls(**{**given, **ranges, "n_layers": n_layers, "components": components})

    def layer_range(self, fractions: tuple[float, float]) -> tuple[float, float]:
        last = self.n_layers - 1
        return fractions[0] * last, fractions[1] * last

    def span_bounds(self) -> tuple[float, float]:
        """Span in layers: never below one layer (span 0 edits nothing)."""
        lo = max(1.0, self.span_range[0] * self.n_layers)
        return lo, max(lo, self.span_range[1] * self.n_layers)


def suggest(trial: optuna.Trial, space: SpaceConfig) -> EditParams:
    if space.direction_scope == "search":
        scope = trial.suggest_categorical("direction_scope", ["global", "per_layer"])
    else:
        scope = space.direction_scope
    index = trial.suggest_float("direction_index", *space.layer_range(space.direction_index_range))
    kernels = {}
    for c in KERNEL_COMPONENTS:
        if c not in space.components:
            continue
        max_w = trial.suggest_float(f"{c}.max_weight", *space.max_weight_range)
        peak = trial.suggest_float(f"{c}.peak", *space.layer_range(space.peak_range))
        min_frac = trial.suggest_float(f"{c}.min_weight_frac", *space.min_weight_range)
        span = trial.suggest_float(f"{c}.span", *space.span_bounds())
        kernels[c] = Kernel(max_weight=max_w, peak=peak, min_weight=min_frac * max_w, span=span)
    embed = 0.0
    if "embed" in space.components:
        embed = trial.suggest_float("embed_weight", *space.embed_weight_range)
    extra = 0.0
    if space.directions_per_layer > 1:
        extra = trial.suggest_float("extra_weight", *space.extra_weight_range)
    projection = None
    if space.searches_projection:
        projection = trial.suggest_float("projection", *space.projection_range)
    elif space.orthogonalize_direction and space.projection_range[0] < 1.0:
        projection = space.projection_range[0]  # a fixed blend, e.g. [0, 0]: the plain one
    return EditParams(
        scope=scope,
        kernels=kernels,
        direction_index=index if scope == "global" else None,
        embed_weight=embed,
        extra_weight=extra,
        projection=projection,
    )


def warm_starts(space: SpaceConfig, fractions: tuple[float, ...]) -> list[dict[str, float | str]]:
    """Optuna parameters of the first trials: the edit of the Arditi et al. pipeline, one
    direction ablated with strength 1 from every writer of every layer, taken from the layer at
    each depth fraction. On a real chat model this is already near the front (Qwen2.5-0.5B:
    refusal 0.62 -> 0.11 at KL 0.13 with the direction at 70 % depth), so the sampler refines a
    good edit instead of spending its first trials on random kernels. Values are clamped into
    the configured ranges: a narrowed space gets the nearest flat edit it allows."""

    def clamp(x: float, bounds: tuple[float, float]) -> float:
        return min(max(x, bounds[0]), bounds[1])

    last = space.n_layers - 1
    kernel: dict[str, float | str] = {}
    for c in KERNEL_COMPONENTS:
        if c in space.components:
            kernel[f"{c}.max_weight"] = clamp(1.0, space.max_weight_range)
            kernel[f"{c}.peak"] = clamp(last / 2, space.layer_range(space.peak_range))
            kernel[f"{c}.min_weight_frac"] = clamp(1.0, space.min_weight_range)
            kernel[f"{c}.span"] = space.span_bounds()[1]
    if "embed" in space.components:
        kernel["embed_weight"] = clamp(0.0, space.embed_weight_range)
    if space.directions_per_layer > 1:  # every direction at the same strength
        kernel["extra_weight"] = clamp(1.0, space.extra_weight_range)
    if space.searches_projection:  # Arditi et al. ablate the plain mean difference
        kernel["projection"] = clamp(0.0, space.projection_range)
    starts = []
    for f in fractions:
        params = dict(kernel)
        params["direction_index"] = clamp(f * last, space.layer_range(space.direction_index_range))
        if space.direction_scope == "search":
            params["direction_scope"] = "global"
        starts.append(params)
    if space.direction_scope == "per_layer":  # the index is unused: one flat start is enough
        starts = starts[:1]
    return starts


def analysis_depths(
    candidates: list[dict], stream: str, n_layers: int, top: int = 3
) -> list[float]:
    """Depth fractions of the best-ranked candidate layers of `stream` in the candidates of
    `abliterate directions` (directions.json): warm starts chosen by intervention rather than by
    a fixed depth. The candidate at layer l is the run's direction at index l."""
    ranked = sorted(
        (c for c in candidates if c.get("rank") and c.get("stream") == stream),
        key=lambda c: c["rank"],
    )
    last = max(n_layers - 1, 1)
    return [min(max(int(c["layer"]) / last, 0.0), 1.0) for c in ranked[:top]]


def read_analysis(path: str | Path, stream: str) -> list[dict]:
    """The candidates of a directions.json, checked: a readable report with at least one ranked
    candidate in `stream`."""
    file = Path(path).expanduser()
    try:
        candidates = json.loads(file.read_text())["candidates"]
        ranked = [c for c in candidates if c.get("rank") and c.get("stream") == stream]
        for c in ranked:
            int(c["layer"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AbliterateError(
            f"warm_start_analysis = {file}: not a directions.json of `abliterate directions` "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not ranked:
        raise AbliterateError(
            f"warm_start_analysis = {file}: no ranked candidate in stream {stream!r} "
            f"(analyse that stream: abliterate directions MODEL --streams {stream})"
        )
    return candidates
