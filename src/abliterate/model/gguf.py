"""GGUF files as models: find them, and convert them once into a Hugging Face directory.

transformers reads a GGUF (config, tokenizer and chat template from its metadata) and
dequantizes every tensor, which takes a while and cannot be saved with `save_pretrained`. So a
GGUF is converted once into a cached directory of float32 safetensors (float32 holds the
dequantized values exactly) and from then on it is an ordinary model directory for every stage:
residuals, search, evaluation, merged and adapter exports. The GGUF itself stays the source of
a GGUF export (export/gguf.py), which copies every tensor the edit does not touch byte for byte.

This module knows nothing about edits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from filelock import FileLock

from abliterate.atomic import atomic_directory
from abliterate.cache import cache_root
from abliterate.errors import AbliterateError
from abliterate.export.stream import ShardWriter

MAGIC = b"GGUF"
RECORD = "abliterate-gguf.json"  # written last: a directory without it is incomplete
FORMAT = 2  # bump when the converted directory changes (2: no quantization_config)


def is_gguf(spec: str | Path) -> bool:
    return str(spec).lower().endswith(".gguf")


def locate(spec: str) -> Path:
    """The local GGUF file a spec names: a path, or `org/repo/file.gguf` on the Hub (from the
    cache when offline). Checks the file's magic, so a wrong file fails here, not in a loader."""
    path = Path(spec).expanduser()
    if not path.exists():
        path = _from_hub(spec)
    if path.is_dir():
        raise AbliterateError(f"{spec} is a directory; a GGUF model is a file ending in .gguf")
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise AbliterateError(f"{spec} is not a GGUF file (it does not start with 'GGUF')")
    return path


def _from_hub(spec: str) -> Path:
    parts = spec.split("/")
    if spec.startswith((".", "/", "~")) or len(parts) < 3:
        raise AbliterateError(f"GGUF file {spec} does not exist")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:
        raise AbliterateError(
            f"GGUF file {spec} does not exist locally and {filename} could not be fetched from "
            f"the Hugging Face repository {repo} ({type(exc).__name__}); pass a local path"
        ) from None


def check_readable(path: Path) -> None:
    """Parse the header and tensor table (memory-mapped, about a second for any size) and check
    that every tensor's data lies inside the file: a truncated download fails here with one
    line, not deep inside the conversion."""
    import gguf as gguf_lib

    try:
        reader = gguf_lib.GGUFReader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # gguf raises ValueError, struct errors, numpy errors...
        raise AbliterateError(
            f"{path} is a truncated or corrupt GGUF file ({type(exc).__name__}); download it again"
        ) from None
    size = path.stat().st_size
    if end > size:
        raise AbliterateError(
            f"{path} is truncated: its tensors need {end} bytes, the file has {size}; download "
            "it again"
        )


def converted_dir(gguf: Path) -> Path:
    """The cache directory for one GGUF file, keyed by its path, size and modification time
    (hashing the whole file would cost minutes for a large model)."""
    stat = gguf.stat()
    key = f"{FORMAT}|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{digest}"


def source_of(directory: str | Path) -> Path | None:
    """The GGUF file a converted directory was made from (None for any other directory)."""
    record = Path(directory) / RECORD
    if not record.is_file():
        return None
    return Path(json.loads(record.read_text())["source"])


def convert(gguf: Path, on_message: Callable[[str], None] | None = None) -> Path:
    """The Hugging Face directory of `gguf`, converted on first use (cached, under a file lock
    so that two workers convert it once)."""
    target = converted_dir(gguf)
    if (target / RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / RECORD).is_file():
            return target
        check_readable(gguf)
        if on_message:
            on_message(f"converting {gguf.name} to float32 safetensors (once; cached in {target})")
        with atomic_directory(target, overwrite=True) as tmp:
            _write_converted(gguf, tmp)
    return target


@contextmanager
def _quiet_transformers():
    """transformers prints tqdm bars while converting (one from plain tqdm, which its own switch
    does not reach) and logs every metadata key it skips; the caller reports progress itself."""
    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as hf_gguf
    from transformers.utils import logging as hf_logging

    bars, level, bar = (
        hf_logging.is_progress_bar_enabled(),
        hf_logging.get_verbosity(),
        hf_gguf.tqdm,
    )
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(logging.ERROR)
    hf_gguf.tqdm = partial(tqdm, disable=True)
    try:
        yield
    finally:
        hf_gguf.tqdm = bar
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _write_converted(gguf: Path, directory: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (ValueError, NotImplementedError, KeyError) as exc:
            raise AbliterateError(
                f"transformers cannot read {gguf.name}: {str(exc).splitlines()[0]}"
            ) from None
    tokenizer.save_pretrained(directory)
    # The weights are dequantized float32, but the config read from a GGUF still says
    # quant_method gguf: a model loaded from the directory (or from a merged export, which
    # copies its config) would then refuse save_pretrained, as Heretic found.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    shards = ShardWriter(directory, 5 * 10**9)
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        # A tied output head shares the embedding's storage; transformers re-ties it on load.
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        shards.add(name, tensor)
    shards.close()
    record = {"source": str(gguf.resolve()), "size": gguf.stat().st_size, "format": FORMAT}
    (directory / RECORD).write_text(json.dumps(record, indent=2))
