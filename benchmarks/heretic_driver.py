"""Run the peer tool Heretic (p-e-w/heretic, PyPI `heretic-llm==1.4.0`) without a human, on local
models and prompt sets, so its search can be measured side by side with abliterate's.

    python benchmarks/heretic_driver.py MODEL_DIR --workdir W --trials 3 --export-front W/export

What Heretic is asked to do
---------------------------
Its normal run, nothing more: load the model, take refusal directions from the harmful and
harmless training prompts, run `n_trials` Optuna trials that each abliterate the model (LoRA
adapters on `attn.o_proj` / `mlp.down_proj`) and score it by refusals on the harmful evaluation
prompts and first-token KL divergence on the harmless ones. Settings go in `WORKDIR/config.toml`
(Heretic reads `config.toml` from its working directory through pydantic-settings), with the
seed fixed (`seed`, which Heretic applies to random, NumPy, torch and the TPE sampler).

Where its results live
----------------------
Heretic keeps its study in an Optuna journal (`JournalFileBackend`, JSON lines of storage
operations), `WORKDIR/checkpoints/<model path, non [A-Za-z0-9_-] chars as "--">.jsonl`, study
name "heretic". Each complete trial's user attributes hold what it measured: `refusals`,
`kl_divergence`, `base_refusals`, `n_bad_prompts`, `index` (the 1-based "Trial N" it prints),
`direction_index` and `parameters` (the abliteration weights per component); the study's
user attribute `settings` holds the full settings JSON (with the batch size and response prefix
it settled on). The journal is read back with the Optuna inside Heretic's venv, the version
that wrote it.

Workarounds, and why each exists
--------------------------------
* Own virtual environment (`ensure_heretic`): Heretic pins its own transformers/optuna/peft,
  which must not disturb the project's. torch==2.13.0 is installed first, and kept pinned with
  Heretic, so pip takes the CPU wheel instead of pulling GBs of CUDA packages. Heretic is always
  started as `python -c ...` (never its console script) so the venv works wherever it lies.
* Its questions: Heretic ends (and `--reproduce` continues) with menus drawn by questionary on a
  terminal. With `KAGGLE_KERNEL_RUN_TYPE` set, its own `is_notebook()` switches every menu to
  numbered choices read with `input()`, so answers can come from a stdin file:
  - after the search, "Which trial do you want to use?" lists the Pareto trials, then "Run
    additional trials", then "Exit program". Their count is not known before the run, so the
    answers are n_trials+2, n_trials+1, ..., 3: Heretic rejects numbers above the list length
    and asks again, so the first one it accepts is the list's last entry, "Exit program".
  - the export answers "Save the model to a local folder", the folder, "Exit program".
* Export (`export_heretic_trial`): Heretic's menu offers only Pareto-front trials for saving,
  and only after recomputing everything. Its reproduction mode (`--reproduce reproduce.json`,
  meant to rebuild a published model from its settings and trial parameters) restores any
  trial with Heretic's own code: the reproduce.json is written from the study (its stored
  settings, that trial's parameters and metrics, and this venv's own package versions, so its
  environment check finds no mismatch and asks nothing), then the merged model is saved through
  its menu. The same seed is in the settings, so its randomized low-rank SVD rebuilds the same
  LoRA the trial was scored with.
* Prompts are written as local JSON-lines datasets (`DIR/train.jsonl`, column `text`), loaded by
  Heretic with `datasets.load_dataset(DIR, split="train")`: unlike its plain-text files (one
  prompt per line), they keep prompts that contain newlines. The datasets cache goes to the
  workdir. The Hub is switched off (`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE`): all is local.
* `batch_size` defaults to 16: Heretic's automatic choice (batch_size = 0) generates twice at
  every power of two up to 128, which on a CPU costs more than a small run (pass
  `extra={"batch_size": 0}` to get it back).
* Threads: `OMP_NUM_THREADS`/`MKL_NUM_THREADS` and torch's intra- and inter-op thread counts are
  set to `threads` (Heretic sets none itself).
* `HERETIC_*` variables and `PYTHONPATH` are removed from its environment: pydantic-settings
  ranks environment variables above config.toml, so a stray one would change the run.
* Heretic returns exit status 0 even when it stops early (Ctrl+C handler, settings errors), so a
  run counts as done only when the study holds `n_trials` complete trials.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
from filelock import FileLock

from abliterate.cache import cache_root

HERETIC_VERSION = "1.4.0"
TORCH_VERSION = "2.13.0"
READY_STAMP = f"heretic-llm=={HERETIC_VERSION} torch=={TORCH_VERSION}\n"
STUDY_NAME = "heretic"

# Settings the driver owns: the run's inputs, or modes that would make it something else.
MANAGED = frozenset(
    {
        "model", "n_trials", "seed", "study_checkpoint_dir", "export_strategy",
        "good_prompts", "bad_prompts", "good_evaluation_prompts", "bad_evaluation_prompts",
        "evaluate_model", "reproduce", "collect_reproducibles",
    }
)  # fmt: skip
DEFAULTS: dict[str, Any] = {"batch_size": 16}

# Heretic's main entry, with the thread count applied to torch before anything runs.
LAUNCH = (
    "import os, torch\n"
    "n = int(os.environ['OMP_NUM_THREADS'])\n"
    "torch.set_num_threads(n)\n"
    "torch.set_num_interop_threads(n)\n"
    "from heretic.main import main\n"
    "main()\n"
)

# Reads the journal with the Optuna that wrote it; prints the study as JSON.
DUMP_STUDY = """
import json, sys
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
path = sys.argv[1]
storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
study = optuna.load_study(study_name=sys.argv[2], storage=storage)
iso = lambda d: None if d is None else d.isoformat()
print(json.dumps({"user_attrs": study.user_attrs, "trials": [
    {"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
     "user_attrs": t.user_attrs, "datetime_start": iso(t.datetime_start),
     "datetime_complete": iso(t.datetime_complete)} for t in study.trials]}))
