"""``bench/gpu_check`` refuses, before it installs anything, a machine whose protobuf or grpcio
is older than the generated code it will import needs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]
TRITON_GRPC = """
_runtime_version.ValidateProtobufRuntimeVersion(
    _runtime_version.Domain.PUBLIC,
    6,
    33,
    0,
    '',
    'grpc_service.proto'
)
GRPC_GENERATED_VERSION = '1.81.1'
"""


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """The check's module that reads the machine (``bench/gpucheck/machine.py``)."""
    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("gpucheck.machine")


def test_the_newest_generator_sets_the_least_runtime(gpu_check: ModuleType) -> None:
    ours = (ROOT / "api" / "reranker_api" / "reranker" / "v1" / "reranker_pb2_grpc.py").read_text()
    assert gpu_check.needed_versions([ours, TRITON_GRPC]) == {
        "grpcio": (1, 81, 1),
        "protobuf": (6, 33, 0),
    }


def test_an_old_grpcio_is_refused_by_name_and_this_machine_passes(
    gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check.check_versions(None)  # the versions installed here load everything
    real = importlib.metadata.version

    def older(package: str) -> str:
        return "1.80.0" if package == "grpcio" else real(package)

    monkeypatch.setattr(gpu_check, "_generated_texts", lambda kit: [TRITON_GRPC])
    monkeypatch.setattr(importlib.metadata, "version", older)
    with pytest.raises(SystemExit, match=r"grpcio 1\.80\.0 is older than 1\.81\.1"):
        gpu_check.check_versions(None)


def test_gpu_memory_is_told_by_model_from_the_processes_that_hold_it(
    gpu_check: ModuleType,
) -> None:
    stub = "/opt/tritonserver/backends/python/triton_python_backend_stub"
    cmdlines = {
        10: ["/opt/tritonserver/bin/tritonserver", "--model-repository=/r"],
        11: [stub, "/r/a__encoder/1/model.py", "x"],
        12: [stub, "/r/b__encoder/1/model.py", "x"],
        13: [stub, "/r/a__encoder/1/model.py", "x"],  # a second instance of a's encoder
    }
    used = {10: 300.0, 11: 500.0, 12: 450.0, 13: 480.0, 99: 7.0}
    assert gpu_check.memory_by_model(used, cmdlines) == {
        "tritonserver": 300.0,
        "a__encoder": 980.0,
        "b__encoder": 450.0,
        "pid 99": 7.0,
    }


def test_an_old_grpcio_passes_where_the_kit_carries_a_newer_one(
    gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.metadata.version

    def older(package: str) -> str:
        return "1.80.0" if package == "grpcio" else real(package)

    monkeypatch.setattr(gpu_check, "_generated_texts", lambda kit: [TRITON_GRPC])
    monkeypatch.setattr(importlib.metadata, "version", older)
    assert set(gpu_check.outdated(tmp_path)) == {"grpcio"}
    (tmp_path / "kit.json").write_text('{"fallback": {"grpcio": "1.85.1"}}')
    gpu_check.check_versions(tmp_path)  # the kit's grpcio is installed in its place
    (tmp_path / "kit.json").write_text('{"fallback": {"protobuf": "6.33.6"}}')
    with pytest.raises(SystemExit, match=r"grpcio 1\.80\.0 is older"):
        gpu_check.check_versions(tmp_path)
