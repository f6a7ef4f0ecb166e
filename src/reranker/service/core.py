"""The rank core: what every front door (gRPC ``reranker.v1``, ``tei.v1``, the HTTP shapes)
does with a rank call, whatever shape it arrived in.

Validation, limits, the row budget, model choice, truncation and chunking options, scoring
through an :class:`~reranker.service.scoring.Engine` (Triton in production), and assembly
all happen here; an adapter only converts shapes and maps the error taxonomy to its
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from opentelemetry import trace

from reranker.contract.model import ServedModel
from reranker.contract.tensors import TruncationOptions
from reranker.service.callers import Caller, current_caller
from reranker.service.calls import RankCall
from reranker.service.catalog import ModelCatalog, ModelState, Residency
from reranker.service.chunking import Chunk, DocumentChunker, best_per_document
from reranker.service.errors import InvalidArgument, ModelLoading, Unavailable
from reranker.service.images import check_images
from reranker.service.limits import CallLimits, RowBudget, TeamQuotas
from reranker.service.metrics import ServiceMetrics
from reranker.service.results import RankedDocument, activate, assemble
from reranker.service.scoring import Engine, RowImages, ScoreCall, Scores
from reranker.service.validation import ChunkingChoice, ValidCall, check_call, for_model
from reranker.settings import Settings


def _package_version() -> str:
    """The package's version as its metadata states it (from pyproject.toml when installed);
    read from pyproject.toml itself where the tree is used uninstalled (the GPU check's kit
    puts the source tree on the path)."""
    try:
        return importlib.metadata.version("reranker")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
        if not pyproject.is_file():
            return "unknown"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


SERVER_VERSION = f"reranker-{_package_version()}"


@dataclass(frozen=True)
class RankOutcome:
    results: list[RankedDocument]
    model: ServedModel
    # Rows scored (documents, or their chunks when chunked).
    pairs: int
    # Tokens the model read over those rows (0 from a model built before it counted them).
    tokens: int
    inference_requests: int
    inference_time_s: float
    total_time_s: float


@dataclass(frozen=True)
class ListedModel:
    name: str
    state: ModelState
    # None: not loaded, and the repository cannot be read from here.
    description: ServedModel | None


@dataclass(frozen=True)
class ModelListing:
    models: list[ListedModel]
    default: str


@dataclass(frozen=True)
class ServerInfo:
    """What TEI's ``/info`` and ``tei.v1.Info`` report, from the default model and limits."""

    model_id: str
    dtype: str
    max_input_length: int
    max_client_batch_size: int
    max_concurrent_requests: int
    # Every model of the catalog with its state, by name (empty where not asked for).
    models: dict[str, ModelState]
    version: str = SERVER_VERSION

    @property
    def max_batch_tokens(self) -> int:
        return self.max_input_length * self.max_concurrent_requests


