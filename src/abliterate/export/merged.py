"""Export from the loaded model with save_pretrained (`--no-stream`): the fallback for checkpoints
whose files the streaming export cannot map (e.g. weights stored quantized). Needs the model in
memory; the streaming export (api.py) does not."""

from __future__ import annotations

from pathlib import Path

from abliterate.atomic import atomic_directory
from abliterate.edit.plan import plan
from abliterate.errors import AbliterateError
from abliterate.export.api import protected_paths
from abliterate.export.card import model_card
from abliterate.export.metadata import write_metadata
from abliterate.guard import check_output
from abliterate.model.loading import load_tokenizer
from abliterate.search.record import TrialRecord


def export_merged(
    session,
    record: TrialRecord,
    output: str | Path,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    base: dict | None = None,
) -> Path:
    """Apply trial `record` to the session's model, save it to `output`, restore the model.

    Written to a temporary directory and renamed when complete: an interrupted export leaves
    nothing behind, and the source model is never touched."""
    s = session.settings
    check_output(output, overwrite, protected_paths(s, session.run_dir.path))
    if s.quantization != "none":
        raise AbliterateError(
            "--no-stream saves the loaded model, and a 4-bit model carries its edit in hooks, not "
            "in its weights; export without --no-stream (it reads the full-precision checkpoint)"
        )
    edits = plan(session.layout.writers, session.directions, record.params)
    with session.editor.applied(edits), atomic_directory(output, overwrite) as tmp:
        session.model.save_pretrained(tmp, max_shard_size=max_shard_size)
        # The tokenizer as shipped, not the session's one set up for batched generation.
        load_tokenizer(
            s.model, s.chat_template, s.trust_remote_code, batching=False
        ).save_pretrained(tmp)
        write_metadata(tmp, s, record, edits, base, model_card(s, record, base, "merged"))
    return Path(output)
