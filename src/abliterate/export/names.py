"""Map tensor names in checkpoint files to the parameters of the loaded model.

transformers 5 renames some weights on load and fuses per-expert MoE weights into one 3-D
parameter (Mixtral's `block_sparse_moe.experts.3.w2.weight` becomes slice 3 of
`mlp.experts.down_proj`), and writes the old layout back on save. A streaming export reads the
files, so it needs the same mapping; it comes from transformers' own conversion rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedModel


@dataclass(frozen=True)
class Target:
    name: str  # parameter name in the loaded model
    expert: int | None = None  # slice of a fused 3-D parameter, for per-expert checkpoint tensors


def _rules(
    model: PreTrainedModel,
) -> tuple[list[tuple[re.Pattern, str]], list[tuple[re.Pattern, str]]]:
    """(renamings, expert merges) as regex substitutions, from transformers' mapping."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        transforms = get_model_conversion_mapping(model)
    except Exception:  # older/newer transformers without this API: names are used as they are
        return [], []
    renames, merges = [], []
    for t in transforms:
        sources = getattr(t, "source_patterns", None) or []
        targets = getattr(t, "target_patterns", None) or []
        ops = [type(o).__name__ for o in getattr(t, "operations", []) or []]
        if not targets:
            continue
        if not ops:
            renames += [(re.compile(src), targets[0]) for src in sources]
        elif ops == ["MergeModulelist"] and len(sources) == 1:
            # One source per expert index, stacked into one parameter: only this shape (a plain
            # stack) maps one-to-one onto expert slices; concatenations are not residual writers.
            pattern = re.escape(sources[0]).replace(r"\*", r"(\d+)")
            merges.append((re.compile(pattern + "$"), targets[0]))
    return renames, merges


class CheckpointNames:
    def __init__(self, model: PreTrainedModel):
        self.renames, self.merges = _rules(model)
        self.params = {n for n, _ in model.named_parameters()}

    def target(self, key: str) -> Target:
        name = key
        for pattern, repl in self.renames:
            name = pattern.sub(repl, name)
        for pattern, repl in self.merges:
            m = pattern.search(name)
            if m:
                return Target(name[: m.start()] + repl, int(m.group(1)))
        return Target(name)
