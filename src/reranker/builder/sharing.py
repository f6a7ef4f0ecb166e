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
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.contract.model import SHARED_PREFIX, TOKENIZER_SUFFIX, ServedModel

CONFIG_FILE = "config.pbtxt"
# In a tokenizer model built with sharing off.
PRIVATE_MARK = "private"


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
        twin = _copy_as(twin, repository / f"{SHARED_PREFIX}{digest[:16]}{TOKENIZER_SUFFIX}")
        _point_ensembles(repository, former, twin.name)
        shutil.rmtree(repository / former)
    _point_ensembles(repository, own.name, twin.name)
    shutil.rmtree(own)
    return replace(model, tokenizer=twin.name)


def keep_private(model: ServedModel, repository: Path) -> None:
    """Marks ``model``'s own tokenizer model as its alone: a later build never shares it (the
    mark is one of the files the digest reads)."""
    (repository / model.tokenizer_model / PRIVATE_MARK).write_text(model.name + "\n")


def _shared_first(folder: Path) -> tuple[bool, str]:
    return not folder.name.startswith(SHARED_PREFIX), folder.name


def _copy_as(folder: Path, target: Path) -> Path:
    """A copy of a model's own tokenizer model under its shared name (the configuration's
    too), made beside the repository and moved in whole, so no step leaves an ensemble
    pointing at a missing or half-written model: until the ensembles are repointed, they run
    the original, which is removed last."""
    staging = Path(tempfile.mkdtemp(prefix=".sharing-", dir=target.parent.parent)) / target.name
    shutil.copytree(folder, staging)
    config = text_format.Parse((staging / CONFIG_FILE).read_text(), mc.ModelConfig())
    config.name = target.name
    (staging / CONFIG_FILE).write_text(text_format.MessageToString(config))
    staging.rename(target)
    staging.parent.rmdir()
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
        # Replaced whole: a Triton loading the ensemble meanwhile reads the old or the new.
        partial = path.with_name(CONFIG_FILE + ".partial")
        partial.write_text(text_format.MessageToString(config))
        os.replace(partial, path)
