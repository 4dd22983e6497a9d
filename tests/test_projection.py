"""The projection a trial chooses: how far its direction is turned off the harmless mean, from
the plain mean difference (0) to projected abliteration (1). The blend, the plan, the search
space and an export agreeing with the in-memory edit."""

from __future__ import annotations

import itertools

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from abliterate.config import load_settings
from abliterate.directions import mean_difference, project_out
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import EditParams, plan
from abliterate.errors import AbliterateError
from abliterate.export.api import export_trial
from abliterate.model.arch import discover
from abliterate.search.record import TrialMetrics, TrialRecord
from abliterate.search.space import SpaceConfig, suggest, warm_starts
from abliterate.stages.directions import directions_from_tensors


def _tensors(layers: int = tiny.LAYERS, d: int = tiny.HIDDEN, seed: int = 0) -> dict:
    """Direction tensors as the directions stage saves them: harmful and harmless means whose
    difference leans on the harmless mean, so the projection changes the direction a lot."""
    g = torch.Generator().manual_seed(seed)
    harmless = torch.randn(layers + 1, d, generator=g) + 3.0
    harmful = harmless + 0.8 * harmless + torch.randn(layers + 1, d, generator=g)
    raw = mean_difference(harmful, harmless)
    return {
        "mean_difference": raw,
        "directions": project_out(raw, harmless),
        "harmless_mean": harmless,
    }


def test_the_blend_runs_from_the_plain_difference_to_the_projected_direction():
    t = _tensors()
    directions = directions_from_tensors(t)
    assert directions.raw is not None
    h = torch.nn.functional.normalize(t["harmless_mean"][1:], dim=-1)
    stored, emb = directions.projected(None)
    assert stored is directions.per_layer and emb is directions.embedding
    assert directions.projected(1.0)[0] is directions.per_layer
    plain, plain_emb = directions.projected(0.0)
    torch.testing.assert_close(plain, t["mean_difference"][1:])
    torch.testing.assert_close(plain_emb, t["mean_difference"][0])
    leans = []
    for amount in (0.0, 0.25, 0.5, 0.75, 1.0):
        v, _ = directions.projected(amount)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(tiny.LAYERS))
        leans.append((v * h).sum(-1).abs())
    # the component along the harmless mean shrinks monotonically to nothing
    for a, b in itertools.pairwise(leans):
        assert bool((b < a).all())
    assert float(leans[-1].max()) < 1e-5 and float(leans[0].min()) > 0.3


def test_external_directions_have_no_blend():
    t = _tensors()
    directions = directions_from_tensors({"directions": t["directions"]})
    assert directions.raw is None
    assert directions.projected(0.0)[0] is directions.per_layer


def _params(projection: float | None, scope: str = "global") -> EditParams:
    return EditParams(
        scope=scope,
        direction_index=1.4 if scope == "global" else None,
        kernels={"attn_out": Kernel(1.0, 1.0, 0.5, 2.0), "mlp_down": Kernel(1.2, 1.5, 0.3, 2.0)},
        embed_weight=0.5,
        projection=projection,
    )


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_plan_uses_the_blended_direction(scope):
    layout = discover(tiny.model("llama"))
    writers = layout.writers
    directions = directions_from_tensors(_tensors())
    as_stored = plan(writers, directions, _params(None, scope))
    projected = plan(writers, directions, _params(1.0, scope))
    plain = plan(writers, directions, _params(0.0, scope))
    assert [(e.writer.name, e.strength) for e in projected] == [
        (e.writer.name, e.strength) for e in as_stored
    ]
    assert all(
        torch.equal(a.direction, b.direction) for a, b in zip(projected, as_stored, strict=True)
    )
    moved = [
        float((a.direction - b.direction).norm()) for a, b in zip(plain, as_stored, strict=True)
    ]
    assert min(moved) > 0.1
    # the record says which blend was used; records without one stay as they were
    assert EditParams.from_dict(_params(0.3).to_dict()) == _params(0.3)
    assert "projection" not in _params(None).to_dict()


def _space(**kw) -> SpaceConfig:
    return SpaceConfig(n_layers=8, components=("attn_out", "mlp_down"), **kw)


def test_the_search_space_samples_the_projection_when_there_is_one():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = []
    for _ in range(10):
        trial = study.ask()
        seen.append(suggest(trial, _space()).projection)
        assert "projection" in trial.params
    assert all(0.0 <= p <= 1.0 for p in seen) and len(set(seen)) == 10
    # the flat warm starts ablate the plain mean difference, as Arditi et al. do
    assert all(s["projection"] == 0.0 for s in warm_starts(_space(), (0.5, 0.8)))
    # no projection to blend, or a fixed one: nothing to sample
    for kw, expected in (
        ({"orthogonalize_direction": False}, None),
        ({"projection_range": (1.0, 1.0)}, None),
        ({"projection_range": (0.0, 0.0)}, 0.0),
    ):
        trial = study.ask()
        assert suggest(trial, _space(**kw)).projection == expected
        assert "projection" not in trial.params
        assert all("projection" not in s for s in warm_starts(_space(**kw), (0.5,)))


def test_a_projection_range_outside_zero_one_is_refused():
    with pytest.raises(AbliterateError, match="projection_range"):
        load_settings(model="m", projection_range=(0.5, 1.5))


def test_the_merged_export_is_the_in_memory_blended_edit(tmp_path):
    src = tiny.save("llama", tmp_path / "src")
    directions = directions_from_tensors(_tensors())
    params = _params(0.3)
    record = TrialRecord(2, params, TrialMetrics(refusal_rate=0.1, kl=0.1), 0.1, 0.1)
    result = export_trial(
        load_settings(model=str(src)), directions, record, tmp_path / "o", "merged"
    )
    model = AutoModelForCausalLM.from_pretrained(src)
    untie_embeddings(model)
    layout = discover(model)
    WeightEditor(layout).apply(plan(layout.writers, directions, params))
    ids = torch.randint(
        0, len(tiny.tokenizer()), (2, 10), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        reference = model(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.merged)(ids).logits
        unblended = AutoModelForCausalLM.from_pretrained(src)
        untie_embeddings(unblended)
        WeightEditor(discover(unblended)).apply(
            plan(discover(unblended).writers, directions, _params(None))
        )
        other = unblended(ids).logits
    torch.testing.assert_close(merged, reference, atol=1e-4, rtol=0)
    assert (merged - other).abs().max() > 1e-3  # the blend changed the edit
