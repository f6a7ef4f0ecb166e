"""API key, TLS (and mutual TLS), and what is reachable from outside."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reranker_client import AsyncRerankClient, UnauthenticatedError, UnavailableError

from reranker.builder.builder import DEFAULT_MODEL_NAME
from reranker.service.triton_server import TritonServer
from reranker.settings import Settings
from tests.certificates import make_certificates
from tests.http_errors import error_message
from tests.integration.conftest import Server, rank_server, rank_service, triton_pid

API_KEY = "rk-9f1c2e7a4b5d6c8e0f13a2b4c6d8e0f1"
DOCUMENTS = ["a river meets the sea", "tax forms"]


async def test_api_key_is_required_except_for_health(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with rank_service(
        server.triton_grpc, default_model=DEFAULT_MODEL_NAME, api_key=API_KEY
    ) as address:
        for key in (None, "wrong", API_KEY + "x", API_KEY[:-1]):
            async with AsyncRerankClient(address, api_key=key) as client:
                with pytest.raises(UnauthenticatedError, match="API key"):
                    await client.rank("where do rivers go", DOCUMENTS)
                with pytest.raises(UnauthenticatedError):
                    await client.models()
        async with AsyncRerankClient(address, api_key=API_KEY) as client:
            results = await client.rank("where do rivers go", DOCUMENTS)
            assert results[0]["corpus_id"] == 0
        async with grpc.aio.insecure_channel(address) as channel:
            # Probes need no secret.
            health = health_pb2_grpc.HealthStub(channel)
            status = (await health.Check(health_pb2.HealthCheckRequest())).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in call:
                    pass
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refused /reranker.v1.Rank/Rank" in caplog.text
    assert API_KEY not in caplog.text
    assert API_KEY[:-1] not in caplog.text


HTTP_CALLS = [
    ("POST", "/v2/rerank", {"query": "where do rivers go", "documents": DOCUMENTS}),
    ("POST", "/v1/rerank", {"query": "where do rivers go", "documents": DOCUMENTS}),
    ("POST", "/rerank", {"query": "where do rivers go", "texts": DOCUMENTS}),
    ("POST", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "a"}]}),
    ("GET", "/info", None),
    ("GET", "/v1/models", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


async def test_http_routes_need_the_key_except_health(server: Server) -> None:
    async with rank_server(
        server.triton_grpc, default_model=DEFAULT_MODEL_NAME, api_key=API_KEY
    ) as service:
        base = f"http://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for method, path, body in HTTP_CALLS:
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": API_KEY}):
                    refused = await http.request(method, path, json=body, headers=headers)
                    assert refused.status_code == 401, (path, headers, refused.text)
                    assert "API key" in error_message(path, refused.json())
                allowed = await http.request(
                    method, path, json=body, headers={"authorization": f"Bearer {API_KEY}"}
                )
                assert allowed.status_code == 200, (path, allowed.text)
            assert (await http.get("/health")).status_code == 200


async def test_http_body_limit_matches_grpcs(server: Server) -> None:
    async with rank_server(
        server.triton_grpc, default_model=DEFAULT_MODEL_NAME, max_request_bytes=4096
    ) as service:
        base = f"http://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            body = {"query": "q", "documents": ["word " * 1000]}
            refused = await http.post("/v2/rerank", json=body)
            assert refused.status_code == 413, refused.text
            assert "max_request_bytes=4096" in error_message("/v2/rerank", refused.json())

            async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted as read
                yield b'{"query": "q", "documents": ["'
                for _ in range(10):
                    yield b"word " * 100
                yield b'"]}'

            streamed = await http.post(
                "/v2/rerank", content=chunked(), headers={"content-type": "application/json"}
            )
            assert streamed.status_code == 413, streamed.text
            assert (
                await http.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
            ).is_success


def test_the_key_stays_out_of_reprs_and_tritons_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(api_key=API_KEY)
    assert API_KEY not in repr(settings)
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    assert Settings(api_key_file=str(key_file)).resolved_api_key() == API_KEY
    monkeypatch.setenv("RERANKER_API_KEY", API_KEY)
    assert API_KEY not in TritonServer.environment().values()


async def test_tls_and_mutual_tls(server: Server, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    trusting = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    async with rank_server(
        server.triton_grpc,
        default_model=DEFAULT_MODEL_NAME,
        tls_cert_file=str(certs.server_cert),
        tls_key_file=str(certs.server_key),
    ) as service:
        address = f"127.0.0.1:{service.grpc_port}"
        async with AsyncRerankClient(address, credentials=trusting) as client:
            assert (await client.rank("where do rivers go", DOCUMENTS))[0]["corpus_id"] == 0
        async with AsyncRerankClient(address, timeout=5) as plaintext:
            with pytest.raises(UnavailableError):
                await plaintext.rank("where do rivers go", DOCUMENTS)
        # HTTP takes the same certificate; plaintext HTTP gets no answer.
        body = {"query": "where do rivers go", "documents": DOCUMENTS}
        https = f"https://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(verify=str(certs.ca), timeout=30) as http:
            response = await http.post(https + "/v2/rerank", json=body)
            assert response.status_code == 200
            assert response.json()["results"][0]["index"] == 0
        async with httpx.AsyncClient(timeout=5) as http:
            with pytest.raises(httpx.HTTPError):
                await http.post(f"http://127.0.0.1:{service.http_port}/v2/rerank", json=body)

    async with rank_server(
        server.triton_grpc,
        default_model=DEFAULT_MODEL_NAME,
        tls_cert_file=str(certs.server_cert),
        tls_key_file=str(certs.server_key),
        tls_client_ca_file=str(certs.ca),
    ) as service:
        address = f"127.0.0.1:{service.grpc_port}"
        https = f"https://127.0.0.1:{service.http_port}/v2/rerank"
        async with httpx.AsyncClient(verify=str(certs.ca), timeout=5) as anonymous_http:
            with pytest.raises(httpx.HTTPError):
                await anonymous_http.post(https, json=body)
        client_tls = ssl.create_default_context(cafile=str(certs.ca))
        client_tls.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        async with httpx.AsyncClient(verify=client_tls, timeout=30) as http:
            assert (await http.post(https, json=body)).status_code == 200
        async with AsyncRerankClient(address, credentials=trusting, timeout=5) as anonymous:
            with pytest.raises(UnavailableError):
                await anonymous.rank("where do rivers go", DOCUMENTS)
        with_certificate = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.read_bytes(),
            private_key=certs.client_key.read_bytes(),
            certificate_chain=certs.client_cert.read_bytes(),
        )
        async with AsyncRerankClient(address, credentials=with_certificate) as client:
            assert (await client.rank("where do rivers go", DOCUMENTS))[0]["corpus_id"] == 0


def _listening_addresses(pid: int) -> set[tuple[IPv4Address | IPv6Address, int]]:
    """Local (address, port) of every TCP socket ``pid`` listens on."""
    found: set[tuple[IPv4Address | IPv6Address, int]] = set()
    for connection in psutil.Process(pid).net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN:
            continue
        address = ip_address(connection.laddr.ip)
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        found.add((address, connection.laddr.port))
    return found


def test_triton_listens_on_loopback_only(server: Server) -> None:
    addresses = _listening_addresses(triton_pid(server))
    assert len(addresses) >= 3, addresses  # gRPC, HTTP, metrics
    assert all(address.is_loopback for address, _ in addresses), addresses
    assert int(server.triton_grpc.rsplit(":", 1)[1]) in {port for _, port in addresses}


def test_the_rank_service_exposes_no_triton_api(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(reflection.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        # No inference, model-control or shared-memory API from Triton is proxied.
        assert not any("inference" in name for name in names), names
        triton = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
        with pytest.raises(grpc.RpcError) as raised:
            triton(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
