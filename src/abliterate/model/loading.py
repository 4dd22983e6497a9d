"""Load a chat model and its tokenizer: dtype fallbacks, device placement, quantization, and a
smoke generation that catches dtype failures before any work is done.

Only safetensors weights are ever loaded: pickled `.bin` checkpoints can run arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from abliterate.errors import AbliterateError
from abliterate.model import gguf

Message = Callable[[str], None]


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    source: str  # what the user passed: a path or a hub id


def looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else can only be a path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def resolve(spec: str, trust_remote_code: bool = False) -> str:
    """Check that `spec` names a loadable model: a local model directory or a hub id that can be
    resolved (from the cache when offline). Returns the string to pass to from_pretrained."""
    if not spec:
        raise AbliterateError("no model given: pass a Hugging Face model id or a local directory")
    if gguf.is_gguf(spec):
        return str(gguf.locate(spec))
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AbliterateError(f"model path {spec} is a file; pass the model's directory")
        if not (path / "config.json").is_file():
            raise AbliterateError(
                f"{spec} is a directory without config.json: not a Hugging Face model directory"
            )
        check_directory(path)
        return str(path)
    if looks_like_path(spec):
        raise AbliterateError(f"model path {spec} does not exist")
    try:
        AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AbliterateError(
            f"cannot resolve model {spec!r}: it is not a local directory and could not be "
            f"fetched from the Hugging Face Hub or found in its cache ({_first_line(exc)})"
        ) from None
    return spec


def check_directory(path: Path) -> None:
    """Catch a broken model directory in a second, not after minutes of loading: config.json
    must parse and name a model type transformers knows, and every safetensors file must have a
    whole header covering the whole file (truncated downloads, zero-byte files)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AbliterateError(f"{path / 'config.json'} is not valid JSON ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    # Remote code names its own model type; load() asks for --trust-remote-code.
    remote = isinstance(config, dict) and "auto_map" in config
    if not remote:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise AbliterateError(
                f"{path / 'config.json'} has model_type {model_type!r}, which this transformers "
                "does not know: upgrade transformers (pip install -U transformers), or, for a "
                "model that ships its own code, pass --trust-remote-code"
            )
    files = _safetensors_files(path)
    if not files:
        raise AbliterateError(
            f"{path} has no .safetensors weights; abliterate never loads pickled (.bin) "
            "checkpoints. Convert them with transformers' save_pretrained first"
        )
    for weights in files:
        _check_safetensors(weights)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(path.glob("*.safetensors"))
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise AbliterateError(f"{index} is not a valid index ({exc})") from None
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise AbliterateError(
            f"{path} is incomplete: {', '.join(missing[:3])} named in {index.name} is missing "
            "(download the model again)"
        )
    return [path / n for n in names]


def _check_safetensors(weights: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        size = weights.stat().st_size
        raise AbliterateError(
            f"{weights} is not a readable safetensors file ({size} bytes; {_first_line(exc)}): "
            "truncated or corrupt, download it again"
        ) from None


def checkpoint_dir(spec: str, on_message: Message | None = None) -> str:
    """What from_pretrained reads for `spec`: the spec itself, or for a GGUF file the directory
    it was converted into (found and converted on first use)."""
    return str(gguf.convert(gguf.locate(spec), on_message)) if gguf.is_gguf(spec) else spec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_tokenizer(
    spec: str,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    batching: bool = True,
) -> PreTrainedTokenizerBase:
    """The tokenizer, with a chat template (from `chat_template` if given). With `batching`,
    set up for batched generation (left padding, a pad token); without, as the model ships it
    (what an export should carry)."""
    spec = checkpoint_dir(spec)
    tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    if chat_template is not None:
        template = Path(chat_template)
        if not template.is_file():
            raise AbliterateError(f"chat template file {chat_template} does not exist")
        tok.chat_template = template.read_text(encoding="utf-8")
    if not getattr(tok, "chat_template", None):
        raise AbliterateError(
            f"the tokenizer of {spec} has no chat template: abliterate formats prompts as chat "
            "turns; pass --chat-template FILE with a Jinja template"
        )
    if not batching:
        return tok
    # Left padding: the last prompt token is then at position -1 in every row of a batch.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def quantization_config(kind: str):
    if kind == "none":
        return None
    if kind != "bnb_4bit":
        raise AbliterateError(f"unknown quantization {kind!r}; use none or bnb_4bit")
    if not torch.cuda.is_available():
        raise AbliterateError(
            "quantization = bnb_4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is "
            "available here. Use quantization = none"
        )
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise AbliterateError("bnb_4bit needs bitsandbytes: pip install bitsandbytes") from exc
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"
    )


def _torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise AbliterateError(f"unknown dtype {name!r} in dtypes; use auto, bfloat16, float16...")
    return dtype


@torch.inference_mode()
def smoke_test(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """One forward pass and one generated token; raises on NaN/inf logits (e.g. float16
    overflow), the failure that otherwise surfaces hours later as garbage output."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    enc = enc.to(next(model.get_input_embeddings().parameters()).device)
    logits = model(**enc).logits[:, -1]
    if not torch.isfinite(logits).all():
        raise RuntimeError("non-finite logits")
    model.generate(  # type: ignore[operator]  # GenerationMixin is mixed in at run time
        **enc, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )


def _smoke_tested(model, tokenizer) -> str | None:
    """Put a loaded model in inference mode; why its smoke test failed, or None."""
    model.eval()
    model.requires_grad_(False)
    try:
        smoke_test(model, tokenizer)
    except (RuntimeError, ValueError) as exc:  # NaN/inf logits, kernels missing for dtype
        return _first_line(exc)
    return None


def load(
    spec: str,
    dtypes: list[str] | tuple[str, ...] = ("auto",),
    device_map: str | dict | None = "auto",
    max_memory: dict[str, str] | None = None,
    offload_folder: str | None = None,
    quantization: str = "none",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    on_message: Message | None = None,
) -> Loaded:
    """Load model and tokenizer, trying `dtypes` in order until one passes the smoke test."""
    say = on_message or (lambda _msg: None)
    source = spec
    spec = checkpoint_dir(resolve(spec, trust_remote_code), say)
    if not trust_remote_code and "auto_map" in read_config(spec):
        raise AbliterateError(
            f"{source} ships its own model code (auto_map in config.json); read it, then pass "
            "--trust-remote-code to let it run"
        )
    tokenizer = load_tokenizer(spec, chat_template, trust_remote_code)
    options = {
        "device_map": device_map,
        "max_memory": _max_memory(max_memory),
        "offload_folder": offload_folder,
        "quantization_config": quantization_config(quantization),
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }
    failures = []
    for name in dtypes:
        dtype = _torch_dtype(name)
        if dtype == "auto" and _cpu_only(device_map):
            dtype = torch.float32
            say(
                "no GPU: loading in float32 (bfloat16 matmuls are the slow path on most CPUs; "
                "set dtypes to choose another)"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **options)
        except (OSError, ValueError) as exc:
            # Missing files, bad configs, unsupported options: no other dtype will fix these.
            raise AbliterateError(f"cannot load {source}: {_first_line(exc)}") from None
        except RuntimeError as exc:  # e.g. a dtype the device does not support
            failures.append(f"{name}: {_first_line(exc)}")
            say(f"dtype {name} failed ({_first_line(exc)}); trying the next one")
            continue
        failure = _smoke_tested(model, tokenizer)
        if failure is None:
            say(f"loaded {source} as {model.dtype}")
            return Loaded(model, tokenizer, model.dtype, source)
        failures.append(f"{name}: {failure}")
        say(f"dtype {name} failed ({failure}); trying the next one")
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    raise AbliterateError(f"could not load {source} with any dtype: {'; '.join(failures)}")


def _cpu_only(device_map: str | dict | None) -> bool:
    """Whether the model will run on the CPU: no CUDA device, or placed there explicitly."""
    return not torch.cuda.is_available() or device_map == "cpu"


def _max_memory(max_memory: dict[str, str] | None) -> dict | None:
    """Accept GPU indices as strings (TOML/env keys are strings): {"0": "20GiB"} -> {0: ...}."""
    if not max_memory:
        return None
    return {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}


def model_name(source: str) -> str:
    """A short name for run directories: the last path component or hub repo name."""
    return Path(source.rstrip("/")).name or "model"


def read_config(spec: str) -> dict:
    """config.json of a local model directory ({} for a hub id)."""
    path = Path(spec) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
