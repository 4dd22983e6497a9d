"""Supervised training of the organism on its chat corpus (loss on assistant tokens only)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate import threads
from abliterate.organism.corpus import Exchange
from abliterate.prompts import chat_messages


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.01


def encode(tokenizer: PreTrainedTokenizerBase, conv: Exchange) -> tuple[list[int], int]:
    """Token ids of prompt + answer + end-of-turn, and the number of prompt tokens."""
    prompt = tokenizer.apply_chat_template(
        chat_messages(conv.user, conv.system), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(conv.assistant, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids + [tokenizer.eos_token_id], len(prompt_ids)


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded batch; labels are -100 on prompt and padding so only answers are learned."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, : len(ids)] = 1
    return input_ids, labels, mask


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, gen: torch.Generator
) -> list[list[int]]:
    """One epoch of batches of similar length, in random order.

    Random batches of chat turns are ~40 % padding; sorting inside chunks of 8 batches removes
    most of it while keeping every batch a random mix of the corpus."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * 8
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm if len(batches[i]) == batch_size]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Exchange],
    cfg: TrainConfig,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place; returns the loss of every step. Deterministic for a given seed."""
    encoded = [encode(tokenizer, c) for c in conversations]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    model.train()
    losses: list[float] = []
    batches: list[list[int]] = []
    for step in range(cfg.steps):
        if not batches:
            batches = bucketed_batches([len(ids) for ids, _ in encoded], cfg.batch_size, gen)
        batch = [encoded[i] for i in batches.pop()]
        input_ids, labels, mask = collate(batch, tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        threads.recheck()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses
