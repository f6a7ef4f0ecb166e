"""Over what callers call: the TLS files, written once for every door (both serve the same
PEM files). Who may call is :mod:`reranker.service.callers`."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from reranker.settings import Settings


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
