"""Writes a served model's three Triton models into the repository: their configurations and
the entry points of the Python-backend ones (the artifacts are installed separately)."""

from __future__ import annotations

import py_compile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.builder.triton_configs import (
    TritonTuning,
    encoder_config,
    ensemble_config,
    tokenizer_config,
)
from reranker.contract.model import ServedModel

TOKENIZER_MODULE = "reranker.backend.models.tokenizer"
PROCESSOR_MODULE = "reranker.backend.models.processor"
ENCODER_MODULE = "reranker.backend.models.encoder"
LATE_TOKENIZER_MODULE = "reranker.backend.models.late_tokenizer"
LATE_ENCODER_MODULE = "reranker.backend.models.late_encoder"

_MODEL_PY = '''"""Triton entry point of the {role} model; the logic lives in {module}."""

from {module} import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def write_configs(model: ServedModel, repository: Path, tuning: TritonTuning | None = None) -> None:
    tuning = tuning or TritonTuning()
    encoder_module = None if model.native_encoder else ENCODER_MODULE
    write_models(
        repository,
        [
            (model.name, ensemble_config(model), None),
            (
                model.tokenizer_model,
                tokenizer_config(model, tuning),
                PROCESSOR_MODULE if model.takes_images else TOKENIZER_MODULE,
            ),
            (model.encoder_model, encoder_config(model, tuning), encoder_module),
        ],
    )


def write_models(
    repository: Path, entries: Sequence[tuple[str, mc.ModelConfig, str | None]]
) -> None:
    """Each Triton model's folder: its configuration and, for a Python-backend model, the
    entry point importing ``module`` (None: none)."""
    for directory, config, module in entries:
        version = repository / directory / "1"
        version.mkdir(parents=True, exist_ok=True)
        (repository / directory / "config.pbtxt").write_text(text_format.MessageToString(config))
        if module is not None:
            role = module.rsplit(".", 1)[1]
            entry_point = version / "model.py"
            entry_point.write_text(_MODEL_PY.format(role=role, module=module))
            # Compiled now: a stub compiling it at load would write __pycache__ into the
            # model's folder, and Triton reloads a model whose folder changed when an
            # ensemble using it loads next (a shared tokenizer, and every model using it).
            py_compile.compile(str(entry_point), doraise=True)
        else:
            (version / "model.py").unlink(missing_ok=True)
