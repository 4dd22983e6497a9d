"""The built-in model organism: a tiny chat model trained by the project to refuse harmful
requests. A test instrument for the whole pipeline and the default model of `abliterate demo`.

The names below load on first use (PEP 562), so that listing the architectures for --help does
not import torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from abliterate.organism.arches import ARCHES
    from abliterate.organism.build import ORGANISM_VERSION, build_organism, organism_path

__all__ = ["ARCHES", "ORGANISM_VERSION", "build_organism", "organism_path"]
_HOME = {
    "ARCHES": "abliterate.organism.arches",
    "ORGANISM_VERSION": "abliterate.organism.build",
    "build_organism": "abliterate.organism.build",
    "organism_path": "abliterate.organism.build",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
