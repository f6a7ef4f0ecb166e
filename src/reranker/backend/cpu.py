"""The CPU's matrix features, as /proc/cpuinfo names them: what decides whether bf16 is
worth serving on this machine."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# CPU features with native BF16 matrix arithmetic; without one, OpenVINO emulates bf16 (slow).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AMX_FLAGS = frozenset({"amx_bf16", "amx_int8", "amx_tile"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: Iterable[str]) -> bool:
    return bool(BF16_CPU_FLAGS & set(flags))


def has_amx(flags: Iterable[str]) -> bool:
    return bool(AMX_FLAGS & set(flags))


def bf16_hint(flags: Iterable[str], fp32_models: Iterable[str]) -> str | None:
    """A one-line hint for an operator serving fp32 CPU models on a CPU with AMX."""
    names = sorted(fp32_models)
    if not names or not has_amx(flags):
        return None
    return (
        f"reranker: this CPU has AMX; {', '.join(names)} "
        f"{'is' if len(names) == 1 else 'are'} served in fp32. "
        "`reranker build SOURCE --precision bf16` serves a model in bf16 through OpenVINO, "
        "several times faster at near-fp32 accuracy (README: Precision)"
    )
