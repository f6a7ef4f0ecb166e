"""Which served models Triton's repository holds and which of them are loaded, read from the
ensembles' configurations, and loading and unloading them (Triton's explicit model control)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import tritonclient.grpc.aio as triton_aio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from reranker.contract.model import ENCODER_SUFFIX, TOKENIZER_SUFFIX, ServedModel
from reranker.contract.parameters import (
    SERVED_MODEL_KEY,
    EnsembleParameters,
    ParameterError,
    from_parameters,
)
from reranker.contract.tensors import SCORE
from reranker.service.errors import ModelLoadFailed, ModelNotLoaded, RerankError, Unavailable
from reranker.service.triton_errors import translate

log = logging.getLogger(__name__)

# How long an unload may take to show in Triton's index (its stubs finishing in-flight work).
UNLOAD_WAIT_S = 60.0
# How long Triton may take to answer a load or an unload (a large model's load included): a
# replica that never answers must not hold the catalog's one load at a time for good.
MODEL_CONTROL_TIMEOUT_S = 900.0


def describe(config: mc.ModelConfig) -> ServedModel | None:
    """Reads a served model back from its ensemble's configuration (None if not one of ours).

    Raises:
        ParameterError: the ensemble is ours but its parameters cannot be read.
    """
    raw = {key: value.string_value for key, value in config.parameters.items()}
    if config.platform != "ensemble" or SERVED_MODEL_KEY not in raw:
        return None
    tokenize, encode = config.ensemble_scheduling.step
    return from_parameters(EnsembleParameters, raw, config.name).served_model(
        config.name,
        config.max_batch_size,
        tokenize.output_map,
        graph_output=next(name for name, tensor in encode.output_map.items() if tensor == SCORE),
        tokenizer=tokenize.model_name,
    )


class TritonModels:
    """The served models of one Triton (or its replicas) behind ``client``."""

    def __init__(
        self,
        url: str,
        client: triton_aio.InferenceServerClient,
        repository: Path | None,
        replicas: list[triton_aio.InferenceServerClient] | None = None,
    ) -> None:
        """``repository``: Triton's model repository where this process can read it, to
        describe models that are not loaded (None: they are listed by name alone).
        ``replicas``: a client for each replica that ``client`` spreads calls over, where
        they are known one by one; loads and unloads reach each of them."""
        self.url = url
        self._client = client
        self._replicas = replicas or [client]
        self._repository = repository
        self.models: dict[str, ServedModel] = {}
        self._refreshing = asyncio.Lock()

    async def refresh(self) -> dict[str, ServedModel]:
        """Reads the served models from the ready ensembles of Triton's repository. One read
        at a time, so a slow one begun before a load or an unload cannot land after the read
        that follows it."""
        async with self._refreshing:
            try:
                index = await self._client.get_model_repository_index()
                models: dict[str, ServedModel] = {}
                for entry in index.models:
                    if entry.state == "READY":
                        model = await self._read(entry.name)
                        if model is not None:
                            models[model.name] = model
            except InferenceServerException as error:
                raise translate(error, self.url) from None
            self.models = models
            return models

    async def _read(self, name: str) -> ServedModel | None:
        """A ready model's description (None: not one of ours). Replicas answer the index and
        the configuration in turn, so one restarting may not know a model another listed:
        such a model keeps the description it had, and one never described is left out."""
        try:
            response = await self._client.get_model_config(name)
        except InferenceServerException as error:
            if isinstance(translate(error, self.url), ModelNotLoaded):
                return self.models.get(name)
            raise
        try:
            return describe(response.config)
        except ParameterError as error:
            log.error("not serving %s: %s", name, error)
            return None

    async def repository_models(self) -> list[str]:
        try:
            index = await self._client.get_model_repository_index()
        except InferenceServerException as error:
            raise translate(error, self.url) from None
        composing = (TOKENIZER_SUFFIX, ENCODER_SUFFIX)
        return sorted(entry.name for entry in index.models if not entry.name.endswith(composing))

    def describe_unloaded(self, name: str) -> ServedModel | None:
        if self._repository is None:
            return None
        try:
            text = (self._repository / name / "config.pbtxt").read_text()
            return describe(text_format.Parse(text, mc.ModelConfig()))
        except (OSError, text_format.ParseError, ParameterError):
            return None

    async def load(self, name: str) -> None:
        await self._on_every_replica("load", self._load_on, name)

    async def unload(self, name: str) -> None:
        await self._on_every_replica("unload", self._unload_on, name)

    async def _on_every_replica(
        self,
        what: str,
        action: Callable[[triton_aio.InferenceServerClient, str], Awaitable[None]],
        name: str,
    ) -> None:
        """``action`` on each replica at once. A replica that cannot be reached (restarting:
        it loads the pinned models alone when it is back) is passed over while another one
        answered; any other failure is the caller's."""
        outcomes = await asyncio.gather(
            *(action(replica, name) for replica in self._replicas), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        fatal = next((f for f in failures if type(f) is not Unavailable), None)
        if fatal is None and failures and len(failures) == len(outcomes):
            fatal = failures[0]
        if fatal is not None:
            # Read again all the same: some replicas may have done it.
            with contextlib.suppress(RerankError):
                await self.refresh()
            raise fatal
        await self.refresh()
        if failures:
            log.warning(
                "%s of %s: %d of %d replicas unreachable (%s)",
                what,
                name,
                len(failures),
                len(outcomes),
                failures[0],
            )

    async def restore_replicas(self) -> list[str]:
        """Loads onto each replica the served models loaded here that it lacks: a replica
        back from a restart, or passed over while unreachable during a load, has its pinned
        models alone. Returns what it loaded (``model@replica``); an unreachable replica
        waits for the next time."""
        if len(self._replicas) < 2:
            return []
        indexes = await asyncio.gather(
            *(replica.get_model_repository_index() for replica in self._replicas),
            return_exceptions=True,
        )
        restored = []
        for number, (replica, index) in enumerate(zip(self._replicas, indexes, strict=True)):
            if isinstance(index, BaseException):
                continue
            ready = {entry.name for entry in index.models if entry.state == "READY"}
            for name in sorted(set(self.models) - ready):
                try:
                    await self._load_on(replica, name)
                except RerankError as error:
                    log.warning("restoring %s on replica %d: %s", name, number, error)
                    continue
                restored.append(f"{name}@{number}")
        if restored:
            log.info("restored on replicas that lacked them: %s", ", ".join(restored))
        return restored

    async def _load_on(self, replica: triton_aio.InferenceServerClient, name: str) -> None:
        try:
            await replica.load_model(name, client_timeout=MODEL_CONTROL_TIMEOUT_S)
        except InferenceServerException as error:
            translated = translate(error, self.url)
            if type(translated) is Unavailable:  # Triton unreachable: not the model's fault
                raise translated from None
            raise ModelLoadFailed(
                f"model {name!r} could not be loaded: {error.message()}"
            ) from None

    async def _unload_on(self, replica: triton_aio.InferenceServerClient, name: str) -> None:
        try:
            # An ensemble's dependents are its composing models; one another loaded ensemble
            # still uses (a shared tokenizer) stays.
            await replica.unload_model(
                name, unload_dependents=True, client_timeout=MODEL_CONTROL_TIMEOUT_S
            )
            # Triton answers before the unload completes: wait until it no longer lists the
            # model as ready, so what is loaded is not read stale.
            deadline = time.monotonic() + UNLOAD_WAIT_S
            while time.monotonic() < deadline:
                index = await replica.get_model_repository_index()
                if not any(e.name == name and e.state == "READY" for e in index.models):
                    break
                await asyncio.sleep(0.05)
        except InferenceServerException as error:
            raise translate(error, self.url) from None

    async def close(self) -> None:
        clients = {id(c): c for c in [self._client, *self._replicas]}.values()
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
