"""The whole suite's order and header: unit tests first, and a unit failure ends the run
before any server starts; the generated-input suites (schemathesis, hypothesis, the GPU dry
run) last, in their own group (``-m "not generated"`` leaves them out). The header names
the CPU the run is on, since which precisions are built and which numerics apply follow
that CPU's kind."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from reranker.backend.cpu import MATRIX_FEATURES, cpu_flags, cpu_kind

_UNIT_FAILURES = pytest.StashKey[list[str]]()


def _is_unit(item: pytest.Item) -> bool:
    return item.path.parent.name == "unit"


def _stage(item: pytest.Item) -> int:
    if _is_unit(item):
        return 0
    return 2 if item.get_closest_marker("generated") else 1


def pytest_report_header(config: pytest.Config) -> str:
    flags = cpu_flags()
    features = ", ".join(sorted(flags & MATRIX_FEATURES)) or "none"
    return f"CPU kind: {cpu_kind(flags)} (matrix features: {features})"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_UNIT_FAILURES] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_stage)  # stable: each stage keeps its modules' order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _is_unit(item):
        item.config.stash[_UNIT_FAILURES].append(item.nodeid)
    return report


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    failures = item.config.stash[_UNIT_FAILURES]
    if failures and nextitem is not None and not _is_unit(nextitem):
        item.session.shouldstop = (
            f"{len(failures)} unit test(s) failed: the integration tests are not run"
        )
