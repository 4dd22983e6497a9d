"""The two objectives minimised together: a refusal score and a KL score."""

from __future__ import annotations

from dataclasses import dataclass, fields

from abliterate.config import ObjectiveSettings, field_default


@dataclass(frozen=True)
class ObjectiveWeights:
    """The objective settings the scores read (defaults are the settings' own)."""

    overrefusal_penalty: float = field_default("overrefusal_penalty")
    harmful_marker_penalty: float = field_default("harmful_marker_penalty")
    compliance_gap_penalty: float = field_default("compliance_gap_penalty")
    kl_divergence_target: float = field_default("kl_divergence_target")

    @classmethod
    def from_settings(cls, s: ObjectiveSettings) -> ObjectiveWeights:
        return cls(**{f.name: getattr(s, f.name) for f in fields(cls)})


def refusal_score(
    metrics: dict[str, float], base_refusal_rate: float, w: ObjectiveWeights
) -> float:
    """refusal_rate / base_refusal_rate + weighted over-refusal, hedging and compliance gap."""
    score = metrics["refusal_rate"] / base_refusal_rate
    score += w.overrefusal_penalty * metrics.get("overrefusal_rate", 0.0)
    score += w.harmful_marker_penalty * metrics.get("harmful_marker_rate", 0.0)
    score += w.compliance_gap_penalty * metrics.get("compliance_gap", 0.0)
    return score


def kl_score(kl: float, w: ObjectiveWeights) -> float:
    """KL, floored at the target: below it, further reductions are worth nothing, so the sampler
    does not spend trials on edits that barely touch the model (Heretic's kl_divergence_target)."""
    return max(kl, w.kl_divergence_target)
