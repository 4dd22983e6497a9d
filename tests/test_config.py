"""Settings: precedence, validation, the shipped default file."""

from __future__ import annotations

from pathlib import Path

import pytest

from abliterate.config import PromptSet, Settings, default_toml, load_settings
from abliterate.errors import AbliterateError

ROOT = Path(__file__).resolve().parents[1]


def test_precedence_toml_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'n_trials = 11\nseed = 3\nmax_response_length = 7\n[harmful_prompts]\ndataset = "a.txt"\n'
    )
    monkeypatch.setenv("ABLITERATE_SEED", "4")
    monkeypatch.setenv("ABLITERATE_MAX_RESPONSE_LENGTH", "8")
    s = load_settings(cfg, model="m", max_response_length=9)
    assert (s.n_trials, s.seed, s.max_response_length) == (11, 4, 9)
    assert s.harmful_prompts == PromptSet(dataset="a.txt")


def test_nested_env(monkeypatch):
    monkeypatch.setenv("ABLITERATE_HARMLESS_PROMPTS__DATASET", "x/y")
    monkeypatch.setenv("ABLITERATE_COMPONENTS", '["mlp_down"]')
    s = load_settings(model="m")
    assert s.harmless_prompts.dataset == "x/y" and s.components == ["mlp_down"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"n_trials": 5, "n_startup_trials": 6}, "n_startup_trials (6) > n_trials (5)"),
        ({"max_weight_range": (-1.0, 1.0)}, "max_weight_range"),
        ({"span_range": (0.0, 0.0)}, "span"),
        ({"components": []}, "nothing would be edited"),
        ({"components": ["o_proj"]}, "components"),
        ({"residual_stream": "middle"}, "residual_stream"),
        ({"n_trials": 0}, "n_trials"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_contradictory_settings_are_one_line_errors(flags, message):
    with pytest.raises(AbliterateError) as exc:
        load_settings(model="m", **flags)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_missing_config_file():
    with pytest.raises(AbliterateError, match="does not exist"):
        load_settings("/nonexistent.toml")


def test_shipped_default_file_is_current_and_valid():
    shipped = (ROOT / "config.default.toml").read_text()
    assert shipped == default_toml(), (
        "regenerate: python -m abliterate.config > config.default.toml"
    )
    s = load_settings(ROOT / "config.default.toml", model="m")
    assert s.model_dump(exclude={"model"}) == Settings(model="m").model_dump(exclude={"model"})


def test_every_setting_is_documented():
    text = default_toml()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert name in text, name


def test_prompt_set_specs(tmp_path):
    (tmp_path / "p.txt").write_text("a\n")
    assert PromptSet.parse(str(tmp_path / "p.txt")).dataset == str(tmp_path / "p.txt")
    assert PromptSet.parse("org/set:test[:10]:prompt") == PromptSet(
        dataset="org/set", split="test[:10]", column="prompt"
    )
    assert PromptSet.parse("org/set") == PromptSet(dataset="org/set")
