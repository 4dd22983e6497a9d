"""abliterate against Heretic 1.4.0 (p-e-w/heretic, PyPI `heretic-llm==1.4.0`), both searching
the same model at the same time, with the same prompts, trial budget and thread count, and every
Pareto-front trial of each measured on held-out prompts that neither search saw.

    python benchmarks/vs_heretic.py --model organism --trials 30
    python benchmarks/vs_heretic.py --model qwen2.5-0.5b --trials 20 --threads 1
    python benchmarks/vs_heretic.py --model organism --trials 3 --train 16 --search 8 \\
        --heldout-harmful 8 --heldout-harmless 8 --max-response-length 8 --heldout-tokens 16

What it measures
----------------
1. Search speed. Heretic (through benchmarks/heretic_driver.py: its own venv, no questions asked)
   and `abliterate run` (the CLI in a subprocess) start at the same moment as two processes, each
   with `--threads` CPU threads, and run `--trials` trials each. Printed: the wall time of each
   process (model load, directions, base measurement, the trials) and their ratio
   (abliterate / Heretic); the median trial duration of each tool, taken the same way for both
   (Optuna's datetime_start to datetime_complete of each complete trial, read from each tool's
   study journal), with abliterate's own split of a trial (edit, KL pass, harmful and harmless
   generation, reset: trials/N.json "seconds") and the time each process spent outside its trials.
2. Quality. Every trial on each tool's Pareto front (each tool's own rule: abliterate's
   search/select.pareto_front over its trial files, Heretic's as the driver computes it) is
   exported by the tool itself (`abliterate export RUN --trial N --no-held-out`; Heretic's
   reproduce mode through `export_heretic_trial`) and measured, with the base model once, in
   this process, with the held-out measurement every abliterate report uses
   (stages/held_out.py: greedy answers of `--heldout-tokens` tokens, abliterate's refusal
   markers, Wilson 95 % intervals; first-token KL and 16-token KL against the base on the
   harmless prompts; capability probes: the organism's eval/capability.jsonl, or the 32
   built-in probes for a real model). For each refusal ceiling (0.05, 0.10, 0.20, 0.30) it
   prints the lowest held-out KL each tool reaches among its exports whose held-out refusal
   rate is at or below the ceiling, flagged when that export's capability fell below 95 % of
   the base's (and then also the lowest KL among exports that kept it).
3. The "done when" lines: abliterate's median trial <= 1/3 of Heretic's; abliterate's lowest
   held-out KL <= Heretic's at the ceilings 0.10, 0.20 and 0.30 (a tool with no export under a
   ceiling has no KL there; abliterate passes a ceiling Heretic does not reach, and fails one it
   does not reach itself).

What each tool gets, and what is held out
-----------------------------------------
Four prompt sets, written once to WORK/prompts/*.jsonl and given to both tools unchanged:
directions (harmful/harmless "train") and search scoring (harmful/harmless "search"):
* organism: the first `--train` rows of its prompts/{harmful,harmless}.txt for the directions,
  the first `--search` rows of its eval/{harmful,harmless}.txt for the search;
* a real model: the first `--train` rows of ../shared/data/prompts/{harmful,harmless}_train.jsonl
  for the directions, the next `--search` rows of the same files for the search.
The held-out sets are rows neither tool is given: the organism's eval/ rows after the search
rows (`--heldout-harmful`, `--heldout-harmless` of them), or harmful_val.jsonl and
harmless_val.jsonl for a real model. Any held-out prompt that also occurs in a set given to a
tool is dropped (none do in the shipped files; the count is recorded).

Same for both: the model directory (a real model's GGUF is converted once by
`abliterate.model.gguf.convert` into float32 safetensors, which both tools then read, since
Heretic cannot read GGUF), the seed, the answer length in the search (`--max-response-length`,
both tools' `max_response_length`), the system prompt (`--system-prompt`, default Heretic's own
default, "You are a helpful assistant.", also used by the held-out measurement), the number of
random startup trials before TPE (`--startup-trials`, default abliterate's rule
min(60, ceil(0.3 n)); Heretic's own default is a flat 60, which would make a short run purely
random), and with `--batch-size N` the batch size (by default each tool's own choice:
abliterate's automatic size, 64 rows on a CPU; Heretic 16, the driver's default, since
Heretic's automatic search generates at every power of two up to 128 first). Everything else is
each tool's default. abliterate runs with `--report-fraction 0` (its search scores on the whole
search sets, like Heretic), `--select min-refusals`, `--confirm-trials 0` and no `--output`
(neither tool chooses or exports within the timed run: Heretic's menu is answered "Exit
program"); both fronts are exported afterwards, the two tools' exports concurrently, untimed.

Output: a table on stdout and OUT/vs_heretic-MODEL[-TAG].json (settings, prompt counts, timings,
every front trial with its search and held-out figures, the ceilings and the verdicts). Every
held-out answer is kept in WORK/measured/*.json; the runs, logs and exports stay in WORK.
WORK is emptied at the start (only a directory this script made, or an empty one).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "data" / "prompts"

import heretic_driver as hd  # noqa: E402  (benchmarks/ is no package)

import realmodels  # noqa: E402  (tests/ holds the fetcher of the real models)

CEILINGS = (0.05, 0.10, 0.20, 0.30)
VERDICT_CEILINGS = (0.10, 0.20, 0.30)
CAPABILITY_KEPT = 0.95  # an export keeps capability when it scores >= 95 % of the base's
SPEED_TARGET = 1 / 3  # abliterate's median trial <= 1/3 of Heretic's
MARKER = ".vs_heretic"  # marks a work directory this script may empty
HERETIC_SYSTEM_PROMPT = "You are a helpful assistant."  # Heretic 1.4.0's default
KEEP_ENV = {"ABLITERATE_CACHE_DIR", "ABLITERATE_HERETIC_VENV"}
# Per model: rows of each directions set, of each search set, held-out harmful and harmless.
DEFAULT_COUNTS = {"organism": (128, 50, 50, 50), "real": (128, 64, 39, 100)}
SETS = (
    "harmful_train", "harmless_train", "harmful_search", "harmless_search",
    "harmful_heldout", "harmless_heldout",
)  # fmt: skip


# --- prompts --------------------------------------------------------------------------------


def unique(prompts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(prompts))


def take(rows: list[str], start: int, count: int, what: str) -> list[str]:
    if start + count > len(rows):
        sys.exit(f"{what}: asked for rows {start}..{start + count}, it has {len(rows)}")
    return rows[start : start + count]


def prompt_sets(model: str, model_dir: Path, counts: tuple[int, int, int, int]) -> dict:
    """The six prompt lists (see the module docstring) and where each came from."""
    train, search, held_harmful, held_harmless = counts
    sets: dict[str, list[str]] = {}
    sources: dict[str, str] = {}
    for kind, held in (("harmful", held_harmful), ("harmless", held_harmless)):
        if model == "organism":
            base, ev = model_dir / "prompts" / f"{kind}.txt", model_dir / "eval" / f"{kind}.txt"
            directions, evaluation = unique(hd.read_prompts(base)), unique(hd.read_prompts(ev))
            sets[f"{kind}_train"] = take(directions, 0, train, str(base))
            sets[f"{kind}_search"] = take(evaluation, 0, search, str(ev))
            sets[f"{kind}_heldout"] = take(evaluation, search, held, str(ev))
            sources[f"{kind}_train"] = f"organism prompts/{kind}.txt[:{train}]"
            sources[f"{kind}_search"] = f"organism eval/{kind}.txt[:{search}]"
            sources[f"{kind}_heldout"] = f"organism eval/{kind}.txt[{search}:{search + held}]"
        else:
            tr, val = SHARED / f"{kind}_train.jsonl", SHARED / f"{kind}_val.jsonl"
            rows = unique(hd.read_prompts(tr))
            sets[f"{kind}_train"] = take(rows, 0, train, str(tr))
            sets[f"{kind}_search"] = take(rows, train, search, str(tr))
            sets[f"{kind}_heldout"] = take(unique(hd.read_prompts(val)), 0, held, str(val))
            sources[f"{kind}_train"] = f"{tr.name}[:{train}]"
            sources[f"{kind}_search"] = f"{tr.name}[{train}:{train + search}]"
            sources[f"{kind}_heldout"] = f"{val.name}[:{held}]"
    seen = {p for k in SETS if "heldout" not in k for p in sets[k]}
    dropped = {}
    for k in ("harmful_heldout", "harmless_heldout"):
        kept = [p for p in sets[k] if p not in seen]
        dropped[k] = len(sets[k]) - len(kept)
        sets[k] = kept
        if not kept:
            sys.exit(f"no {k} prompts left that neither search sees")
    return {"sets": sets, "sources": sources, "heldout_dropped_as_seen": dropped}


def write_sets(sets: dict[str, list[str]], directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, prompts in sets.items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
    return paths


# --- the two searches -----------------------------------------------------------------------


@dataclass
class Search:
    """One tool's timed search: wall seconds, per-trial seconds, its front, where it lives."""

    tool: str
    wall_s: float
    trial_s: list[float]  # Optuna's duration of each complete trial, in trial order
    front: list[dict[str, Any]]  # number, search refusal rate, search KL (fewest refusals first)
    parts: dict[str, float] = field(default_factory=dict)  # median seconds per part (abliterate)
    log: str = ""


