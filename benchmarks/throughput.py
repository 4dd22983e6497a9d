"""Trials per minute with 1, 2 and 4 workers on one study, on this machine.

    python benchmarks/throughput.py [--trials 24] [--workers 1,2,4]

Each worker is a separate `abliterate run` process on the model organism, all sharing one
SQLite study (see README: several processes on one machine); the CPU threads are split evenly
between the workers. Timing starts when the directions exist (computed once beforehand), so
what is measured is the search itself.
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

from abliterate.organism import organism_path

ARGS = ["--max-response-length", "32", "--batch-size", "32", "--select", "min-refusals"]


def run_command(organism: Path, run_dir: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "abliterate.cli.main",
        "run",
        str(organism),
        "--n-trials",
        str(n_trials),
        "--run-dir",
        str(run_dir),
        *ARGS,
        *extra,
    ]


def run_workers(organism: Path, n_workers: int, n_trials: int, root: Path, seed_dir: Path) -> float:
    db = root / f"w{n_workers}.db"
    study = f"throughput-{n_workers}"
    threads = max(1, (os.cpu_count() or 2) // n_workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    start = time.perf_counter()
    for w in range(n_workers):
        run_dir = root / f"w{n_workers}-{w}"
        # Directions computed once beforehand, so that only the search is timed.
        cmd = run_command(
            organism,
            run_dir,
            n_trials,
            "--storage",
            f"sqlite:///{db}",
            "--study-name",
            study,
            "--direction-file",
            str(seed_dir / "directions.safetensors"),
        )
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker failed with {n_workers} workers")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    organism = organism_path("llama")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed = root / "seed"
        subprocess.run(
            run_command(organism, seed, 1),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = {}
        for n in [int(x) for x in args.workers.split(",")]:
            seconds = run_workers(organism, n, args.trials, root, seed)
            results[n] = {
                "seconds": round(seconds, 1),
                "trials_per_minute": round(60 * args.trials / seconds, 2),
            }
            print(
                f"{n} worker(s): {args.trials} trials in {seconds:.1f}s = "
                f"{results[n]['trials_per_minute']} trials/min",
                flush=True,
            )
        base = results[min(results)]["trials_per_minute"]
        for r in results.values():
            r["speedup"] = round(r["trials_per_minute"] / base, 2)
        print(
            json.dumps(
                {"cpus": os.cpu_count(), "trials": args.trials, "results": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