"""

# Writes the reproduce.json Heretic's --reproduce reads, for one trial of the study; prints
# whether Heretic will ask to confirm an environment mismatch (only for non-PyPI/Git installs,
# whose version string it randomizes).
WRITE_REPRODUCE = """
import json, sys
import torch
from heretic.system import get_heretic_version_info, get_requirements_dict
study, number, out = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
trial = next(t for t in study["trials"] if t["number"] == number)
attrs = trial["user_attrs"]
settings = json.loads(study["user_attrs"]["settings"])
settings["export_strategy"] = "merge"
info = get_heretic_version_info()
data = {
    "version": "2",
    "environment": {
        "heretic": {"version": info.version, "is_standard_pypi": info.is_standard_pypi,
                    "metadata": info.metadata},
        "pytorch_version": torch.__version__,
        "requirements": get_requirements_dict(),
    },
    "settings": settings,
    "parameters": {"direction_index": attrs["direction_index"],
                   "abliteration_parameters": attrs["parameters"]},
    "metrics": {k: attrs[k] for k in ("kl_divergence", "refusals", "base_refusals",
                                       "n_bad_prompts")},
    "hashes": {},
}
open(out, "w").write(json.dumps(data, indent=2))
print(json.dumps({"confirm": info.metadata.get("type") not in ("pypi", "git")}))
"""

NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish|Temporary failure in name resolution|"
    r"Max retries exceeded|Network is unreachable|ConnectTimeout|ProxyError|"
    r"No matching distribution found|Could not find a version"
)


class HereticUnavailable(RuntimeError):
    """Heretic's virtual environment could not be created (typically: no route to PyPI)."""


class HereticFailed(RuntimeError):
    """Heretic ran but did not do what it was asked."""


