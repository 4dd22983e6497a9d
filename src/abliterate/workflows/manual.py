"""The manual workflow, as library functions behind `abliterate directions` and `abliterate apply`.

`find_directions`: candidate directions for every layer and stream, scored by intervention, saved
as directions.json, safetensors (one run-compatible file per stream, and the selected
direction) and plots. `apply_direction`: the one-shot orthogonalization of Labonne's article
with one chosen direction (embedding, every attention output, every MLP down projection), then
the same export as `abliterate run`.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from abliterate import activations, analysis
from abliterate import directions as dirmath
from abliterate.config import STREAMS, Settings
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import Directions, EditParams, plan
from abliterate.errors import AbliterateError
from abliterate.eval import kl as kl_mod
from abliterate.eval.evaluate import Evaluator
from abliterate.events import Events, counter
from abliterate.export.api import Exported, export_trial, protected_paths
from abliterate.guard import check_output
from abliterate.model import loading
from abliterate.model.arch import discover
from abliterate.prompts import chat_texts
from abliterate.report.plots import candidate_scores
from abliterate.search.record import TrialMetrics, TrialRecord
from abliterate.stages.base import eval_settings
from abliterate.stages.directions import direction_tensors
from abliterate.stages.session import batch_size, load_model, load_prompts, resolve_prompt_defaults


def _residual_pair(settings, model, tok, layout, prompts, stream: str, bs: int, events) -> tuple:
    """Residuals of the harmful and the harmless direction prompts at every layer of `stream`."""
    pair = []
    for key in ("harmful_prompts", "harmless_prompts"):
        texts = chat_texts(tok, prompts[key], settings.system_prompt)
        tick = counter(events, f"residuals {stream} ({key.split('_')[0]})", len(texts))
        found = activations.collect(
            model, tok, layout, texts, stream, bs, settings.winsorize_quantile,
            keep_full=True, on_batch=tick,
        )  # fmt: skip
        pair.append(found)
    return tuple(pair)


@dataclass
class DirectionsResult:
    candidates: list[analysis.DirectionCandidate]
    selected: analysis.DirectionCandidate | None
    output: Path


def find_directions(
    settings: Settings,
    output: Path,
    streams=STREAMS,
    n_eval: int = 32,
    kl_threshold: float = 0.1,
    events: Events | None = None,
) -> DirectionsResult:
    events = events or Events()
    settings = resolve_prompt_defaults(settings)
    # Everything that can be wrong with the input, before the model loads.
    loading.resolve(settings.model, settings.trust_remote_code)
    settings.check_files()
    prompts = load_prompts(settings)
    loaded = load_model(settings, events)
    model, tok = loaded.model, loaded.tokenizer
    layout = discover(model)
    bs = batch_size(settings, model)
    residuals = {
        stream: _residual_pair(settings, model, tok, layout, prompts, stream, bs, events)
        for stream in streams
    }
    harmful = chat_texts(tok, prompts["harmful_eval_prompts"][:n_eval], settings.system_prompt)
    harmless = chat_texts(tok, prompts["harmless_eval_prompts"][:n_eval], settings.system_prompt)
    markers = tuple(settings.refusal_markers)
    tokens, base_refusal = analysis.refusal_tokens(model, tok, harmful, bs, markers)
    probe = analysis.Probe(
        harmful,
        harmless,
        tokens,
        kl_mod.reference(model, tok, harmless, 1, bs),
        base_refusal,
        analysis.log_odds(analysis.first_token_logits(model, tok, harmful, bs), tokens),
        settings.max_response_length,
        bs,
        markers,
    )
    cands = analysis.analyse(
        model, tok, layout, residuals, probe, kl_threshold, progress=events.progress
    )
    ranked = sorted((c for c in cands if c.rank), key=lambda c: c.rank or 0)
    selected = ranked[0] if ranked else None
    output.mkdir(parents=True, exist_ok=True)
    _save(output, settings, residuals, cands, selected, probe, tok)
    return DirectionsResult(cands, selected, output)


def _save(output: Path, settings: Settings, residuals, cands, selected, probe, tok) -> None:
    for stream, (bad, good) in residuals.items():
        tensors, meta = direction_tensors(
            bad, good, settings.model_copy(update={"residual_stream": stream})
        )
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(output / f"directions-{stream}.safetensors"),
            metadata={"abliterate": json.dumps(meta)},
        )
    if selected is not None:
        bad, good = residuals[selected.stream]
        harmful, harmless = bad.mean[selected.layer + 1].float(), good.mean[selected.layer + 1]
        diff = harmful - harmless.float()
        save_file(
            {"direction": dirmath.mean_difference(harmful, harmless.float()), "difference": diff},
            str(output / "selected.safetensors"),
            metadata={
                "abliterate": json.dumps({"stream": selected.stream, "layer": selected.layer})
            },
        )
    report = {
        "model": settings.model,
        "refusal_tokens": [tok.decode([t]) for t in probe.refusal_tokens],
        "base": {"refusal_rate": probe.base_refusal, "refusal_log_odds": probe.base_log_odds},
        "held_out": {"harmful": len(probe.harmful_texts), "harmless": len(probe.harmless_texts)},
        "selected": selected.as_dict() if selected else None,
        "candidates": [c.as_dict() for c in cands],
    }
    (output / "directions.json").write_text(json.dumps(report, indent=2, default=_nan))
    _plots(output, cands)


def _nan(x):  # json cannot write NaN portably
    return None


def _plots(output: Path, cands: list[analysis.DirectionCandidate]) -> None:
    plots = output / "plots"
    plots.mkdir(exist_ok=True)
    for stream in sorted({c.stream for c in cands}):
        fig = candidate_scores([c for c in cands if c.stream == stream], stream)
        fig.savefig(plots / f"scores-{stream}.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)


def load_direction(path: str | Path, layer: int | None = None) -> Tensor:
    """A unit direction from `selected.safetensors` ("direction") or from a per-stream or run
    file ("directions", (L + 1, d), position layer + 1)."""
    p = Path(path)
    if not p.is_file():
        raise AbliterateError(f"direction file {path} does not exist")
    tensors = load_file(str(p))
    if "direction" in tensors:
        v = tensors["direction"]
    elif "directions" in tensors:
        if layer is None:
            raise AbliterateError(f"{path} holds a direction per layer: pass --layer")
        v = tensors["directions"][layer + 1]
    else:
        raise AbliterateError(f"{path} holds no 'direction' or 'directions' tensor")
    return (v / v.norm()).float()


def one_direction_params(n_layers: int, weight: float, components: list[str]) -> EditParams:
    """The same strength on every layer of the chosen components (the article's edit)."""
    kernels = {
        c: Kernel(max_weight=weight, peak=0.0, min_weight=weight, span=float(n_layers))
        for c in ("attn_out", "mlp_down")
        if c in components
    }
    return EditParams(
        scope="per_layer", kernels=kernels, embed_weight=weight if "embed" in components else 0.0
    )


def compute_direction(
    settings: Settings, layer: int, stream: str, model, tok, layout, events: Events
) -> Tensor:
    prompts = load_prompts(settings)
    bs = batch_size(settings, model)
    res = [
        activations.collect(
            model,
            tok,
            layout,
            chat_texts(tok, prompts[k], settings.system_prompt),
            stream,
            bs,
            settings.winsorize_quantile,
            on_batch=counter(events, f"residuals ({k.split('_')[0]})", len(prompts[k])),
        )
        for k in ("harmful_prompts", "harmless_prompts")
    ]
    harmful, harmless = res[0].mean[layer + 1].float(), res[1].mean[layer + 1].float()
    direction = dirmath.mean_difference(harmful, harmless)  # the same math as a run's
    if settings.orthogonalize_direction:
        direction = dirmath.project_out(direction, harmless)
    return direction


def _chosen_direction(settings, layer, stream, direction_file, model, tok, layout, events):
    """The direction to remove: read from `direction_file`, or computed at `layer`."""
    if layer is not None and not 0 <= layer < layout.n_layers:
        raise AbliterateError(f"--layer {layer}: the model has layers 0..{layout.n_layers - 1}")
    if direction_file:
        v = load_direction(direction_file, layer)
    elif layer is None:
        raise AbliterateError("give --layer L (or --direction FILE)")
    else:
        v = compute_direction(settings, layer, stream, model, tok, layout, events)
    if v.shape[0] != layout.hidden_size:
        raise AbliterateError(
            f"the direction has size {v.shape[0]}, the model {layout.hidden_size}"
        )
    return v


def _manual_record(params: EditParams, metrics: dict, source: dict) -> TrialRecord:
    """A trial record for a manual edit (trial 0, no search scores), as exports expect."""
    after = metrics.get("after", {"refusal_rate": float("nan"), "kl": float("nan")})
    nan = float("nan")
    return TrialRecord(0, params, TrialMetrics.from_dict(after), nan, nan, source=source)


def apply_direction(
    settings: Settings,
    output: Path,
    layer: int | None,
    stream: str,
    weight: float,
    components: list[str],
    direction_file: str | None,
    kind: str = "merged",
    evaluate: bool = True,
    events: Events | None = None,
) -> tuple[Exported, dict]:
    """Orthogonalize the chosen direction out of the model and export it. Returns the export
    and the before/after metrics (empty when no evaluation prompts are available)."""
    events = events or Events()
    settings = resolve_prompt_defaults(settings)
    # Everything that can be wrong with the input, before the model loads.
    check_output(output, settings.overwrite, protected_paths(settings))
    loading.resolve(settings.model, settings.trust_remote_code)
    settings.check_files()
    if direction_file and not Path(direction_file).is_file():
        raise AbliterateError(f"direction file {direction_file} does not exist")
    if direction_file is None and layer is not None:
        load_prompts(settings)  # compute_direction reads them after the load
    loaded = load_model(settings, events)
    model, tok = loaded.model, loaded.tokenizer
    if "embed" in components:
        untie_embeddings(model)
    layout = discover(model)
    v = _chosen_direction(settings, layer, stream, direction_file, model, tok, layout, events)
    directions = Directions(per_layer=v.expand(layout.n_layers, -1).clone(), embedding=v)
    params = one_direction_params(layout.n_layers, weight, components)
    metrics: dict = {}
    if evaluate:
        metrics = _before_after(settings, model, tok, layout, directions, params)
    source = {"layer": layer, "stream": stream, "weight": weight, "file": direction_file}
    record = _manual_record(params, metrics, source)
    # The export reads the checkpoint files; the loaded model is no longer needed.
    del model, loaded
    gc.collect()
    exported = export_trial(
        settings,
        directions,
        record,
        output,
        kind,
        settings.max_shard_size,
        settings.overwrite,
        {"metrics": metrics["before"]} if metrics else None,
    )
    return exported, metrics


def _before_after(settings, model, tok, layout, directions, params) -> dict:
    bs = batch_size(settings, model)
    try:
        prompts = load_prompts(settings)
    except AbliterateError:
        return {}
    evaluator = Evaluator(
        model,
        tok,
        prompts["harmful_eval_prompts"],
        prompts["harmless_eval_prompts"],
        eval_settings(settings, bs),
    )
    before = evaluator.evaluate().values
    editor = WeightEditor(layout, settings.row_normalization, settings.full_normalization_rank)
    with editor.applied(plan(layout.writers, directions, params)):
        after = evaluator.evaluate().values
    return {"before": before, "after": after}
