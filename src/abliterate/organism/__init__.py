"""The built-in model organism: a tiny chat model trained by the project to refuse harmful
requests. A test instrument for the whole pipeline and the default model of `abliterate demo`."""

from abliterate.organism.arches import ARCHES
from abliterate.organism.build import ORGANISM_VERSION, build_organism, organism_path

__all__ = ["ARCHES", "ORGANISM_VERSION", "build_organism", "organism_path"]