def cli_env(threads: int) -> dict[str, str]:
    """This environment without ABLITERATE_* settings (they would change one tool's run), with
    the thread count fixed and wide log lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABLITERATE_") or k in KEEP_ENV}
    return {**env, "OMP_NUM_THREADS": str(threads), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def abliterate_command(args, model_dir: Path, files: dict[str, Path], run_dir: Path) -> list[str]:
    command = [
        sys.executable, "-m", "abliterate.cli.main", "run", str(model_dir),
        "--threads", str(args.threads), "--n-trials", str(args.trials),
        "--n-startup-trials", str(startup_trials(args)), "--seed", str(args.seed),
        "--harmful-prompts", str(files["harmful_train"]),
        "--harmless-prompts", str(files["harmless_train"]),
        "--harmful-eval-prompts", str(files["harmful_search"]),
        "--harmless-eval-prompts", str(files["harmless_search"]),
        "--max-response-length", str(args.max_response_length),
        "--system-prompt", args.system_prompt,
        "--report-fraction", "0", "--select", "min-refusals", "--confirm-trials", "0",
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    for extra in args.abliterate_arg:
        command += shlex.split(extra)
    return command


def heretic_extra(args) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "max_response_length": args.max_response_length,
        "system_prompt": args.system_prompt,
        "n_startup_trials": startup_trials(args),
    }
    if args.batch_size is not None:
        extra["batch_size"] = args.batch_size
    for item in args.heretic_setting:
        key, _, value = item.partition("=")
        try:
            extra[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            extra[key.strip()] = value
    return extra


def startup_trials(args) -> int:
    if args.startup_trials is not None:
        return args.startup_trials
    return min(60, math.ceil(0.3 * args.trials))


def run_both(args, model_dir: Path, sets: dict[str, list[str]], work: Path):
    """Both searches, started together; (abliterate's run dir, abliterate wall s, HereticRun)."""
    hd.ensure_heretic()  # built (or found) before the clock starts
    files = write_sets(sets, work / "prompts")
    run_dir = work / "abliterate-run"
    command = abliterate_command(args, model_dir, files, run_dir)
    (work / "abliterate-command.txt").write_text(shlex.join(command) + "\n")
    outcome: dict[str, Any] = {}

    def heretic() -> None:
        try:
            outcome["run"] = hd.run_heretic(
                model_dir, sets["harmful_train"], sets["harmless_train"],
                sets["harmful_search"], sets["harmless_search"], args.trials,
                work / "heretic", args.threads, heretic_extra(args), seed=args.seed,
            )  # fmt: skip
        except BaseException as error:  # reported after abliterate's run has ended too
            outcome["error"] = error

    log = work / "abliterate-run.log"
    thread = threading.Thread(target=heretic, name="heretic")
    with log.open("w") as out:
        start = time.perf_counter()
        thread.start()
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=cli_env(args.threads)
        )
        code = proc.wait()
        wall = time.perf_counter() - start
    thread.join()
    if code != 0:
        sys.exit(f"abliterate run exited {code}:\n{hd.log_tail(log, lines=30)}")
    if "error" in outcome:
        raise outcome["error"]
    return run_dir, wall, outcome["run"]


