"""The model card (README.md) of an export."""

from __future__ import annotations

import shlex

from abliterate import __version__
from abliterate.search.record import TrialRecord

METRIC_ROWS = (
    ("refusal rate (harmful prompts)", "refusal_rate"),
    ("over-refusal (harmless prompts)", "overrefusal_rate"),
    ("KL divergence from base (harmless prompts)", "kl"),
    ("harmful answers that still moralise", "harmful_marker_rate"),
    ("capability (exact match)", "capability"),
)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" if x < 0.01 else f"{x:.3f}"


def measured_notes(settings, record: TrialRecord) -> str:
    """What the in-search figures above rest on: a sample for over-refusal, and the longer
    re-measurement the trial passed before it was chosen."""
    notes = []
    if settings.overrefusal_sample:
        notes.append(
            f"Over-refusal was answered on a seeded sample of {settings.overrefusal_sample} of "
            "the harmless prompts (all of them when the set is smaller); KL reads all of them."
        )
    if settings.harmful_openings_sample and settings.overrefusal_openings:
        notes.append(
            "The in-search refusal rates also count up to "
            f"{settings.harmful_openings_sample} harmful prompts of the direction set, judged by "
            "whether the answer would open with one of the base model's refusal openings (where "
            "those predicted the base model's answers)."
        )
    if settings.overrefusal_response_length:
        notes.append(
            f"In the search, harmless answers were {settings.overrefusal_response_length} "
            f"tokens long (harmful ones {settings.max_response_length})."
        )
    confirmed = record.confirmed
    if confirmed:
        damage = ""
        if confirmed.overrefusal_rate is not None:
            damage = (
                f", over-refusal on every search harmless prompt {confirmed.overrefusal_rate:.3f}"
            )
        if confirmed.capability is not None:
            damage += f", capability probes {confirmed.capability:.3f}"
        notes.append(
            f"Before it was chosen, this trial's refusal rate was measured again with "
            f"{confirmed.response_length}-token answers: {confirmed.refusal_rate:.3f}{damage}."
        )
    return "".join(f"\n{n}" for n in notes)


def metrics_table(metrics: dict, base: dict) -> str:
    rows = ["| metric | base model | this model |", "| --- | --- | --- |"]
    for label, key in METRIC_ROWS:
        if key not in metrics and key not in base:
            continue
        before = "0" if key == "kl" else _fmt(base.get(key))
        rows.append(f"| {label} | {before} | {_fmt(metrics.get(key))} |")
    return "\n".join(rows)


