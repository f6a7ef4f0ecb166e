"""The OpenAPI description tells the truth: schemathesis, run against the live server with
positive and negative data and every check (status codes, content types, response schemas,
no server errors, schema-valid requests accepted and invalid ones rejected), finds nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.generated

ROOT = Path(__file__).parents[2]


# A hang guard over ~1,000 generated requests, many of them real inference: their time follows
# the CPU's speed; the suite's 600 s per-test default would cut the run short of its own limit.
RUN_GUARD_S = 900


@pytest.mark.timeout(RUN_GUARD_S + 60)
def test_schemathesis_finds_no_failure_in_any_route(server: Server, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
    }
    command = [
        str(schemathesis),
        "run",
        f"{server.http_url}/openapi.json",
        "--checks=all",
        "--mode=all",
        "--max-examples=100",
        "--seed=20261201",
        "--workers=1",
        "--request-timeout=60",
        "--report=junit",
        f"--report-dir={tmp_path}",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=RUN_GUARD_S, cwd=tmp_path
    )
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout, report
    generated, passed = re.search(r"(\d+) generated, (\d+) passed", run.stdout).groups()  # type: ignore[union-attr]
    assert int(generated) == int(passed) > 1000, report
