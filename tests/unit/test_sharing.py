"""Tokenizer sharing in a repository: keyed by the tokenizer model's files and configuration
(not its name), named by the digest, and undone for a model rebuilt with other tokenization."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.builder.common import BuildError, BuildOptions
from reranker.builder.repository import write_configs
from reranker.builder.sharing import keep_private, share_tokenizer, tokenization_digest
from reranker.contract.model import SHARED_PREFIX, TOKENIZER_FILE, ServedModel
from reranker.service.triton_models import describe
from tests.unit.test_repository import MODEL


def built(model: ServedModel, repository: Path, vocabulary: str = "v1") -> ServedModel:
    """``model``'s configurations and a tokenizer file, as a build leaves them."""
    write_configs(model, repository)
    (repository / model.tokenizer_model / "1" / TOKENIZER_FILE).write_text(vocabulary)
    return share_tokenizer(model, repository)


def ensemble_tokenizer(repository: Path, name: str) -> str:
    config = text_format.Parse((repository / name / "config.pbtxt").read_text(), mc.ModelConfig())
    model = describe(config)
    assert model is not None
    return model.tokenizer_model


def test_models_of_one_tokenization_share_one_tokenizer_model(tmp_path: Path) -> None:
    a = built(replace(MODEL, name="a"), tmp_path)
    assert a.tokenizer == "" and (tmp_path / "a__tokenizer").is_dir(), "alone: its own"
    b = built(replace(MODEL, name="b"), tmp_path)
    assert b.tokenizer.startswith(SHARED_PREFIX)
    assert ensemble_tokenizer(tmp_path, "a") == ensemble_tokenizer(tmp_path, "b") == b.tokenizer
    assert sorted(p.name for p in tmp_path.glob("*__tokenizer")) == [b.tokenizer]
    shared = tmp_path / b.tokenizer
    config = text_format.Parse((shared / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == b.tokenizer
    c = built(replace(MODEL, name="c"), tmp_path)
    assert c.tokenizer == b.tokenizer, "a third joins the shared one"


def test_other_tokenization_is_never_shared(tmp_path: Path) -> None:
    built(replace(MODEL, name="a"), tmp_path)
    longer = built(replace(MODEL, name="longer", max_length=256), tmp_path)
    other_files = built(replace(MODEL, name="other"), tmp_path, vocabulary="v2")
    assert longer.tokenizer == other_files.tokenizer == ""
    assert ensemble_tokenizer(tmp_path, "a") == "a__tokenizer"
    digests = {tokenization_digest(p) for p in tmp_path.glob("*__tokenizer")}
    assert len(digests) == 3


def test_a_model_rebuilt_with_other_tokenization_leaves_the_shared_one(tmp_path: Path) -> None:
    built(replace(MODEL, name="a"), tmp_path)
    b = built(replace(MODEL, name="b"), tmp_path)
    rebuilt = built(replace(MODEL, name="a"), tmp_path, vocabulary="v2")
    assert rebuilt.tokenizer == "" and ensemble_tokenizer(tmp_path, "a") == "a__tokenizer"
    assert ensemble_tokenizer(tmp_path, "b") == b.tokenizer
    assert (tmp_path / b.tokenizer / "1" / TOKENIZER_FILE).read_text() == "v1"


def test_a_model_built_with_sharing_off_keeps_its_tokenizer_model_to_itself(tmp_path: Path) -> None:
    alone = replace(MODEL, name="alone")
    write_configs(alone, tmp_path)
    (tmp_path / alone.tokenizer_model / "1" / TOKENIZER_FILE).write_text("v1")
    keep_private(alone, tmp_path)
    later = built(replace(MODEL, name="later"), tmp_path)
    assert later.tokenizer == "" and ensemble_tokenizer(tmp_path, "alone") == "alone__tokenizer"
    with pytest.raises(BuildError, match="may not start with 'shared-'"):
        BuildOptions(name="shared-model")
