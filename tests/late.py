"""Scripted models for tests: real transformers checkpoints whose greedy answer to any chat
prompt is a script the test chooses, word for word.

A one-layer Llama whose attention and MLP write nothing (o_proj and down_proj are zero), so the
residual stream at each position is the token's embedding alone and the next token depends on
the current token only, not on the prompt or the position. Embeddings are one-hot over the
tokens of the chain (the template's last token, the script's words, eos) and the untied lm_head
maps each of them to the token after it:

    <|assistant|> -> script[0] -> script[1] -> ... -> script[-1] -> eos (or back to
    script[loop_from], forever)

Every other token (prompt words, padding) shares one embedding that maps to eos. The tokenizer
is a whitespace WordLevel one whose tokens are the script's words verbatim ("Sure!" is one
token), so a decoded answer encodes back to the same ids.

`late_refuser` complies for 40 words, then refuses: a refusal check that reads only the first
32 tokens calls it compliant. `looper` never stops repeating itself. Neither is for testing the
edit itself: the writers are zero, so any orthogonalization leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, UNK, EOS = "<pad>", "<unk>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL = [PAD, UNK, EOS, *(f"<|{role}|>" for role in ROLES)]
GENERATION_PROMPT = "<|assistant|>"

# A minimal ChatML-like template: the end-of-turn token doubles as eos, so generation stops at
# the end of the assistant's turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

# The winning logit over all others (which are 0): softmax gives the next token ~1 - V e^-20.
LOGIT = 20.0

# 40 distinct words with none of markers.REFUSAL_MARKERS in them, then a refusal.
OPENING_TEXT = (
    "Sure! Here is a detailed overview of the process. First, gather every material you need "
    "and set up your workspace. Next, measure twice, mark each piece clearly, label all parts, "
    "then check them against our plan so nothing goes missing."
)
REFUSAL_TEXT = "However, I cannot help with that request."
LOOP_TEXT = "the best way is"
OPENING, REFUSAL, LOOP = OPENING_TEXT.split(), REFUSAL_TEXT.split(), LOOP_TEXT.split()


def build_scripted_model(
    path: Path,
    script: list[str],
    loop_from: int | None = None,
    extra_words: Iterable[str] = (),
) -> Path:
    """Save to `path` a model and tokenizer whose greedy answer to any chat prompt is `script`
    (words joined by spaces), then eos; or, with `loop_from`, `script` followed by
    `script[loop_from:]` repeated until the token limit.

    `extra_words` (words or whole prompts, split on whitespace) join the vocabulary so that
    prompts encode without unknown tokens; the answer does not depend on them."""
    _check_script(script, loop_from)
    vocab = _vocabulary(script, extra_words)
    tokenizer = _tokenizer(vocab)
    model = _model(vocab, script, loop_from, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def late_refuser(path: Path, extra_words: Iterable[str] = ()) -> Path:
    """Complies for 40 words, then says "I cannot help with that request." and stops."""
    return build_scripted_model(path, OPENING + REFUSAL, extra_words=extra_words)


def looper(path: Path, extra_words: Iterable[str] = ()) -> Path:
    """Answers "the best way is the best way is ..." until the token limit."""
    return build_scripted_model(path, LOOP, loop_from=0, extra_words=extra_words)


def _check_script(script: list[str], loop_from: int | None) -> None:
    if not script:
        raise ValueError("the script needs at least one word")
    bad = [w for w in script if not w or w != "".join(w.split()) or w in SPECIAL]
    if bad:
        raise ValueError(f"script words must be non-empty, without spaces, not {SPECIAL}: {bad}")
    repeated = sorted({w for w in script if script.count(w) > 1})
    if repeated:
        # The next token is a function of the current one: a repeated word would fork the chain.
        raise ValueError(f"script words must be distinct, repeated: {repeated}; use loop_from")
    if loop_from is not None and not 0 <= loop_from < len(script):
        raise ValueError(f"loop_from={loop_from} is not an index of the {len(script)}-word script")


def _vocabulary(script: list[str], extra_words: Iterable[str]) -> dict[str, int]:
    """Token -> id: the special tokens first, then the script, then the extra words."""
    words = [*SPECIAL, *script, *(w for text in extra_words for w in text.split())]
    return {w: i for i, w in enumerate(dict.fromkeys(words))}


def _tokenizer(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Joins tokens with single spaces (no "##" tokens here, and no cleanup of " ," etc).
    tok.decoder = decoders.WordPiece(cleanup=False)
    tok.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=1024,
    )


def _model(
    vocab: dict[str, int],
    script: list[str],
    loop_from: int | None,
    tokenizer: PreTrainedTokenizerFast,
) -> LlamaForCausalLM:
    chain = [GENERATION_PROMPT, *script, EOS]
    after = {w: chain[i + 1] for i, w in enumerate(chain[:-1])}
    after[EOS] = EOS
    if loop_from is not None:
        after[script[-1]] = script[loop_from]
    other = len(chain)  # the one dimension every token outside the chain shares
    hidden = -(-(other + 1) // 8) * 8  # a multiple of 8: 2 heads of an even head_dim (rotary)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    # q, k, v and the MLP's gate and up keep their random init (seeded, without touching the
    # caller's RNG): the model is an ordinary Llama apart from the zero writers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    dim = {w: chain.index(w) if w in after else other for w in vocab}
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight  # (vocab, hidden)
        embed.zero_()
        for word, i in vocab.items():
            embed[i, dim[word]] = 1.0
        # RMSNorm scales a one-hot vector to sqrt(hidden) at its one dimension.
        head = model.lm_head.weight  # (vocab, hidden)
        head.zero_()
        for word, nxt in after.items():
            head[vocab[nxt], dim[word]] = LOGIT / hidden**0.5
        head[vocab[EOS], other] = LOGIT / hidden**0.5
    return model
