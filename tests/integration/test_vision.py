"""Vision-language rerankers end to end: a Qwen3-VL-Reranker layout and a Qwen2-VL one (the
jina-reranker-m0 lineage), each seeded and built here with real transformers classes, built
by the real builder, served through Triton and matched against ``CrossEncoder.predict`` on
the same directory: images as documents, as the query, beside a caption, and text alone, in
mixed lists; the same pair alone and merged with other calls; every encoding the API takes;
every bad image refused by name over gRPC and HTTP while the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc
from sentence_transformers import CrossEncoder

from reranker.builder.builder import BuildOptions, build
from tests.checkpoints import qwen2_vl_reranker, qwen3_vl_reranker
from tests.integration.conftest import Server, fp32_reordering_bound, start_server, stop_server
from tests.model_cache import cached_build

TOLERANCE = 1e-5
MODELS = ("qwen3-vl", "qwen2-vl")
TEXT_MODEL = "minilm-text"
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000


def _picture(height: int, width: int, seed: int) -> Image.Image:
    """A page-like picture: bands of colour with noise, so resizing and patching matter."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 255, height)[:, None, None] * rng.random((1, 1, 3))
    noise = rng.integers(0, 64, (height, width, 3))
    return Image.fromarray(((rows + noise) % 256).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


IMAGES = {
    "wide": encoded(_picture(90, 150, 1)),
    "tall": encoded(_picture(220, 130, 2)),
    "square": encoded(_picture(64, 64, 3)),
    "jpeg": encoded(_picture(120, 100, 4), "JPEG"),
    "webp": encoded(_picture(100, 120, 5), "WEBP"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    return {
        "qwen3-vl": qwen3_vl_reranker(root / "qwen3-vl"),
        "qwen2-vl": qwen2_vl_reranker(root / "qwen2-vl"),
    }


@pytest.fixture(scope="module")
def vision_server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("vision_repository")
    for name, checkpoint in checkpoints.items():
        cached_build(checkpoint, BuildOptions(name=name), repository)
    cached_build(None, BuildOptions(name=TEXT_MODEL), repository)
    server = start_server(
        repository,
        tmp_path_factory.mktemp("vision_server"),
        "qwen3-vl",
        max_image_bytes=str(MAX_IMAGE_BYTES),
        max_image_pixels=str(MAX_IMAGE_PIXELS),
    )
    try:
        yield server
    finally:
        stop_server(server)


def _side(value: str | bytes | tuple[str, bytes]) -> Any:
    """A query or document as CrossEncoder takes it: text, a data URL (decoded by
    transformers' load_image), or an image with its caption."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return data_url(value)
    text, image = value
    return {"image": data_url(image), "text": text}


def reference(checkpoint: Path, pairs: list[tuple[Any, Any]]) -> np.ndarray:
    model = CrossEncoder(str(checkpoint), device="cpu")
    scores = model.predict(
        [(_side(q), _side(d)) for q, d in pairs], activation_fn=torch.nn.Identity()
    )
    return np.asarray(scores, dtype=np.float64)


def _proto_side(value: str | bytes | tuple[str, bytes]) -> tuple[str, pb.Image | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        return "", pb.Image(data=value)
    return value[0], pb.Image(data=value[1])


def rank_request(
    query: str | bytes | tuple[str, bytes],
    documents: list[str | bytes | tuple[str, bytes]],
    model: str,
    **fields: Any,
) -> pb.RankRequest:
    query_text, query_image = _proto_side(query)
    sides = [_proto_side(d) for d in documents]
    request = pb.RankRequest(
        query=query_text,
        documents=[text for text, _ in sides],
        document_images=[image or pb.Image() for _, image in sides],
        model=model,
        raw_scores=True,
        **fields,
    )
    if query_image is not None:
        request.query_image.CopyFrom(query_image)
    return request


def rank(server: Server, request: pb.RankRequest) -> pb.RankResponse:
    with grpc.insecure_channel(server.address) as channel:
        response: pb.RankResponse = pb_grpc.RankStub(channel).Rank(request, timeout=120)
        return response


def raw_scores(response: pb.RankResponse, count: int) -> np.ndarray:
    scores = np.empty(count)
    for result in response.results:
        scores[result.index] = result.score
    return scores


# One query against images alone, images beside captions and plain text, in one call.
MIXED: list[str | bytes | tuple[str, bytes]] = [
    IMAGES["wide"],
    "A river flows downhill until it reaches the sea.",
    ("a bar chart of yearly rainfall", IMAGES["tall"]),
    IMAGES["square"],
    IMAGES["jpeg"],
    IMAGES["webp"],
]


@pytest.mark.parametrize("model", MODELS)
def test_mixed_documents_match_cross_encoder(
    vision_server: Server, checkpoints: dict[str, Path], model: str
) -> None:
    query = "a picture of rainfall over the year"
    served = raw_scores(rank(vision_server, rank_request(query, MIXED, model)), len(MIXED))
    expected = reference(checkpoints[model], [(query, d) for d in MIXED])
    print(model, served, expected)
    assert np.abs(served - expected).max() <= TOLERANCE
    assert np.argsort(-served).tolist() == np.argsort(-expected).tolist()


@pytest.mark.parametrize("model", MODELS)
def test_image_query_matches_cross_encoder(
    vision_server: Server, checkpoints: dict[str, Path], model: str
) -> None:
    documents: list[str | bytes | tuple[str, bytes]] = [
        "a tall chart with a caption",
        "an unrelated sentence about cooking pasta",
        IMAGES["wide"],
    ]
    for query in (IMAGES["tall"], ("which chart is this", IMAGES["square"])):
        response = rank(vision_server, rank_request(query, documents, model))
        served = raw_scores(response, len(documents))
        expected = reference(checkpoints[model], [(query, d) for d in documents])
        assert np.abs(served - expected).max() <= TOLERANCE


@pytest.mark.parametrize("model", MODELS)
def test_a_pair_scores_the_same_alone_and_merged(vision_server: Server, model: str) -> None:
    """The same pair alone, and inside concurrent calls holding other images and lengths
    (Triton merges them into the same executions)."""
    from reranker_api.reranker.v1 import reranker_pb2_grpc

    query = "the tall chart"
    pair = IMAGES["tall"]
    others: list[str | bytes | tuple[str, bytes]] = [
        IMAGES["wide"],
        "a short text",
        ("a caption that runs on for a while about charts and rain", IMAGES["square"]),
        IMAGES["webp"],
    ]
    alone = rank(vision_server, rank_request(query, [pair], model)).results[0].score

    async def merged() -> list[float]:
        async with grpc.aio.insecure_channel(vision_server.address) as channel:
            stub = reranker_pb2_grpc.RankStub(channel)
            calls = [
                stub.Rank(rank_request(query, [pair, *others[: i + 1]], model), timeout=120)
                for i in range(len(others))
            ]
            responses = await asyncio.gather(*calls)
        return [next(r.score for r in resp.results if r.index == 0) for resp in responses]

    for score in asyncio.run(merged()):
        assert abs(score - alone) <= fp32_reordering_bound(alone)


def test_every_encoding_scores_the_same_image_the_same(vision_server: Server) -> None:
    query, image = "the wide chart", IMAGES["wide"]
    by_grpc = rank(vision_server, rank_request(query, [image], "qwen3-vl")).results[0].score
    typed = rank_request(query, [image], "qwen3-vl")
    typed.document_images[0].media_type = "image/png"
    assert rank(vision_server, typed).results[0].score == by_grpc
    encodings = [base64.b64encode(image).decode(), data_url(image)]
    with httpx.Client(base_url=vision_server.http_url, timeout=120) as client:
        for reference_text in encodings:
            jina = client.post(
                "/v1/rerank",
                json={
                    "model": "qwen3-vl",
                    "query": query,
                    "documents": [{"image": reference_text}],
                },
            )
            assert jina.status_code == 200, jina.text
            nim = client.post(
                "/v1/ranking",
                json={
                    "model": "qwen3-vl",
                    "query": {"text": query},
                    "passages": [{"image": reference_text}],
                },
            )
            assert nim.status_code == 200, nim.text
            # Scores cross JSON as doubles: the float32 score survives exactly.
            assert nim.json()["rankings"][0]["logit"] == pytest.approx(by_grpc, abs=1e-7)
            sigmoid = 1 / (1 + np.exp(-by_grpc))
            assert jina.json()["results"][0]["relevance_score"] == pytest.approx(sigmoid, abs=1e-7)


def test_jina_and_nim_calls_with_images_rank_like_grpc(vision_server: Server) -> None:
    query = "a picture of rainfall"
    documents: list[str | bytes | tuple[str, bytes]] = [
        IMAGES["wide"],
        "rain falls in the spring",
        ("rainfall by month", IMAGES["tall"]),
    ]
    expected = raw_scores(
        rank(vision_server, rank_request(query, documents, "qwen3-vl")), len(documents)
    )
    jina_documents = [
        {"image": data_url(IMAGES["wide"])},
        "rain falls in the spring",
        {"text": "rainfall by month", "image": data_url(IMAGES["tall"])},
    ]
    with httpx.Client(base_url=vision_server.http_url, timeout=120) as client:
        jina = client.post(
            "/v1/rerank",
            json={
                "model": "qwen3-vl",
                "query": query,
                "documents": jina_documents,
                "return_documents": True,
            },
        )
        assert jina.status_code == 200, jina.text
        results = jina.json()["results"]
        assert [r["index"] for r in results] == np.argsort(-expected, kind="stable").tolist()
        for result in results:
            assert result["document"] == (
                {"text": jina_documents[result["index"]]}
                if isinstance(jina_documents[result["index"]], str)
                else jina_documents[result["index"]]
            )
        nim = client.post(
            "/v1/ranking",
            json={
                "model": "qwen3-vl",
                "query": {"text": query},
                "passages": [
                    {"image": data_url(IMAGES["wide"])},
                    {"text": "rain falls in the spring"},
                    {"text": "rainfall by month", "image": data_url(IMAGES["tall"])},
                ],
            },
        )
        assert nim.status_code == 200, nim.text
        logits = {r["index"]: r["logit"] for r in nim.json()["rankings"]}
        assert np.abs(np.array([logits[i] for i in range(3)]) - expected).max() <= 1e-6


def test_return_documents_returns_the_images_sent(vision_server: Server) -> None:
    request = rank_request("charts", [IMAGES["jpeg"], "text"], "qwen3-vl", return_documents=True)
    request.document_images[0].media_type = "image/jpeg"
    response = rank(vision_server, request)
    by_index = {r.index: r for r in response.results}
    assert by_index[0].image.data == IMAGES["jpeg"]
    assert by_index[0].image.media_type == "image/jpeg"
    assert not by_index[1].HasField("image") and by_index[1].text == "text"


def test_list_models_says_which_take_images(vision_server: Server) -> None:
    with grpc.insecure_channel(vision_server.address) as channel:
        listing = pb_grpc.RankStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
    modalities = {m.name: list(m.modalities) for m in listing.models}
    assert modalities == {
        "qwen3-vl": ["text", "image"],
        "qwen2-vl": ["text", "image"],
        TEXT_MODEL: ["text"],
    }
    with httpx.Client(base_url=vision_server.http_url, timeout=30) as client:
        cards = {m["id"]: m["modalities"] for m in client.get("/v1/models").json()["data"]}
    assert cards == modalities


def _png_bomb() -> bytes:
    """A small file whose header claims more pixels than the server's limit."""
    return encoded(Image.new("L", (1200, 1000)))


def _bad_images() -> dict[str, tuple[bytes, str]]:
    png = IMAGES["wide"]
    gif = encoded(_picture(20, 20, 6), "GIF")
    return {
        "too large": (encoded(_picture(400, 400, 7)), "bytes; the limit is"),
        "too many pixels": (_png_bomb(), "pixels; the limit is"),
        "unsupported format": (gif, "is not a PNG, JPEG or WebP image"),
        "corrupt": (png[:16] + bytes(200) + png[216:], "corrupt"),
        "truncated": (png[: len(png) // 2], "truncated"),
        "not an image": (b"%PDF-1.7 not an image at all", "is not a PNG, JPEG or WebP"),
    }


def test_bad_images_are_refused_by_name_over_grpc_and_the_server_keeps_serving(
    vision_server: Server,
) -> None:
    assert len(encoded(_picture(400, 400, 7))) > MAX_IMAGE_BYTES
    for name, (data, message) in _bad_images().items():
        request = rank_request("q", [IMAGES["wide"], data], "qwen3-vl")
        with pytest.raises(grpc.RpcError) as error:
            rank(vision_server, request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "documents[1]" in str(error.value.details()), name
        assert message in str(error.value.details()), (name, error.value.details())
    empty_query = rank_request("q", [IMAGES["wide"]], "qwen3-vl")
    empty_query.query_image.CopyFrom(pb.Image(data=b""))
    with pytest.raises(grpc.RpcError) as error:
        rank(vision_server, empty_query)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query image: the image is empty" in str(error.value.details())
    mislabeled = rank_request("q", [IMAGES["wide"]], "qwen3-vl")
    mislabeled.document_images[0].media_type = "image/jpeg"
    with pytest.raises(grpc.RpcError) as error:
        rank(vision_server, mislabeled)
    assert "not the declared image/jpeg" in str(error.value.details())
    text_only = rank_request("q", ["a text", IMAGES["wide"]], TEXT_MODEL)
    with pytest.raises(grpc.RpcError) as error:
        rank(vision_server, text_only)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[1] is an image" in str(error.value.details())
    assert rank(vision_server, rank_request("q", [IMAGES["wide"]], "qwen3-vl")).results


def test_bad_images_are_refused_by_name_over_http(vision_server: Server) -> None:
    cases = {
        **{name: base64.b64encode(data).decode() for name, (data, _) in _bad_images().items()},
        "zero size": "",
        "not base64": "not base64 at all!",
        "an http URL": "http://127.0.0.1:9/page.png",
    }
    with httpx.Client(base_url=vision_server.http_url, timeout=120) as client:
        for name, image in cases.items():
            for route, body in (
                ("/v1/rerank", {"query": "q", "documents": ["a text", {"image": image}]}),
                (
                    "/v1/ranking",
                    {"query": {"text": "q"}, "passages": [{"text": "a"}, {"image": image}]},
                ),
            ):
                answer = client.post(route, json={"model": "qwen3-vl", **body})
                assert answer.status_code == 400, (name, route, answer.text)
                assert "[1]" in answer.text, (name, route, answer.text)
        text_only = client.post(
            "/v1/rerank",
            json={
                "model": TEXT_MODEL,
                "query": "q",
                "documents": ["a", {"image": data_url(IMAGES["wide"])}],
            },
        )
        assert text_only.status_code == 400 and "documents[1] is an image" in text_only.text
        good = client.post(
            "/v1/rerank",
            json={
                "model": "qwen3-vl",
                "query": "q",
                "documents": [{"image": data_url(IMAGES["wide"])}],
            },
        )
        assert good.status_code == 200, good.text


def test_the_builder_refuses_what_a_vision_language_model_cannot_be_served_in(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from reranker.builder.common import BuildError
    from reranker.contract.model import Precision

    with pytest.raises(BuildError, match="serves fp32 on CPU, fp16 or bf16 on a GPU; not int8"):
        build(
            str(checkpoints["qwen3-vl"]),
            BuildOptions(name="vl-int8", precision=Precision.INT8),
            tmp_path,
        )
    assert not (tmp_path / "vl-int8").exists()
