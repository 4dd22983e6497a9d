"""The manual workflow on the organism: score every layer, apply the best one."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from abliterate.cli.main import main
from abliterate.config import load_settings
from abliterate.workflows.evaluate import evaluate_against_base

pytestmark = pytest.mark.slow
FAST = ["--max-response-length", "32", "--batch-size", "32"]


@pytest.fixture(scope="module")
def directions(organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("directions")
    assert main(["directions", str(organism_dir), "--output", str(out), *FAST]) == 0
    return out


def test_directions_rank_a_layer_that_removes_refusal(directions):
    report = json.loads((directions / "directions.json").read_text())
    selected = report["selected"]
    assert selected is not None and selected["rank"] == 1
    assert selected["bypass_refusal"] <= 0.10
    assert report["base"]["refusal_rate"] >= 0.9
    cands = report["candidates"]
    assert {c["stream"] for c in cands} == {"pre", "mid", "post"}
    assert len(cands) == 3 * 4  # every layer of every stream
    late = [c for c in cands if c["layer"] >= 0.8 * 4]
    assert all(c["dropped"] for c in late)  # Arditi's filter: no late layers
    geo = selected["geometry"]
    assert geo["separation"] > 1 and -1 <= geo["silhouette"] <= 1
    for stream in ("pre", "mid", "post"):
        assert load_file(directions / f"directions-{stream}.safetensors")["directions"].shape == (
            5,
            128,
        )
        assert (directions / "plots" / f"scores-{stream}.png").is_file()
    assert load_file(directions / "selected.safetensors")["direction"].shape == (128,)


def test_apply_reproduces_it_in_the_exported_model(directions, organism_dir, tmp_path, capsys):
    selected = json.loads((directions / "directions.json").read_text())["selected"]
    out = tmp_path / "applied"
    args = [
        "apply",
        str(organism_dir),
        "--layer",
        str(selected["layer"]),
        "--stream",
        selected["stream"],
        "--output",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "refusal rate" in printed and "->" in printed
    settings = load_settings(model=str(organism_dir), max_response_length=32, batch_size=32)
    result = evaluate_against_base(settings, str(out), str(organism_dir))
    assert result["metrics"]["refusal_rate"] <= 0.10
    trial = json.loads((out / "trial.json").read_text())
    assert trial["source"] == {
        "layer": selected["layer"],
        "stream": selected["stream"],
        "weight": 1.0,
        "file": None,
    }


def test_apply_from_the_direction_file(directions, organism_dir, tmp_path):
    out = tmp_path / "from-file"
    args = [
        "apply",
        str(organism_dir),
        "--direction",
        str(directions / "selected.safetensors"),
        "--output",
        str(out),
        "--no-evaluate",
    ]
    assert main(args) == 0 and (out / "model.safetensors").is_file()


def test_directions_seed_the_search(directions, organism_dir, tmp_path):
    args = [
        "run",
        str(organism_dir),
        "--direction-file",
        str(directions / "directions-post.safetensors"),
        "--n-trials",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        *FAST,
    ]
    assert main(args) == 0
    seeded = load_file(tmp_path / "run" / "directions.safetensors")["directions"]
    source = load_file(directions / "directions-post.safetensors")["directions"]
    assert (seeded == source).all()


def test_the_analysis_picks_the_first_trials_layers(directions, organism_dir, tmp_path):
    report = json.loads((directions / "directions.json").read_text())
    best = min(
        (c for c in report["candidates"] if c["rank"] and c["stream"] == "post"),
        key=lambda c: c["rank"],
    )
    run_dir = tmp_path / "run"
    args = ["run", str(organism_dir), "--n-trials", "1", "--run-dir", str(run_dir), *FAST]
    assert main([*args, "--warm-start-analysis", str(directions / "directions.json")]) == 0
    record = json.loads((run_dir / "trials" / "0.json").read_text())
    params = record["params"]
    # a flat edit (strength 1 on every layer) with the direction of the best-ranked layer,
    # kept inside the searched index range (direction_index_range 0.3 .. 0.9 of the depth)
    last = len(record["strengths"]["attn_out"]) - 1
    expected = min(max(best["layer"], 0.3 * last), 0.9 * last)
    assert params["scope"] == "global"
    assert params["direction_index"] == pytest.approx(expected)
    assert all(k["max_weight"] == k["min_weight"] == 1.0 for k in params["kernels"].values())


def test_a_bad_analysis_file_stops_the_run_before_the_model_loads(organism_dir, tmp_path, capsys):
    bad = tmp_path / "directions.json"
    bad.write_text(json.dumps({"candidates": [{"stream": "pre", "layer": 1, "rank": 1}]}))
    run_dir = tmp_path / "run"
    args = ["run", str(organism_dir), "--run-dir", str(run_dir), "--warm-start-analysis"]
    assert main([*args, str(bad)]) != 0
    err = capsys.readouterr().err
    assert "no ranked candidate in stream 'post'" in err and "--streams post" in err
    assert not run_dir.exists()  # nothing started
