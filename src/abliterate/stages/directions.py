"""Stage 4: the run's refusal directions, from the run directory, a shared study, a direction
file, or computed from the residuals of the two direction prompt sets and saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from abliterate import activations
from abliterate import directions as dirmath
from abliterate.config import Settings
from abliterate.edit.plan import Directions
from abliterate.errors import AbliterateError
from abliterate.eval import prefix
from abliterate.events import Events, counter
from abliterate.model.arch import Layout
from abliterate.prompts import chat_texts
from abliterate.runs import (
    RunDir,
    read_directions,
)
from abliterate.search import study as st
from abliterate.stages.refused import refused_rows, split_harmful


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
        study, lock = st.open_study_for(settings, run_dir)
        with lock():
            shared = st.get_shared(study, "directions")
            if shared is not None:
                events.message("directions loaded from the shared study")
                tensors, meta = st.decode_tensors(shared["tensors"]), shared["meta"]
            else:
                tensors, meta = make()
                essential = {k: v for k, v in tensors.items() if not k.startswith("plot_")}
                st.set_shared(
                    study, "directions", {"tensors": st.encode_tensors(essential), "meta": meta}
                )
    else:
        tensors, meta = make()
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.save_directions(tensors, meta)
    return tensors


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
    texts = {
        key: chat_texts(tokenizer, prompts[key], settings.system_prompt)
        for key in ("harmful_prompts", "harmless_prompts")
    }
    # the same check as the search's (does this model compute the prefix layout the same?)
    both = texts["harmful_prompts"] + texts["harmless_prompts"]
    share = settings.shared_prefix and prefix.check(model, tokenizer, both, 0).used
    keep = None
    if settings.direction_harmful == "refused":
        keep = refused_rows(model, tokenizer, texts["harmful_prompts"], settings, events, bs, share)
    residuals = {}
    for key in ("harmful_prompts", "harmless_prompts"):
        tick = counter(events, f"residuals ({key.split('_')[0]})", len(texts[key]))
        residuals[key] = activations.collect(
            model,
            tokenizer,
            layout,
            texts[key],
            settings.residual_stream,
            bs,
            settings.winsorize_quantile,
            keep_full=True,
            on_batch=tick,
            share_prefix=share,
        )
    given, good = residuals["harmful_prompts"], residuals["harmless_prompts"]
    bad, answered = split_harmful(given, keep, settings.direction_baseline, events)
    tensors, meta = direction_tensors(bad, good, settings, answered)
    meta["direction_harmful"] = "all" if keep is None else "refused"
    meta["direction_baseline"] = "harmless" if answered is None else "answered"
    return tensors, {**meta, "harmful_given": given.count}


def direction_tensors(
    bad: activations.Residuals,
    good: activations.Residuals,
    settings: Settings,
    baseline: activations.Residuals | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The direction is `bad`'s mean minus `baseline`'s (default: `good`'s, the harmless mean);
    the projection, benign bases and statistics read `good` either way."""
    assert bad.full is not None and good.full is not None  # collected with keep_full
    base = good if baseline is None else baseline
    lead = dirmath.uninformative_prefix(bad.mean - base.mean)
    raw = dirmath.mean_difference(bad.mean[lead:], base.mean[lead:])
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
    if settings.directions_per_layer > 1:
        tensors["extra_directions"] = extra_directions(bad, good, final, lead, settings)
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
        "directions_per_layer": settings.directions_per_layer,
    }
    return tensors, meta


def extra_directions(
    bad: activations.Residuals, good: activations.Residuals, final: Tensor, lead: int,
    settings: Settings,
) -> Tensor:  # fmt: skip
    """(L, k - 1, d): at each decoder layer, the directions of k clusters of the harmful
    residuals beyond the layer's main one (directions.cluster_directions); zero rows where a
    layer has fewer, or no difference at all (the uninformative leading positions)."""
    assert bad.full is not None
    k = settings.directions_per_layer
    rows = []
    for pos in range(1, bad.full.shape[1]):
        if pos < lead:
            rows.append(torch.zeros(k - 1, bad.full.shape[-1]))
            continue
        other = good.mean[pos] if settings.orthogonalize_direction else None
        rows.append(
            dirmath.cluster_directions(
                bad.full[:, pos], good.mean[pos], final[pos], k, settings.seed, other
            )
        )
    return torch.stack(rows)


def layer_statistics(
    bad: activations.Residuals, good: activations.Residuals, raw: Tensor
) -> dict[str, Tensor]:
    """Per position: |mean difference|, cosine of the two means, and the separation of the
    two sets along the direction (difference of projected means over pooled std)."""
    assert bad.full is not None and good.full is not None  # collected with keep_full
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
    assert bad.full is not None and good.full is not None  # collected with keep_full
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
    extra = tensors.get("extra_directions")
    raw = tensors.get("mean_difference")  # absent from external direction files
    return Directions(
        per_layer=d[1:],
        embedding=d[0],
        benign=tensors.get("benign"),
        extra=None if extra is None else extra.float(),
        raw=None if raw is None else raw[1:].float(),
        raw_embedding=None if raw is None else raw[0].float(),
    )


def _external_directions(path: str, layout: Layout) -> tuple[dict[str, Tensor], dict]:
    """Directions from `abliterate directions`: a per-stream file (one direction per layer) or
    the selected one (one direction, used at every layer)."""
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


def check_shape(directions: Directions, layout: Layout) -> None:
    L, d = directions.per_layer.shape
    if (L, d) != (layout.n_layers, layout.hidden_size):
        raise AbliterateError(
            f"directions have shape ({L}, {d}) but the model has {layout.n_layers} layers of "
            f"hidden size {layout.hidden_size}: they belong to another model"
        )
