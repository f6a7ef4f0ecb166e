"""The server's settings: one frozen object, parsed once at the entry point.

Every setting is a command-line flag and an environment variable with the ``RERANKER_``
prefix (flag ``--grpc-port`` is ``RERANKER_GRPC_PORT``). A flag beats the environment,
the environment beats a profile file (``--profile``, TOML), and that beats the default.
The build's Triton tuning (:class:`reranker.builder.triton_configs.TritonTuning`) is read the
same way, with its file option ``--tuning``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

ENV_PREFIX = "RERANKER_"


def option(default: Any, help: str, **field_options: Any) -> Any:
    """A field of an options dataclass with its help text, which becomes its flag's help."""
    return field(default=default, metadata={"help": help}, **field_options)


@dataclass(frozen=True)
class Settings:
    """Settings of the rank service and the Triton server it launches."""

    host: str = option("127.0.0.1", "address the rank service binds")
    grpc_port: int = option(50051, "rank service port (0 picks one)")
    http_port: int = option(
        8080,
        "HTTP/JSON port of the rank service (Cohere, Jina, TEI and NIM shapes) on "
        "host, with the same TLS files (0 picks one, -1: off)",
    )
    model_repository: Path = option(Path("model_repository"), "Triton model repository")
    default_model: str = option(
        "", "model used when a request names none (empty: the only one served)"
    )
    pin: str = option(
        "",
        "models loaded at start and never unloaded, comma-separated ('*': every model); the "
        "default model is always pinned. Any other model of the repository loads on its first "
        "call. With no default model and no pin, every model loads at start",
    )
    max_loaded_models: int = option(
        0,
        "most served models resident at once (0: no bound); to load another, the least "
        "recently used model that is not pinned and has no call in flight is unloaded",
    )
    memory_budget_mb: int = option(
        0,
        "most resident memory of the launched Triton and its model processes, in MB (0: no "
        "bound); to load another model past it, least recently used models are unloaded as "
        "with max_loaded_models (a model's size is learned at its first load)",
    )
    model_load_timeout_s: float = option(
        120.0, "how long a call waits for its model to load before UNAVAILABLE (retry hint)"
    )
    model_load_retry_s: float = option(
        30.0, "after a model failed to load, how long its calls get that error before a retry"
    )
    triton_url: str = option(
        "",
        "gRPC endpoint of running Triton(s): host:port, ip:port,ip:port (replicas, "
        "round robin) or a gRPC target such as dns:///triton:8001; empty launches one",
    )
    triton_grpc_port: int = option(8001, "gRPC port of launched Triton")
    triton_http_port: int = option(8000, "HTTP port of launched Triton")
    triton_metrics_port: int = option(8002, "metrics port of launched Triton")
    triton_log: Path = option(Path("logs/tritonserver.log"), "log file of launched Triton")
    triton_startup_timeout_s: float = option(120.0, "how long to wait for Triton to become ready")
    triton_python: str = option(
        "",
        "Python interpreter of the environment launched Triton's Python-backend models run in "
        "(empty: this one's); its folder goes first on Triton's PATH, where they find it",
    )
    max_rows_per_request: int = option(
        32, "largest inference request a call is split into (capped by the model)"
    )
    requests_in_flight_per_model: int = option(
        4,
        "inference requests of one model at Triton at once; a call's further "
        "requests wait their turn: the most urgent priority first, then calls in turn, so "
        "a small call waits only for requests already sent, not a large call's queue",
    )
    max_chunks_per_document: int = option(16, "most windows a chunked document is scored in")
    chunk_overlap_tokens: int = option(32, "tokens consecutive windows share unless a call says")
    inference_timeout_s: float = option(
        60.0, "upper bound for one call's inference when no deadline"
    )
    shutdown_grace_s: float = option(5.0, "time in-flight calls get to finish on shutdown")
    metrics_port: int = option(
        8003, "Prometheus /metrics port of the rank service, on host (-1: off)"
    )
    health_interval_s: float = option(
        2.0, "seconds between canary checks of a model that answered no call since"
    )
    # Limits. A call over one is refused with a message naming the limit and the value.
    max_documents_per_call: int = option(1000, "most documents one rank call may carry")
    max_query_bytes: int = option(64 * 1024, "largest query, in UTF-8 bytes")
    max_document_bytes: int = option(1024 * 1024, "largest document, in UTF-8 bytes")
    max_image_bytes: int = option(
        16 * 1024 * 1024, "largest image (query or document), encoded, in bytes"
    )
    max_image_pixels: int = option(
        32 * 1024 * 1024,
        "most pixels (width x height) of an image, read from its header before it is decoded",
    )
    max_request_bytes: int = option(
        32 * 1024 * 1024, "largest serialized rank request (gRPC max receive message size)"
    )
    max_rows_in_flight: int = option(
        1024,
        "rows (query-document pairs, chunks included) being scored at once; "
        "a call that does not fit is refused with RESOURCE_EXHAUSTED at once",
    )
    # Security.
    api_key: str = option(
        "", "callers must send 'authorization: Bearer KEY' (empty: no key)", repr=False
    )
    api_key_file: str = option("", "file holding the API key (beats api_key)")
    api_keys_file: str = option(
        "",
        "TOML file of named keys: [teams.NAME] keys = [...], optional "
        "max_rows_in_flight (the team's quota) and priority (its default); read again on "
        "SIGHUP and when it changes. Beside api_key, whose callers are team 'default'",
    )
    tls_cert_file: str = option("", "PEM certificate chain: serve TLS (with tls_key_file)")
    tls_key_file: str = option("", "PEM private key for TLS")
    tls_client_ca_file: str = option("", "PEM CA bundle: require client certificates (mTLS)")
    # Tracing.
    otlp_endpoint: str = option(
        "",
        "OTLP/HTTP collector (http://host:4318) that receives the traces of every "
        "call; a launched Triton exports its own spans there too (empty: no tracing)",
    )
    log_level: str = option("INFO", "logging level")

    def __post_init__(self) -> None:
        for name in (
            "max_rows_per_request",
            "requests_in_flight_per_model",
            "max_documents_per_call",
            "max_query_bytes",
            "max_document_bytes",
            "max_image_bytes",
            "max_image_pixels",
            "max_request_bytes",
            "max_rows_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_documents_per_call > self.max_rows_in_flight:
            raise ValueError(
                f"setting max_documents_per_call ({self.max_documents_per_call}) exceeds "
                f"max_rows_in_flight ({self.max_rows_in_flight}): such a call could never run"
            )
        for name in ("max_loaded_models", "memory_budget_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name} must be >= 0, got {getattr(self, name)}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("settings tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("setting tls_client_ca_file needs tls_cert_file and tls_key_file")

    def resolved_api_key(self) -> str:
        """The API key callers must present ('' when none is required)."""
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip()
        return self.api_key


Options = TypeVar("Options")


@dataclass(frozen=True)
class OptionSource(Generic[Options]):
    """How one frozen options dataclass is read at the entry point: a flag per field, an
    environment variable per field (``RERANKER_`` + its name), and a TOML file named by
    ``--<file_option>`` or ``RERANKER_<FILE_OPTION>``. A flag beats the environment, the
    environment beats the file, and that beats the field's default."""

    kind: type[Options]
    file_option: str
    file_help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds one flag per field (defaults left unset so precedence can be resolved)."""
        group = parser.add_argument_group(self.kind.__name__)
        group.add_argument(
            "--" + self.file_option.replace("_", "-"), type=Path, help=self.file_help
        )
        for spec in dataclasses.fields(self.kind):  # type: ignore[arg-type]
            env = ENV_PREFIX + spec.name.upper()
            default = _shown(_default(spec))
            # argparse expands %-formats in help: a literal % (say, a measured gain) doubles.
            text = f"{spec.metadata.get('help', '')} [env {env}, default {default}]"
            group.add_argument(
                "--" + spec.name.replace("_", "-"),
                dest=spec.name,
                default=None,
                help=text.replace("%", "%%"),
            )

    def resolve(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
        """Every field: flag, then environment, then file, then default."""
        values: dict[str, Any] = {}
        fields = {spec.name: spec for spec in dataclasses.fields(self.kind)}  # type: ignore[arg-type]
        file = getattr(args, self.file_option, None) or _env_path(environ, self.file_option)
        if file is not None:
            with open(file, "rb") as handle:
                table = tomllib.load(handle)
            unknown = set(table) - set(fields)
            if unknown:
                raise ValueError(f"{self.file_option} {file}: unknown settings {sorted(unknown)}")
            values.update(table)
        for name in fields:
            env = environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
            flag = getattr(args, name, None)
            if flag is not None:
                values[name] = flag
        return self.kind(
            **{name: _convert(name, _default(fields[name]), raw) for name, raw in values.items()}
        )


SETTINGS = OptionSource(Settings, "profile", "TOML file of settings (a launch profile)")


def _default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(name: str, default: Any, raw: Any) -> Any:
    """``raw`` (a string from a flag or the environment, or a TOML value) as the type of the
    field's default; a tuple of ints is written ``64,128,256``."""
    kind = type(default)
    try:
        if isinstance(default, bool) and isinstance(raw, str):
            return _BOOLEANS[raw.strip().lower()]
        if isinstance(default, tuple):
            if isinstance(raw, str):
                return tuple(int(part) for part in raw.split(",") if part.strip())
            return tuple(int(item) for item in raw)
        return raw if isinstance(raw, kind) else kind(raw)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {kind.__name__}") from error


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(ENV_PREFIX + name.upper())
    return Path(value) if value else None
