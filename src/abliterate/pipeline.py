"""The orchestrator of `abliterate run`: stages in order, each result saved in the run directory.

    1. run directory   resolve it, check that resuming is sound, save the settings
    2. model           load model and tokenizer, find every residual writer
    3. prompt sets     load the four sets, format them as chat turns
    4. directions      load them from the run directory, or compute and save them
    5. base metrics    the unedited model on the evaluation prompts (reference for every trial)
    6. search          Optuna trials until the study holds n_trials complete ones
    7. choice          the Pareto front, and a trial chosen by policy or by the user (CLI)

Stage functions do the work; progress and messages go to an `Events` object, so the library
prints nothing and the CLI decides how things look.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from abliterate import activations
from abliterate import directions as dirmath
from abliterate.config import Settings
from abliterate.edit.check import check_writes
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.plan import Directions, EditParams, plan, strength_table
from abliterate.errors import AbliterateError
from abliterate.eval.evaluate import EvalSettings, Evaluator, Metrics
from abliterate.eval.prefix import PrefixCheck
from abliterate.eval.scorers import MarkerConfig
from abliterate.model import loading
from abliterate.model.arch import Layout, discover
from abliterate.prompts import chat_texts, load_prompt_set
from abliterate.runs import RunDir
from abliterate.search import study as st
from abliterate.search.objective import ObjectiveWeights, kl_score, refusal_score
from abliterate.search.select import Candidate, select_confirmed, with_refusal_rate
from abliterate.search.space import SpaceConfig, suggest, warm_starts

SAMPLES = 5  # responses kept per prompt set in each trial record


@dataclass
class Events:
    """Callbacks from the pipeline; every one is optional."""

    message: Callable[[str], None] = lambda _m: None
    progress: Callable[[str, int, int], None] = lambda _s, _d, _t: None
    trial: Callable[[dict, dict], None] = lambda _record, _counts: None


@dataclass
class Session:
    """A loaded model in its run: what `run`, `export` and `chat --trial` work on."""

    settings: Settings
    run_dir: RunDir
    model: Any
    tokenizer: Any
    layout: Layout
    directions: Directions
    editor: WeightEditor
    prompts: dict[str, list[str]] = field(default_factory=dict)
    evaluator: Evaluator | None = None
    base: Metrics | None = None
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    batch_size: int = 16

    @property
    def base_refusal_rate(self) -> float:
        assert self.base is not None
        return self.base["refusal_rate"]


# -- 1-4: run directory, model, prompts, directions ------------------------------------------


def resolve_prompt_defaults(settings: Settings, root: str | None = None) -> Settings:
    """A model directory that carries `prompts/` and `eval/` (the organism) supplies the prompt
    sets that were not set explicitly. `root` defaults to the model itself."""
    root = Path(root or settings.model)
    files = {
        "harmful_prompts": root / "prompts" / "harmful.txt",
        "harmless_prompts": root / "prompts" / "harmless.txt",
        "harmful_eval_prompts": root / "eval" / "harmful.txt",
        "harmless_eval_prompts": root / "eval" / "harmless.txt",
    }
    updates: dict[str, Any] = {
        key: {"dataset": str(path), "split": "train", "column": "text"}
        for key, path in files.items()
        if key not in settings.model_fields_set and path.is_file()
    }
    probes = root / "eval" / "capability.jsonl"
    if settings.capability_prompts is None and probes.is_file():
        updates["capability_prompts"] = str(probes)
    if not updates:
        return settings
    return Settings.model_validate({**settings.model_dump(), **updates})


PROMPT_SETS = (
    "harmful_prompts",
    "harmless_prompts",
    "harmful_eval_prompts",
    "harmless_eval_prompts",
)


def load_prompts(settings: Settings, keys: tuple[str, ...] = PROMPT_SETS) -> dict[str, list[str]]:
    sets = {}
    for key in keys:
        spec = getattr(settings, key)
        sets[key] = load_prompt_set(spec.dataset, spec.split, spec.column, key)
    return sets


def load_model(settings: Settings, events: Events) -> loading.Loaded:
    return loading.load(
        settings.model,
        dtypes=settings.dtypes,
        device_map=settings.device_map,
        max_memory=settings.max_memory,
        offload_folder=settings.offload_folder,
        quantization=settings.quantization,
        trust_remote_code=settings.trust_remote_code,
        chat_template=settings.chat_template,
        on_message=events.message,
    )


def batch_size(settings: Settings, model) -> int:
    """The configured batch size, or for 0 a size that suits the device."""
    if settings.batch_size:
        return settings.batch_size
    device = model.get_input_embeddings().weight.device
    if device.type != "cuda":
        # 32 rows: on a CPU, decoding re-reads every weight per step, and 32 rows share that
        # read (64 prompts x 24 tokens of a 0.5 B model: 60 s at 16 rows, 42 s at 32 or 64).
        return min(settings.max_batch_size, 32)
    free, _total = torch.cuda.mem_get_info(device)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Generation memory grows with batch x length x layers x hidden; this stays well inside it.
    per_row = max(
        1,
        4
        * model.config.get_text_config().num_hidden_layers
        * model.get_input_embeddings().weight.shape[1]
        * 1024
        * 2,
    )
    fit = max(1, int(0.5 * max(free - 0.1 * params, 0) // per_row))
    return max(1, min(settings.max_batch_size, 2 ** (fit.bit_length() - 1)))


def counter(events: Events, stage: str, total: int) -> Callable[[int], None]:
    """A per-batch callback that reports the cumulative progress of one stage."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        events.progress(stage, done, total)

    return tick


