"""Memory a CPU run freed goes back to the system: glibc keeps freed heap pages (a run's
activations, tens of MB) resident for reuse, so an idle encoder would hold its largest
run's memory for good, per model and per instance."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int:
    """This process's resident memory (0 where unreadable)."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class HeapTrimmer:
    """Calls ``malloc_trim`` once when made (after a model's load: the parse of its file is
    garbage by then), and after a run when resident memory has grown ``threshold`` bytes
    past where the last trim left it: a few milliseconds, paid only when there is that much
    to give back. A no-op where the C library is not glibc."""

    def __init__(self, threshold: int = 16 << 20) -> None:
        self._threshold = threshold
        name = ctypes.util.find_library("c")
        self._trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        self._floor = 0
        self._release()

    def _release(self) -> None:
        if self._trim is not None:
            self._trim(0)
        self._floor = resident_bytes()

    def __call__(self) -> bool:
        """Trims if worth it; whether it did."""
        if self._trim is None or resident_bytes() - self._floor < self._threshold:
            return False
        self._release()
        return True
