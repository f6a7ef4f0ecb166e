from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from reranker.settings import SETTINGS, Settings


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings as ``reranker serve`` reads them from a command line and an environment."""
    parser = argparse.ArgumentParser()
    SETTINGS.add_arguments(parser)
    return SETTINGS.resolve(parser.parse_args(list(argv)), environ)


def test_defaults() -> None:
    settings = parse_settings([], {})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"


def test_flag_beats_environment_beats_profile_beats_default(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(
        'grpc_port = 7000\ndefault_model = "from-profile"\nmax_rows_per_request = 8\n'
    )
    environ = {"RERANKER_PROFILE": str(profile), "RERANKER_GRPC_PORT": "7001"}
    settings = parse_settings(["--grpc-port", "7002"], environ)
    assert settings.grpc_port == 7002
    assert settings.default_model == "from-profile"
    assert settings.max_rows_per_request == 8
    assert parse_settings([], environ).grpc_port == 7001
    assert parse_settings([], {"RERANKER_PROFILE": str(profile)}).grpc_port == 7000


def test_types_are_converted(tmp_path: Path) -> None:
    settings = parse_settings(
        ["--model-repository", str(tmp_path), "--inference-timeout-s", "2.5"], {}
    )
    assert settings.model_repository == tmp_path
    assert settings.inference_timeout_s == 2.5


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="grpc_port"):
        parse_settings([], {"RERANKER_GRPC_PORT": "many"})


def test_unknown_profile_keys_are_rejected(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("grpc_prot = 1\n")
    with pytest.raises(ValueError, match="grpc_prot"):
        parse_settings(["--profile", str(profile)], {})


def test_shipped_profiles_parse() -> None:
    root = Path(__file__).parents[2] / "server_config"
    profiles = sorted(root.glob("*.toml"))
    assert profiles
    for profile in profiles:
        parse_settings(["--profile", str(profile)], {})


def test_the_launching_gpu_profile_waits_longer_for_triton_than_the_default() -> None:
    root = Path(__file__).parents[2] / "server_config"
    gpu = parse_settings(["--profile", str(root / "gpu-pip.toml")], {})
    assert gpu.triton_url == ""  # it launches Triton
    assert gpu.triton_startup_timeout_s >= 600 > Settings().triton_startup_timeout_s
