"""The encoder's thread layout follows the cores the server starts with: its CPU affinity,
lowered by a cgroup quota, shared equally among the encoder's instances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reranker.backend.cpu import available_cores, cgroup_cpu_limit, intra_op_threads
from reranker.backend.models._config import ModelArgs


@pytest.mark.parametrize(
    ("affinity", "quota", "instances", "threads"),
    [
        (1, None, 1, 1),
        (2, None, 1, 2),
        (16, None, 1, 16),
        (16, None, 2, 8),
        (16, None, 3, 5),
        (2, None, 4, 1),
        # A container limited to 2.5 CPUs on a 16-core host, and to half a CPU.
        (16, 2.5, 1, 2),
        (16, 0.5, 1, 1),
        (2, 8.0, 1, 2),
    ],
)
def test_threads_follow_the_cores_available(
    affinity: int, quota: float | None, instances: int, threads: int
) -> None:
    cores = available_cores(affinity=affinity, quota=quota)
    assert intra_op_threads(cores, instances) == threads


def test_the_cores_of_this_process_are_its_affinity() -> None:
    import os

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "250000 100000\n"}, 2.5),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v2_and_v1(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path, tmp_path / "no-membership") == limit


def test_the_tightest_quota_on_the_way_up_from_the_process_cgroup_counts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    for directory, text in (("", "max 100000"), ("pod", "300000 100000"), ("pod/app", "max")):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "cpu.max").write_text(text + "\n")
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "cpu.max").write_text("100000 100000\n")  # outside: not counted
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/pod/app\n")
    assert cgroup_cpu_limit(root, membership) == 3.0
    (root / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(root, membership) == 1.5
    (root / "pod" / "cpu.max").write_text("100000 0\n")  # a zero period is no limit
    assert cgroup_cpu_limit(root, membership) == 1.5


def test_instances_count_every_instance_group(tmp_path: Path) -> None:
    config = {"name": "m", "instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}]}
    args = {"model_config": json.dumps(config), "model_repository": str(tmp_path)}
    assert ModelArgs({**args, "model_version": "1"}).instances() == 3
