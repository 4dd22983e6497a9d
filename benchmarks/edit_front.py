"""What the edit family can reach on a real model: fixed edits of a finished run's directions,
each measured on every harmful prompt of ../shared/data/prompts and by first-token KL.

    python benchmarks/real_model.py --run-arg=--trial-openings-only --tag trial-openings
    python benchmarks/edit_front.py                  # reads /tmp/abliterate-real-model/run

A search trial sees 19 harmful prompts, so "0 refusals" there can mean anything from 0 to about
15 % on other prompts. This script takes the run's directions and measures a fixed grid of edits
(the run's chosen trial, flat edits of Arditi et al. at several depths and strengths, triangles
over the early or late layers, one component alone, the embedding edited too, a second direction
from a deeper layer) on all 299 harmful prompts (harmful_train + harmful_val, judged by the base
model's refusal openings, checked against its generated answers first) and on 64 harmless_val
prompts outside the benchmark's (rows 128-191: first-token KL, over-refusal by openings). The
figures say where the trade-off between refusal and KL lies for the edit family itself,
independent of what a short search happens to find.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from abliterate.config import load_settings
from abliterate.directions import interpolate
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import EditParams
from abliterate.events import Events
from abliterate.prompts import load_prompt_set
from abliterate.runs import RunDir
from abliterate.search.trials import evaluate_params
from abliterate.stages.base import measure_base
from abliterate.stages.session import Session, open_session

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
HARMLESS_ROWS = "train[128:192]"  # harmless_val rows outside the real-model benchmark's 128


def flat(
    n: int,
    depth: float,
    strength: float = 1.0,
    mlp: float | None = None,
    peak: float = 0.5,
    span: float = 0.6,
    edge: float = 1.0,
) -> EditParams:
    """One global direction (plain mean difference, at `depth` of the layers) and a kernel per
    component: with the defaults strength on every layer (Arditi et al.); `edge` 0 with a
    short `span` makes a triangle around `peak`."""

    def kernel(w: float) -> Kernel:
        return Kernel(w, peak * (n - 1), edge * w, span * n)

    kernels = {"attn_out": kernel(strength), "mlp_down": kernel(strength if mlp is None else mlp)}
    return EditParams("global", kernels, direction_index=depth * (n - 1), projection=0.0)


def grid(session: Session, chosen: EditParams, deep: float) -> dict[str, EditParams]:
    """The edits to measure. A second direction is put into `session.directions.extra` (the
    plain direction at depth `deep`, as several-directions-per-layer would store a cluster's)."""
    n = session.directions.n_layers
    raw = session.directions.raw
    raw = session.directions.per_layer if raw is None else raw
    second = interpolate(raw, deep * (n - 1))
    extra = second[None, None, :].expand(n, 1, raw.shape[1]).clone()
    session.directions = dataclasses.replace(session.directions, extra=extra)
    edits = {
        "chosen trial": chosen,
        "chosen trial, embedding too": dataclasses.replace(chosen, embed_weight=1.0),
    }
    for depth in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8):
        edits[f"flat, depth {depth}"] = flat(n, depth)
    for w in (0.6, 0.7, 0.8):
        edits[f"flat, depth 0.8, strength {w}"] = flat(n, 0.8, w)
    edits["depth 0.8, late triangle"] = flat(n, 0.8, peak=0.75, span=0.35, edge=0.0)
    edits["depth 0.8, early triangle"] = flat(n, 0.8, peak=0.35, span=0.35, edge=0.0)
    edits["depth 0.8, attention only"] = flat(n, 0.8, mlp=0.0)
    edits["depth 0.8, MLP only"] = flat(n, 0.8, strength=0.0, mlp=1.0)
    for w in (0.3, 0.5):
        edits[f"flat, depth 0.6, + depth {deep} at {w}"] = dataclasses.replace(
            flat(n, 0.6), extra_weight=w
        )
    return edits


def open_run(run: Path, scratch: Path) -> tuple[Session, EditParams]:
    """The run's model and directions, its chosen trial, and an evaluator over all harmful
    prompts judged by openings (trial_openings_only) with the base measured."""
    rd = RunDir(run)
    if not rd.settings_file.exists():
        sys.exit(f"{run} is not a run directory: run benchmarks/real_model.py first")
    settings = load_settings(
        rd.settings_file, trial_openings_only=True, max_response_length=24, overrefusal_sample=16
    )
    session = open_session(settings, for_search=False)
    choice = rd.load_choice()
    if choice is None:
        sys.exit(f"{run} has no chosen trial: let benchmarks/real_model.py finish first")
    chosen = rd.load_trial(choice["trial"]).params
    harmful = [load_prompt_set(str(SHARED / f"harmful_{s}.jsonl")) for s in ("train", "val")]
    session.prompts["harmful_eval_prompts"] = harmful[0] + harmful[1]
    session.prompts["harmless_eval_prompts"] = load_prompt_set(
        str(SHARED / "harmless_val.jsonl"), HARMLESS_ROWS
    )
    scratch.mkdir(parents=True, exist_ok=True)
    session.run_dir = RunDir(scratch)  # the base record goes here, not into the run
    measure_base(session, Events(message=lambda text: print(text, flush=True)))
    return session, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="/tmp/abliterate-real-model/run", type=Path)
    ap.add_argument("--second-depth", type=float, default=0.8)
    ap.add_argument("--out", default="benchmarks/results/edit_front-qwen2.5-0.5b.json")
    args = ap.parse_args()
    session, chosen = open_run(args.run, args.run.parent / "edit-front-scratch")
    assert session.base is not None
    n_harmful = len(session.prompts["harmful_eval_prompts"])
    n_harmless = len(session.prompts["harmless_eval_prompts"])
    rows = [{"edit": "base", "refusals": round(session.base["refusal_rate"] * n_harmful)}]
    for name, params in grid(session, chosen, args.second_depth).items():
        t0 = time.perf_counter()
        m, _timing = evaluate_params(session, params)
        row = {
            "edit": name,
            "refusals": round(m["refusal_rate"] * n_harmful),
            "kl": round(m["kl"], 4),
            "overrefusal_rate": round(m["overrefusal_rate"], 4),
            "params": params.to_dict(),
        }
        rows.append(row)
        print(
            f"{name:40s} {row['refusals']:3d}/{n_harmful} refused, KL {row['kl']:.3f}, "
            f"over-refusal {row['overrefusal_rate']:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    summary = {"run": str(args.run), "harmful_prompts": n_harmful, "harmless_prompts": n_harmless}
    Path(args.out).write_text(json.dumps({**summary, "edits": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
