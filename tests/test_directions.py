"""Refusal directions as pure math."""

from __future__ import annotations

import pytest
import torch

from abliterate import directions as D
from abliterate.errors import AbliterateError

torch.manual_seed(0)


def test_mean_difference_is_unit_and_points_from_harmless_to_harmful():
    good, bad = torch.randn(5, 16), torch.randn(5, 16)
    r = D.mean_difference(bad, good)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(5))
    assert ((r * (bad - good)).sum(-1) > 0).all()


def test_projected_direction_is_orthogonal_to_harmless_mean():
    good, r = torch.randn(4, 16), D.normalize(torch.randn(4, 16))
    p = D.project_out(r, good)
    assert (p * good).sum(-1).abs().max() < 1e-5
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(4))


def test_benign_subspace_removed():
    harmless = torch.randn(200, 12) * torch.linspace(3, 0.1, 12)  # decreasing variance
    basis = D.benign_basis(harmless, rank=3, variance_floor=0.0)
    assert basis.shape == (3, 12)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    r = D.remove_subspace(D.normalize(torch.randn(12)), basis)
    assert (basis @ r).abs().max() < 1e-5


def test_variance_floor_drops_noise_components():
    harmless = torch.zeros(100, 6)
    harmless[:, 0] = torch.randn(100) * 10
    harmless[:, 1] = torch.randn(100) * 1e-4
    assert D.benign_basis(harmless, rank=4, variance_floor=0.01).shape[0] == 1


def test_interpolation_endpoints_and_middle():
    dirs = D.normalize(torch.randn(4, 8))
    torch.testing.assert_close(D.interpolate(dirs, 2.0), dirs[2])
    torch.testing.assert_close(D.interpolate(dirs, 3.0), dirs[3])
    mid = D.interpolate(dirs, 1.5)
    torch.testing.assert_close(mid, D.normalize(dirs[1] + dirs[2]))
    with pytest.raises(ValueError):
        D.interpolate(dirs, 3.5)


def test_winsorize_clamps_each_vector():
    x = torch.tensor([[1.0, -2.0, 3.0, 100.0]])
    out = D.winsorize(x, 0.75)
    bound = torch.quantile(x.abs(), 0.75)
    assert out.abs().max() == pytest.approx(float(bound))
    assert torch.equal(D.winsorize(x, 1.0), x)


def test_zero_norm_names_the_layer():
    diff = torch.randn(4, 8)
    diff[2] = 0
    with pytest.raises(AbliterateError, match=r"layer\(s\) \[2\]"):
        D.mean_difference(diff, torch.zeros(4, 8))


def test_uninformative_prefix_is_filled_from_the_first_informative_position():
    diff = torch.randn(5, 8)
    diff[:2] = 0
    assert D.uninformative_prefix(diff) == 2
    filled = D.fill_prefix(D.normalize(diff[2:]), 2)
    torch.testing.assert_close(filled[0], filled[2])
    with pytest.raises(AbliterateError, match="no separation"):
        D.uninformative_prefix(torch.zeros(3, 4))
    nan = torch.randn(3, 4)
    nan[1, 0] = float("nan")
    with pytest.raises(AbliterateError, match=r"position\(s\) \[1\]"):
        D.uninformative_prefix(nan)
