"""Torch's CPU threads on a busy machine: the organism's training (what `make demo` runs first)
timed alone and beside one busy single-thread process, with torch's default OpenMP settings and
with the alternatives.

    python benchmarks/busy_cores.py                  # 150 training steps per configuration
    python benchmarks/busy_cores.py --steps 300 --out benchmarks/results

Each configuration runs in a fresh process (OpenMP reads its settings when torch loads) and
builds the organism into a scratch directory with the given number of training steps. The
neighbour is `python -c "while True: pass"`: one core fully busy, as another user's
single-thread job would keep it. Printed per configuration: wall seconds, CPU seconds of the
build (user + system) and seconds per 100 training steps (from the build's own progress
callback, so corpus and tokenizer time are left out). "abliterate automatic" is what every
`abliterate` command does by default (abliterate/threads.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from abliterate import threads
if sys.argv[3] == "auto":
    threads.configure(say=lambda msg: print(msg, file=sys.stderr, flush=True))
from abliterate.organism.build import build_organism
from abliterate.organism.train import TrainConfig
marks = {}
def progress(stage, done, total):
    if stage.startswith("train"):
        marks.setdefault(done, time.perf_counter())
start = time.perf_counter()
build_organism(sys.argv[1], train_config=TrainConfig(steps=int(sys.argv[2])), on_progress=progress)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
steps = sorted(marks)
per100 = 100 * (marks[steps[-1]] - marks[steps[0]]) / max(steps[-1] - steps[0], 1)
print(json.dumps({"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                  "s_per_100_steps": round(per100, 2)}))
"""

# name: (environment, busy neighbour, abliterate's automatic thread count)
CONFIGS = {
    "alone, torch defaults": ({}, False, False),
    "alone, abliterate automatic": ({}, False, True),
    "alone, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False, False),
    "busy neighbour, torch defaults": ({}, True, False),
    "busy neighbour, abliterate automatic": ({}, True, True),
    "busy neighbour, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, True, False),
    "busy neighbour, 1 thread": ({"OMP_NUM_THREADS": "1"}, True, False),
}


def run(env: dict[str, str], busy: bool, auto: bool, steps: int, timeout: float) -> dict:
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    mode = "auto" if auto else "fixed"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(Path(tmp) / "organism"), str(steps), mode],
                capture_output=True,
                text=True,
                env={**clean, **env},
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": timeout}
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    said = [line for line in proc.stderr.splitlines() if "CPU threads" in line]
    return {**result, **({"threads_log": said} if said else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    ap.add_argument("--out", help="directory for busy_cores.json")
    args = ap.parse_args()
    results = {"cores": os.cpu_count(), "steps": args.steps, "configs": {}}
    for name, (env, busy, auto) in CONFIGS.items():
        started = time.perf_counter()
        results["configs"][name] = run(env, busy, auto, args.steps, args.timeout)
        print(f"{name}: {results['configs'][name]} ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "busy_cores.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
