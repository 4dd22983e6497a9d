"""Where an export may go: never over, inside or around what it was made from.

An export directory is renamed into place and `--overwrite` replaces whatever was there, so an
output that is, contains or sits inside the source model, the run directory or the Hugging Face
cache would destroy the very files the user spent hours downloading or searching. And
`--overwrite` replaces only a previous abliterate export (a directory with its abliterate.toml,
or one per kind), never an arbitrary non-empty directory.

This module only checks paths; it writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from abliterate.atomic import check_writable
from abliterate.cache import cache_root
from abliterate.errors import AbliterateError

EXPORT_MARKERS = ("abliterate.toml", "heal.json")
KIND_DIRS = ("merged", "adapter", "gguf")


def is_export(path: Path) -> bool:
    """An abliterate export: its marker file, or one in each kind's sub-directory (`both`)."""
    if any((path / m).is_file() for m in EXPORT_MARKERS):
        return True
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(
        p.name in KIND_DIRS and any((p / m).is_file() for m in EXPORT_MARKERS) for p in entries
    )


def _real(path: Path) -> Path:
    return path.expanduser().resolve()


def _overlap(output: Path, protected: Path) -> str | None:
    if output == protected:
        return "is"
    if protected.is_relative_to(output):
        return "contains"
    if output.is_relative_to(protected):
        return "sits inside"
    return None


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def source_paths(model: str) -> list[tuple[str, Path]]:
    """What an export made from `model` must never touch: a local directory or GGUF file, the
    Hugging Face cache (where a hub model's files are) and abliterate's own cache (where a GGUF
    is converted)."""
    found = [("the Hugging Face cache", hub_cache()), ("abliterate's cache", cache_root())]
    path = Path(model).expanduser()
    if path.exists():
        found.append(("the source model", path))
    return found


def check_output(
    output: str | Path,
    overwrite: bool,
    protected: Iterable[tuple[str, Path]] = (),
) -> None:
    """Refuse, before any work, an output that would destroy something (see the module doc)."""
    out = _real(Path(output))
    for what, path in protected:
        relation = _overlap(out, _real(path))
        if relation:
            raise AbliterateError(
                f"output {output} {relation} {what} ({path}); an export is written elsewhere, "
                "so that its source is never modified: choose another --output"
            )
    if out.exists() and not out.is_dir():
        raise AbliterateError(f"output {output} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise AbliterateError(
                f"output directory {output} exists and is not empty; choose another path or "
                "pass --overwrite (which replaces only a previous abliterate export)"
            )
        if not is_export(out):
            raise AbliterateError(
                f"output directory {output} is not an abliterate export (no abliterate.toml); "
                "--overwrite replaces only a previous export: choose another --output"
            )
    check_writable(out)