def compute_directions(
    model,
    tokenizer,
    layout: Layout,
    settings: Settings,
    prompts: dict[str, list[str]],
    events: Events,
    bs: int,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Residual means of both sets, refusal directions, benign bases and per-layer statistics."""
    residuals = {}
    for key in ("harmful_prompts", "harmless_prompts"):
        texts = chat_texts(tokenizer, prompts[key], settings.system_prompt)
        tick = counter(events, f"residuals ({key.split('_')[0]})", len(texts))
        residuals[key] = activations.collect(
            model,
            tokenizer,
            layout,
            texts,
            settings.residual_stream,
            bs,
            settings.winsorize_quantile,
            keep_full=True,
            on_batch=tick,
        )
    return direction_tensors(residuals["harmful_prompts"], residuals["harmless_prompts"], settings)


def direction_tensors(
    bad: activations.Residuals, good: activations.Residuals, settings: Settings
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    lead = dirmath.uninformative_prefix(bad.mean - good.mean)
    raw = dirmath.mean_difference(bad.mean[lead:], good.mean[lead:])
    final = dirmath.project_out(raw, good.mean[lead:]) if settings.orthogonalize_direction else raw
    raw, final = dirmath.fill_prefix(raw, lead), dirmath.fill_prefix(final, lead)  # (L + 1, d)
    tensors = {
        "harmful_mean": bad.mean.float(),
        "harmless_mean": good.mean.float(),
        "mean_difference": raw.float(),
        "directions": final.float(),
        **layer_statistics(bad, good, raw),
    }
    k = settings.benign_subspace_rank
    if k > 0:
        bases = []
        for pos in range(1, good.full.shape[1]):
            basis = dirmath.benign_basis(
                good.full[:, pos].float(), k, settings.direction_variance_floor
            )
            bases.append(torch.cat([basis, basis.new_zeros(k - basis.shape[0], basis.shape[1])]))
        tensors["benign"] = torch.stack(bases).float()  # (L, k, d)
    tensors.update(plot_samples(bad, good))
    meta = {
        "stream": settings.residual_stream,
        "orthogonalize_direction": settings.orthogonalize_direction,
        "benign_subspace_rank": k,
        "direction_variance_floor": settings.direction_variance_floor,
        "winsorize_quantile": settings.winsorize_quantile,
        "n_harmful": bad.count,
        "n_harmless": good.count,
        "positions": "0 = embedding output, l + 1 = decoder layer l",
        "uninformative_positions": lead,
    }
    return tensors, meta


def layer_statistics(
    bad: activations.Residuals, good: activations.Residuals, raw: Tensor
) -> dict[str, Tensor]:
    """Per position: |mean difference|, cosine of the two means, and the separation of the
    two sets along the direction (difference of projected means over pooled std)."""
    diff_norm = torch.linalg.vector_norm(bad.mean - good.mean, dim=-1)
    cos = torch.nn.functional.cosine_similarity(bad.mean, good.mean, dim=-1)
    pb = torch.einsum("npd,pd->np", bad.full.float(), raw.float())
    pg = torch.einsum("npd,pd->np", good.full.float(), raw.float())
    pooled = ((pb.var(0) + pg.var(0)) / 2).clamp_min(1e-12).sqrt()
    return {
        "mean_difference_norm": diff_norm.float(),
        "means_cosine": cos.float(),
        "separation": ((pb.mean(0) - pg.mean(0)) / pooled).float(),
    }


def plot_samples(
    bad: activations.Residuals, good: activations.Residuals, n_layers: int = 4, n_rows: int = 200
) -> dict[str, Tensor]:
    """Residuals of a few evenly spaced layers, for the report's 2-D projections."""
    positions = bad.full.shape[1]
    picks = sorted({round(x) for x in torch.linspace(1, positions - 1, n_layers).tolist()})
    idx = torch.tensor(picks)
    return {
        "plot_positions": idx,
        "plot_harmful": bad.full[:n_rows, idx].half(),
        "plot_harmless": good.full[:n_rows, idx].half(),
    }


def directions_from_tensors(tensors: dict[str, Tensor]) -> Directions:
    d = tensors["directions"].float()
    return Directions(per_layer=d[1:], embedding=d[0], benign=tensors.get("benign"))


def open_session(
    settings: Settings, events: Events | None = None, new_run: bool = False, for_search: bool = True
) -> Session:
    """Stages 1-4. Also used by export and chat, which only need the directions."""
    events = events or Events()
    settings = resolve_prompt_defaults(settings)
    run_dir = RunDir.for_settings(settings)
    loading.resolve(settings.model, settings.trust_remote_code)  # a missing model first
    settings.check_files()
    if for_search:
        run_dir.check(settings, new_run=new_run)
        if settings.storage:
            join_study(settings, run_dir)
    # Prompt sets before the model: a bad path or an offline hub id should not cost a load.
    prompts = load_prompts(settings)
    loaded = load_model(settings, events)
    model, tokenizer = loaded.model, loaded.tokenizer
    if "embed" in settings.components and untie_embeddings(model):
        events.message(
            "input and output embeddings were tied; untied them so that editing the "
            "embedding leaves the output head as it was"
        )
    layout = discover(model)
    for warning in layout.warnings:
        events.message(f"[yellow]warning:[/yellow] {warning}")
    if for_search:
        run_dir.commit(settings, new_run=new_run)
    bs = batch_size(settings, model)
    tensors = obtain_directions(settings, run_dir, model, tokenizer, layout, prompts, events, bs)
    directions = directions_from_tensors(tensors)
    _check_shape(directions, layout)
    editor = WeightEditor(
        layout, settings.row_normalization, settings.full_normalization_rank, model=model
    )
    if for_search:
        # A writer that discovery missed would make every trial a partial edit: say so loudly.
        problems = check_writes(model, layout, editor)
        for problem in problems:
            events.message(f"[yellow]warning:[/yellow] {problem}")
        if not problems:
            n = len(layout.writers)
            events.message(f"writer check: every layer's residual write is edited ({n} weights)")
    return Session(
        settings,
        run_dir,
        model,
        tokenizer,
        layout,
        directions,
        editor,
        prompts,
        weights=ObjectiveWeights.from_settings(settings),
        batch_size=bs,
    )


def join_study(settings: Settings, run_dir: RunDir) -> None:
    """Workers of one shared study must search the same thing: the first publishes its settings,
    the others are checked against them."""
    from abliterate.runs import describe_differences, differences, settings_dict

    study, lock = open_study_for(settings, run_dir)
    with lock():
        saved = st.get_shared(study, "settings")
        if saved is None:
            st.set_shared(study, "settings", settings_dict(settings))
            return
    diff = differences(saved, settings)
    if diff:
        raise AbliterateError(
            f"study {settings.study_name!r} in {settings.storage} was started with other "
            f"settings: {describe_differences(saved, settings, diff)}; use the same settings "
            "on every worker, or another --study-name"
        )


def obtain_directions(
    settings: Settings,
    run_dir: RunDir,
    model,
    tokenizer,
    layout: Layout,
    prompts: dict[str, list[str]],
    events: Events,
    bs: int,
) -> dict[str, Tensor]:
    """The run's directions, from the first source that has them: the run directory, the shared
    study (workers on other machines), a --direction-file, or computed now. With a shared
    storage the first worker computes them under the study lock and publishes them, so every
    worker of a study edits with the same directions."""
    stored = run_dir.load_directions()
    if stored is not None:
        events.message(f"directions loaded from {run_dir.directions_file}")
        return stored[0]

    def make() -> tuple[dict[str, Tensor], dict]:
        if settings.direction_file:
            events.message(f"directions from {settings.direction_file}")
            return _external_directions(settings.direction_file, layout)
        return compute_directions(model, tokenizer, layout, settings, prompts, events, bs)

    if settings.storage:
        study, lock = open_study_for(settings, run_dir)
        with lock():
            shared = st.get_shared(study, "directions")
            if shared is not None:
                events.message("directions loaded from the shared study")
                tensors, meta = decode_tensors(shared["tensors"]), shared["meta"]
            else:
                tensors, meta = make()
                essential = {k: v for k, v in tensors.items() if not k.startswith("plot_")}
                st.set_shared(
                    study, "directions", {"tensors": encode_tensors(essential), "meta": meta}
                )
    else:
        tensors, meta = make()
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.save_directions(tensors, meta)
    return tensors


def encode_tensors(tensors: dict[str, Tensor]) -> str:
    from safetensors.torch import save

    return base64.b64encode(save({k: v.contiguous() for k, v in tensors.items()})).decode()


def decode_tensors(text: str) -> dict[str, Tensor]:
    from safetensors.torch import load

    return load(base64.b64decode(text))


def _external_directions(path: str, layout: Layout) -> tuple[dict[str, Tensor], dict]:
    """Directions from `abliterate directions`: a per-stream file (one direction per layer) or
    the selected one (one direction, used at every layer)."""
    from abliterate.runs import read_directions

    p = Path(path)
    if not p.is_file():
        raise AbliterateError(f"direction file {path} does not exist")
    tensors, meta = read_directions(p)
    if "directions" in tensors:
        return tensors, meta
    if "direction" in tensors:
        v = tensors["direction"].float()
        v = v / v.norm()
        return {"directions": v.expand(layout.n_layers + 1, -1).clone()}, {**meta, "single": True}
    raise AbliterateError(f"{path} holds no 'directions' or 'direction' tensor")


def _check_shape(directions: Directions, layout: Layout) -> None:
    L, d = directions.per_layer.shape
    if (L, d) != (layout.n_layers, layout.hidden_size):
        raise AbliterateError(
            f"directions have shape ({L}, {d}) but the model has {layout.n_layers} layers of "
            f"hidden size {layout.hidden_size}: they belong to another model"
        )


# -- 5: base metrics ------------------------------------------------------------------------------


def eval_settings(settings: Settings, bs: int, search: bool = False) -> EvalSettings:
    """How a model is measured; in a search, over-refusal is answered on a seeded sample."""
    return EvalSettings(
        max_response_length=settings.max_response_length,
        batch_size=bs,
        overrefusal_sample=settings.overrefusal_sample if search else 0,
        overrefusal_response_length=settings.overrefusal_response_length if search else 0,
        sample_seed=settings.seed,
        shared_prefix=settings.shared_prefix,
        system_prompt=settings.system_prompt,
        kl_token_count=settings.kl_token_count,
        markers=MarkerConfig(
            settings.refusal_markers,
            settings.hedge_markers,
            [tuple(p) for p in settings.reasoning_delimiters],
        ),
    )


def prefix_line(check: PrefixCheck) -> str:
    """The log line saying whether prompts share their prefix's computation, and why."""
    if check.used:
        return (
            f"shared prefix: {check.shared_tokens} template tokens computed once per batch "
            f"(next-token KL {check.kl:.1g} against plain batches)"
        )
    return f"shared prefix: off ({check.reason})"


def measure_base(session: Session, events: Events) -> Metrics:
    s = session.settings
    session.evaluator = Evaluator(
        session.model,
        session.tokenizer,
        session.prompts["harmful_eval_prompts"],
        session.prompts["harmless_eval_prompts"],
        eval_settings(s, session.batch_size, search=True),
    )
    events.message(prefix_line(session.evaluator.prefix_check))
    session.base = session.evaluator.evaluate(
        progress=lambda st_, d, t: events.progress(f"base {st_}", d, t)
    )
    if session.base["refusal_rate"] == 0:
        raise AbliterateError(
            "the unedited model refuses none of the harmful evaluation prompts: there is no "
            "refusal behaviour to remove (check the prompt sets, system prompt and markers)"
        )
    record = _metrics_record(session.base, session)
    session.run_dir.save_base(record)
    if session.settings.storage:
        study, _lock = open_study(session)
        st.set_shared(study, "base", record)
    return session.base


def _metrics_record(m: Metrics, session: Session) -> dict:
    return {
        "metrics": m.values,
        "pruned": m.pruned,
        "samples": _samples(m, session.evaluator),
    }


def _samples(m: Metrics, evaluator: Evaluator | None) -> dict[str, list[dict[str, str]]]:
    """The first answers of each set, next to the prompts they answer."""
    out: dict[str, list[dict[str, str]]] = {}
    if evaluator is None:
        return out
    sources = (evaluator.harmful_prompts, evaluator.overrefusal_prompts)
    for key, src, responses in zip(
        ("harmful", "harmless"), sources, (m.harmful_responses, m.harmless_responses), strict=True
    ):
        if responses:
            pairs = zip(src[:SAMPLES], responses[:SAMPLES], strict=True)
            out[key] = [{"prompt": p, "response": r} for p, r in pairs]
    return out


# -- 6: search ------------------------------------------------------------------------------------


def evaluate_params(session: Session, params: EditParams) -> tuple[Metrics, dict[str, float]]:
    """Apply, evaluate, reset. Returns the metrics and the time of each part."""
    assert session.evaluator is not None and session.base is not None
    t0 = time.perf_counter()
    with session.editor.applied(plan(session.layout.writers, session.directions, params)):
        t1 = time.perf_counter()
        metrics = session.evaluator.evaluate(
            prune_kl=session.settings.kl_prune_threshold, fallback=session.base
        )
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    parts = {f"evaluate_{k}": v for k, v in metrics.seconds.items()}
    timing = {"edit": t1 - t0, "evaluate": t2 - t1, **parts, "reset": t3 - t2}
    return metrics, {**timing, "total": t3 - t0}


def trial_record(
    session: Session, number: int, params: EditParams, metrics: Metrics, timing: dict[str, float]
) -> dict:
    rs = refusal_score(metrics.values, session.base_refusal_rate, session.weights)
    ks = kl_score(metrics["kl"], session.weights)
    return {
        "number": number,
        "params": params.to_dict(),
        "metrics": metrics.values,
        "refusal_score": rs,
        "kl_score": ks,
        "pruned": metrics.pruned,
        "seconds": {k: round(v, 4) for k, v in timing.items()},
        "strengths": strength_table(session.layout.n_layers, params),
        "samples": _samples(metrics, session.evaluator),
    }


def space_config(session: Session) -> SpaceConfig:
    available = set(session.layout.components())
    comps = tuple(c for c in session.settings.components if c in available)
    return SpaceConfig.from_settings(session.settings, session.layout.n_layers, comps)


def open_study_for(settings: Settings, run_dir: RunDir):
    """The run's study and its lock (see search/study.py)."""
    storage = st.open_storage(settings.storage, run_dir.journal_file)
    study = st.open_study(storage, settings.study_name)
    lock = partial(st.study_lock, settings.storage, run_dir.lock_file, settings.study_name)
    return study, lock


def open_study(session: Session):
    return open_study_for(session.settings, session.run_dir)


def search(session: Session, events: Events) -> None:
    """Run trials until the study holds `n_trials` complete ones (counting other workers')."""
    s = session.settings
    study, lock = open_study(session)
    sync_trial_files(session, study)
    space = space_config(session)
    starts = warm_starts(space, tuple(s.warm_starts))
    if st.enqueue_once(study, starts, s.n_trials, lock):
        events.message(
            f"warm start: {min(len(starts), s.n_trials)} flat edits (strength 1 on every layer, "
            f"direction at depth {', '.join(f'{f:.0%}' for f in s.warm_starts)}) come first"
        )
    while True:
        trial = st.claim(study, s.n_trials, s.seed, s.startup_trials, lock)
        if trial is None:
            # The study is full, but other workers may still be running trials: wait for them
            # (or for their heartbeats to go stale and their trials to come back to the queue),
            # so that every worker chooses from the same, complete set of trials.
            if st.counts(study)["complete"] >= s.n_trials:
                break
            time.sleep(st.POLL_SECONDS)
            continue
        try:
            with st.heartbeat(trial):
                params = suggest(trial, space)
                metrics, timing = evaluate_params(session, params)
        except BaseException:  # the edit is already undone (editor.applied)
            st.abandon(study, trial)
            raise
        record = trial_record(session, trial.number, params, metrics, timing)
        trial.set_user_attr("record", {k: v for k, v in record.items() if k != "samples"})
        trial.set_user_attr("samples", record["samples"])
        study.tell(trial, [record["refusal_score"], record["kl_score"]])
        session.run_dir.save_trial(record)
        events.trial(record, st.counts(study))
    sync_trial_files(session, study)


def sync_trial_files(session: Session, study) -> None:
    """Write trial records that exist in the study but not on disk (other workers' trials, or a
    worker killed between finishing a trial and writing its file)."""
    have = set(session.run_dir.trial_numbers())
    for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,)):
        if t.number not in have and "record" in t.user_attrs:
            session.run_dir.save_trial(
                {**t.user_attrs["record"], "samples": t.user_attrs.get("samples", {})}
            )