@dataclass
class HereticTrial:
    """One trial of Heretic's study, as Heretic recorded it."""

    number: int  # Optuna's trial number, 0-based
    index: int | None  # Heretic's "Trial N", 1-based
    state: str
    params: dict[str, Any]  # Optuna's sampled parameters
    refusals: int | None
    kl_divergence: float | None
    n_bad_prompts: int | None
    base_refusals: int | None
    direction_index: float | None  # None: per-layer directions
    abliteration: dict[str, dict[str, float]]  # per component, as Heretic applies them
    values: list[float] | None  # Heretic's two objectives (scaled KL, scaled refusals)
    datetime_start: str | None
    datetime_complete: str | None
    duration_s: float | None


@dataclass
class HereticRun:
    """A finished Heretic run and where it left everything."""

    workdir: Path
    model_dir: Path
    python: Path
    config: Path
    checkpoint: Path
    stdout: Path
    stderr: Path
    n_trials: int
    seed: int
    threads: int
    wall_s: float
    settings: dict[str, Any]  # as Heretic stored them in the study
    trials: list[HereticTrial] = field(default_factory=list)

    def trial(self, number: int) -> HereticTrial:
        for t in self.trials:
            if t.number == number:
                return t
        raise KeyError(f"no trial number {number} in {self.checkpoint}")


# --- the virtual environment ---------------------------------------------------------------


def heretic_venv_dir() -> Path:
    """`$ABLITERATE_HERETIC_VENV`, else `heretic-venv` in abliterate's cache directory."""
    return Path(os.environ.get("ABLITERATE_HERETIC_VENV") or cache_root() / "heretic-venv")


def ensure_heretic(venv: Path | None = None) -> Path:
    """The python of a venv holding heretic-llm 1.4.0 on CPU torch 2.13.0, built on first use."""
    venv = Path(venv) if venv is not None else heretic_venv_dir()
    python = venv / "bin" / "python"
    ready = venv / ".heretic-ready"
    if ready.is_file() and ready.read_text() == READY_STAMP:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):
        if ready.is_file() and ready.read_text() == READY_STAMP:
            return python
        log = venv.with_name(venv.name + "-install.log")
        try:
            _build_venv(venv, log)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        ready.write_text(READY_STAMP)
    return python


def _build_venv(venv: Path, log: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--timeout", "60", "--retries", "2"]
    torch, heretic = f"torch=={TORCH_VERSION}", f"heretic-llm=={HERETIC_VERSION}"
    steps = [
        ("python -m venv", [sys.executable, "-m", "venv", str(venv)]),
        (f"pip install {torch}", [*pip, torch]),
        (f"pip install {heretic}", [*pip, torch, heretic]),
        ("import heretic.main", [python, "-c", "import heretic.main"]),
    ]
    with log.open("w") as out:
        for label, command in steps:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise HereticUnavailable(_install_error(venv, log, label))


def _install_error(venv: Path, log: Path, label: str) -> str:
    """One line: what failed, the likely reason, where the full log is."""
    text = log.read_text(errors="replace")
    errors = [ln.strip() for ln in text.splitlines() if ln.startswith("ERROR")]
    last = errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1]
    reason = "PyPI unreachable? " if NETWORK_ERRORS.search(text) else ""
    return f"cannot build Heretic's venv at {venv}: {label} failed: {reason}{last} (log: {log})"


# --- prompts and settings -------------------------------------------------------------------


def read_prompts(source: Sequence[str] | str | Path) -> list[str]:
    """Prompts from a list, a .jsonl file (field `text`) or a text file (one per line)."""
    if not isinstance(source, (str, Path)):
        return [str(p) for p in source]
    path = Path(source)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in lines if line.strip()]
    return [line.strip() for line in lines if line.strip()]


