"""Write a directory completely or not at all: build it next to the target, then rename."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from abliterate.errors import AbliterateError


def check_output_free(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise AbliterateError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise AbliterateError(
            f"output directory {output} exists and is not empty; choose another path or pass "
            "--overwrite"
        )


@contextmanager
def atomic_directory(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `output`; on success it replaces `output`.

    On any exception the temporary directory is removed and `output` is left as it was, so a
    crash or Ctrl+C never leaves a half-written model behind."""
    output = Path(output).absolute()
    check_output_free(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output)
