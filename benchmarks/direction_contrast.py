"""Which harmful prompts make the refusal direction, and what they are measured against, on a real
chat model: three directions from the same residuals, each measured with the same fixed edits.

    python benchmarks/direction_contrast.py          # Qwen2.5-Coder-0.5B-Instruct (PyPI GGUF)

Directions come from harmful_train[:130] and harmless_train[:260] of ../shared/data/prompts:
1. every harmful prompt's mean minus the harmless mean (Heretic, Arditi et al. without filter);
2. the mean of the harmful prompts the unedited model refuses minus the harmless mean;
3. the refused prompts' mean minus the mean of the harmful prompts it answers.
Which prompts it refuses is read from the base model's refusal openings (eval/openings.py; `run`
reads them from 16-token answers, stages/refused.py). Each direction is applied flat (one global
direction, plain mean difference, the same strength on every attention and MLP writer) at three
depths and three strengths, and measured on the 169 harmful prompts none of them saw
(harmful_train[130:] + harmful_val, judged by their refusal opening, checked against the base
model's 24-token answers first) and by first-token KL on harmless_val[128:192]. It prints one line
per edit and writes them to --out. About 45 minutes on 2 CPU cores.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from edit_front import flat  # noqa: E402

import realmodels  # noqa: E402
from abliterate import activations  # noqa: E402
from abliterate.config import PromptSet, load_settings  # noqa: E402
from abliterate.events import Events  # noqa: E402
from abliterate.prompts import chat_texts, load_prompt_set  # noqa: E402
from abliterate.search.trials import evaluate_params  # noqa: E402
from abliterate.stages.base import measure_base  # noqa: E402
from abliterate.stages.directions import direction_tensors, directions_from_tensors  # noqa: E402
from abliterate.stages.refused import keep_rows  # noqa: E402
from abliterate.stages.session import Session, open_session  # noqa: E402

S = ROOT.parent / "shared" / "data" / "prompts"


def open_model(work: Path) -> Session:
    """The model, its run-time directions (unused) and an evaluator over the 169 measuring
    prompts judged by openings, with the base measured."""
    settings = load_settings(
        None,
        model=str(realmodels.path("qwen2.5-0.5b")),
        harmful_prompts=PromptSet.parse(f"{S}/harmful_train.jsonl:train[:130]"),
        harmless_prompts=PromptSet.parse(f"{S}/harmless_train.jsonl:train[:260]"),
        harmful_eval_prompts=PromptSet.parse(f"{S}/harmful_val.jsonl"),
        harmless_eval_prompts=PromptSet.parse(f"{S}/harmless_val.jsonl:train[128:192]"),
        report_fraction=0.0,
        trial_openings_only=True,
        max_response_length=24,
        overrefusal_sample=16,
        run_dir=str(work / "run"),
    )
    ev = Events(message=lambda t: print(t, flush=True))
    session = open_session(settings, ev, for_search=False)
    session.prompts["harmful_eval_prompts"] = load_prompt_set(
        f"{S}/harmful_train.jsonl", "train[130:]"
    ) + load_prompt_set(f"{S}/harmful_val.jsonl")
    measure_base(session, ev)
    return session


def variants(session: Session) -> tuple[dict[str, tuple], activations.Residuals, list[bool]]:
    """The three (harmful, baseline) residual statistics (baseline None: the harmless mean), the
    harmless statistics, and which direction prompts the base model refuses (by its refusal
    openings)."""
    tok, s = session.tokenizer, session.settings
    harm = load_prompt_set(f"{S}/harmful_train.jsonl", "train[:130]")
    harmless = load_prompt_set(f"{S}/harmless_train.jsonl", "train[:260]")
    assert session.evaluator is not None
    refused = session.evaluator.opened(chat_texts(tok, harm, s.system_prompt))
    print("direction-set harmful refused by openings:", sum(refused), "/", len(refused))

    def res(prompts):
        return activations.collect(
            session.model, tok, session.layout, chat_texts(tok, prompts, s.system_prompt),
            s.residual_stream, session.batch_size, keep_full=True,
        )  # fmt: skip

    bad_all, good = res(harm), res(harmless)
    kept = keep_rows(bad_all, refused)
    return (
        {
            "all harmful": (bad_all, None),
            "refused harmful": (kept, None),
            "refused minus answered harmful": (kept, keep_rows(bad_all, [not r for r in refused])),
        },
        good,
        refused,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/direction-contrast", type=Path)
    ap.add_argument("--out", default="benchmarks/results/direction_contrast-qwen2.5-0.5b.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    session = open_model(args.work)
    assert session.base is not None
    n_h = len(session.prompts["harmful_eval_prompts"])
    print("base refusals", round(session.base["refusal_rate"] * n_h), "/", n_h)
    sets, good, refused = variants(session)
    n = session.layout.n_layers
    rows: list[dict] = [{"edit": "base", "refusals": round(session.base["refusal_rate"] * n_h)}]
    for name, (bad, baseline) in sets.items():
        # as `run` builds them (stages/directions.py); the flat edits use the plain difference
        # of the two means (projection 0)
        tensors, _ = direction_tensors(bad, good, session.settings, baseline)
        session.directions = directions_from_tensors(tensors)
        for depth in (0.6, 0.7, 0.8):
            for w in (0.7, 0.85, 1.0):
                t0 = time.perf_counter()
                m, _ = evaluate_params(session, flat(n, depth, w))
                rows.append(
                    {"direction": name, "depth": depth, "strength": w, "kl": round(m["kl"], 4),
                     "refusals": round(m["refusal_rate"] * n_h),
                     "overrefusal_rate": round(m["overrefusal_rate"], 4)}
                )  # fmt: skip
                print(
                    f"{name:30s} depth {depth} strength {w}: "
                    f"{rows[-1]['refusals']:3d}/{n_h} KL {m['kl']:.3f} "
                    f"over {m['overrefusal_rate']:.3f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    summary = {"harmful_prompts": n_h, "direction_prompts_refused": [sum(refused), len(refused)]}
    Path(args.out).write_text(json.dumps({**summary, "edits": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
