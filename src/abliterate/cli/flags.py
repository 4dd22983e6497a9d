"""Command-line flags generated from the Settings model: every setting is a flag of the same name.

Values: numbers and strings as usual; booleans as `--x` / `--no-x`; lists as comma-separated
values or JSON; pairs as `LOW,HIGH`; mappings as JSON; prompt sets as `PATH` or
`ID[:SPLIT[:COLUMN]]`.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

from pydantic import BaseModel

from abliterate.config import GROUP_TITLES, PromptSet, Settings, field_group


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_list(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_pair(text: str) -> list[float]:
    values = json.loads(text) if text.strip().startswith("[") else text.split(",")
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return [float(v) for v in values]


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r} ({exc})") from None


def _spec(annotation: Any) -> tuple[dict[str, Any], str]:
    """argparse keyword arguments and a metavar for one field type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _spec(args[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}, ""
    if annotation is int:
        return {"type": int}, "N"
    if annotation is float:
        return {"type": float}, "X"
    if annotation is str:
        return {"type": str}, "TEXT"
    if annotation is PromptSet:
        return {"type": PromptSet.parse}, "SPEC"
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}, ""
    if origin is tuple:
        return {"type": _parse_pair}, "LOW,HIGH"
    if origin is list:
        return {"type": _parse_list}, "A,B,..."
    if origin is dict:
        return {"type": _parse_json}, "JSON"
    return {"type": str}, "VALUE"


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    exclude: set[str] | frozenset[str] = frozenset(),
    model: type[BaseModel] = Settings,
    prefix: str = "setting_",
    title: str | None = None,
    groups_only: set[str] | None = None,
) -> None:
    """One flag per field of a settings model, grouped as in config.default.toml. Defaults are
    suppressed so that only flags actually given override the TOML file and the environment."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    model_fields = model.model_fields
    for name, field in model_fields.items():
        if name in exclude:
            continue
        # Groups exist on Settings only; other models are added whole.
        if groups_only is not None and model is Settings and field_group(name) not in groups_only:
            continue
        group = title or field_group(name)
        if group not in groups:
            groups[group] = parser.add_argument_group(GROUP_TITLES.get(group, group))
        kwargs, metavar = _spec(field.annotation)
        if metavar:
            kwargs["metavar"] = metavar
        default = field.default if field.default is not None else "none"
        if isinstance(default, PromptSet):
            default = default.describe()
        description = field.description or name.replace("_", " ")
        groups[group].add_argument(
            _flag(name),
            dest=f"{prefix}{name}",
            default=argparse.SUPPRESS,
            help=f"{description} (default: {_short(default)})".replace("%", "%%"),
            **kwargs,
        )


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def overrides(args: argparse.Namespace, prefix: str = "setting_") -> dict[str, Any]:
    """The settings given as flags, by setting name (flags added with this `prefix`)."""
    return {k.removeprefix(prefix): v for k, v in vars(args).items() if k.startswith(prefix)}


# The settings that matter to commands that load and measure a model without searching.
EVALUATION_GROUPS = {"model", "prompts", "evaluation"}