def write_dataset(prompts: Sequence[str], directory: Path) -> dict[str, str]:
    """A local JSON-lines dataset Heretic loads with `load_dataset`; its DatasetSpecification."""
    if not prompts:
        raise ValueError(f"no prompts for {directory.name}")
    directory.mkdir(parents=True, exist_ok=True)
    rows = "".join(json.dumps({"text": p}) + "\n" for p in prompts)
    (directory / "train.jsonl").write_text(rows, encoding="utf-8")
    return {"dataset": str(directory.resolve()), "split": "train", "column": "text"}


def heretic_settings(
    model_dir: Path,
    datasets: Mapping[str, dict[str, str]],
    n_trials: int,
    seed: int,
    checkpoints: Path,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The config.toml contents: driver defaults, then `extra`, then what the driver owns."""
    extra = dict(extra or {})
    owned = sorted(MANAGED & extra.keys())
    if owned:
        raise ValueError(f"extra may not set {owned}: run_heretic sets them")
    settings = {**DEFAULTS, **{k: v for k, v in extra.items() if v is not None}}
    settings.update(
        model=str(Path(model_dir).resolve()),
        n_trials=n_trials,
        seed=seed,
        study_checkpoint_dir=str(checkpoints.resolve()),
        export_strategy="merge",
        **datasets,
    )
    return settings


# --- running Heretic ------------------------------------------------------------------------


def heretic_env(threads: int, workdir: Path) -> dict[str, str]:
    """The environment Heretic runs in: offline, `threads` threads, numbered-menu mode."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HERETIC_") and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    count = str(threads)
    env.update(
        OMP_NUM_THREADS=count,
        MKL_NUM_THREADS=count,
        OPENBLAS_NUM_THREADS=count,
        RAYON_NUM_THREADS=count,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_CACHE=str((workdir / "hf-datasets-cache").resolve()),
        KAGGLE_KERNEL_RUN_TYPE="Batch",  # Heretic's is_notebook(): menus read with input()
        COLUMNS="120",
        PYTHONUNBUFFERED="1",
    )
    return env


def launch(
    python: Path, args: list[str], answers: list[str], cwd: Path, env: dict[str, str], name: str
) -> tuple[int, float, Path, Path]:
    """Run Heretic in `cwd` with `answers` on stdin; exit status, wall seconds, log paths."""
    stdin = cwd / f"{name}.stdin"
    stdout, stderr = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
    stdin.write_text("".join(a + "\n" for a in answers))
    command = [str(python), "-c", LAUNCH, *args]
    start = time.perf_counter()
    with stdin.open() as i, stdout.open("w") as o, stderr.open("w") as e:
        code = subprocess.run(command, stdin=i, stdout=o, stderr=e, cwd=cwd, env=env).returncode
    return code, time.perf_counter() - start, stdout, stderr


def log_tail(*paths: Path, lines: int = 12) -> str:
    text = "\n".join(p.read_text(errors="replace") for p in paths if p.is_file())
    return "\n".join(text.strip().splitlines()[-lines:])


