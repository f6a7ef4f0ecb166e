"""A Triton model's configuration as the Python backend hands it to ``initialize``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from reranker.backend.cpu import available_cores, intra_op_threads
from reranker.contract.parameters import from_parameters

Params = TypeVar("Params")


class ModelArgs:
    """The ``args`` of ``TritonPythonModel.initialize``, parsed."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.name = str(self.config["name"])
        self.version_dir = Path(args["model_repository"]) / args["model_version"]

    def raw_parameters(self) -> dict[str, str]:
        return {
            key: str(entry["string_value"])
            for key, entry in self.config.get("parameters", {}).items()
        }

    def parameters(self, kind: type[Params]) -> Params:
        """The model's parameters, parsed once into ``kind`` (fails the load if invalid)."""
        return from_parameters(kind, self.raw_parameters(), self.name)

    def instances(self) -> int:
        """The model's instances on this server, every instance group counted."""
        return sum(int(group.get("count", 1)) for group in self.config.get("instance_group", []))

    def output_names(self) -> list[str]:
        return [output["name"] for output in self.config["output"]]

    def input_names(self) -> list[str]:
        return [item["name"] for item in self.config["input"]]


def runtime_threads(model: ModelArgs, configured: int) -> int:
    """The configured thread count, or (0) an equal share of the cores this process may use
    now, which follows the host or container the server starts on."""
    if configured > 0:
        return configured
    cores, instances = available_cores(), max(1, model.instances())
    threads = intra_op_threads(cores, instances)
    print(
        f"{model.name}: {instances} instance(s) x {threads} intra-op thread(s) "
        f"on {cores} available core(s)",
        file=sys.stderr,
        flush=True,
    )
    return threads