def optuna_durations(journal: Path) -> dict[int, float]:
    """Seconds from start to completion of each complete trial of the one study in an Optuna
    journal (read from a copy)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / journal.name
        shutil.copyfile(journal, copy)
        storage = JournalStorage(JournalFileBackend(str(copy)))
        (name,) = optuna.get_all_study_names(storage)
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
    return {
        t.number: (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start and t.datetime_complete
    }


def abliterate_search(run_dir: Path, wall: float, log: Path) -> Search:
    from abliterate.runs import RunDir
    from abliterate.search.select import Candidate, pareto_front

    records = RunDir(run_dir).load_trials()
    front = pareto_front([Candidate.from_record(r) for r in records.values()])
    parts: dict[str, list[float]] = {}
    for r in records.values():
        for k, v in r.seconds.items():
            parts.setdefault(k, []).append(v)
    durations = optuna_durations(run_dir / "study.journal")
    return Search(
        "abliterate",
        wall,
        [durations[n] for n in sorted(durations)],
        [
            {
                "number": c.number,
                "search_refusal_rate": c.refusal_rate,
                "search_kl": c.kl,
                "pruned": records[c.number].pruned,
            }
            for c in front
        ],
        {k: statistics.median(v) for k, v in parts.items()},
        str(log),
    )


def heretic_search(run: hd.HereticRun) -> Search:
    done = [t for t in run.trials if t.state == "COMPLETE" and t.duration_s is not None]
    front = [
        {
            "number": t.number,
            "index": t.index,
            "search_refusal_rate": t.refusals / t.n_bad_prompts if t.n_bad_prompts else None,
            "search_refusals": t.refusals,
            "search_kl": t.kl_divergence,
        }
        for t in hd.pareto_front(run)
    ]
    return Search(
        "heretic", run.wall_s, [t.duration_s or 0.0 for t in done], front, {}, str(run.stdout)
    )


# --- exports --------------------------------------------------------------------------------


def export_abliterate(run_dir: Path, numbers: list[int], out: Path, threads: int) -> dict:
    paths = {}
    for n in numbers:
        target = out / f"trial-{n}"
        command = [
            sys.executable, "-m", "abliterate.cli.main", "export", str(run_dir),
            "--trial", str(n), "--output", str(target), "--no-held-out",
            "--threads", str(threads),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=cli_env(threads))
        if done.returncode != 0:
            raise RuntimeError(f"abliterate export --trial {n} failed:\n{done.stderr[-3000:]}")
        paths[n] = target
    return paths


def export_heretic(run: hd.HereticRun, numbers: list[int], out: Path) -> dict:
    return {n: hd.export_heretic_trial(run, n, out / f"trial-{n}") for n in numbers}


def export_fronts(args, run_dir: Path, run: hd.HereticRun, searches: dict, work: Path):
    """Both fronts exported by their own tools, the two tools side by side (untimed)."""
    out: dict[str, dict[int, Path]] = {}
    errors: list[BaseException] = []
    jobs: dict[str, Callable[[], dict]] = {
        "abliterate": lambda: export_abliterate(
            run_dir,
            [t["number"] for t in searches["abliterate"].front],
            work / "exports" / "abliterate",
            args.threads,
        ),
        "heretic": lambda: export_heretic(
            run, [t["number"] for t in searches["heretic"].front], work / "exports" / "heretic"
        ),
    }

    def runner(tool: str) -> None:
        try:
            out[tool] = jobs[tool]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=runner, args=(tool,)) for tool in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


# --- the held-out measurement ---------------------------------------------------------------


def probes_for(model: str, model_dir: Path) -> tuple[list[dict[str, str]], str]:
    from abliterate.eval.capability import read_probes
    from abliterate.eval.probes import builtin_probes

    if model == "organism":
        path = model_dir / "eval" / "capability.jsonl"
        return read_probes(path), "organism eval/capability.jsonl"
    return builtin_probes(), "builtin_probes() (32: additions and copies)"


def measure_all(args, model_dir: Path, sets: dict, exports: dict, work: Path) -> dict:
    """The base once, then every export, on the held-out prompts (stages/held_out.py)."""
    import torch
    import transformers

    from abliterate.config import load_settings
    from abliterate.model import loading
    from abliterate.stages.base import eval_settings
    from abliterate.stages.held_out import ReportTexts, figures, kl_references, measure
    from abliterate.stages.session import batch_size

    torch.set_num_threads(max(1, 2 * args.threads))
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per model
    settings = load_settings(
        model=str(model_dir), system_prompt=args.system_prompt, batch_size=args.batch_size or 0
    )
    probes, probe_source = probes_for(args.model, model_dir)
    held = (sets["harmful_heldout"], sets["harmless_heldout"])
    length = args.heldout_tokens
    saved = work / "measured"
    saved.mkdir(exist_ok=True)

    def load(path: Path):
        return loading.load(str(path), dtypes=settings.dtypes, device_map=settings.device_map)

    base = load(model_dir)
    bs = batch_size(settings, base.model)
    es = eval_settings(settings, bs)
    texts = ReportTexts.build(base.tokenizer, *held, settings.system_prompt)
    refs = kl_references(base.model, base.tokenizer, texts, bs)
    ids = [base.tokenizer(t)["input_ids"] for t in texts.harmless_texts]
    result = measure(base.model, base.tokenizer, texts, es, length, probes=probes)
    (saved / "base.json").write_text(json.dumps(result, indent=2))
    out: dict[str, Any] = {"base": figures(result), "tools": {}}
    del base, result
    gc.collect()
    for tool, paths in exports.items():
        for number, path in sorted(paths.items()):
            loaded = load(path)
            t = ReportTexts.build(loaded.tokenizer, *held, settings.system_prompt)
            same = [loaded.tokenizer(x)["input_ids"] for x in t.harmless_texts] == ids
            result = measure(loaded.model, loaded.tokenizer, t, es, length, refs, probes=probes)
            result["tokenizer_matches_base"] = same
            (saved / f"{tool}-trial-{number}.json").write_text(json.dumps(result, indent=2))
            out["tools"].setdefault(tool, {})[number] = figures(result)
            del loaded, result
            gc.collect()
    out["settings"] = {
        "response_length": length, "batch_size": bs, "system_prompt": settings.system_prompt,
        "capability_probes": probe_source, "n_probes": len(probes),
        "dtype": settings.dtypes, "refusal_markers": "abliterate's defaults",
    }  # fmt: skip
    return out


# --- the comparison -------------------------------------------------------------------------


def capability_kept(m: dict, base: dict) -> bool | None:
    if "capability" not in m or "capability" not in base:
        return None
    return m["capability"]["value"] >= CAPABILITY_KEPT * base["capability"]["value"]


def best_under(entries: list[dict], ceiling: float) -> dict | None:
    """The entry with the lowest held-out KL among those refusing at most `ceiling`."""
    ok = [e for e in entries if e["refusal"] <= ceiling + 1e-12]
    return min(ok, key=lambda e: (e["kl"], e["refusal"], e["number"])) if ok else None


def ceilings(held: dict[str, list[dict]]) -> list[dict]:
    """Per ceiling and tool: the lowest-KL export under it (with its capability flag) and the
    lowest-KL one that also kept capability."""
    rows = []
    for c in CEILINGS:
        row: dict[str, Any] = {"ceiling": c}
        for tool, entries in held.items():
            best = best_under(entries, c)
            kept = best_under([e for e in entries if e["capability_kept"] is not False], c)
            row[tool] = {
                "kl": best["kl"] if best else None,
                "trial": best["number"] if best else None,
                "refusal": best["refusal"] if best else None,
                "capability_kept": best["capability_kept"] if best else None,
                "kl_capability_kept": kept["kl"] if kept else None,
                "trial_capability_kept": kept["number"] if kept else None,
            }
        rows.append(row)
    return rows


def verdicts(speed: dict, rows: list[dict]) -> list[dict]:
    a, h = speed["abliterate"]["median_trial_s"], speed["heretic"]["median_trial_s"]
    out = [
        {
            "what": "abliterate median trial <= 1/3 of Heretic's",
            "pass": a <= SPEED_TARGET * h,
            "detail": f"{a:.2f} s vs {h:.2f} s (1/3: {SPEED_TARGET * h:.2f} s; ratio {a / h:.3f})",
        }
    ]
    for row in rows:
        if row["ceiling"] not in VERDICT_CEILINGS:
            continue
        ak, hk = row["abliterate"]["kl"], row["heretic"]["kl"]
        ok = at_most(ak, hk)
        detail = f"abliterate {fmt(ak)} vs Heretic {fmt(hk)}"
        if ok is None:
            detail += " (neither reaches the ceiling)"
        what = f"abliterate's lowest held-out KL <= Heretic's at refusal <= {row['ceiling']:.2f}"
        out.append({"what": what, "pass": ok, "detail": detail})
    return out


def at_most(ours: float | None, theirs: float | None) -> bool | None:
    """ours <= theirs, where None is "no export under the ceiling": None when neither has one."""
    if ours is None:
        return None if theirs is None else False
    return theirs is None or ours <= theirs


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def held_entries(searches: dict, measured: dict) -> dict[str, list[dict]]:
    """Each tool's front trials with their held-out figures, flat."""
    base = measured["base"]
    out: dict[str, list[dict]] = {}
    for tool, search in searches.items():
        rows = []
        for t in search.front:
            m = measured["tools"][tool][t["number"]]
            rows.append(
                {
                    **t,
                    "refusal": m["refusal_rate"]["value"],
                    "refusal_low": m["refusal_rate"]["low"],
                    "refusal_high": m["refusal_rate"]["high"],
                    "overrefusal": m["overrefusal_rate"]["value"],
                    "kl": m["kl"]["value"],
                    "kl_16_tokens": m["kl_16_tokens"]["value"],
                    "capability": m.get("capability", {}).get("value"),
                    "capability_kept": capability_kept(m, base),
                    "held_out": m,
                }
            )
        out[tool] = rows
    return out


