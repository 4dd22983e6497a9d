"""Several refusal directions per layer (directions_per_layer > 1): the math of a rank-k edit,
the cluster directions, the plan, and every export path agreeing with the in-memory edit."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import tiny
from abliterate.config import load_settings
from abliterate.directions import cluster_directions, kmeans, orthonormal_rows
from abliterate.edit.kernel import Kernel
from abliterate.edit.orthogonalize import effective_direction, factors, project_bias
from abliterate.edit.plan import Directions, EditParams, plan
from abliterate.export.api import export_trial
from abliterate.model.arch import discover
from abliterate.search.record import TrialMetrics, TrialRecord
from abliterate.search.space import SpaceConfig, suggest, warm_starts


def rows(k: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return orthonormal_rows(torch.randn(k, d, generator=g, dtype=torch.float64))


def test_rank_k_edit_is_the_sequence_of_rank_one_edits():
    u = rows(3, 12)
    w = torch.randn(12, 7, dtype=torch.float64)
    lams = torch.tensor([1.0, 0.4, 0.7], dtype=torch.float64)
    b, a = factors(w, u, lams)
    assert b.shape == (12, 3) and a.shape == (3, 7)
    sequential = w.clone()
    for ui, li in zip(u, lams, strict=True):  # orthonormal rows: the order does not matter
        sequential = sequential - li * torch.outer(ui, ui @ sequential)
    torch.testing.assert_close(w + b @ a, sequential)
    # each direction's component is scaled by 1 - lambda_i
    torch.testing.assert_close(u @ (w + b @ a), (1 - lams)[:, None] * (u @ w))
    # one row is the rank-1 edit exactly
    b1, a1 = factors(w, u[0], 0.9)
    bk, ak = factors(w, u[:1], torch.tensor([0.9], dtype=torch.float64))
    torch.testing.assert_close(b1 @ a1, bk @ ak)
    # fused experts (E, d, n) and the row-normalised modes take several rows too
    experts = torch.randn(4, 12, 7, dtype=torch.float64)
    b, a = factors(experts, u, 1.0)
    assert (u @ (experts + b @ a)).abs().max() < 1e-12
    for mode in ("pre", "full"):
        b, a = factors(w, u, 1.0, mode)
        assert b.shape[-1] >= 3 and torch.isfinite(b @ a).all()


def test_bias_and_gain_with_several_directions():
    u = rows(2, 8)
    bias = torch.randn(3, 8, dtype=torch.float64)
    out = project_bias(bias, u, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert (out @ u.T).abs().max() < 1e-12
    # with a gain after the writer, the gained output keeps none of either direction
    g = torch.rand(8, dtype=torch.float64) + 0.5
    eff = effective_direction(u, g)
    torch.testing.assert_close(eff @ eff.T, torch.eye(2, dtype=torch.float64))
    o = torch.randn(8, dtype=torch.float64)
    o_edit = o - eff.T @ (eff @ o)
    assert (u @ (g * o_edit)).abs().max() < 1e-12
    # the first row keeps the main direction's sense
    assert float(eff[0] @ torch.nn.functional.normalize(g * u[0], dim=0)) > 0.999


def test_orthonormal_rows_drop_dependent_rows():
    u = rows(2, 6)
    found = orthonormal_rows(torch.cat([u, (u[0] + u[1])[None], torch.zeros(1, 6).double()]))
    assert found.shape == (2, 6)
    torch.testing.assert_close(found, u)


def test_cluster_directions_find_a_second_kind_of_refusal():
    # Two kinds of harmful request, refused along different directions: the mean difference
    # lies between them, and the extra direction is the part it misses.
    d, g = 16, torch.Generator().manual_seed(0)
    basis = rows(3, d).float()
    harmless = torch.randn(200, d, generator=g) * 0.1 + 3 * basis[2]
    kind_a = torch.randn(100, d, generator=g) * 0.1 + 3 * basis[2] + 4 * basis[0]
    kind_b = torch.randn(60, d, generator=g) * 0.1 + 3 * basis[2] + 4 * basis[1]
    harmful = torch.cat([kind_a, kind_b])
    labels = kmeans(harmful, 2)
    assert len(set(labels[:100].tolist())) == 1 and len(set(labels[100:].tolist())) == 1
    main = torch.nn.functional.normalize(harmful.mean(0) - harmless.mean(0), dim=0)
    extra = cluster_directions(harmful, harmless.mean(0), main, 2)
    assert extra.shape == (1, d)
    assert abs(float(extra[0] @ main)) < 1e-5 and abs(float(extra[0].norm()) - 1) < 1e-5
    # main and extra together span both kinds' directions
    span = torch.stack([main, extra[0]])
    for v in basis[:2]:
        assert float((span @ v).norm()) > 0.99
    # more clusters than kinds: still orthonormal to the main direction and to each other
    many = cluster_directions(harmful, harmless.mean(0), main, 4)
    assert many.shape == (3, d)
    kept = torch.cat([main[None], many[many.norm(dim=-1) > 0]])
    torch.testing.assert_close(kept @ kept.T, torch.eye(len(kept)), atol=1e-5, rtol=0)


def _directions(k: int = 3, seed: int = 0) -> Directions:
    main = torch.nn.functional.normalize(
        torch.randn(tiny.LAYERS, tiny.HIDDEN, generator=torch.Generator().manual_seed(seed)), dim=-1
    )
    extra = torch.stack(
        [
            orthonormal_rows(torch.cat([m[None], rows(k - 1, tiny.HIDDEN, i + 1).float()]))[1:]
            for i, m in enumerate(main)
        ]
    )
    return Directions(per_layer=main, embedding=main[0], extra=extra)


def _params(extra: float, scope: str = "per_layer") -> EditParams:
    return EditParams(
        scope=scope,
        direction_index=1.3 if scope == "global" else None,
        kernels={"attn_out": Kernel(1.0, 1.0, 0.5, 2.0), "mlp_down": Kernel(1.3, 1.5, 0.2, 2.0)},
        extra_weight=extra,
    )


@pytest.mark.parametrize("scope", ["per_layer", "global"])
def test_plan_with_and_without_the_extra_directions(scope):
    model = tiny.model("llama")
    layout = discover(model)
    directions = _directions()
    single = plan(
        layout.writers, Directions(directions.per_layer, directions.embedding), _params(0.0, scope)
    )
    off = plan(layout.writers, directions, _params(0.0, scope))
    assert [(e.writer.name, e.strength) for e in off] == [
        (e.writer.name, e.strength) for e in single
    ]
    assert all(
        torch.equal(a.direction, b.direction) and a.direction.ndim == 1
        for a, b in zip(off, single, strict=True)
    )
    on = plan(layout.writers, directions, _params(0.5, scope))
    for e, s in zip(on, single, strict=True):
        assert e.direction.shape == (3, tiny.HIDDEN)
        torch.testing.assert_close(e.direction[0], s.direction)  # the main direction first
        torch.testing.assert_close(
            e.lam, torch.tensor([s.strength, 0.5 * s.strength, 0.5 * s.strength])
        )
    assert EditParams.from_dict(_params(0.5, scope).to_dict()) == _params(0.5, scope)
    assert "extra_weight" not in _params(0.0, scope).to_dict()  # old records stay as they were


def test_search_space_suggests_the_extra_weight_only_with_extra_directions():
    import optuna

    plain = SpaceConfig(n_layers=6, components=("attn_out", "mlp_down"))
    multi = SpaceConfig(n_layers=6, components=("attn_out", "mlp_down"), directions_per_layer=3)
    study = optuna.create_study()
    assert suggest(study.ask(), plain).extra_weight == 0.0
    trial = study.ask()
    assert 0.0 <= suggest(trial, multi).extra_weight <= 1.0 and "extra_weight" in trial.params
    assert all(s["extra_weight"] == 1.0 for s in warm_starts(multi, (0.5,)))
    assert all("extra_weight" not in s for s in warm_starts(plain, (0.5,)))


def test_every_export_matches_the_in_memory_multi_direction_edit(tmp_path):
    from abliterate.edit.editor import WeightEditor, untie_embeddings

    src = tiny.save("llama", tmp_path / "src")
    directions = _directions()
    record = TrialRecord(3, _params(0.8), TrialMetrics(refusal_rate=0.1, kl=0.1), 0.1, 0.1)
    settings = load_settings(model=str(src))
    result = export_trial(settings, directions, record, tmp_path / "out", "both")
    model = AutoModelForCausalLM.from_pretrained(src)
    untie_embeddings(model)
    layout = discover(model)
    WeightEditor(layout).apply(plan(layout.writers, directions, record.params))
    ids = torch.randint(
        0, len(tiny.tokenizer()), (2, 12), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        reference = model(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.merged)(ids).logits
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(src), result.adapter
        )(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(src)(ids).logits
    torch.testing.assert_close(merged, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(adapted, merged, atol=1e-4, rtol=0)
    assert (merged - plain).abs().max() > 1e-3  # the edit did something
    config = json.loads((result.adapter / "adapter_config.json").read_text())
    assert config["r"] == 3  # one rank per direction
    trial = json.loads((result.merged / "trial.json").read_text())
    assert len(trial["direction"]["vectors"]["0"]) == 3  # the directions the edit used, per layer
