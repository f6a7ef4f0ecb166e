"""Served models whose tokenization is identical share one tokenizer model, so a host runs
one tokenizer process (and holds one tokenizer in memory) for all of them.

Tokenization is identical when the tokenizer model's files (tokenizer, prompt, processor) and
its configuration (max length, truncation, pair mode, template, instances, batching), all but
its name, are byte for byte the same: a digest of exactly those is the key, so equal
tokenization is shared and different tokenization never is.

A shared tokenizer model is named by that digest (``shared-<digest>__tokenizer``), never by a
model, so rebuilding one of its models with other tokenization gives that model its own
tokenizer again and leaves the others as they were."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.contract.model import TOKENIZER_SUFFIX, ServedModel

SHARED_PREFIX = "shared-"
CONFIG_FILE = "config.pbtxt"


def tokenization_digest(folder: Path) -> str:
    """The digest of a tokenizer model's files and configuration, its name left out."""
    config = text_format.Parse((folder / CONFIG_FILE).read_text(), mc.ModelConfig())
    config.name = ""
    digest = hashlib.sha256(config.SerializeToString(deterministic=True))
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CONFIG_FILE):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def share_tokenizer(model: ServedModel, repository: Path) -> ServedModel:
    """``model`` (just built into ``repository`` with its own tokenizer model), made to use a
    tokenizer model of the same tokenization that the repository already holds, if any."""
    own = repository / model.tokenizer_model
    digest = tokenization_digest(own)
    twin = next(
        (
            other
            # A shared one first: it is the one every model of this tokenization should use.
            for other in sorted(repository.glob("*" + TOKENIZER_SUFFIX), key=_shared_first)
            if other != own
            and (other / CONFIG_FILE).is_file()
            and tokenization_digest(other) == digest
        ),
        None,
    )
    if twin is None:
        return model
    if not twin.name.startswith(SHARED_PREFIX):
        former = twin.name
        twin = _rename(twin, repository / f"{SHARED_PREFIX}{digest[:16]}{TOKENIZER_SUFFIX}")
        _point_ensembles(repository, former, twin.name)
    _point_ensembles(repository, own.name, twin.name)
    shutil.rmtree(own)
    return replace(model, tokenizer=twin.name)


def _shared_first(folder: Path) -> tuple[bool, str]:
    return not folder.name.startswith(SHARED_PREFIX), folder.name


def _rename(folder: Path, target: Path) -> Path:
    """Moves a model's own tokenizer model to its shared name, the configuration's too."""
    folder.rename(target)
    config = text_format.Parse((target / CONFIG_FILE).read_text(), mc.ModelConfig())
    config.name = target.name
    (target / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return target


def _point_ensembles(repository: Path, former: str, tokenizer: str) -> None:
    """Every ensemble that ran the tokenizer model ``former`` runs ``tokenizer`` instead."""
    for path in sorted(repository.glob(f"*/{CONFIG_FILE}")):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        steps = config.ensemble_scheduling.step
        if config.platform != "ensemble" or not any(s.model_name == former for s in steps):
            continue
        for step in steps:
            if step.model_name == former:
                step.model_name = tokenizer
        path.write_text(text_format.MessageToString(config))
