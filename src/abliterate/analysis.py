"""Score every candidate refusal direction by intervening at inference time (the manual workflow
of Arditi et al. 2024 and Labonne's "Uncensor any LLM with abliteration").

For each stream (pre, mid, post) and layer, the candidate is the normalised difference of
means. It is scored on held-out prompts by:
- bypass: refusals on harmful prompts with the direction ablated everywhere (rate by generation,
  and mean log-odds of the refusal tokens at the first response token);
- induce: refusals on harmless prompts with the raw difference added at that layer;
- KL: first-token KL divergence on harmless prompts under ablation;
- geometry: cosines of the means and the direction, norms, separation, silhouette.
Then filtered (Arditi et al.: not in the last 20 % of layers, KL under a threshold, must induce
refusal) and ranked by bypass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from abliterate import activations
from abliterate.errors import AbliterateError
from abliterate.eval import kl as kl_mod
from abliterate.eval.generate import encoded_batches, generate
from abliterate.eval.refusal import is_refusal
from abliterate.interventions import ablation, addition, gains
from abliterate.model.arch import Layout


@dataclass
class DirectionCandidate:
    stream: str
    layer: int
    bypass_refusal: float = float("nan")
    bypass_log_odds: float = float("nan")
    induce_refusal: float = float("nan")
    induce_log_odds: float = float("nan")
    kl: float = float("nan")
    geometry: dict[str, float] = field(default_factory=dict)
    dropped: str | None = None  # why the filter dropped it
    rank: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Probe:
    """The held-out prompts and what the unedited model does with them."""

    harmful_texts: list[str]
    harmless_texts: list[str]
    refusal_tokens: list[int]
    kl_reference: kl_mod.KLReference
    base_refusal: float
    base_log_odds: float
    max_new_tokens: int
    batch_size: int
    markers: tuple[str, ...]


@torch.inference_mode()
def first_token_logits(model, tokenizer, texts: list[str], batch_size: int) -> Tensor:
    out = []
    for _n, enc in encoded_batches(model, tokenizer, texts, batch_size):
        out.append(model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1].float().cpu())
    return torch.cat(out)


def log_odds(logits: Tensor, tokens: list[int]) -> float:
    """Mean over prompts of log(p / (1 - p)), p the probability of any refusal token."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp[:, tokens].logsumexp(-1)
    return float((p - torch.log1p(-p.exp().clamp(max=1 - 1e-6))).mean())


