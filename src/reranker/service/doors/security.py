"""Who may call, and over what: the API key check and the TLS files, written once for every
door (gRPC reads the key from call metadata, HTTP from its headers; both serve the same PEM
files)."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from reranker.service.errors import Unauthenticated
from reranker.settings import Settings

AUTHORIZATION = "authorization"


class ApiKey:
    """The key callers present as ``authorization: Bearer KEY`` (empty: no key required)."""

    def __init__(self, key: str) -> None:
        self._expected = f"Bearer {key}".encode() if key else b""

    @property
    def required(self) -> bool:
        return bool(self._expected)

    def check(self, headers: Iterable[tuple[str, str | bytes]]) -> None:
        """Raises :class:`Unauthenticated` unless a required key is among ``headers``."""
        if not self._expected:
            return
        for name, value in headers:
            if name.lower() == AUTHORIZATION:
                presented = value if isinstance(value, bytes) else value.encode()
                if hmac.compare_digest(presented, self._expected):
                    return
        raise Unauthenticated("missing or invalid API key: send 'authorization: Bearer <key>'")


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC server from the settings' PEM files (None: plaintext)."""
    if not settings.tls_cert_file:
        return None
    client_ca = _client_ca(settings)
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """The same TLS, as uvicorn's options (empty: plaintext)."""
    if not settings.tls_cert_file:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": settings.tls_cert_file,
        "ssl_keyfile": settings.tls_key_file,
    }
    client_ca = _client_ca(settings)
    if client_ca is not None:
        options["ssl_ca_certs"] = str(client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def _client_ca(settings: Settings) -> Path | None:
    """The CA bundle client certificates must chain to (mutual TLS), if one is set."""
    return Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
