"""The CPU's matrix features, as /proc/cpuinfo names them: what decides whether bf16 is
worth serving on this machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from reranker.contract.model import Precision

# CPU features with native BF16 matrix arithmetic; without one, OpenVINO emulates bf16 (slow).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AMX_FLAGS = frozenset({"amx_bf16", "amx_int8", "amx_tile"})
# The features that decide which precisions run natively: what a benchmark report names.
MATRIX_FEATURES = frozenset(
    {
        "amx_bf16",
        "amx_int8",
        "amx_tile",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "avx512f",
        "avx2",
    }
)
# The CPU kinds the project is built and tested on, by their matrix features (/proc/cpuinfo's
# names): a Xeon with AMX, an EPYC with AVX-512 BF16, an EPYC with AVX2 only.
CPU_KINDS: dict[str, frozenset[str]] = {
    "amx": MATRIX_FEATURES,
    "avx512-bf16": frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}),
    "avx2": frozenset({"avx2"}),
}
PROC_CPUINFO = Path("/proc/cpuinfo")

_faked_flags: frozenset[str] | None = None


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where /proc/cpuinfo is unreadable), or
    the ones :func:`faked_cpu` stands in. Every decision that depends on the CPU's features
    (the builder's precision check, the benchmark's rows and targets, the serve hint) reads
    them here."""
    if cpuinfo is None:
        if _faked_flags is not None:
            return _faked_flags
        cpuinfo = PROC_CPUINFO
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@contextlib.contextmanager
def faked_cpu(flags: Iterable[str]) -> Iterator[frozenset[str]]:
    """Within the block, :func:`cpu_flags` answers ``flags`` (a kind of :data:`CPU_KINDS`
    or any set): what a CPU of another kind decides, shown on this one. The kernels that
    run are still this machine's."""
    global _faked_flags
    before, _faked_flags = _faked_flags, frozenset(flags)
    try:
        yield _faked_flags
    finally:
        _faked_flags = before


def cpu_kind(flags: Iterable[str]) -> str:
    """The kind of :data:`CPU_KINDS` a CPU with ``flags`` serves as."""
    features = set(flags)
    if has_amx(features):
        return "amx"
    return "avx512-bf16" if has_native_bf16(features) else "avx2"


def has_native_bf16(flags: Iterable[str]) -> bool:
    return bool(BF16_CPU_FLAGS & set(flags))


def has_amx(flags: Iterable[str]) -> bool:
    return bool(AMX_FLAGS & set(flags))


def cpu_precisions(flags: Iterable[str]) -> tuple[Precision, ...]:
    """The precisions a CPU with ``flags`` serves: fp32 and int8 on every kind, bf16 only
    with native BF16 arithmetic (the builder refuses it elsewhere)."""
    native = (Precision.BF16,) if has_native_bf16(flags) else ()
    return (Precision.FP32, Precision.INT8, *native)


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


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPUs this process's cgroup may use (the tightest CFS quota over its period on the
    way from its own cgroup up to the root), or None when unlimited or unreadable: cgroup
    v2's ``cpu.max``, else v1's ``cpu.cfs_quota_us``."""
    limits = [
        limit
        for directory in _cgroup_v2_directories(root, membership)
        if (limit := _quota(directory / "cpu.max")) is not None
    ]
    if limits:
        return min(limits)
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _cgroup_v2_directories(root: Path, membership: Path) -> list[Path]:
    """This process's cgroup v2 directory and its ancestors up to ``root`` (only ``root``
    where the membership file names none, as inside a container's own namespace)."""
    own = root
    try:
        for line in membership.read_text().splitlines():
            if line.startswith("0::"):
                own = root / line[3:].strip().lstrip("/")
    except OSError:
        pass
    return [own, *[parent for parent in own.parents if root in (parent, *parent.parents)]]


def _quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def available_cores(affinity: int | None = None, quota: float | None = None) -> int:
    """The cores this process can run on: its CPU affinity, lowered by a cgroup quota (a
    container limited to 2.5 CPUs on a 64-core host gets 2). Arguments stand in for what
    the machine says, for tests."""
    cores = affinity if affinity is not None else len(os.sched_getaffinity(0))
    limit = quota if quota is not None else cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, int(limit))
    return max(1, cores)


def intra_op_threads(cores: int, instances: int) -> int:
    """The threads each of ``instances`` encoder instances runs with on ``cores`` cores: an
    equal share, at least one."""
    return max(1, cores // max(1, instances))
