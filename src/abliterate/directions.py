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


def kmeans(x: Tensor, k: int, seed: int = 0, iterations: int = 25) -> Tensor:
    """Cluster labels (n,) of the rows of `x` by cosine k-means (k-means++ seeding under `seed`):
    residual norms vary a lot between prompts, their directions are what groups them."""
    z = torch.nn.functional.normalize(x.double(), dim=-1)
    n = z.shape[0]
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    centers = z[torch.randint(n, (1,), generator=gen)]
    while centers.shape[0] < k:
        far = (1 - z @ centers.T).min(-1).values.clamp_min(0) + 1e-12
        centers = torch.cat([centers, z[torch.multinomial(far, 1, generator=gen)]])
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        labels = (z @ centers.T).argmax(-1)
        moved = torch.stack(
            [z[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)]
        )
        moved = torch.nn.functional.normalize(moved, dim=-1)
        if torch.allclose(moved, centers):
            break
        centers = moved
    return labels


def cluster_directions(
    harmful: Tensor, harmless_mean: Tensor, main: Tensor, k: int, seed: int = 0,
    other: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Up to k - 1 unit directions (k - 1, d), orthogonal to `main` and to each other, from the
    refusal directions of k clusters of the harmful residuals (n, d): each cluster's mean minus
    the harmless mean, largest cluster first, with `main` (and `other`, the harmless mean in
    projected abliteration) removed. Different kinds of request (weapons, insults, fraud) can
    be refused along directions the single mean difference only partly covers (several
    directions: arXiv 2511.08379). Rows that add nothing are zero."""
    labels = kmeans(harmful, k, seed)
    sizes = torch.bincount(labels, minlength=k)
    rows = [
        harmful[labels == j].double().mean(0) - harmless_mean.double()
        for j in sizes.argsort(descending=True)
        if sizes[j] > 0
    ]
    found = torch.stack(rows)
    if other is not None:
        o = normalize(other.double(), "harmless mean")
        found = found - (found @ o)[:, None] * o
    basis = orthonormal_rows(torch.cat([main.double()[None], found]))[1:k]
    out = torch.zeros(k - 1, harmful.shape[-1], dtype=torch.float32)
    out[: basis.shape[0]] = basis.float()
    return out


def orthonormal_rows(rows: Tensor, tol: float = 1e-4) -> Tensor:
    """Gram-Schmidt in order (QR of the transpose, signs fixed so each row keeps the sense of its
    input); rows that are (numerically) in the span of earlier ones are dropped."""
    q, r = torch.linalg.qr(rows.T.double())
    diag = torch.diagonal(r)
    scale = torch.linalg.vector_norm(rows.double(), dim=-1).clamp_min(1e-30)
    keep = diag.abs() > tol * scale
    q = q * torch.sign(diag).where(diag != 0, torch.ones_like(diag))
    return q.T[keep].to(rows.dtype)
