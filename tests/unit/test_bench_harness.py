"""The benchmark's run: how many calls a run makes, how many are in flight at once, which rounds
a case runs in, when a built model is built again, and which targets apply to each CPU kind."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("harness", ROOT / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


class _Calls:
    """Counts calls and the most in flight at once."""

    def __init__(self, concurrency: int) -> None:
        self._lock = threading.Lock()
        # Every worker of a concurrent run is in its call before any returns.
        self._barrier = threading.Barrier(concurrency) if concurrency > 1 else None
        self.made = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def __call__(self) -> None:
        with self._lock:
            self.made += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self._barrier is not None:
            self._barrier.wait(timeout=10)
        with self._lock:
            self.in_flight -= 1


def test_a_run_at_c1_makes_its_calls_one_after_another() -> None:
    harness = _harness()
    calls = _Calls(1)
    case = harness.Case("engine", "model", "a", 1, calls, pairs=100, calls=4)
    case.run()
    case.run()
    assert calls.made == 8 and calls.most_in_flight == 1
    assert len(case.latencies) == 8 and len(case.throughputs) == 2


def test_a_run_makes_one_call_per_worker_unless_told() -> None:
    harness = _harness()
    calls = _Calls(4)
    case = harness.Case("engine", "model", "a", 4, calls, pairs=100)
    case.run()
    assert calls.made == 4 and calls.most_in_flight == 4
    assert len(case.throughputs) == 1


def test_a_case_of_fewer_rounds_runs_in_the_first_ones_and_the_others_in_every_round() -> None:
    harness = _harness()
    every, first_two = _Calls(1), _Calls(1)
    cases = [
        harness.Case("every", "model", "a", 1, every, pairs=100),
        harness.Case("first two", "model", "a", 1, first_two, pairs=100, rounds=2),
    ]
    harness.interleave(cases, 4)
    assert every.made == 1 + 4 and first_two.made == 1 + 2  # a warm-up call, then the runs
    assert [len(case.throughputs) for case in cases] == [4, 2]


def test_bench_rebuilds_a_model_built_under_other_options_and_reuses_a_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker.builder.common import BuildOptions
    from reranker.builder.triton_configs import TritonTuning
    from tests.checkpoints import bert_cross_encoder

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    engines = importlib.import_module("engines")
    checkpoint = bert_cross_encoder(
        tmp_path / "ckpt", hidden=32, layers=1, heads=2, intermediate=64
    )
    repository = tmp_path / "repo"
    config_file = repository / "m__encoder" / "config.pbtxt"

    def spin_us() -> str:
        config = text_format.Parse(config_file.read_text(), mc.ModelConfig())
        return str(config.parameters["intra_op_spin_us"].string_value)

    engines.build_current(checkpoint, BuildOptions(name="m"), repository)
    assert spin_us() == "500"
    built_at = config_file.stat().st_mtime_ns
    engines.build_current(checkpoint, BuildOptions(name="m"), repository)
    assert config_file.stat().st_mtime_ns == built_at  # current: reused
    off = BuildOptions(name="m", tuning=TritonTuning(intra_op_spin_us=0))
    engines.build_current(checkpoint, off, repository)
    assert spin_us() == "0"  # built under other options: rebuilt


# The bf16 targets each CPU kind is not held to, written out by hand: AMX's speedups need
# AMX; every bf16 target needs native BF16; the AVX-512 BF16 bound is for a CPU without AMX.
AMX_TARGETS = {
    "bf16 c=4 / this server fp32 c=4",
    "bf16 c=4 / ORT int8 sorted",
    "DeBERTa bf16 / fp32 (this server)",
}
BF16_TARGETS = AMX_TARGETS | {
    "bf16 c=4, fraction of bf16 GEMM bound",
    "bf16 c=4 / OpenVINO bf16 sorted",
    "bf16 c=4 / Infinity bf16 c=4",
}


@pytest.mark.parametrize(
    ("kind", "not_applicable"),
    [
        ("amx", {"bf16 c=4, fraction of bf16 GEMM bound"}),
        ("avx512-bf16", AMX_TARGETS),
        ("avx2", BF16_TARGETS),
    ],
)
def test_a_report_holds_each_cpu_kind_to_its_own_targets(
    kind: str, not_applicable: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reranker.backend.cpu import CPU_KINDS, faked_cpu

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    report = importlib.import_module("report")
    with faked_cpu(CPU_KINDS[kind]):
        machine = {"cpu": report.cpu_facts()}
    checks = report.targets([], machine)
    assert {c["target"] for c in checks if c["not_applicable"]} == not_applicable
    # What does not apply is never judged, met or not.
    assert all(c["met"] is None for c in checks if c["not_applicable"])


def test_the_shared_service_targets_are_ratios_of_the_same_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    report = importlib.import_module("report")
    figures = {
        "small_alone_p50_ms": 100.0,
        "small_alone_p99_ms": 200.0,
        "beside_large_p50_ms": 250.0,
        "beside_large_p99_ms": 1100.0,
        "urgent_beside_saturation_p50_ms": 190.0,
        "saturating_pairs_per_s": 150.0,
    }
    rows = [
        {"service": "window", **figures},
        {"service": "unbounded", **figures, "saturating_pairs_per_s": 160.0},
    ]
    checks = {c["target"]: c for c in report.targets([], {"shared_service": rows})}
    beside_p50 = checks["small beside 600-doc call, p50 x alone"]
    assert beside_p50["measured"] == 2.5 and beside_p50["met"]
    beside_p99 = checks["small beside 600-doc call, p99 x alone"]
    assert beside_p99["measured"] == 5.5 and not beside_p99["met"]
    assert checks["priority 0 beside saturation, p50 x alone"]["measured"] == 1.9
    throughput = checks["saturating load, window / unbounded"]
    assert throughput["measured"] == 150 / 160 and not throughput["met"]
    # Rounds are paired: the median of each round's ratio, not the ratio of the medians.
    rows[0]["saturating_runs"] = [100.0, 150.0, 200.0]
    rows[1]["saturating_runs"] = [100.0, 160.0, 180.0]
    checks = {c["target"]: c for c in report.targets([], {"shared_service": rows})}
    assert checks["saturating load, window / unbounded"]["measured"] == 1.0
    # A run without the row judges nothing.
    without = {c["target"]: c for c in report.targets([], {})}
    assert without["saturating load, window / unbounded"]["measured"] is None
