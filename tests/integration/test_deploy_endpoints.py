"""The health checks the deployment artifacts run (compose, Helm, Dockerfiles) hit endpoints
that exist and answer as expected on a real server."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.integration.conftest import Server, free_port

ROOT = Path(__file__).parents[2]


def test_tritons_health_endpoints_answer(server: Server) -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    ready_url = compose["services"]["triton"]["healthcheck"]["test"][-1]
    assert ready_url == "http://127.0.0.1:8000/v2/health/ready"
    for path in ("/v2/health/ready", "/v2/health/live"):
        with urllib.request.urlopen(server.triton_http_url + path, timeout=10) as response:
            assert response.status == 200


def test_the_rank_service_health_command_reports_serving(server: Server) -> None:
    command = [sys.executable, "-m", "reranker", "health", "--address"]
    serving = subprocess.run([*command, server.address], capture_output=True, text=True)
    assert serving.returncode == 0, serving.stderr
    assert "SERVING" in serving.stdout
    nobody = subprocess.run(
        [*command, f"127.0.0.1:{free_port()}", "--timeout-s", "1"], capture_output=True, text=True
    )
    assert nobody.returncode == 1
    assert "UNAVAILABLE" in nobody.stderr
