"""Write a file or a directory completely or not at all: build it next to the target under a
unique temporary name, then rename it into place.

A rename within one filesystem is atomic, so a reader (or a resumed run) sees the old file or the
new one, never half of either. Temporary names carry the writer's process id and a random part:
two workers writing the same file never share a temporary, and a temporary left by a process
that was killed (kill -9, power loss) is recognised by its dead pid and removed by the next
writer.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from abliterate.errors import AbliterateError

# Write failures the user can fix (free space, a read-only filesystem), reported as one line.
# Not EACCES: a permission error may come from reading a source file, not from the output.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def check_output_free(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise AbliterateError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise AbliterateError(
            f"output directory {output} exists and is not empty; choose another path or pass "
            "--overwrite"
        )


def check_writable(output: Path) -> None:
    """Refuse an output whose nearest existing ancestor cannot be written to, before any work.

    Tried with a real temporary directory: permission bits say nothing for root, and a read-only
    mount shows only when a write fails."""
    parent = output.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".abliterate-probe-").cleanup()
    except OSError as exc:
        raise AbliterateError(
            f"cannot write {output}: {parent} is not writable ({exc.strerror})"
        ) from None


def _temp_name(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove temporaries of `target` left by processes that no longer run."""
    removed = []
    for kind in ("tmp", "old"):
        for p in target.parent.glob(f".{target.name}.{kind}-*-*"):
            pid = p.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def user_error(exc: BaseException, target: Path) -> AbliterateError | None:
    """A write that failed for want of space or permission, as one line; None otherwise.

    safetensors reports the OS error as text, not as an OSError, hence the message check."""
    if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        reason = exc.strerror or str(exc)
    elif "No space left on device" in str(exc):
        reason = "No space left on device"
    else:
        return None
    return AbliterateError(f"cannot write {target}: {reason}; nothing was written there")


@contextmanager
def atomic_directory(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `output`; on success it replaces `output`.

    On any exception the temporary directory is removed and `output` is left as it was, so a
    crash or Ctrl+C never leaves a half-written model behind."""
    output = Path(output).absolute()
    check_output_free(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(output)
    tmp = _temp_name(output, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        friendly = user_error(exc, output)
        if friendly is not None:
            raise friendly from None
        raise
    if output.exists():
        old = _temp_name(output, "old")
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        friendly = user_error(exc, path)
        if friendly is not None:
            raise friendly from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replace the file at `path` with `text` (UTF-8), atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace the file at `path` with `data`, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
