"""What a trial leaves behind, typed: `TrialMetrics` and `TrialRecord`, with their JSON form.

The JSON form is the trial file of the run directory (`trials/N.json`), the record an Optuna
study keeps for other workers, and the `trial.json` of an export; `from_dict(to_dict(r)) == r`.
Every reader goes through these classes, so a misspelt key is a type error, not a KeyError
three commands later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from abliterate.edit.plan import EditParams

_METRIC_FIELDS = ("refusal_rate", "kl", "overrefusal_rate", "harmful_marker_rate", "compliance_gap")


@dataclass(frozen=True)
class TrialMetrics:
    """The figures of one measured model: refusal rate on harmful prompts, KL divergence from
    the base model on harmless ones, over-refusal, hedging and their gap; `other` holds any
    further figure (capability, ...) by name."""

    refusal_rate: float
    kl: float
    overrefusal_rate: float = 0.0
    harmful_marker_rate: float = 0.0
    compliance_gap: float = 0.0
    other: Mapping[str, float] = field(default_factory=dict)

    def get(self, key: str, default: float | None = None) -> float | None:
        """A figure by name, as tables that list several metrics read them."""
        return getattr(self, key) if key in _METRIC_FIELDS else self.other.get(key, default)

    def to_dict(self) -> dict[str, float]:
        return {**{k: getattr(self, k) for k in _METRIC_FIELDS}, **self.other}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialMetrics:
        known = {k: float(data[k]) for k in _METRIC_FIELDS if k in data}
        other = {k: v for k, v in data.items() if k not in _METRIC_FIELDS}
        return cls(**known, other=other)


@dataclass(frozen=True)
class Confirmation:
    """A chosen trial re-measured with longer answers before the choice: its refusal rate, and
    the damage checks (over-refusal on every search harmless prompt, capability probes) that
    pass over a trial whose edit hurts ordinary answers (`damaged`)."""

    refusal_rate: float
    refusal_score: float
    response_length: int
    overrefusal_rate: float | None = None
    capability: float | None = None
    damaged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Confirmation:
        def optional(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(
            float(data["refusal_rate"]),
            float(data["refusal_score"]),
            int(data.get("response_length", 0)),
            optional("overrefusal_rate"),
            optional("capability"),
            bool(data.get("damaged", False)),
        )


@dataclass(frozen=True)
class TrialRecord:
    """One trial: what it edited (`params`), what that did (`metrics`), the two objectives the
    study minimised, and the timing, per-layer strengths and sample answers for the report.
    `confirmed` is set when the choice re-measured it; `source` names a manual edit's origin."""

    number: int
    params: EditParams
    metrics: TrialMetrics
    refusal_score: float
    kl_score: float
    pruned: bool = False
    seconds: Mapping[str, float] = field(default_factory=dict)
    strengths: Mapping[str, list[float]] = field(default_factory=dict)
    samples: Mapping[str, list[dict[str, str]]] = field(default_factory=dict)
    confirmed: Confirmation | None = None
    source: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "number": self.number,
            "params": self.params.to_dict(),
            "metrics": self.metrics.to_dict(),
            "refusal_score": self.refusal_score,
            "kl_score": self.kl_score,
            "pruned": self.pruned,
            "seconds": dict(self.seconds),
            "strengths": dict(self.strengths),
            "samples": dict(self.samples),
        }
        if self.confirmed is not None:
            data["confirmed"] = self.confirmed.to_dict()
        if self.source is not None:
            data["source"] = dict(self.source)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        confirmed = data.get("confirmed")
        return cls(
            number=int(data["number"]),
            params=EditParams.from_dict(data["params"]),
            metrics=TrialMetrics.from_dict(data["metrics"]),
            refusal_score=float(data["refusal_score"]),
            kl_score=float(data["kl_score"]),
            pruned=bool(data.get("pruned", False)),
            seconds=dict(data.get("seconds", {})),
            strengths=dict(data.get("strengths", {})),
            samples=dict(data.get("samples", {})),
            confirmed=Confirmation.from_dict(confirmed) if confirmed else None,
            source=data.get("source"),
        )

    def without_samples(self) -> TrialRecord:
        return replace(self, samples={})

    def with_confirmation(self, confirmed: Confirmation | None) -> TrialRecord:
        return self if confirmed is None else replace(self, confirmed=confirmed)
