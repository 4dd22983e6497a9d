"""The report's figures: pure functions from run data to matplotlib figures (no files)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from abliterate.search.record import TrialRecord

COLORS = {
    "attn_out": "#1f77b4",
    "mlp_down": "#d62728",
    "embed": "#2ca02c",
    "harmful": "#d62728",
    "harmless": "#1f77b4",
}


def pareto(trials: list[TrialRecord], front: set[int], chosen: int | None) -> Figure:
    """KL divergence against refusal rate for every trial; the front joined, the choice starred."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    kl = np.array([max(t.metrics.kl, 1e-5) for t in trials])
    ref = np.array([t.metrics.refusal_rate for t in trials])
    ax.scatter(kl, ref, s=18, color="#999999", label="trial")
    on_front = sorted((t for t in trials if t.number in front), key=lambda t: t.metrics.kl)
    if on_front:
        ax.plot(
            [max(t.metrics.kl, 1e-5) for t in on_front],
            [t.metrics.refusal_rate for t in on_front],
            "o-",
            color="#ff7f0e",
            ms=5,
            label="Pareto front",
        )
    for t in trials:
        if t.number == chosen:
            ax.scatter(
                [max(t.metrics.kl, 1e-5)],
                [t.metrics.refusal_rate],
                s=180,
                marker="*",
                color="#2ca02c",
                zorder=5,
                label=f"chosen (trial {chosen})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("KL divergence from the base model (harmless prompts)")
    ax.set_ylabel("refusal rate (harmful prompts)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Trials: refusals against damage")
    fig.tight_layout()
    return fig


def history(trials: list[TrialRecord]) -> Figure:
    """Objectives per trial in order, with the best refusal score so far."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.5, 4.6), sharex=True)
    trials = sorted(trials, key=lambda t: t.number)
    n = [t.number for t in trials]
    score = np.array([t.refusal_score for t in trials])
    a1.plot(n, score, ".", color="#1f77b4", label="refusal score")
    a1.plot(n, np.minimum.accumulate(score), "-", color="#ff7f0e", label="best so far")
    a1.set_ylabel("refusal score")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.semilogy(n, [max(t.metrics.kl, 1e-5) for t in trials], ".", color="#d62728")
    a2.set_ylabel("KL divergence")
    a2.set_xlabel("trial")
    a2.grid(alpha=0.3)
    a1.set_title("Optimisation history")
    fig.tight_layout()
    return fig


def directions(norms: np.ndarray, separation: np.ndarray) -> Figure:
    """Per layer: size of the harmful-harmless mean difference and how well it separates them."""
    fig, a1 = plt.subplots(figsize=(6.5, 3.6))
    layers = np.arange(len(norms))
    a1.plot(layers, norms, "o-", color="#1f77b4", ms=4, label="|mean difference|")
    _layer_ticks(a1, len(norms))
    a1.set_xlabel("layer")
    a1.set_ylabel("|mean(harmful) - mean(harmless)|", color="#1f77b4")
    a2 = a1.twinx()
    a2.plot(layers, separation, "s--", color="#d62728", ms=4, label="separation")
    a2.set_ylabel("separation along the direction (d')", color="#d62728")
    a1.grid(alpha=0.3)
    a1.set_title("Refusal direction per layer")
    fig.tight_layout()
    return fig


def mountain(strengths: Mapping[str, list[float]], embed: float = 0.0) -> Figure:
    """The chosen trial's edit strength per layer for each component."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / max(1, len(strengths))
    for i, (comp, values) in enumerate(sorted(strengths.items())):
        x = np.arange(len(values)) + (i - (len(strengths) - 1) / 2) * width
        ax.bar(x, values, width=width, color=COLORS.get(comp), label=comp)
    if embed:
        ax.axhline(embed, color=COLORS["embed"], ls=":", label=f"embed ({embed:.2f})")
    _layer_ticks(ax, max(len(v) for v in strengths.values()))
    ax.set_xlabel("layer")
    ax.set_ylabel("edit strength lambda")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Where the edit acts (chosen trial)")
    fig.tight_layout()
    return fig


def projections(
    harmful: np.ndarray, harmless: np.ndarray, layers: list[int], method: str = "PCA"
) -> Figure:
    """2-D projections of harmful (red) and harmless (blue) residuals at a few layers.

    `harmful`, `harmless`: (n, len(layers), 2) coordinates already projected."""
    k = len(layers)
    fig, axes = plt.subplots(1, k, figsize=(3.0 * k, 3.1), squeeze=False)
    for j, (ax, layer) in enumerate(zip(axes[0], layers, strict=True)):
        ax.scatter(
            harmless[:, j, 0],
            harmless[:, j, 1],
            s=7,
            alpha=0.6,
            color=COLORS["harmless"],
            label="harmless",
        )
        ax.scatter(
            harmful[:, j, 0],
            harmful[:, j, 1],
            s=7,
            alpha=0.6,
            color=COLORS["harmful"],
            label="harmful",
        )
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Residuals at the last prompt token ({method})", fontsize=10)
    fig.tight_layout()
    return fig


def project_2d(harmful: np.ndarray, harmless: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Per layer, a joint 2-D embedding of both sets: PaCMAP when installed, else PCA.

    Inputs (n, P, d); outputs (n, P, 2)."""
    try:
        import pacmap  # optional

        method = "PaCMAP"
    except ImportError:
        pacmap, method = None, "PCA"
    hb, hg = [], []
    for p in range(harmful.shape[1]):
        data = np.concatenate([harmful[:, p], harmless[:, p]]).astype(np.float64)
        if pacmap is not None:
            xy = pacmap.PaCMAP(n_components=2, random_state=0).fit_transform(data)
        else:
            centered = data - data.mean(0)
            _, _, vt = np.linalg.svd(centered, full_matrices=False)
            xy = centered @ vt[:2].T
        hb.append(xy[: len(harmful)])
        hg.append(xy[len(harmful) :])
    return np.stack(hb, 1), np.stack(hg, 1), method


def _layer_ticks(ax, n: int) -> None:
    """Integer layer ticks, at most about 16 of them."""
    step = max(1, n // 16)
    ax.set_xticks(range(0, n, step))


def candidate_scores(cands, stream: str) -> Figure:
    """`abliterate directions`: bypass, induce and KL per layer for one stream."""
    fig, axes = plt.subplots(3, 1, figsize=(6.5, 6.4), sharex=True)
    layers = [c.layer for c in cands]
    kept = [c.layer for c in cands if c.dropped is None]
    panels = [
        ("bypass_log_odds", "refusal log-odds\nunder ablation (harmful)", "#d62728"),
        ("induce_log_odds", "refusal log-odds\nunder addition (harmless)", "#1f77b4"),
        ("kl", "KL under ablation\n(harmless)", "#2ca02c"),
    ]
    for ax, (key, label, color) in zip(axes, panels, strict=True):
        values = [getattr(c, key) for c in cands]
        ax.plot(layers, values, "o-", color=color, ms=4)
        ax.plot(
            kept,
            [getattr(c, key) for c in cands if c.dropped is None],
            "o",
            ms=8,
            mfc="none",
            mec="black",
            label="kept by the filter",
        )
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].axhline(0, color="#888", lw=0.8)
    axes[1].axhline(0, color="#888", lw=0.8)
    axes[0].legend(fontsize=7)
    _layer_ticks(axes[-1], len(layers))
    axes[-1].set_xlabel("layer")
    axes[0].set_title(f"Candidate directions, stream {stream}")
    fig.tight_layout()
    return fig
