"""One evaluation of the model as it currently is (edited or not): generation on the evaluation
prompts, KL against the base model, and every metric the objective needs.

The evaluator is built once per run, on the unedited model: base log-probabilities (and, for
`kl_token_count > 1`, base answers) are computed then and reused for every trial.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate.config import field_default
from abliterate.eval import greedy
from abliterate.eval import kl as kl_mod
from abliterate.eval import openings as op
from abliterate.eval.estimate import RefusalEstimate
from abliterate.eval.generate import generate
from abliterate.eval.prefix import PrefixCheck
from abliterate.eval.prefix import check as check_prefix
from abliterate.eval.refusal import is_refusal
from abliterate.eval.scorers import MarkerConfig, Observation, needed, score
from abliterate.prompts import chat_texts


@dataclass
class EvalSettings:
    """How a model is measured: the evaluation settings (defaults are the settings' own) plus
    what the caller decides (batch size; in a search, an over-refusal sample)."""

    max_response_length: int = field_default("max_response_length")
    batch_size: int = 16
    system_prompt: str | None = field_default("system_prompt")
    kl_token_count: int = field_default("kl_token_count")
    # Outside a search every harmless prompt is answered in full; see stages/base.eval_settings.
    overrefusal_sample: int = 0  # harmless prompts answered per evaluation; 0 = all
    overrefusal_response_length: int = 0  # new tokens per harmless answer; 0 = max_response_length
    # the other harmless prompts judged by their opening (eval/openings.py; enable_openings)
    overrefusal_openings: bool = field_default("overrefusal_openings")
    # every prompt of a trial judged by its opening, none answered (trial_openings_only)
    openings_only: bool = False
    sample_seed: int = field_default("seed")
    shared_prefix: bool = field_default("shared_prefix")  # where the model agrees (prefix.py)
    own_decoding: bool = field_default("own_decoding")  # where the model agrees (greedy.py)
    markers: MarkerConfig = field(default_factory=lambda: MarkerConfig((), ()))
    scorers: tuple[str, ...] = (
        "refusal_rate",
        "overrefusal_rate",
        "harmful_marker_rate",
        "compliance_gap",
        "kl",
    )


@dataclass
class Metrics:
    values: dict[str, float]
    harmful_responses: list[str] | None = None
    harmless_responses: list[str] | None = None
    pruned: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # kl, harmful, harmless generation

    def __getitem__(self, name: str) -> float:
        return self.values[name]


Progress = Callable[[str, int, int], None]


def sample_indices(n: int, k: int, seed: int) -> list[int]:
    """A seeded sample of k of n positions in their original order (all of them if k is 0 or
    at least n): the same prompts in every trial, so trials stay comparable."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


class Evaluator:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        harmful_prompts: Sequence[str],
        harmless_prompts: Sequence[str],
        settings: EvalSettings,
        harmful_openings: Sequence[str] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.harmful_prompts = list(harmful_prompts)
        self.harmless_prompts = list(harmless_prompts)
        self.harmful_texts = chat_texts(tokenizer, harmful_prompts, settings.system_prompt)
        self.harmless_texts = chat_texts(tokenizer, harmless_prompts, settings.system_prompt)
        keep = sample_indices(
            len(self.harmless_prompts), settings.overrefusal_sample, settings.sample_seed
        )
        # Over-refusal is answered on this sample only; KL always reads every harmless prompt.
        self.overrefusal_prompts = [self.harmless_prompts[i] for i in keep]
        self.overrefusal_texts = [self.harmless_texts[i] for i in keep]
        self.unanswered = sorted(set(range(len(self.harmless_prompts))) - set(keep))
        # more harmful prompts, judged by their opening once openings are enabled: the refusal
        # rate then covers kinds of request the few answered ones do not
        self.harmful_openings = chat_texts(tokenizer, harmful_openings, settings.system_prompt)
        self.openings: list[op.Opening] = []  # set by enable_openings
        self._batched: dict[tuple[str, ...], kl_mod.KLReference] = {}  # for `opened`
        self.needs = needed(settings.scorers)
        self.estimator: RefusalEstimate | None = None
        # Checked and computed on the model as it is now: build the evaluator before any edit.
        self.prefix_check = self._check_prefix()
        self.share_prefix = self.prefix_check.used
        self.greedy_check = (
            greedy.check(model, tokenizer, self.harmful_texts)
            if settings.own_decoding
            else greedy.GreedyCheck(False, "turned off")
        )
        self.reference = kl_mod.reference(
            model,
            tokenizer,
            self.harmless_texts,
            settings.kl_token_count,
            settings.batch_size,
            self.share_prefix,
        )

    def _check_prefix(self) -> PrefixCheck:
        if not self.settings.shared_prefix:
            return PrefixCheck(0, None, False, "turned off")
        texts = self.harmless_texts + self.harmful_texts
        longest = max(self.settings.max_response_length, self.settings.kl_token_count)
        # Answers re-measured by `recheck` may be longer; 4x covers the default.
        return check_prefix(self.model, self.tokenizer, texts, 4 * longest)

    def _kl_pass(self) -> tuple[float | None, list[bool] | None]:
        """KL of the model as it is now and, with openings enabled, whether each harmless
        prompt outside the over-refusal sample would be answered with a refusal opening."""
        if "kl" not in self.needs:
            return None, None
        per_prompt, first = kl_mod.kl_and_first_tokens(self.model, self.reference)
        judged = self._judged_harmless()
        if not (self.openings and judged and "harmless_responses" in self.needs):
            return per_prompt.mean().item(), None
        found = op.hits(self.model, self.reference, first, self.openings)
        return per_prompt.mean().item(), [found[i] for i in judged]

    @property
    def openings_only(self) -> bool:
        """Whether trials judge every prompt by its opening and answer none (once openings
        are enabled)."""
        return self.settings.openings_only and bool(self.openings)

    def _judged_harmless(self) -> list[int]:
        """Positions of the harmless prompts a trial judges by their opening."""
        return list(range(len(self.harmless_texts))) if self.openings_only else self.unanswered

    def _responses(
        self, texts: list[str], stage: str, progress: Progress | None, length: int | list[int]
    ) -> list[str]:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(stage, done, len(texts))

        return generate(
            self.model,
            self.tokenizer,
            texts,
            length,
            self.settings.batch_size,
            stop_markers=self.settings.markers.refusal,
            on_batch=tick,
            delimiters=self.settings.markers.delimiters,
            share_prefix=self.share_prefix,
            own_loop=self.greedy_check.used,
        )

    def recheck(
        self,
        max_new_tokens: int,
        harmless_tokens: int | None = None,
        extra_harmless: Sequence[str] = (),
        extra_tokens: int = 12,
        extra_harmful: Sequence[str] = (),
    ) -> dict[str, float]:
        """Refusal rate on the harmful prompts and over-refusal on every harmless one (not the
        search's sample) plus the chat-formatted `extra_harmless` texts: a trial re-measured
        before the choice settles on it (search/choice.py). Harmful answers are
        `max_new_tokens` long, harmless ones `harmless_tokens` and extra ones `extra_tokens`
        (an over-refusal opens the answer), or, with openings enabled, the extra ones are
        judged by their opening without generating; one pass where the own loop allows
        budgets per row, one per length otherwise. With openings enabled, the chat-formatted
        `extra_harmful` texts are judged by their opening too and pooled into the refusal
        rate (without openings they are left out: answering hundreds more costs minutes)."""
        groups = [
            (self.harmful_texts, max_new_tokens),
            (self.harmless_texts, harmless_tokens or max_new_tokens),
        ]
        if not self.openings:
            groups.append((list(extra_harmless), extra_tokens))
        if self.greedy_check.used:
            texts = [t for texts, _ in groups for t in texts]
            budgets = [n for texts, n in groups for _ in texts]
            answers = self._responses(texts, "recheck", None, budgets) if texts else []
        else:
            answers = []
            for texts, n in groups:
                answers += self._responses(texts, "recheck", None, n) if texts else []
        n = len(self.harmful_texts)
        obs = Observation(
            markers=self.settings.markers,
            harmful_responses=answers[:n],
            harmless_responses=answers[n:],
            opening_refusals=self.opened(extra_harmless) if self.openings else None,
            harmful_opening_refusals=self._harmful_opened(extra_harmful),
        )
        values = score(obs, ("refusal_rate", "overrefusal_rate"))
        if self.openings_only:
            values |= self._agreement(obs)
        return values

    def _agreement(self, obs: Observation) -> dict[str, float]:
        """How often the opening verdict of a trial (openings_only) matches the verdict of
        the answers `obs` holds, on the harmful and on the harmless evaluation prompts; and
        the opening-judged refusal rate of the harmful ones."""
        assert obs.harmful_responses is not None and obs.harmless_responses is not None
        harmful = self.opened(self.harmful_texts)

        def agree(opened: list[bool], answers: list[str]) -> float:
            same = sum(a == b for a, b in zip(opened, obs.refusals(answers), strict=True))
            return same / len(opened) if opened else 1.0

        return {
            "openings_refusal_rate": sum(harmful) / len(harmful) if harmful else 0.0,
            "openings_agree_harmful": agree(harmful, obs.harmful_responses),
            "openings_agree_harmless": agree(
                self.opened(self.harmless_texts), obs.harmless_responses
            ),
        }

    def _harmful_opened(self, extra: Sequence[str] = ()) -> list[bool] | None:
        """Whether each of the `harmful_openings` prompts, and each `extra` chat text, would be
        answered with a refusal opening (None until openings are enabled, or without such
        prompts)."""
        wanted = bool(self.harmful_openings or extra)
        if not (self.openings and wanted and "harmful_responses" in self.needs):
            return None
        return self.opened(self.harmful_openings) + self.opened(extra)

    def opened(
        self, texts: Sequence[str], openings: Sequence[op.Opening] | None = None
    ) -> list[bool]:
        """Whether the model as it is now would open its answer to each chat text with one of
        `openings` (default: the base model's, enable_openings). The texts are batched once,
        on the first call for them (the harmless evaluation texts reuse the KL reference)."""
        key = tuple(texts)
        if not key:
            return []
        if key == tuple(self.harmless_texts):
            ref = self.reference  # batched already, for KL
        else:
            if key not in self._batched:
                bs = self.settings.batch_size
                self._batched[key] = kl_mod.reference(
                    self.model, self.tokenizer, key, 1, bs, self.share_prefix
                )
            ref = self._batched[key]
        first = kl_mod.kl_and_first_tokens(self.model, ref)[1]
        return op.hits(self.model, ref, first, self.openings if openings is None else openings)

    def evaluate(
        self,
        prune_kl: float | None = None,
        fallback: Metrics | None = None,
        progress: Progress | None = None,
        skip: Callable[[float, float], float | None] | None = None,
    ) -> Metrics:
        """All metrics of the current model. If its KL exceeds `prune_kl`, generation is skipped
        and the refusal metrics are taken from `fallback` (the base model's): a pessimistic
        guess that costs one forward pass instead of a full generation. With an estimator
        (`enable_estimate`), `skip(kl, refusal_estimate)` returning a rate skips generation the
        same way, recording that rate (the calibrated estimate) as the refusal rate."""
        clock = time.perf_counter()
        seconds: dict[str, float] = {}

        def lap(part: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[part] = now - clock
            clock = now

        kl_value, opened = self._kl_pass()
        lap("kl")
        if prune_kl is not None and kl_value is not None and kl_value > prune_kl and fallback:
            values = {**fallback.values, "kl": kl_value}
            return Metrics(values, pruned=True, seconds=seconds)
        if self.openings_only:
            return self._judge_by_openings(kl_value, opened, lap, seconds)
        estimated: dict[str, float] = {}
        if self.estimator is not None and kl_value is not None:
            estimated["refusal_estimate"] = self.estimator.estimate(self.model)
            lap("estimate")
            skipped = skip(kl_value, estimated["refusal_estimate"]) if skip else None
            if skipped is not None and fallback:
                values = {**fallback.values, "kl": kl_value, **estimated}
                values["refusal_rate"] = skipped
                return Metrics(values, pruned=True, seconds=seconds)
        obs = Observation(kl=kl_value, markers=self.settings.markers, opening_refusals=opened)
        self._answer(obs, progress, lap)
        obs.harmful_opening_refusals = self._harmful_opened()
        if obs.harmful_opening_refusals is not None:
            lap("harmful openings")
        values = {**score(obs, self.settings.scorers), **estimated}
        return Metrics(values, obs.harmful_responses, obs.harmless_responses, seconds=seconds)

    def _judge_by_openings(
        self,
        kl_value: float | None,
        opened: list[bool] | None,
        lap: Callable[[str], None],
        seconds: dict[str, float],
    ) -> Metrics:
        """The metrics of a trial that answers nothing (openings_only): every harmless prompt
        judged by its opening in the KL pass (`opened`), every harmful one in one more pass.
        Scorers that read answers' text (harmful_marker_rate) see none and read 0."""
        obs = Observation([], [], kl_value, self.settings.markers, opened)
        obs.harmful_opening_refusals = self.opened(self.harmful_texts) + (
            self._harmful_opened() or []
        )
        lap("openings")
        return Metrics(score(obs, self.settings.scorers), seconds=seconds)

    def _answer(
        self, obs: Observation, progress: Progress | None, lap: Callable[[str], None]
    ) -> None:
        """Generate the answers the scorers need into `obs`, timing each pass with `lap`."""
        harmful, harmless = "harmful_responses" in self.needs, "harmless_responses" in self.needs
        long = self.settings.max_response_length
        short = self.settings.overrefusal_response_length or long
        if harmful and harmless and self.greedy_check.used:
            # One pass: on a CPU a decoding step costs about the same for 20 rows as for 50,
            # so the harmless rows ride along with the harmful ones, each with its own length.
            texts = self.harmful_texts + self.overrefusal_texts
            budgets = [long] * len(self.harmful_texts) + [short] * len(self.overrefusal_texts)
            both = self._responses(texts, "answers", progress, budgets)
            obs.harmful_responses = both[: len(self.harmful_texts)]
            obs.harmless_responses = both[len(self.harmful_texts) :]
            lap("answers")
        else:
            if harmful:
                obs.harmful_responses = self._responses(
                    self.harmful_texts, "harmful", progress, long
                )
                lap("harmful")
            if harmless:
                obs.harmless_responses = self._responses(
                    self.overrefusal_texts, "harmless", progress, short
                )
                lap("harmless")

    def enable_estimate(self, base: Metrics) -> None:
        """Screen later evaluations with a one-pass refusal estimate (eval/estimate.py), from
        the openings of the base model's answers `base` to the harmful prompts."""
        assert base.harmful_responses is not None
        m = self.settings.markers
        refused = [is_refusal(r, m.refusal, m.delimiters) for r in base.harmful_responses]
        self.estimator = RefusalEstimate.build(
            self.model, self.tokenizer, self.harmful_texts, base.harmful_responses, refused,
            self.settings.batch_size, self.share_prefix,
        )  # fmt: skip

    def enable_openings(self, base: Metrics) -> tuple[Metrics, str]:
        """Judge the harmless prompts outside the over-refusal sample by their opening
        (eval/openings.py) from now on, with the openings of the base model's answers `base`,
        if the teacher-forced check predicts how the base model's harmful answers opened.
        Returns `base` re-scored that way and a line saying what was decided."""
        m, tok = self.settings.markers, self.tokenizer
        to_judge = self.unanswered or self.harmful_openings or self.settings.openings_only
        if not (self.settings.overrefusal_openings and to_judge):
            return base, "refusal openings: off (every prompt is answered)"
        answers = (base.harmful_responses or []) + (base.harmless_responses or [])
        found = op.stock_openings(tok, answers, m.refusal, m.delimiters)
        if not found:
            return base, "refusal openings: off (the base model's refusals share no opening)"
        predicted = self.opened(self.harmful_texts, found)
        seen = [op.opens_with(tok, r, found) for r in base.harmful_responses or []]
        wrong = sum(p != s for p, s in zip(predicted, seen, strict=True))
        if wrong > max(1, len(seen) // 10):
            return base, (
                f"refusal openings: off (predicted {wrong} of {len(seen)} harmful answers' "
                "openings wrong)"
            )
        self.openings = found
        kl_value, opened = self._kl_pass()
        obs = Observation(
            base.harmful_responses, base.harmless_responses, kl_value, m, opened,
            self._harmful_opened(),
        )  # fmt: skip
        if self.openings_only:  # the base scored the way its trials will be
            obs.harmful_responses, obs.harmless_responses = [], []
            obs.harmful_opening_refusals = predicted + (obs.harmful_opening_refusals or [])
        values = {**base.values, **score(obs, self.settings.scorers)}
        shown = ", ".join(repr(tok.decode(list(o))) for o in found)
        judged: list[str] = []
        if self.openings_only:
            judged.append(
                f"every harmful and harmless prompt of a trial (no answers; base refusal "
                f"{base['refusal_rate']:.2f} answered, {values['refusal_rate']:.2f} by openings)"
            )
        elif self.unanswered:
            judged.append(
                f"the {len(self.unanswered)} harmless prompts outside the over-refusal sample"
            )
        if self.harmful_openings and obs.harmful_opening_refusals is not None:
            judged.append(f"{len(self.harmful_openings)} more harmful prompts")
        line = (
            f"refusal openings: {shown}; {' and '.join(judged)} are judged by them (checked on "
            f"{len(seen)} base answers, {wrong} wrong)"
        )
        return Metrics(
            values, base.harmful_responses, base.harmless_responses, seconds=base.seconds
        ), line