def run_heretic(
    model_dir: str | Path,
    harmful_train: Sequence[str] | str | Path,
    harmless_train: Sequence[str] | str | Path,
    harmful_eval: Sequence[str] | str | Path,
    harmless_eval: Sequence[str] | str | Path,
    n_trials: int,
    workdir: str | Path,
    threads: int = 1,
    extra: dict[str, Any] | None = None,
    seed: int = 0,
) -> HereticRun:
    """Heretic's full search on a local model, with no questions asked. `workdir` must not hold
    a study already (Heretic would ask whether to resume it)."""
    python = ensure_heretic()
    workdir = Path(workdir).resolve()
    checkpoints = workdir / "checkpoints"
    if list(checkpoints.glob("*.jsonl")):
        raise FileExistsError(f"{checkpoints} already holds a Heretic study; use a new workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    sources = {
        "bad_prompts": harmful_train,
        "good_prompts": harmless_train,
        "bad_evaluation_prompts": harmful_eval,
        "good_evaluation_prompts": harmless_eval,
    }
    datasets = {
        key: write_dataset(read_prompts(src), workdir / "prompts" / key)
        for key, src in sources.items()
    }
    settings = heretic_settings(Path(model_dir), datasets, n_trials, seed, checkpoints, extra)
    config = workdir / "config.toml"
    config.write_text(tomli_w.dumps(settings))
    answers = [str(k) for k in range(n_trials + 2, 2, -1)]  # the first accepted: "Exit program"
    env = heretic_env(threads, workdir)
    code, wall, stdout, stderr = launch(python, [], answers, workdir, env, "heretic")
    journals = sorted(checkpoints.glob("*.jsonl"))
    if code != 0 or not journals:
        raise HereticFailed(f"Heretic exited {code}, no study:\n{log_tail(stdout, stderr)}")
    run = HereticRun(
        workdir, Path(model_dir).resolve(), python, config, journals[0], stdout, stderr,
        n_trials, seed, threads, wall, {},
    )  # fmt: skip
    study = read_study(python, run.checkpoint, workdir)
    run.settings = json.loads(study["user_attrs"]["settings"])
    run.trials = [parse_trial(t) for t in study["trials"]]
    complete = [t for t in run.trials if t.state == "COMPLETE"]
    if len(complete) != n_trials:
        tail = log_tail(stdout, stderr)
        raise HereticFailed(f"{len(complete)} of {n_trials} trials complete:\n{tail}")
    save_run(run)
    return run


# --- the study ------------------------------------------------------------------------------


