"""The edit as pure tensor math: rank-1 identities, LoRA form, row normalisation, kernel."""

from __future__ import annotations

import pytest
import torch

from abliterate.edit.kernel import Kernel
from abliterate.edit.orthogonalize import (
    canonical,
    effective_direction,
    factors,
    low_rank,
    project_bias,
    rank1_factors,
)

torch.manual_seed(0)


def unit(d: int) -> torch.Tensor:
    v = torch.randn(d, dtype=torch.float64)
    return v / v.norm()


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 1.7])
def test_projection_scales_the_direction_component(lam):
    w = torch.randn(16, 24, dtype=torch.float64)
    v = unit(16)
    b, a = rank1_factors(w, v, lam)
    edited = w + b @ a
    # v^T W' = (1 - lambda) v^T W, and the orthogonal complement is untouched.
    torch.testing.assert_close(v @ edited, (1 - lam) * (v @ w))
    p = torch.eye(16, dtype=torch.float64) - torch.outer(v, v)
    torch.testing.assert_close(p @ edited, p @ w)


def test_lora_factors_are_a_equals_vtw_b_equals_minus_lambda_v():
    w, v = torch.randn(8, 5, dtype=torch.float64), unit(8)
    b, a = factors(w, v, 0.7)
    torch.testing.assert_close(a, (v @ w).reshape(1, -1))
    torch.testing.assert_close(b, (-0.7 * v).reshape(-1, 1))
    torch.testing.assert_close(w + b @ a, w - 0.7 * torch.outer(v, v @ w))


def test_fused_experts_edit_every_expert_in_canonical_view():
    w = torch.randn(3, 20, 8, dtype=torch.float64)  # (experts, in, out): gpt-oss storage
    v = unit(8)
    view = canonical(w, out_axis=2)  # (experts, out, in)
    b, a = factors(view, v, 1.0)
    edited = view + b @ a
    for e in range(3):
        torch.testing.assert_close(v @ edited[e], torch.zeros(20, dtype=torch.float64))


def test_canonical_is_a_view():
    w = torch.zeros(4, 6)
    canonical(w, 1)[0, 0] = 1.0
    assert w[0, 0] == 1.0


def test_pre_normalisation_scales_update_by_row_norms():
    w, v = torch.randn(10, 7, dtype=torch.float64), unit(10)
    b, a = factors(w, v, 1.0, "pre")
    norms = w.norm(dim=1, keepdim=True)
    unitw = w / norms
    expected = w - norms * torch.outer(v, v @ unitw)
    torch.testing.assert_close(w + b @ a, expected)


def test_full_normalisation_preserves_row_norms_at_full_rank():
    w, v = torch.randn(6, 9, dtype=torch.float64), unit(6)
    b, a = factors(w, v, 1.0, "full", rank=6)
    edited = w + b @ a
    torch.testing.assert_close(edited.norm(dim=1), w.norm(dim=1))
    # Directions of the rows are those of the projected unit rows.
    unitw = w / w.norm(dim=1, keepdim=True)
    proj = unitw - torch.outer(v, v @ unitw)
    torch.testing.assert_close(
        edited / edited.norm(dim=1, keepdim=True), proj / proj.norm(dim=1, keepdim=True)
    )


def test_full_normalisation_low_rank_is_best_approximation():
    w, v = torch.randn(12, 30, dtype=torch.float64), unit(12)
    b3, a3 = factors(w, v, 1.0, "full", rank=3)
    assert b3.shape == (12, 3) and a3.shape == (3, 30)
    b_full, a_full = factors(w, v, 1.0, "full", rank=12)
    delta = b_full @ a_full
    err = (delta - b3 @ a3).norm()
    s = torch.linalg.svdvals(delta)
    torch.testing.assert_close(err, s[3:].norm())


def test_low_rank_large_matrix_is_deterministic():
    delta = torch.randn(1100, 1200)
    b1, a1 = low_rank(delta, 3)
    b2, a2 = low_rank(delta, 3)
    assert torch.equal(b1, b2) and torch.equal(a1, a2)


def test_bias_projection():
    v = unit(5)
    bias = torch.randn(2, 5, dtype=torch.float64)
    out = project_bias(bias, v, 1.0)
    torch.testing.assert_close(out @ v, torch.zeros(2, dtype=torch.float64))


def test_effective_direction_cancels_a_gain():
    """With an elementwise gain g after the writer, removing normalize(g*v) from the writer's
    output removes v from the gained output."""
    v, g = unit(8), torch.rand(8, dtype=torch.float64) + 0.5
    u = effective_direction(v, g)
    o = torch.randn(8, dtype=torch.float64)
    o_edit = o - u * (u @ o)
    assert abs(float((g * o_edit) @ v)) < 1e-12


def test_kernel_mountain():
    k = Kernel(max_weight=1.5, peak=4.0, min_weight=0.5, span=2.0)
    lam = k.strengths(10)
    assert lam[4] == pytest.approx(1.5)
    assert lam[3] == pytest.approx(1.0) and lam[5] == pytest.approx(1.0)
    assert lam[2] == pytest.approx(0.5) and lam[6] == pytest.approx(0.5)
    assert (lam[:2] == 0).all() and (lam[7:] == 0).all()


def test_kernel_triangle_and_fractional_peak():
    k = Kernel(max_weight=1.0, peak=2.5, min_weight=0.0, span=1.5)
    assert k.strengths(6).tolist() == pytest.approx([0.0, 0.0, 2 / 3, 2 / 3, 0.0, 0.0])


def test_kernel_rejects_zero_span():
    with pytest.raises(ValueError, match="span"):
        Kernel(1.0, 1.0, 0.0, 0.0)
