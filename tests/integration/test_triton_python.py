"""``--triton-python``: the launched Triton's Python-backend models run in that interpreter's
environment (the GPU check gives its stubs numpy 1 this way), not the rank service's."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from reranker.service.triton_server import TritonServer
from reranker.settings import Settings
from tests.launcher import free_port

pytestmark = pytest.mark.integration

# A model that records, as it loads, the environment its stub runs in.
MODEL = """
import json, sys
import numpy
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        record = config["parameters"]["record"]["string_value"]
        import stub_environment_marker
        with open(record, "w") as out:
            json.dump({"prefix": sys.prefix, "numpy": numpy.__version__}, out)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""
CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "X", data_type: TYPE_INT32, dims: [1] }]
output [{ name: "Y", data_type: TYPE_INT32, dims: [1] }]
parameters: { key: "record", value: { string_value: "%s" } }
"""


def an_environment(folder: Path) -> Path:
    """A virtual environment that sees this one's packages, plus a marker module of its own;
    its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "stub_environment_marker.py").write_text("")
    (Path(purelib) / "this-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_models_run_in_the_environment_triton_python_names(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    model = tmp_path / "repository" / "where"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.pbtxt").write_text(CONFIG % record)
    python = an_environment(tmp_path / "stub-environment")
    ports = {name: free_port() for name in ("grpc", "http", "metrics")}
    settings = Settings(
        model_repository=tmp_path / "repository",
        triton_python=str(python),
        triton_grpc_port=ports["grpc"],
        triton_http_port=ports["http"],
        triton_metrics_port=ports["metrics"],
        triton_log=tmp_path / "tritonserver.log",
        triton_startup_timeout_s=60,
    )
    triton = TritonServer(settings)
    try:
        triton.start()  # ready once the model has loaded: it imported the marker
    except RuntimeError:
        pytest.fail((tmp_path / "tritonserver.log").read_text()[-3000:])
    finally:
        triton.stop()
    found = json.loads(record.read_text())
    assert found["prefix"] == str(tmp_path / "stub-environment")
    assert found["numpy"].startswith("1.")