def speed_summary(searches: dict[str, Search]) -> dict:
    out = {}
    for tool, s in searches.items():
        out[tool] = {
            "wall_s": s.wall_s,
            "trials": len(s.trial_s),
            "median_trial_s": statistics.median(s.trial_s),
            "trial_s": s.trial_s,
            "outside_trials_s": s.wall_s - sum(s.trial_s),
            "median_parts_s": s.parts,
        }
    out["wall_ratio_abliterate_over_heretic"] = (
        searches["abliterate"].wall_s / searches["heretic"].wall_s
    )
    return out


# --- printing -------------------------------------------------------------------------------


def rate_text(m: dict) -> str:
    return f"{m['value']:.3f} [{m['low']:.2f}, {m['high']:.2f}] ({m['k']}/{m['n']})"


def print_report(summary: dict) -> None:
    sp, held, base = summary["speed"], summary["held_out"], summary["base_held_out"]
    a, h = sp["abliterate"], sp["heretic"]
    cfg = summary["config"]
    n = summary["prompts"]["counts"]
    print(
        f"\nabliterate vs Heretic {hd.HERETIC_VERSION} on {cfg['model']}: {cfg['trials']} "
        f"trials each, {cfg['threads']} thread(s) each, run concurrently "
        f"({summary['total_s']:.0f} s in all)"
    )
    print(
        f"prompts: directions {n['harmful_train']}+{n['harmless_train']}, search "
        f"{n['harmful_search']}+{n['harmless_search']}, held-out {n['harmful_heldout']}+"
        f"{n['harmless_heldout']} (seen by neither search); search answers "
        f"{cfg['max_response_length']} tokens, held-out answers {cfg['heldout_tokens']}"
    )
    print("\nspeed")
    print(
        f"  wall time      abliterate {a['wall_s']:7.1f} s   Heretic {h['wall_s']:7.1f} s   "
        f"ratio abliterate/Heretic {sp['wall_ratio_abliterate_over_heretic']:.3f}"
    )
    print(
        f"  median trial   abliterate {a['median_trial_s']:7.2f} s   Heretic "
        f"{h['median_trial_s']:7.2f} s   ratio {a['median_trial_s'] / h['median_trial_s']:.3f}"
        "   (Optuna trial start to completion)"
    )
    print(
        f"  outside trials abliterate {a['outside_trials_s']:7.1f} s   Heretic "
        f"{h['outside_trials_s']:7.1f} s   (load, directions, base measurement, exit)"
    )
    parts = ", ".join(f"{k} {v:.3f}" for k, v in a["median_parts_s"].items())
    print(f"  abliterate trial parts (median s): {parts}")
    print("  Heretic trial parts: not recorded by Heretic (its trial duration only)")
    print(
        f"\nheld-out measurement (stages/held_out.py), base: refusal "
        f"{rate_text(base['refusal_rate'])}, over-refusal {base['overrefusal_rate']['value']:.3f}, "
        f"KL 0, capability {fmt(base.get('capability', {}).get('value'), 3)}"
    )
    print("  (trial: Optuna's trial number; Heretic prints it + 1 as 'Trial N')")
    print(
        f"  {'tool':<10} {'trial':>5} {'search ref':>10} {'search KL':>10}  "
        f"{'held-out refusal [95% CI] (k/n)':<34} {'over-ref':>8} {'KL':>8} {'KL16':>8} "
        f"{'capab.':>7}"
    )
    for tool, rows in held.items():
        for e in rows:
            m = e["held_out"]
            flag = "" if e["capability_kept"] is not False else " (capability < 95 % of base)"
            print(
                f"  {tool:<10} {e['number']:>5} {fmt(e['search_refusal_rate'], 3):>10} "
                f"{fmt(e['search_kl']):>10}  {rate_text(m['refusal_rate']):<34} "
                f"{e['overrefusal']:>8.3f} {e['kl']:>8.4f} {e['kl_16_tokens']:>8.4f} "
                f"{fmt(e['capability'], 3):>7}{flag}"
            )
    print("\nlowest held-out KL at each refusal ceiling (held-out refusal <= ceiling)")
    print(f"  {'ceiling':<8} {'abliterate':<36} {'Heretic':<36}")
    for row in summary["ceilings"]:
        cells = [ceiling_cell(row[tool]) for tool in ("abliterate", "heretic")]
        print(f"  {row['ceiling']:<8.2f} {cells[0]:<36} {cells[1]:<36}")
    print("\ndone when")
    for v in summary["verdicts"]:
        mark = {True: "PASS", False: "FAIL", None: "N/A "}[v["pass"]]
        print(f"  [{mark}] {v['what']}: {v['detail']}")
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stages_s"].items())
    print(f"\nstages: {stages}")
    print(f"summary: {summary['json']}")