def read_study(python: Path, journal: Path, workdir: Path) -> dict[str, Any]:
    """The study in `journal` as plain JSON (user attributes, trials), read in Heretic's venv."""
    env = heretic_env(1, workdir)
    done = subprocess.run(
        [str(python), "-c", DUMP_STUDY, str(journal), STUDY_NAME],
        capture_output=True, text=True, env=env, cwd=workdir,
    )  # fmt: skip
    if done.returncode != 0:
        raise HereticFailed(f"cannot read {journal}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def parse_trial(raw: Mapping[str, Any]) -> HereticTrial:
    attrs = raw["user_attrs"]
    start, end = raw["datetime_start"], raw["datetime_complete"]
    duration = None
    if start and end:
        duration = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return HereticTrial(
        number=raw["number"],
        index=attrs.get("index"),
        state=raw["state"],
        params=raw["params"],
        refusals=attrs.get("refusals"),
        kl_divergence=attrs.get("kl_divergence"),
        n_bad_prompts=attrs.get("n_bad_prompts"),
        base_refusals=attrs.get("base_refusals"),
        direction_index=attrs.get("direction_index"),
        abliteration=attrs.get("parameters", {}),
        values=raw["values"],
        datetime_start=start,
        datetime_complete=end,
        duration_s=duration,
    )


def pareto_front(run: HereticRun) -> list[HereticTrial]:
    """Heretic's front, by its own rule: complete trials sorted by (refusals, KL), each kept
    when its KL is below every kept one's. Fewest refusals first."""
    done = [
        t
        for t in run.trials
        if t.state == "COMPLETE" and t.refusals is not None and t.kl_divergence is not None
    ]
    front: list[HereticTrial] = []
    lowest = float("inf")
    for t in sorted(done, key=lambda t: (t.refusals, t.kl_divergence)):
        if t.kl_divergence is not None and t.kl_divergence < lowest:
            lowest = t.kl_divergence
            front.append(t)
    return front


def save_run(run: HereticRun) -> Path:
    """`WORKDIR/run.json`: the run's record, loadable with `load_run`."""
    path = run.workdir / "run.json"
    path.write_text(json.dumps(asdict(run), indent=2, default=str))
    return path


def load_run(workdir: str | Path) -> HereticRun:
    data = json.loads((Path(workdir) / "run.json").read_text())
    paths = ("workdir", "model_dir", "python", "config", "checkpoint", "stdout", "stderr")
    data.update({k: Path(data[k]) for k in paths})
    data["trials"] = [HereticTrial(**t) for t in data["trials"]]
    return HereticRun(**data)


# --- export ---------------------------------------------------------------------------------


def export_heretic_trial(run: HereticRun, trial_number: int, out_dir: str | Path) -> Path:
    """A merged Hugging Face model of Optuna trial `trial_number`, saved by Heretic itself
    (its --reproduce mode: the trial's settings and parameters, then "Save the model")."""
    trial = run.trial(trial_number)
    if trial.state != "COMPLETE":
        raise ValueError(f"trial {trial_number} is {trial.state}, not COMPLETE")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    scratch = run.workdir / "exports" / f"trial-{trial_number}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    study = read_study(run.python, run.checkpoint, run.workdir)
    (scratch / "study.json").write_text(json.dumps(study))
    reproduce = scratch / "reproduce.json"
    env = heretic_env(run.threads, run.workdir)
    args = [str(scratch / "study.json"), str(trial_number), str(reproduce)]
    done = subprocess.run(
        [str(run.python), "-c", WRITE_REPRODUCE, *args],
        capture_output=True, text=True, env=env, cwd=scratch,
    )  # fmt: skip
    if done.returncode != 0:
        raise HereticFailed(f"cannot write {reproduce}: {done.stderr.strip()[-500:]}")
    confirm = json.loads(done.stdout)["confirm"]
    # [environment mismatch: "Attempt anyway"], "Save to a local folder", the folder, "Exit".
    answers = (["1"] if confirm else []) + ["1", str(out_dir), "5"]
    code, _, stdout, stderr = launch(
        run.python, ["--reproduce", str(reproduce)], answers, scratch, env, "export"
    )
    saved = "Model saved to" in stdout.read_text(errors="replace")
    if code != 0 or not saved or not (out_dir / "config.json").is_file():
        raise HereticFailed(
            f"Heretic did not save trial {trial_number}:\n{log_tail(stdout, stderr)}"
        )
    return out_dir


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a local Hugging Face model directory")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--prompts", type=Path, help="harmful/harmless .txt or .jsonl training sets"
    )
    parser.add_argument("--eval", type=Path, help="the same for evaluation (default MODEL/eval)")
    parser.add_argument("--limit", type=int, help="use the first N prompts of each set")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-response-length", type=int, default=16)
    parser.add_argument("--export-front", type=Path, help="export the first front trial here")
    args = parser.parse_args(argv)
    sets = [
        find_set(args.prompts or args.model / "prompts", "harmful", "train", args.limit),
        find_set(args.prompts or args.model / "prompts", "harmless", "train", args.limit),
        find_set(args.eval or args.model / "eval", "harmful", "val", args.limit),
        find_set(args.eval or args.model / "eval", "harmless", "val", args.limit),
    ]
    run = run_heretic(
        args.model, *sets, args.trials, args.workdir, args.threads,
        {"max_response_length": args.max_response_length}, seed=args.seed,
    )  # fmt: skip
    front = pareto_front(run)
    summary: dict[str, Any] = {
        "wall_s": round(run.wall_s, 1),
        "checkpoint": str(run.checkpoint),
        "trials": [asdict(t) for t in run.trials],
        "front": [t.number for t in front],
    }
    if args.export_front and front:
        summary["export"] = str(export_heretic_trial(run, front[0].number, args.export_front))
    print(json.dumps(summary, indent=2))


def find_set(directory: Path, name: str, split: str, limit: int | None) -> list[str]:
    """`DIR/NAME.txt`, `DIR/NAME.jsonl` or `DIR/NAME_SPLIT.jsonl` (../shared/data/prompts)."""
    found = [directory / f"{name}.txt", directory / f"{name}.jsonl"]
    found.append(directory / f"{name}_{split}.jsonl")
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no {name} prompt set in {directory}")
    return read_prompts(path)[:limit]


if __name__ == "__main__":
    main()
