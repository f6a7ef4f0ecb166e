"""API keys and the teams they belong to: the key file, its checks and its reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from reranker.service.callers import ANONYMOUS, Caller, KeyRing, read_key_file
from reranker.service.errors import Unauthenticated

TEAMS = """
[teams.search]
keys = ["sk-search-1", "sk-search-2"]
max_rows_in_flight = 400
priority = 0

[teams.batch]
keys = ["sk-batch"]
priority = 6
"""


def bearer(key: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("Authorization", f"Bearer {key}")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def key_file(tmp_path: Path, text: str = TEAMS) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


def test_no_key_set_lets_everyone_in_as_the_default_team() -> None:
    assert KeyRing().caller([]) == ANONYMOUS
    assert not KeyRing().required


def test_the_single_key_is_the_default_team() -> None:
    ring = KeyRing("s3cret")
    assert ring.caller(bearer("s3cret")) == ANONYMOUS
    for headers in ([], bearer("s3cre"), [("authorization", "s3cret")]):
        with pytest.raises(Unauthenticated):
            ring.caller(headers)


def test_a_key_file_names_each_keys_team_with_its_quota_and_priority(tmp_path: Path) -> None:
    ring = KeyRing("s3cret", key_file(tmp_path))
    search = Caller("search", max_rows_in_flight=400, priority=0)
    assert ring.caller(bearer("sk-search-1")) == search
    assert ring.caller(bearer("sk-search-2")) == search
    assert ring.caller([("authorization", b"Bearer sk-batch")]) == Caller("batch", None, 6)
    assert ring.caller(bearer("s3cret")) == ANONYMOUS  # the single key keeps working
    assert ring.teams() == ["batch", "search"]
    with pytest.raises(Unauthenticated):
        ring.caller(bearer("sk-search-3"))


def test_the_ring_keeps_digests_not_keys(tmp_path: Path) -> None:
    ring = KeyRing(key_file=key_file(tmp_path))
    assert "sk-search-1" not in repr(vars(ring))
    assert all(len(digest) == 64 for digest in read_key_file(tmp_path / "keys.toml"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teams = 3", "teams must be a table"),
        ("[teams.a]\nkeys = []", "teams.a.keys must be a non-empty list"),
        ("[teams.a]\nkeys = ['']", "teams.a.keys must be a non-empty list"),
        ("[teams.a]\nkeys = ['k']\nquota = 3", r"unknown fields: \['quota'\]"),
        ("[teams.a]\nkeys = ['k']\nmax_rows_in_flight = 0", "max_rows_in_flight must be"),
        ("[teams.a]\nkeys = ['k']\npriority = 10", "priority must be 0 to 9"),
        ("[teams.a]\nkeys = ['k']\n[teams.b]\nkeys = ['k']", "also another team's"),
        ("[teams.a\n", "is not TOML"),
    ],
)
def test_a_bad_key_file_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing(key_file=key_file(tmp_path, text))


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_keys(tmp_path: Path) -> None:
    clock = Clock()
    path = key_file(tmp_path)
    ring = KeyRing(key_file=path, clock=clock)
    path.write_text("[teams.search]\nkeys = ['sk-new']\n")
    # Within a second of the last look the file is not read again.
    with pytest.raises(Unauthenticated):
        ring.caller(bearer("sk-new"))
    clock.now += 1.5
    assert ring.caller(bearer("sk-new")).team == "search"
    with pytest.raises(Unauthenticated):
        ring.caller(bearer("sk-batch"))

    path.write_text("[teams.search]\nkeys = 'not a list'\n")
    clock.now += 1.5
    assert ring.caller(bearer("sk-new")).team == "search"
    assert not ring.reload()


def test_reload_reads_the_file_at_once(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    ring = KeyRing(key_file=path, clock=Clock())
    path.write_text("[teams.ops]\nkeys = ['sk-ops']\n")
    assert ring.reload()
    assert ring.caller(bearer("sk-ops")).team == "ops"
    assert not KeyRing("s3cret").reload()
