"""llama.cpp's rerank API (Jina's response shape): ``POST /reranking``; its other paths are
shared with TEI (``/rerank``, :mod:`.tei`) and Mixedbread (``/v1/reranking``,
:mod:`.mixedbread`), told apart there by the body."""

from __future__ import annotations

from fastapi import Request, Response
from pydantic import Field

from reranker.service.calls import RankCall
from reranker.service.doors.http.errors import OpenAIError
from reranker.service.doors.http.fields import Document, Positive, QueryRequest, texts_field
from reranker.service.doors.http.jina import JinaResponse, jina_response
from reranker.service.doors.http.routing import Dialect, rank

DIALECT = Dialect(OpenAIError)


class LlamaCppRequest(QueryRequest):
    documents: list[Document] = texts_field("the documents to rank")
    top_n: Positive | None = Field(None, description="return only the best top_n")
    return_documents: bool = False

    def call(self) -> RankCall:
        return self.rank_call(self.documents, self.top_n, return_documents=self.return_documents)


@DIALECT.rank_route("/reranking", "llama.cpp")
async def llama_reranking(
    body: LlamaCppRequest, request: Request, response: Response
) -> JinaResponse:
    return jina_response(await rank(request, body, response))
