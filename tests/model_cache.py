"""Models the tests build, kept across test runs: an entry is the build's output, keyed by its
fingerprint (the build code and packages, the options, and every byte of the source read), so
a changed builder, option or checkpoint builds afresh and nothing stale is served. Entries not
used for a week are removed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from reranker.builder.builder import BuildOptions, build, build_default
from reranker.builder.fingerprint import build_fingerprint

CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reranker" / "test-models"
)
_UNUSED_FOR_S = 7 * 24 * 3600


def cached_build(source: Path | None, options: BuildOptions, repository: Path) -> None:
    """Builds ``source`` (None: the offline default) into ``repository`` as ``options.name``,
    or copies the same build made by an earlier run."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    entry = CACHE_DIR / build_fingerprint(options, source)
    if not entry.is_dir():
        _forget_unused()
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE_DIR))
        try:
            if source is None:
                build_default(options, staging)
            else:
                build(str(source), options, staging)
            staging.rename(entry)
        except OSError:
            if not entry.is_dir():  # not another run's entry, made first: a real failure
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.utime(entry)
    for part in entry.iterdir():
        shutil.copytree(part, repository / part.name)


def _forget_unused() -> None:
    cutoff = time.time() - _UNUSED_FOR_S
    for entry in CACHE_DIR.iterdir():
        if entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