def kernel_table(params: dict) -> str:
    rows = [
        "| component | max weight | peak layer | min weight | span (layers) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for comp, k in params["kernels"].items():
        rows.append(
            f"| {comp} | {k['max_weight']:.3f} | {k['peak']:.2f} | "
            f"{k['min_weight']:.3f} | {k['span']:.2f} |"
        )
    return "\n".join(rows)


def method_text(settings, params: dict) -> str:
    options = []
    if settings.orthogonalize_direction:
        options.append("projected against the harmless mean")
    if settings.benign_subspace_rank:
        options.append(
            f"kept out of the top {settings.benign_subspace_rank} harmless principal directions"
        )
    scope = params["scope"]
    if params.get("direction_index") is not None:
        scope += f", index {params['direction_index']:.3f}"
    return (
        "Refusal directions are the normalised difference of mean residuals (stream "
        f"`{settings.residual_stream}`, last prompt token) between harmful and harmless prompts"
        f"{'; ' + ', '.join(options) if options else ''}. Each residual writer `W` was edited as "
        "`W' = W - lambda(l) v (v^T W)` (row normalisation "
        f"`{settings.row_normalization}`), with `lambda(l)` a per-layer kernel per component. "
        f"Direction scope: {scope}."
    )


def model_card(settings, record: TrialRecord, base: dict | None, kind: str, extra: str = "") -> str:
    params = record.params.to_dict()
    command = [
        "abliterate",
        "run",
        settings.model,
        "--config",
        "abliterate.toml",
        "--select",
        f"trial:{record.number}",
        "--output",
        "OUT",
    ]
    what = {"adapter": "LoRA adapter", "gguf": "GGUF model"}.get(kind, "model")
    library = {"adapter": "peft", "gguf": "gguf"}.get(kind, "transformers")
    name = settings.model.rstrip("/").split("/")[-1]
    return f"""---
base_model: {settings.model}
library_name: {library}
tags: [abliterate, abliterated, uncensored]
---
# {name}, abliterated

This {what} was made from `{settings.model}` with abliterate {__version__}: the weights that write
into the residual stream were orthogonalized against the model's refusal direction, with the
strength of the edit per layer chosen by an automatic search (trial {record.number}).

## Metrics

{metrics_table(record.metrics.to_dict(), (base or {}).get("metrics", {}))}

Evaluation prompts: harmful `{settings.harmful_eval_prompts.describe()}`, harmless
`{settings.harmless_eval_prompts.describe()}`; greedy decoding, {settings.max_response_length}
new tokens, refusals detected by markers.{measured_notes(settings, record)}

## Method

{method_text(settings, params)}

{kernel_table(params)}
{extra}
## Reproduce

```bash
{shlex.join(command)}
```

`abliterate.toml` holds every setting of the run, `trial.json` the trial's parameters, metrics
and the direction used.
"""


HELD_OUT_ROWS = (
    ("refusal rate (harmful prompts)", "refusal_rate"),
    ("compliance (normal answers without refusal)", "compliance_rate"),
    ("over-refusal (harmless prompts)", "overrefusal_rate"),
    ("KL from base, first token (harmless)", "kl"),
    ("capability (exact-answer probes)", "capability"),
)


def _interval(m: dict | None) -> str:
    if m is None:
        return "n/a"
    count = f"{m['k']}/{m['n']}" if "k" in m else f"n={m['n']}"
    return f"{_fmt(m['value'])} [{_fmt(m['low'])}, {_fmt(m['high'])}] ({count})"


def held_out_table(report: dict) -> str:
    base, chosen = report["base"], report["chosen"]
    rows = ["| metric | base model | this model |", "| --- | --- | --- |"]
    # kl_16_tokens: teacher-forced KL over the base model's first 16 answer tokens
    kl_rows = tuple(
        (f"KL from base, first {k.split('_')[1]} answer tokens (harmless)", k)
        for k in chosen
        if k.startswith("kl_")
    )
    for label, key in HELD_OUT_ROWS + kl_rows:
        if key not in chosen:
            continue
        before = "0" if key.startswith("kl") else _interval(base.get(key))
        rows.append(f"| {label} | {before} | {_interval(chosen[key])} |")
    classes = [
        " / ".join(str(m["answer_classes"]["harmful"][c]) for c in ("empty", "degenerate"))
        for m in (base, chosen)
    ]
    rows.append(f"| empty / degenerate answers (harmful) | {classes[0]} | {classes[1]} |")
    if "judge" in chosen:
        rows += [judge_row(label, base, chosen) for label in ("refusal", "evasion", "compliance")]
    return "\n".join(rows)


def judge_row(label: str, base: dict, chosen: dict) -> str:
    """One label's share of the harmful answers, by the judge model (see eval/judge.py)."""
    cells = [
        _interval(m["judge"]["harmful"][label]) if "judge" in m else "n/a" for m in (base, chosen)
    ]
    return f"| judge: {label} (harmful) | {cells[0]} | {cells[1]} |"


def judge_note(chosen: dict) -> str:
    if "judge" not in chosen:
        return ""
    j = chosen["judge"]
    return (
        f" A judge model (`{j['model'].rstrip('/').split('/')[-1]}`) also labelled every answer; "
        f"it agrees with the markers on {j['harmful']['agreement_with_markers']:.0%} of the "
        "harmful answers."
    )


def held_out_section(report: dict) -> str:
    chosen, what = report["chosen"], report["measured"]
    n_harmful = chosen["refusal_rate"]["n"]
    n_harmless = chosen["overrefusal_rate"]["n"]
    weights = ", ".join(f"{k} {v}" for k, v in what.items() if k != "weights")
    return f"""## Held-out evaluation

Measured after the search on {n_harmful} harmful and {n_harmless} harmless prompts that neither
the search nor the choice of this trial saw: greedy answers of {chosen["response_length"]} new
tokens, reasoning blocks removed, refusals detected by markers, 95 % Wilson intervals (KL: mean
over prompts with a normal-approximation interval). Measured weights: {what["weights"]}
({weights}). Empty and degenerate (looping) answers never count as compliance.{judge_note(chosen)}

{held_out_table(report)}

"""


def with_held_out(card: str, report: dict) -> str:
    """The card with the held-out section first and the search's own figures labelled as such."""
    in_search = "## In-search metrics (measured on the prompts the trial was chosen on)\n"
    for heading in ("## Metrics\n", in_search):  # a first report, or a newer one
        head, sep, rest = card.partition(heading)
        if sep:
            break
    else:
        return card
    head = head.split("## Held-out evaluation")[0]
    return head + held_out_section(report) + in_search + rest
