"""`abliterate report RUN_DIR`: one self-contained HTML page (images embedded) about a run, and
the same figures as PNGs in RUN_DIR/plots/."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from abliterate.atomic import write_bytes, write_text
from abliterate.errors import AbliterateError
from abliterate.eval.refusal import is_refusal
from abliterate.report import plots
from abliterate.runs import RunDir, read_directions
from abliterate.search.record import TrialRecord
from abliterate.search.select import DEFAULT_POLICY, Candidate, pareto_front, select

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; width: 100%; }
th, td { border: 1px solid #ddd; padding: .35rem .5rem; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .6rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.3rem; }
img { max-width: 100%; border: 1px solid #eee; border-radius: 4px; margin: .4rem 0; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.refusal { color: #b00020; } .answer { white-space: pre-wrap; }
tr.chosen td { background: #eef8ee; }
"""


def _png(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    write_bytes(path, data)
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def chosen_trial(run_dir: RunDir, trials: list[TrialRecord], override: int | None) -> int | None:
    if override is not None:
        return override
    choice = run_dir.load_choice()
    if choice is not None:
        return choice["trial"]
    return (
        select([Candidate.from_record(t) for t in trials], DEFAULT_POLICY).number
        if trials
        else None
    )


def _fmt(x, digits=3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else html.escape(str(x))


def _metric_cards(base: dict, chosen: TrialRecord | None) -> str:
    rows = [
        ("refusal rate", "refusal_rate"),
        ("over-refusal", "overrefusal_rate"),
        ("KL divergence", "kl"),
        ("still moralising", "harmful_marker_rate"),
    ]
    cards = []
    for label, key in rows:
        before = 0.0 if key == "kl" else base.get(key)
        after = chosen.metrics.get(key) if chosen else None
        cards.append(
            f'<div class="card">{label}<b>{_fmt(after, 4 if key == "kl" else 2)}</b>'
            f"base: {_fmt(before, 2)}</div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _held_out_cards(held: dict) -> str:
    """The chosen model's held-out figures, each with its interval and n, beside the base's."""
    chosen, base = held["chosen"], held["base"]
    rows = [
        ("refusal rate", "refusal_rate"),
        ("compliance", "compliance_rate"),
        ("over-refusal", "overrefusal_rate"),
        *((f"KL ({k.replace('_', ' ')})", k) for k in chosen if k.startswith("kl")),
        *([("capability", "capability")] if "capability" in chosen else []),
    ]
    cards = []
    for label, key in rows:
        m = chosen[key]
        count = f"{m['k']}/{m['n']}" if "k" in m else f"n={m['n']}"
        before = _fmt(base[key]["value"], 2) if key in base else "0"
        cards.append(
            f'<div class="card">{html.escape(label)}<b>{_fmt(m["value"], 3)}</b>'
            f"[{_fmt(m['low'], 3)}, {_fmt(m['high'], 3)}] ({count}) &middot; base: {before}</div>"
        )
    n = chosen["response_length"]
    note = (
        f"<p>Trial {held['trial']}, measured after the search on prompts that neither the search "
        f"nor the choice saw, {n}-token answers, 95 % intervals; weights: "
        f"{html.escape(held['measured']['weights'])}.</p>"
    )
    return note + f'<div class="cards">{"".join(cards)}</div>'


def _samples_table(base_samples: dict, trial_samples: dict) -> str:
    out = []
    for key in ("harmful", "harmless"):
        before = {s["prompt"]: s["response"] for s in base_samples.get(key, [])}
        rows = []
        for s in trial_samples.get(key, []):
            cells = []
            for text in (before.get(s["prompt"], ""), s["response"]):
                refused = is_refusal(text)
                # Generation stops at the first refusal marker: mark the cut.
                shown = html.escape(text) + (" &hellip;" if refused else "")
                cells.append(
                    f'<td class="{"answer refusal" if refused else "answer"}">{shown}</td>'
                )
            rows.append(f"<tr><td>{html.escape(s['prompt'])}</td>{''.join(cells)}</tr>")
        if rows:
            out.append(
                f"<h3>{key} prompts</h3><table><tr><th>prompt</th><th>base model</th>"
                f"<th>chosen trial</th></tr>{''.join(rows)}</table>"
            )
    if not out:
        return "<p>No sample answers recorded.</p>"
    note = (
        "<p class=sub>Greedy answers to the first evaluation prompts. Answers in red are "
        "refusals; generation stops at the first refusal marker (&hellip;).</p>"
    )
    return note + "".join(out)


def _trials_table(trials: list[TrialRecord], front: set[int], chosen: int | None) -> str:
    head = (
        "<tr><th>trial</th><th>scope</th><th>refusals</th><th>over-refusal</th><th>KL</th>"
        "<th>refusal score</th><th>front</th><th>seconds</th></tr>"
    )
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        m = t.metrics
        cls = ' class="chosen"' if t.number == chosen else ""
        rows.append(
            f"<tr{cls}><td class=num>{t.number}</td><td>{t.params.scope}</td>"
            f"<td class=num>{m.refusal_rate:.2f}</td>"
            f"<td class=num>{m.overrefusal_rate:.2f}</td>"
            f"<td class=num>{m.kl:.4f}</td><td class=num>{t.refusal_score:.3f}</td>"
            f"<td>{'yes' if t.number in front else ''}</td>"
            f"<td class=num>{t.seconds['total']:.1f}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def build_report(path: str | Path, trial: int | None = None) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/plots/*.png; returns the report's path."""
    run_dir = RunDir(Path(path))
    if not run_dir.exists():
        raise AbliterateError(f"{path} is not a run directory (no settings.toml)")
    if not run_dir.directions_file.is_file():
        raise AbliterateError(f"{path} has no directions yet: nothing to report")
    settings = run_dir.saved_settings()
    trials = [run_dir.load_trial(n) for n in run_dir.trial_numbers()]
    base = run_dir.load_base() or {}
    tensors, meta = read_directions(run_dir.directions_file)
    run_dir.plots_dir.mkdir(exist_ok=True)
    figures = {}
    chosen = chosen_trial(run_dir, trials, trial)
    by_number = {t.number: t for t in trials}
    if chosen is not None and chosen not in by_number:
        raise AbliterateError(f"trial {chosen} has no record in {run_dir.trials_dir}")
    front = {c.number for c in pareto_front([Candidate.from_record(t) for t in trials])}
    P = run_dir.plots_dir
    if trials:
        figures["pareto"] = _png(plots.pareto(trials, front, chosen), P / "pareto.png")
        figures["history"] = _png(plots.history(trials), P / "history.png")
    if "mean_difference_norm" in tensors:  # absent for a single direction given by file
        figures["directions"] = _png(
            plots.directions(
                tensors["mean_difference_norm"][1:].numpy(), tensors["separation"][1:].numpy()
            ),
            P / "directions.png",
        )
    if chosen is not None:
        t = by_number[chosen]
        figures["mountain"] = _png(
            plots.mountain(t.strengths, t.params.embed_weight), P / "mountain.png"
        )
    if "plot_harmful" in tensors:
        hb, hg, method = plots.project_2d(
            tensors["plot_harmful"].float().numpy(), tensors["plot_harmless"].float().numpy()
        )
        layers = [int(p) - 1 for p in tensors["plot_positions"].tolist()]
        figures["projections"] = _png(
            plots.projections(hb, hg, layers, method), P / "projections.png"
        )
    chosen_record = by_number.get(chosen) if chosen is not None else None
    held = run_dir.load_held_out()
    if held is not None and held["trial"] != chosen:
        held = None  # a report of another trial than the one shown
    page = _page(settings, meta, base, trials, chosen_record, front, chosen, figures, held)
    target = run_dir.report_file
    write_text(target, page)
    return target


def _page(settings, meta, base, trials, chosen_record, front, chosen, figures, held) -> str:
    keys = (
        "residual_stream",
        "orthogonalize_direction",
        "benign_subspace_rank",
        "row_normalization",
        "components",
        "n_trials",
        "max_response_length",
        "overrefusal_penalty",
        "kl_divergence_target",
    )
    settings_rows = "".join(f"<tr><th>{k}</th><td>{_fmt(settings.get(k))}</td></tr>" for k in keys)
    chosen_text = (
        f"trial {chosen}: {chosen_record.params.scope} direction"
        if chosen_record
        else "no trial chosen"
    )
    sections = [
        f"<h1>abliterate report: {html.escape(str(settings.get('model', '')))}</h1>",
        f'<p class="sub">{len(trials)} trials &middot; chosen {html.escape(chosen_text)} '
        f"&middot; directions from {meta.get('n_harmful', '?')} harmful and "
        f"{meta.get('n_harmless', '?')} harmless prompts</p>",
    ]
    if held is not None:
        sections += ["<h2>Held-out result</h2>", _held_out_cards(held)]
    sections += [
        "<h2>In-search result (the prompts the trial was chosen on)</h2>",
        _metric_cards(base.get("metrics", {}), chosen_record),
    ]
    if "pareto" in figures:
        sections += [
            "<h2>Search</h2>",
            f'<div class="grid">{figures["pareto"]}{figures["history"]}</div>',
        ]
    if "directions" in figures:
        sections += ["<h2>Refusal directions</h2>", figures["directions"]]
    if "projections" in figures:
        sections.append(figures["projections"])
    if "mountain" in figures:
        sections += ["<h2>The chosen edit</h2>", figures["mountain"]]
    if chosen_record:
        sections += [
            "<h2>Answers before and after</h2>",
            _samples_table(base.get("samples", {}), chosen_record.samples),
        ]
    if trials:
        sections += ["<h2>All trials</h2>", _trials_table(trials, front, chosen)]
    sections += ["<h2>Settings</h2>", f"<table>{settings_rows}</table>"]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>abliterate report</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
