"""Rank-1 orthogonalization of residual writers, as pure functions over tensors.

Every weight is handled in its *canonical* view: the residual (hidden) axis second to last,
`(d, n)` for a linear or an embedding, `(experts, d, n)` for fused experts. For a unit direction
`u` and strength `lam` the edit is

    W' = W - lam * u (u^T W)  =  W + B A,   B = -lam u  (d x 1),   A = u^T W  (1 x n)

which is exactly the LoRA form of the exported adapter. Row normalisation variants (Heretic's
`row_normalization`, after grimjim's norm-preserving abliteration) change B and A:

- "pre": the projection is computed on row-normalised W and scaled back by the row norms;
- "full": additionally the edited rows are renormalised to their original norms; the delta is no
  longer rank 1, so it is stored as its best rank-r approximation (and applied as such, so the
  merged model and the adapter are the same model).

A "row" is one output coordinate's weights: a row of an nn.Linear weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from abliterate.directions import orthonormal_rows


def canonical(weight: Tensor, out_axis: int) -> Tensor:
    """A view of `weight` with the residual axis second to last."""
    if weight.ndim == 2:
        return weight if out_axis == 0 else weight.T
    if weight.ndim == 3:
        return weight if out_axis == 1 else weight.transpose(1, 2)
    raise ValueError(f"cannot edit a {weight.ndim}-D weight")


def rank1_factors(w: Tensor, u: Tensor, lam: float | Tensor) -> tuple[Tensor, Tensor]:
    """B (..., d, k) and A (..., k, n) with W' = W + B A for plain orthogonalization along one
    unit direction `u` (d,) (k = 1), or along k orthonormal rows `u` (k, d) with a strength
    each (`lam` a float for all, or a (k,) tensor): W' = W - sum_i lam_i u_i (u_i^T W)."""
    rows = u.reshape(-1, u.shape[-1])  # (k, d)
    lams = torch.as_tensor(lam, dtype=w.dtype, device=w.device).reshape(-1).expand(rows.shape[0])
    a = torch.einsum("kd,...dn->...kn", rows, w)  # (..., k, n)
    b = (-lams[:, None] * rows).T.expand(*w.shape[:-2], -1, -1)  # (..., d, k)
    return b, a


def factors(
    w: Tensor, u: Tensor, lam: float | Tensor, row_normalization: str = "none", rank: int = 3
) -> tuple[Tensor, Tensor]:
    """LoRA factors (B, A) of the edit of canonical float32 weight `w` along unit `u` (or the
    orthonormal rows of `u`, see `rank1_factors`)."""
    if row_normalization == "none":
        return rank1_factors(w, u, lam)
    norms = torch.linalg.vector_norm(w, dim=-1, keepdim=True)  # (..., d, 1)
    w_unit = w / norms.clamp_min(torch.finfo(w.dtype).tiny)
    b, a = rank1_factors(w_unit, u, lam)
    if row_normalization == "pre":
        return norms * b, a
    if row_normalization != "full":
        raise ValueError(f"row_normalization must be none, pre or full, not {row_normalization!r}")
    edited = w_unit + b @ a
    edited = edited / torch.linalg.vector_norm(edited, dim=-1, keepdim=True).clamp_min(1e-30)
    delta = edited * norms - w
    return low_rank(delta, max(rank, u.reshape(-1, u.shape[-1]).shape[0]))


def low_rank(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factorisation B A of `delta` (batched), split as B = U sqrt(S), A = sqrt(S) V^T.

    Small matrices get an exact SVD; large ones a randomised SVD under a fixed seed (as Heretic
    does), so that a trial always produces the same weights."""
    if min(delta.shape[-2:]) <= 1024:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        q = min(2 * rank + 4, *delta.shape[-2:])
        devices = [delta.device] if delta.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta, q=q, niter=6)
        vh = v.transpose(-1, -2)
    r = min(rank, s.shape[-1])
    root = s[..., :r].sqrt()
    return u[..., :, :r] * root.unsqueeze(-2), root.unsqueeze(-1) * vh[..., :r, :]


def project_bias(bias: Tensor, u: Tensor, lam: float | Tensor) -> Tensor:
    """b' = b - sum_i lam_i u_i (u_i^T b) for a bias of shape (d,) or (experts, d), along one
    unit direction (d,) or orthonormal rows (k, d)."""
    rows = u.reshape(-1, u.shape[-1])
    lams = torch.as_tensor(lam, dtype=bias.dtype, device=bias.device).reshape(-1)
    coef = torch.einsum("...d,kd->...k", bias, rows.to(bias)) * lams.expand(rows.shape[0])
    return bias - torch.einsum("...k,kd->...d", coef, rows.to(bias))


def effective_direction(v: Tensor, gain: Tensor | None) -> Tensor:
    """The direction to remove from a writer's output so that its residual write has no
    component along `v`: `v` itself, or normalize(g * v) when an elementwise norm with gain g
    sits between the writer and the residual (Gemma 2/3, OLMo 2). For several directions (rows
    of `v`, orthonormal, the main one first) the rows g * v_i, orthonormalized in order: the
    first keeps the main direction, the others span the rest."""
    u = v if gain is None else v * gain.to(v)
    if u.ndim == 1:
        return u / torch.linalg.vector_norm(u)
    return orthonormal_rows(u)
