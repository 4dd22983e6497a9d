"""Where abliterate keeps what it builds or converts once: the user cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root() -> Path:
    """`$ABLITERATE_CACHE_DIR`, else the platform's user cache directory."""
    return Path(os.environ.get("ABLITERATE_CACHE_DIR") or user_cache_dir("abliterate"))
