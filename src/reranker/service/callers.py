"""Who is calling: the team an API key belongs to, with its quota of rows in flight and its
default priority.

Keys come from the single ``api_key`` setting (its callers are the team ``default``) and
from a key file (``api_keys_file``, TOML), a table per team::

    [teams.search]
    keys = ["sk-search-1", "sk-search-2"]
    max_rows_in_flight = 400   # optional: the team's rows being scored at once
    priority = 0               # optional: its calls' priority when they name none

The file is read again on SIGHUP and when it changes (checked at most once a second, on a
call); a file that no longer reads keeps the keys in force and is logged. Keys are kept only
as their SHA-256 digests, and metrics and traces name the team, never the key.

The team of the call being served is a context variable, set by the gate every door passes
through and read by the core.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.service.calls import MAX_PRIORITY
from reranker.service.errors import Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
DEFAULT_TEAM = "default"
_BEARER = "Bearer "
# How often a call may look at the key file for a change.
_CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Caller:
    team: str = DEFAULT_TEAM
    # Rows of this team's calls being scored at once (None: only the server's limit).
    max_rows_in_flight: int | None = None
    # The priority of its calls that name none.
    priority: int = 0


ANONYMOUS = Caller()
_CURRENT: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the call being served (:data:`ANONYMOUS` outside a gate)."""
    return _CURRENT.get()


@contextlib.contextmanager
def calling_as(caller: Caller) -> Iterator[None]:
    token = _CURRENT.set(caller)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _team(name: str, table: Any) -> tuple[list[str], Caller]:
    if not isinstance(table, dict):
        raise ValueError(f"teams.{name} must be a table")
    unknown = set(table) - {"keys", "max_rows_in_flight", "priority"}
    if unknown:
        raise ValueError(f"teams.{name} has unknown fields: {sorted(unknown)}")
    keys = table.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"teams.{name}.keys must be a non-empty list of non-empty strings")
    quota = table.get("max_rows_in_flight")
    if quota is not None and (not isinstance(quota, int) or quota < 1):
        raise ValueError(f"teams.{name}.max_rows_in_flight must be a whole number >= 1")
    priority = table.get("priority", 0)
    if not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"teams.{name}.priority must be 0 to {MAX_PRIORITY}")
    return keys, Caller(name, quota, priority)


def read_key_file(path: Path) -> dict[str, Caller]:
    """The callers of a key file, by their key's digest.

    Raises:
        ValueError: the file is not a key file as the module documents it; names what.
        OSError: it cannot be read.
    """
    try:
        teams = tomllib.loads(path.read_text()).get("teams", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not TOML: {error}") from None
    if not isinstance(teams, dict):
        raise ValueError(f"{path}: teams must be a table of tables")
    callers: dict[str, Caller] = {}
    for name, table in teams.items():
        keys, caller = _team(name, table)
        for key in keys:
            digest = _digest(key)
            if digest in callers:
                raise ValueError(f"{path}: a key of teams.{name} is also another team's")
            callers[digest] = caller
    return callers


class KeyRing:
    """The keys callers may present as ``authorization: Bearer KEY``, and whose they are."""

    def __init__(
        self,
        single_key: str = "",
        key_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._single = f"{_BEARER}{single_key}".encode() if single_key else b""
        self._file = key_file
        self._clock = clock
        self._callers: dict[str, Caller] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = clock()
        if key_file is not None:
            self._callers = read_key_file(key_file)  # a bad file stops the start
            self._stamp = self._file_stamp()

    @property
    def required(self) -> bool:
        return bool(self._single) or self._file is not None

    def teams(self) -> list[str]:
        return sorted({caller.team for caller in self._callers.values()})

    def caller(self, headers: Iterable[tuple[str, str | bytes]]) -> Caller:
        """The caller presenting ``headers``; :data:`ANONYMOUS` when no key is required.

        Raises:
            Unauthenticated: a key is required and none of those presented is known.
        """
        if not self.required:
            return ANONYMOUS
        self._reload_if_changed()
        for name, value in headers:
            if name.lower() != AUTHORIZATION:
                continue
            presented = value if isinstance(value, bytes) else value.encode()
            if self._single and hmac.compare_digest(presented, self._single):
                return ANONYMOUS
            if presented.startswith(_BEARER.encode()):
                key = presented[len(_BEARER) :].decode("utf-8", "replace")
                found = self._callers.get(_digest(key))
                if found is not None:
                    return found
        raise Unauthenticated("missing or invalid API key: send 'authorization: Bearer <key>'")

    def reload(self) -> bool:
        """Reads the key file again; a file that does not read leaves the keys as they were."""
        if self._file is None:
            return False
        try:
            callers = read_key_file(self._file)
        except (OSError, ValueError) as error:
            log.error("API key file not reloaded, the keys in force stay: %s", error)
            return False
        self._callers, self._stamp = callers, self._file_stamp()
        log.info("API keys reloaded from %s: teams %s", self._file, ", ".join(self.teams()))
        return True

    def _file_stamp(self) -> tuple[int, int] | None:
        assert self._file is not None
        try:
            status = self._file.stat()
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if self._file is None or now - self._checked < _CHECK_INTERVAL_S:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp != self._stamp:
            # Taken before the read, so a file that does not read is logged once per change.
            self._stamp = stamp
            self.reload()