class RankCore:
    """Runs rank calls against a scorer under the server's limits and row budget."""

    def __init__(
        self,
        settings: Settings,
        scorer: Engine,
        metrics: ServiceMetrics,
        tracer: trace.Tracer | None = None,
        chunker: DocumentChunker | None = None,
        resident_bytes: Callable[[], int] | None = None,
    ) -> None:
        """``resident_bytes`` reads the memory the catalog's budget bounds (Triton's and its
        model processes'), where this process can."""
        self.settings = settings
        self._scorer = scorer
        self._metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()
        self._chunker = chunker or DocumentChunker(
            settings.model_repository, settings.max_chunks_per_document
        )
        self.limits = CallLimits.from_settings(settings)
        self.budget = RowBudget(settings.max_rows_in_flight)
        self.quotas = TeamQuotas()
        # The repository's models as last read, for the implicit default.
        self._repository_names: list[str] = []
        self.catalog = ModelCatalog(
            scorer, metrics, Residency.from_settings(settings, resident_bytes)
        )
        metrics.track_rows_in_flight(lambda: self.budget.in_flight)

    def timeout(self, remaining_s: float | None) -> float:
        """The inference timeout of a call with ``remaining_s`` left of its deadline."""
        limit = self.settings.inference_timeout_s
        return limit if remaining_s is None else max(0.001, min(limit, remaining_s))

    def catalog_models(self) -> list[str]:
        """Every model a call may name: those loaded now and the rest of the repository, as
        last read from the engine."""
        return sorted(set(self._scorer.models) | set(self._repository_names))

    def default_model(self) -> str:
        """The model a call that names none gets: the setting's, else the only model of the
        repository (as last read; not merely the only one loaded now)."""
        if self.settings.default_model:
            return self.settings.default_model
        names = set(self._scorer.models) | set(self._repository_names)
        return next(iter(names)) if len(names) == 1 else ""

    async def _served(self) -> Mapping[str, ServedModel]:
        if not self._scorer.models:
            await self._scorer.refresh()
        return self._scorer.models

    async def model(self, name: str) -> ServedModel:
        """The loaded model called ``name`` ('' picks the default)."""
        chosen = await self._model_name(name)
        model = self._scorer.models.get(chosen)
        if model is None:
            raise ModelLoading(f"model {chosen!r} is not loaded: a call to it loads it")
        return model

    async def _model_name(self, name: str) -> str:
        """``name`` ('' picks the default), if the repository holds it, loaded or not."""
        served = await self._served()
        if not served:
            raise Unavailable("no model is loaded yet")
        if not name and not self.settings.default_model:
            self._repository_names = await self._scorer.repository_models()
        chosen = name or self.default_model()
        if not chosen:
            raise InvalidArgument(
                f"model must be set: this server has no default among {sorted(served)}"
            )
        if chosen in served:
            return chosen
        catalog = self._repository_names = await self._scorer.repository_models()
        if chosen not in catalog:
            raise InvalidArgument(f"model {chosen!r} is not served; served models: {catalog}")
        return chosen

    async def list_models(self) -> ModelListing:
        """Every model of the repository with its state, described where that is known."""
        await self._served()
        states = await self.catalog.states()
        self._repository_names = list(states)
        loaded = self._scorer.models
        listed = [
            ListedModel(name, state, loaded.get(name) or self._scorer.describe_unloaded(name))
            for name, state in states.items()
        ]
        return ModelListing(models=listed, default=self.default_model())

    async def server_info(self, with_models: bool = True) -> ServerInfo:
        """The default model and limits; with every catalog model's state where asked (a read
        of the repository's index, which ``tei.v1.Info`` has no field for)."""
        model = await self.model("")
        return ServerInfo(
            model_id=model.name,
            dtype=model.precision.value,
            max_input_length=model.max_length,
            max_client_batch_size=self.limits.max_documents,
            max_concurrent_requests=self.budget.limit,
            models=await self.catalog.states() if with_models else {},
        )

    async def rank(self, call: RankCall, timeout_s: float) -> RankOutcome:
        """Scores every document of ``call`` and returns them best first."""
        start = time.perf_counter()
        # The model stays loaded (the catalog unloads none under a call) until the call ends.
        async with contextlib.AsyncExitStack() as holding:
            with self._tracer.start_as_current_span("validate"):
                valid = check_call(call, self.limits)
                name = await self._model_name(call.model)
                model = await holding.enter_async_context(self.catalog.use(name, timeout_s))
                valid = for_model(valid, call, model)
                if call.images is not None:
                    await asyncio.to_thread(
                        check_images, call.query_image, valid.document_images, self.limits.images
                    )
            # What a load took comes out of the call's time.
            left_s = max(0.001, timeout_s - (time.perf_counter() - start))
            return await self._rank_with(model, call, valid, left_s, start)

    async def _rank_with(
        self, model: ServedModel, call: RankCall, valid: ValidCall, timeout_s: float, start: float
    ) -> RankOutcome:
        documents, document_images = valid.documents, valid.document_images
        chunking, options, images = valid.chunking, valid.options, call.images
        caller = current_caller()
        priority = call.priority if call.priority is not None else caller.priority
        trace.get_current_span().set_attributes({"team": caller.team, "priority": priority})
        scores, raw = await self._score(
            model, call, documents, chunking, options, timeout_s, caller, priority, images
        )
        with self._tracer.start_as_current_span("assemble"):
            self._metrics.rows.labels(model.name, caller.team).inc(len(scores.values))
            self._metrics.tokens.labels(model.name, caller.team).inc(scores.tokens)
            self._metrics.rows_per_call.observe(len(scores.values))
            self._metrics.stage_seconds.labels("inference").observe(scores.inference_time_s)
            values = activate(raw, model.activation, call.raw_scores)
            ranked = assemble(values, documents, call.top_k, call.return_documents, document_images)
        total_s = time.perf_counter() - start
        self._metrics.stage_seconds.labels("total").observe(total_s)
        return RankOutcome(
            results=ranked,
            model=model,
            pairs=len(scores.values),
            tokens=scores.tokens,
            inference_requests=scores.requests,
            inference_time_s=scores.inference_time_s,
            total_time_s=total_s,
        )

    @contextlib.contextmanager
    def _hold(self, rows: int, caller: Caller, priority: int) -> Iterator[None]:
        """Room for ``rows`` in the team's quota and the server's budget, or a refusal."""
        with self.quotas.hold(caller, rows), self.budget.hold(rows, priority):
            yield

    async def _score(
        self,
        model: ServedModel,
        call: RankCall,
        documents: list[str],
        chunking: ChunkingChoice | None,
        options: TruncationOptions,
        timeout_s: float,
        caller: Caller,
        priority: int,
        images: RowImages | None = None,
    ) -> tuple[Scores, np.ndarray]:
        if chunking is None:
            with self._hold(len(documents), caller, priority):
                scores = await self._scorer.score(
                    ScoreCall(
                        model,
                        call.query,
                        documents,
                        timeout_s,
                        options,
                        images=images,
                        priority=priority,
                    )
                )
            return scores, scores.values
        with self._hold(len(documents), caller, priority):
            start = time.perf_counter()
            chunks: list[Chunk] = await asyncio.to_thread(
                self._chunker.chunks,
                model,
                call.query,
                documents,
                chunking.overlap,
                chunking.max_chunks,
                call.max_document_tokens,
            )
            self._metrics.stage_seconds.labels("chunk").observe(time.perf_counter() - start)
        with self._hold(len(chunks), caller, priority):
            scores = await self._scorer.score(
                ScoreCall(
                    model,
                    call.query,
                    [c.text for c in chunks],
                    timeout_s,
                    options,
                    labels=[c.document for c in chunks],
                    priority=priority,
                )
            )
        return scores, best_per_document(scores.values, chunks, len(documents))
