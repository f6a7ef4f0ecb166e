"""Reading a Triton model's configuration as the Python backend hands it over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelArgs:
    """The ``args`` of ``TritonPythonModel.initialize``, parsed."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.version_dir = Path(args["model_repository"]) / args["model_version"]

    def parameter(self, key: str, default: str | None = None) -> str:
        entry = self.config.get("parameters", {}).get(key)
        if entry is None:
            if default is None:
                raise ValueError(f"model {self.config['name']}: parameter {key!r} is required")
            return default
        return str(entry["string_value"])

    def output_names(self) -> list[str]:
        return [output["name"] for output in self.config["output"]]

    def input_names(self) -> list[str]:
        return [item["name"] for item in self.config["input"]]
