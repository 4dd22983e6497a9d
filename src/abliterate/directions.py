"""Refusal directions from residual statistics: pure tensor math, no model, no files.

Shapes: `L` positions (decoder layers), hidden size `d`. Means are float64 or float32 tensors of
shape (L, d); full residual matrices are (n, L, d).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from abliterate.errors import AbliterateError

EPS = 1e-8


def normalize(x: Tensor, what: str = "direction") -> Tensor:
    """Unit vectors along the last axis; a zero or non-finite norm is an error naming the row."""
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    bad = ~torch.isfinite(norms) | (norms < EPS)
    if bad.any():
        rows = torch.nonzero(bad.reshape(-1)).reshape(-1).tolist()
        raise AbliterateError(
            f"{what} has zero or NaN norm at layer(s) {rows}: the harmful and harmless residuals "
            "do not differ there (or the model produced NaNs); check the prompt sets and dtype"
        )
    return x / norms


def uninformative_prefix(diff: Tensor, rel: float = 1e-6) -> int:
    """How many leading positions have (numerically) no mean difference at all.

    The last prompt token is the same token for every prompt (the end of the generation
    prompt), so at the embedding output, and at the input of layer 0, harmful and harmless
    residuals are identical. Those positions carry no direction and take the first informative
    one's. Anywhere else, no difference is an error (see `normalize`)."""
    norms = torch.linalg.vector_norm(diff.double(), dim=-1)
    if not torch.isfinite(norms).all():
        bad = torch.nonzero(~torch.isfinite(norms)).reshape(-1).tolist()
        raise AbliterateError(
            f"residual means are NaN or infinite at position(s) {bad}: the "
            "model produced non-finite activations; try another dtype"
        )
    scale = norms.max()
    if scale == 0:
        raise AbliterateError(
            "harmful and harmless prompts give identical residuals at every layer: the model "
            "shows no separation between the sets (are the prompt sets the same?)"
        )
    lead = 0
    while lead < len(norms) and norms[lead] <= rel * scale:
        lead += 1
    return lead


def fill_prefix(directions: Tensor, lead: int) -> Tensor:
    """Prepend `lead` copies of the first row (see `uninformative_prefix`)."""
    if lead == 0:
        return directions
    return torch.cat([directions[:1].expand(lead, -1), directions])


def mean_difference(harmful_mean: Tensor, harmless_mean: Tensor) -> Tensor:
    """r_l = normalize(mean(B_l) - mean(G_l)), (L, d)."""
    return normalize(harmful_mean - harmless_mean, "refusal direction")


def project_out(directions: Tensor, other: Tensor) -> Tensor:
    """Remove from each r_l its component along normalize(other_l) and renormalise (grimjim's
    projected abliteration with other = the harmless mean: only what separates refusal from
    ordinary helpfulness is removed). https://huggingface.co/blog/grimjim/projected-abliteration"""
    o = normalize(other, "harmless mean")
    r = directions - (directions * o).sum(-1, keepdim=True) * o
    return normalize(r, "projected refusal direction")


def benign_basis(harmless: Tensor, rank: int, variance_floor: float) -> Tensor:
    """Top-`rank` principal directions of harmless residuals (n, d) -> (k, d), k <= rank.

    Components whose variance is below `variance_floor` times the largest are dropped: they are
    noise, and removing them from the refusal direction would only distort it."""
    centered = harmless.double() - harmless.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    var = s**2
    keep = (var >= variance_floor * var[0]).nonzero().reshape(-1)[:rank]
    return vh[keep].to(harmless.dtype)


def remove_subspace(direction: Tensor, basis: Tensor) -> Tensor:
    """r <- normalize((I - U U^T) r) for an orthonormal basis U (k, d) (ICONOCLAST's benign
    subspace preservation: the edit leaves what harmless prompts use most untouched)."""
    if basis.numel() == 0:
        return direction
    r = direction - basis.T @ (basis @ direction)
    return normalize(r, "direction after removing the benign subspace")


def interpolate(directions: Tensor, index: float) -> Tensor:
    """normalize(lerp(r_floor(i), r_ceil(i), frac(i))): one global direction from (L, d)."""
    n = directions.shape[0]
    if not 0 <= index <= n - 1:
        raise ValueError(f"direction index {index} outside [0, {n - 1}]")
    lo = math.floor(index)
    hi = min(lo + 1, n - 1)
    v = torch.lerp(directions[lo], directions[hi], index - lo)
    return normalize(v, f"direction at index {index:.2f}")


def winsorize(x: Tensor, quantile: float) -> Tensor:
    """Clamp each vector (last axis) to +-its `quantile` of absolute values: tames the few
    massive activations some models carry, which would otherwise dominate the means."""
    if quantile >= 1.0:
        return x
    bound = torch.quantile(x.abs().float(), quantile, dim=-1, keepdim=True).to(x.dtype)
    return torch.maximum(torch.minimum(x, bound), -bound)
