"""A chat session with a model: history, streaming, optional edit of a trial applied on the fly.

The library part only: the terminal loop lives in cli/chat.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import (
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextIteratorStreamer,
)

from abliterate.eval.generate import model_device


@dataclass
class Conversation:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    system_prompt: str | None = None
    max_new_tokens: int = 256
    history: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history

    def reply(self, text: str) -> Iterator[str]:
        """Stream the model's answer to `text` (greedy), then add both turns to the history."""
        self.history.append({"role": "user", "content": text})
        enc = self.tokenizer.apply_chat_template(
            self.messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        assert isinstance(enc, BatchEncoding)  # return_dict=True
        enc = enc.to(model_device(self.model))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run() -> None:
            with torch.inference_mode():
                self.model.generate(  # type: ignore[operator]  # GenerationMixin is mixed in at run time
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    streamer=streamer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        parts = []
        for piece in streamer:
            parts.append(piece)
            yield piece
        thread.join()
        self.history.append({"role": "assistant", "content": "".join(parts).strip()})
