"""Which runtime serves which precision, the CPU capability check and bf16's refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.backend.cpu import (
    CPU_KINDS,
    bf16_hint,
    cpu_flags,
    cpu_kind,
    cpu_precisions,
    faked_cpu,
    has_amx,
    has_native_bf16,
)
from reranker.backend.runtimes import cpu_runtime, create_session
from reranker.builder.common import BuildError, BuildOptions
from reranker.builder.install import check_precision
from reranker.builder.triton_configs import encoder_config
from reranker.contract.model import Activation, Device, ModelKind, Precision, Runtime, ServedModel

MODEL = ServedModel("m", ModelKind.CROSS_ENCODER, "Bert", 512, Activation.SIGMOID, ("input_ids",))

CPUINFO = """processor	: 0
vendor_id	: GenuineIntel
flags		: fpu vme avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bugs		: spectre_v1
"""


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    flags = cpu_flags(path)
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= flags and "spectre_v1" not in flags
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "bf16", "amx"),
    [
        ({"avx512f", "avx512_vnni"}, False, False),
        ({"avx512f", "avx512_bf16"}, True, False),
        ({"amx_bf16", "amx_tile", "avx512_bf16"}, True, True),
    ],
)
def test_native_bf16_needs_amx_or_avx512_bf16(flags: set[str], bf16: bool, amx: bool) -> None:
    assert has_native_bf16(flags) is bf16
    assert has_amx(flags) is amx


def test_each_precision_has_one_cpu_runtime() -> None:
    assert cpu_runtime(Precision.FP32) == (Runtime.ONNX, "f32")
    assert cpu_runtime(Precision.INT8) == (Runtime.ONNX, "f32")
    assert cpu_runtime(Precision.BF16) == (Runtime.OPENVINO, "bf16")


def test_the_encoder_config_names_its_runtime() -> None:
    for precision, runtime, hint in (
        (Precision.FP32, "onnx", "f32"),
        (Precision.BF16, "openvino", "bf16"),
    ):
        text = text_format.MessageToString(encoder_config(replace(MODEL, precision=precision)))
        config = text_format.Parse(text, mc.ModelConfig())
        assert config.parameters["runtime"].string_value == runtime
        assert config.parameters["inference_precision"].string_value == hint


def test_a_repository_built_before_onnx_runtime_was_named_onnx_still_loads() -> None:
    assert Runtime("onnxruntime") is Runtime.ONNX
    with pytest.raises(ValueError):
        Runtime("tensorrt")


# What each CPU kind decides, written out by hand: bf16 built or refused, the bf16 hint.
KIND_DECISIONS = [
    ("amx", True, True),
    ("avx512-bf16", True, False),
    ("avx2", False, False),
]


@pytest.mark.parametrize(("kind", "bf16_served", "hints_bf16"), KIND_DECISIONS)
def test_each_cpu_kind_decides_alike_on_any_machine(
    kind: str, bf16_served: bool, hints_bf16: bool
) -> None:
    bf16 = BuildOptions(name="m", precision=Precision.BF16)
    with faked_cpu(CPU_KINDS[kind]):
        assert cpu_kind(cpu_flags()) == kind
        assert (Precision.BF16 in cpu_precisions(cpu_flags())) is bf16_served
        assert {Precision.FP32, Precision.INT8} <= set(cpu_precisions(cpu_flags()))
        check_precision(BuildOptions(name="m"))  # fp32 needs nothing
        if bf16_served:
            check_precision(bf16)
        else:
            with pytest.raises(BuildError, match="emulated"):
                check_precision(bf16)
        assert (bf16_hint(cpu_flags(), ["minilm"]) is not None) is hints_bf16
    with pytest.raises(BuildError, match="on GPU use fp16"):
        check_precision(replace(bf16, device=Device.GPU))


def test_a_faked_cpu_ends_with_its_block(tmp_path: Path) -> None:
    host = cpu_flags()
    with faked_cpu(CPU_KINDS["avx2"]):
        with faked_cpu(CPU_KINDS["amx"]):
            assert cpu_flags() == CPU_KINDS["amx"]
        assert cpu_flags() == CPU_KINDS["avx2"]
        # A file read is never faked.
        (tmp_path / "cpuinfo").write_text(CPUINFO)
        assert "fpu" in cpu_flags(tmp_path / "cpuinfo")
    assert cpu_flags() == host


def test_serve_hints_bf16_only_for_fp32_models_on_amx() -> None:
    amx = {"amx_bf16", "amx_tile", "avx512_bf16"}
    hint = bf16_hint(amx, ["minilm", "deberta"])
    assert hint is not None and "deberta, minilm are served in fp32" in hint
    assert "--precision bf16" in hint and "\n" not in hint
    assert bf16_hint({"avx512_bf16"}, ["minilm"]) is None  # no AMX: the gain is smaller
    assert bf16_hint(amx, []) is None


def _identity_graph(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [tensor], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def test_idle_worker_threads_spin_a_bounded_time_or_not_at_all(tmp_path: Path) -> None:
    # Left unbounded, ONNX Runtime's workers spin tens of milliseconds after every run.
    graph = _identity_graph(tmp_path / "g.onnx")
    spinning = create_session(graph, 2, 500).get_session_options()
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.get_session_config_entry("session.intra_op.spin_duration_us") == "500"
    sleeping = create_session(graph, 2, 0).get_session_options()
    assert sleeping.get_session_config_entry("session.intra_op.allow_spinning") == "0"
