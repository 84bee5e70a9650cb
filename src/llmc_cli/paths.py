"""Where llmc keeps what it builds once: the demo model and prepared (tokenised) data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LLMC_CACHE``, else ``$XDG_CACHE_HOME/llmc``, else ``~/.cache/llmc``."""
    if "LLMC_CACHE" in os.environ:
        return Path(os.environ["LLMC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc"


def data_cache_dir(configured: Path | None = None) -> Path:
    """Where prepared data lives: ``--data-cache`` / ``LLMC_DATA_CACHE``, else ``<cache>/data``."""
    return Path(configured).expanduser() if configured is not None else cache_dir() / "data"