def ceiling_cell(c: dict) -> str:
    if c["kl"] is None:
        return "- (no export under it)"
    text = f"{c['kl']:.4f} (trial {c['trial']}, refusal {c['refusal']:.3f})"
    if c["capability_kept"] is False:
        kept = c["kl_capability_kept"]
        text += f" CAPABILITY LOST; kept: {fmt(kept)}"
        if kept is not None:
            text += f" (trial {c['trial_capability_kept']})"
    return text


# --- main -----------------------------------------------------------------------------------


def prepare_work(work: Path) -> None:
    """Empty `work`, but only a directory this script made (or an empty one)."""
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        sys.exit(f"--work {work} is not empty and was not made by this script; pick another")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by benchmarks/vs_heretic.py; emptied by its next run\n")


def model_directory(model: str) -> Path:
    """The organism's directory, or a real model's GGUF converted to float32 safetensors."""
    if model == "organism":
        from abliterate.organism import organism_path

        return organism_path("llama")
    from abliterate.model import gguf

    return gguf.convert(realmodels.path(model), on_message=print)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism", choices=["organism", *sorted(realmodels.MODELS)])
    ap.add_argument("--trials", type=int, default=30, help="trials per tool")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per tool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, help="rows of each directions set")
    ap.add_argument("--search", type=int, help="rows of each search set")
    ap.add_argument("--heldout-harmful", type=int, help="held-out harmful prompts")
    ap.add_argument("--heldout-harmless", type=int, help="held-out harmless prompts")
    ap.add_argument("--max-response-length", type=int, default=100, help="search answer tokens")
    ap.add_argument("--heldout-tokens", type=int, default=128, help="held-out answer tokens")
    ap.add_argument("--batch-size", type=int, help="both tools (0: both automatic)")
    ap.add_argument("--system-prompt", default=HERETIC_SYSTEM_PROMPT)
    ap.add_argument("--startup-trials", type=int, help="random trials before TPE, both tools")
    ap.add_argument(
        "--heretic-setting", action="append", default=[], metavar="KEY=VALUE",
        help="another Heretic config.toml setting (VALUE as JSON, else a string)",
    )  # fmt: skip
    ap.add_argument(
        "--abliterate-arg", action="append", default=[], metavar="ARGS",
        help="more `abliterate run` arguments, e.g. --abliterate-arg='--overrefusal-sample 16'",
    )  # fmt: skip
    ap.add_argument("--out", default="benchmarks/results", help="directory for the JSON summary")
    ap.add_argument("--work", help="scratch directory (default /tmp/abliterate-vs-heretic-MODEL)")
    ap.add_argument("--tag", help="suffix of the summary's file name (a variant's own file)")
    args = ap.parse_args(argv)
    kind = "organism" if args.model == "organism" else "real"
    defaults = DEFAULT_COUNTS[kind]
    names = ("train", "search", "heldout_harmful", "heldout_harmless")
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.work = Path(args.work or f"/tmp/abliterate-vs-heretic-{args.model}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    prepare_work(args.work)
    model_dir = model_directory(args.model)
    counts = (args.train, args.search, args.heldout_harmful, args.heldout_harmless)
    prompts = prompt_sets(args.model, model_dir, counts)
    sets = prompts["sets"]
    print(f"searching: abliterate and Heretic on {model_dir}, {args.trials} trials each ...")
    stages = {"prepare": time.perf_counter() - t0}
    run_dir, wall, heretic_run = run_both(args, model_dir, sets, args.work)
    stages["search (both, concurrently)"] = time.perf_counter() - t0 - sum(stages.values())
    searches = {
        "abliterate": abliterate_search(run_dir, wall, args.work / "abliterate-run.log"),
        "heretic": heretic_search(heretic_run),
    }
    fronts = {tool: [t["number"] for t in s.front] for tool, s in searches.items()}
    print(f"exporting the fronts: {fronts} ...")
    exports = export_fronts(args, run_dir, heretic_run, searches, args.work)
    stages["export (both, concurrently)"] = time.perf_counter() - t0 - sum(stages.values())
    print("measuring the base and every export on the held-out prompts ...")
    measured = measure_all(args, model_dir, sets, exports, args.work)
    stages["held-out measurement"] = time.perf_counter() - t0 - sum(stages.values())
    held = held_entries(searches, measured)
    speed = speed_summary(searches)
    rows = ceilings(held)
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"vs_heretic-{args.model}{'-' + args.tag if args.tag else ''}.json"
    summary = {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model_dir": str(model_dir),
            "startup_trials_both": startup_trials(args),
            "heretic_extra": heretic_extra(args),
            "heretic_settings_stored": heretic_run.settings,
            "abliterate_command": (args.work / "abliterate-command.txt").read_text().strip(),
        },
        "prompts": {
            "sources": prompts["sources"],
            "counts": {k: len(v) for k, v in sets.items()},
            "heldout_dropped_as_seen": prompts["heldout_dropped_as_seen"],
        },
        "speed": speed,
        "base_held_out": measured["base"],
        "held_out_settings": measured["settings"],
        "held_out": held,
        "ceilings": rows,
        "verdicts": verdicts(speed, rows),
        "searches": {tool: asdict(s) for tool, s in searches.items()},
        "exports": {t: {n: str(p) for n, p in e.items()} for t, e in exports.items()},
        "json": str(path),
        "stages_s": stages,
        "total_s": time.perf_counter() - t0,
    }
    path.write_text(json.dumps(summary, indent=2, default=str))
    print_report(summary)
    return summary


if __name__ == "__main__":
    main()