@torch.inference_mode()
def refusal_tokens(
    model, tokenizer, texts: list[str], batch_size: int, markers
) -> tuple[list[int], float]:
    """The first tokens the model uses when it refuses (from its own refusals), and its refusal
    rate. Found empirically: no per-family token table to maintain."""
    firsts: dict[int, int] = {}
    refused = 0
    for _n, enc in encoded_batches(model, tokenizer, texts, batch_size):
        out = model.generate(
            **enc, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        width = enc["input_ids"].shape[1]
        for row in out[:, width:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            if is_refusal(text, markers):
                refused += 1
                firsts[int(row[0])] = firsts.get(int(row[0]), 0) + 1
    if not firsts:
        raise AbliterateError(
            "the model refuses none of the held-out harmful prompts: there is no refusal "
            "behaviour to analyse (check the prompt sets, system prompt and refusal markers)"
        )
    ranked = sorted(firsts, key=lambda t: -firsts[t])
    # The tokens that start 95% of refusals: enough for a stable log-odds, few enough to keep
    # ordinary answers out.
    keep, covered = [], 0
    for t in ranked:
        keep.append(t)
        covered += firsts[t]
        if covered >= 0.95 * refused:
            break
    return keep, refused / len(texts)


def _refusal_rate(model, tokenizer, texts, probe: Probe) -> float:
    answers = generate(
        model, tokenizer, texts, probe.max_new_tokens, probe.batch_size, stop_markers=probe.markers
    )
    return sum(is_refusal(a, probe.markers) for a in answers) / len(answers)


def geometry(bad: activations.Residuals, good: activations.Residuals, pos: int) -> dict[str, float]:
    """Cosines, norms, separation and silhouette of the two sets at one position."""
    mb, mg = bad.mean[pos].float(), good.mean[pos].float()
    diff = mb - mg
    r = diff / diff.norm().clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity
    out = {
        "norm_harmful_mean": float(mb.norm()),
        "norm_harmless_mean": float(mg.norm()),
        "norm_difference": float(diff.norm()),
        "cos_harmful_harmless": float(cos(mb, mg, dim=0)),
        "cos_direction_harmful": float(cos(r, mb, dim=0)),
        "cos_direction_harmless": float(cos(r, mg, dim=0)),
    }
    if bad.full is not None and good.full is not None:
        xb, xg = bad.full[:, pos].float(), good.full[:, pos].float()
        pb, pg = xb @ r, xg @ r
        pooled = ((pb.var() + pg.var()) / 2).clamp_min(1e-12).sqrt()
        out["separation"] = float((pb.mean() - pg.mean()) / pooled)
        out["silhouette"] = silhouette(torch.cat([xb, xg]), len(xb))
    return out


def silhouette(x: Tensor, n_first: int) -> float:
    """Mean silhouette score of a two-cluster split (first n_first rows vs the rest)."""
    d = torch.cdist(x, x)
    labels = torch.zeros(len(x), dtype=torch.bool)
    labels[:n_first] = True
    scores = []
    for i in range(len(x)):
        same = labels == labels[i]
        same[i] = False
        if same.sum() == 0:
            continue
        a = d[i, same].mean()
        b = d[i, labels != labels[i]].mean()
        scores.append(float((b - a) / torch.maximum(a, b).clamp_min(1e-12)))
    return sum(scores) / max(1, len(scores))


def score(
    model,
    tokenizer,
    layout: Layout,
    cand: DirectionCandidate,
    direction: Tensor,
    raw: Tensor,
    probe: Probe,
) -> None:
    """Fill in the bypass, induce and KL scores of one candidate (in place)."""
    g = gains(layout)
    with ablation(layout, direction, g):
        cand.bypass_log_odds = log_odds(
            first_token_logits(model, tokenizer, probe.harmful_texts, probe.batch_size),
            probe.refusal_tokens,
        )
        cand.bypass_refusal = _refusal_rate(model, tokenizer, probe.harmful_texts, probe)
        cand.kl = kl_mod.kl_divergence(model, probe.kl_reference)
    with addition(layout, cand.layer, raw, cand.stream):
        cand.induce_log_odds = log_odds(
            first_token_logits(model, tokenizer, probe.harmless_texts, probe.batch_size),
            probe.refusal_tokens,
        )
        cand.induce_refusal = _refusal_rate(model, tokenizer, probe.harmless_texts, probe)


def filter_and_rank(
    cands: list[DirectionCandidate], n_layers: int, kl_threshold: float, late_fraction: float = 0.2
) -> list[DirectionCandidate]:
    """Arditi et al.'s filter, then rank the survivors by bypass (fewest refusals first)."""
    cutoff = n_layers * (1 - late_fraction)
    for c in cands:
        if c.dropped:
            continue
        if c.layer >= cutoff:
            c.dropped = f"in the last {late_fraction:.0%} of layers"
        elif not c.kl <= kl_threshold:
            c.dropped = f"KL {c.kl:.3f} > {kl_threshold}"
        # Arditi et al. test induction by first-token log-odds alone; a small model may open a
        # refusal with a token that is not on the list, so generated refusals count too.
        elif not (c.induce_log_odds > 0 or c.induce_refusal >= 0.5):
            c.dropped = "does not induce refusal"
    kept = sorted(
        (c for c in cands if c.dropped is None),
        key=lambda c: (c.bypass_log_odds, c.bypass_refusal, c.kl),
    )
    for i, c in enumerate(kept):
        c.rank = i + 1
    return kept


Progress = Callable[[str, int, int], None]


def analyse(
    model,
    tokenizer,
    layout: Layout,
    residuals: dict[str, tuple],
    probe: Probe,
    kl_threshold: float = 0.1,
    min_separation: float = 0.5,
    progress: Progress | None = None,
) -> list[DirectionCandidate]:
    """Score every (stream, layer) candidate. `residuals[stream] = (harmful, harmless)`.

    Raises when no layer separates the sets at all: scoring would be meaningless."""
    cands: list[DirectionCandidate] = []
    best_sep = 0.0
    todo = [(stream, layer) for stream in residuals for layer in range(layout.n_layers)]
    for i, (stream, layer) in enumerate(todo):
        bad, good = residuals[stream]
        pos = layer + 1
        cand = DirectionCandidate(stream, layer, geometry=geometry(bad, good, pos))
        diff = (bad.mean[pos] - good.mean[pos]).float()
        norms = (bad.mean - good.mean).norm(dim=-1)
        best_sep = max(best_sep, cand.geometry.get("separation", 0.0))
        if diff.norm() <= 1e-6 * norms.max():
            # The input of layer 0 is the embedding of the last prompt token: the same token
            # for every prompt, hence no difference at all.
            cand.dropped = "no difference here (same last token for every prompt)"
        else:
            score(model, tokenizer, layout, cand, diff / diff.norm(), diff, probe)
        cands.append(cand)
        if progress:
            progress("candidates", i + 1, len(todo))
        if i + 1 == layout.n_layers and best_sep < min_separation:
            raise AbliterateError(
                f"no separation between harmful and harmless residuals (best separation "
                f"{best_sep:.2f} < {min_separation} in stream {stream}): the model does not treat "
                "the two prompt sets differently, so there is no refusal direction to find"
            )
    filter_and_rank(cands, layout.n_layers, kl_threshold)
    return cands
