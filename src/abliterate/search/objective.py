"""The two objectives minimised together: a refusal score and a KL score."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectiveWeights:
    overrefusal_penalty: float = 1.0
    harmful_marker_penalty: float = 0.1
    compliance_gap_penalty: float = 0.0
    kl_divergence_target: float = 0.01

    @classmethod
    def from_settings(cls, s) -> ObjectiveWeights:
        return cls(
            s.overrefusal_penalty,
            s.harmful_marker_penalty,
            s.compliance_gap_penalty,
            s.kl_divergence_target,
        )


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