# -- 7: choice ------------------------------------------------------------------------------------


def candidate_from_record(record: dict) -> Candidate:
    """The trial as the choice sees it: re-measured figures (see `confirm_choice`) win."""
    m = record["metrics"]
    cand = Candidate(
        record["number"], record["refusal_score"], record["kl_score"], m["refusal_rate"], m["kl"]
    )
    return _confirmed(cand, record.get("confirmed"))


def _confirmed(cand: Candidate, confirmed: dict | None) -> Candidate:
    if not confirmed:
        return cand
    return replace(
        cand, refusal_rate=confirmed["refusal_rate"], refusal_score=confirmed["refusal_score"]
    )


def with_confirmations(records: dict[int, dict], confirmed: dict[str, dict]) -> dict[int, dict]:
    """Trial records with their re-measured figures (from confirmed.json or the study)."""
    return {n: {**r, "confirmed": confirmed[str(n)]} if str(n) in confirmed else r
            for n, r in records.items()}  # fmt: skip


def confirm_choice(
    session: Session, study, cands: list[Candidate], policy: str, events: Events
) -> Candidate:
    """Choose by `policy`, re-measuring the picked trials with longer answers first (see
    `select_confirmed`); what was re-measured is saved in the run directory and the study."""
    s = session.settings
    assert session.evaluator is not None
    length = s.confirm_response_length or 2 * s.max_response_length

    def confirm(c: Candidate) -> Candidate:
        params = EditParams.from_dict(session.run_dir.load_trial(c.number)["params"])
        with session.editor.applied(plan(session.layout.writers, session.directions, params)):
            rate = session.evaluator.harmful_refusal_rate(length)
        again = with_refusal_rate(c, rate, session.base_refusal_rate)
        events.message(
            f"re-measured trial {c.number} with {length}-token answers: refusals "
            f"{c.refusal_rate:.2f} -> {again.refusal_rate:.2f}"
        )
        return again

    chosen, confirmed = select_confirmed(cands, policy, confirm, s.confirm_trials)
    if confirmed:
        entries = {
            str(n): {
                "refusal_rate": c.refusal_rate,
                "refusal_score": c.refusal_score,
                "response_length": length,
            }
            for n, c in confirmed.items()
        }
        session.run_dir.save_confirmed({**session.run_dir.load_confirmed(), **entries})
        st.set_shared(study, "confirmed", {**(st.get_shared(study, "confirmed") or {}), **entries})
    if s.confirm_trials and not policy.startswith("trial:") and chosen.number not in confirmed:
        events.message(f"trial {chosen.number} was not re-measured: confirm_trials spent")
    return chosen


def record_choice(run_dir: RunDir, number: int, policy: str) -> None:
    """Remember the chosen trial (the report marks it)."""
    run_dir.save_choice(number, policy)


def read_base(run_dir: RunDir) -> dict | None:
    path = run_dir.path / "base.json"
    return json.loads(path.read_text()) if path.is_file() else None


def candidates(study) -> list[Candidate]:
    """Every finished trial, with refusal rates re-measured before a choice where there are."""
    out = []
    confirmed = st.get_shared(study, "confirmed") or {}
    for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,)):
        rec = t.user_attrs.get("record", {})
        m = rec.get("metrics", {})
        cand = Candidate(
            t.number, t.values[0], t.values[1], m.get("refusal_rate", 1.0), m.get("kl", t.values[1])
        )
        out.append(_confirmed(cand, confirmed.get(str(t.number))))
    return out
