"""The engines a benchmark case calls: in-process graph runners, this server (gRPC and
HTTP) and Infinity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from harness import Case
from workloads import QUERY, long_documents

ROOT = Path(__file__).resolve().parents[1]
# The server launcher and the seeded checkpoints are the test suite's (tests/).
sys.path.insert(0, str(ROOT))
from reranker.builder.fingerprint import build_fingerprint  # noqa: E402
from reranker.contract.model import ENCODER_SUFFIX, TOKENIZER_SUFFIX  # noqa: E402
from reranker.contract.tensors import TruncationOptions  # noqa: E402
from reranker.service.triton_server import dies_with_parent  # noqa: E402
from tests.launcher import Server, free_port, start_server  # noqa: E402

SORTED_BATCH = 16
# Calls in one run of each engine on the MiniLM (a) row (as many as a run at c=4 makes).
COMPARED_CALLS = 4
# Rounds of every row but MiniLM (a), and of that row's cases outside its per-round targets:
# what keeps the whole benchmark within 20 minutes here.
SHORT_ROUNDS = 3
# The MiniLM (a) cases its per-round targets compare (the fp32 server at c=1 and c=4 against
# ONNX Runtime sorted, and HTTP paired with gRPC at c=4): every round.
PER_ROUND = {
    ("onnxruntime sorted", 1),
    ("this server", 1),
    ("this server", 4),
    ("this server HTTP /v2/rerank", 4),
}


def graph_engines(
    runner: Any, tokenizer: Any, documents: list[str], query: str = QUERY
) -> dict[str, Callable[[], object]]:
    """In-process engines over one graph runner: one padded batch of every document (naive),
    and length-sorted batches of ``SORTED_BATCH`` (sorted)."""
    names = runner.input_names

    def feed(docs: Sequence[str]) -> dict[str, np.ndarray]:
        batch = tokenizer(
            [query] * len(docs), list(docs), padding=True, truncation=True, return_tensors="np"
        )
        return {n: batch[n].astype(np.int64) for n in names}

    def naive() -> object:
        return runner.run(feed(documents))

    def length_sorted() -> object:
        lengths = [
            len(ids)
            for ids in tokenizer([query] * len(documents), documents, truncation=True)["input_ids"]
        ]
        order = sorted(range(len(documents)), key=lambda i: lengths[i])
        scores = np.empty(len(documents), dtype=np.float32)
        for start in range(0, len(order), SORTED_BATCH):
            rows = order[start : start + SORTED_BATCH]
            scores[rows] = runner.run(feed([documents[i] for i in rows]))
        return scores

    return {"naive": naive, "sorted": length_sorted}


# Qwen3-Reranker's default instruction: the causal row's prompt carries it, as the model's
# users' calls do.
CAUSAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def prompt_sorted(runner: Any, tokenizer: Any, documents: list[str]) -> Callable[[], object]:
    """In-process length-sorted batches of a causal-LM reranker's graph, its pairs rendered
    into the model's prompt by the same tokenizer the tokenizer model runs."""
    names = runner.input_names
    options = TruncationOptions(instruction=CAUSAL_INSTRUCTION)

    def length_sorted() -> object:
        rows = tokenizer.tokenize([QUERY] * len(documents), documents, options)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        scores = np.empty(len(documents), dtype=np.float32)
        for start in range(0, len(order), SORTED_BATCH):
            chosen = order[start : start + SORTED_BATCH]
            batch = tokenizer.pad([rows[i] for i in chosen])
            scores[chosen] = runner.run({n: batch[n] for n in names})
        return scores

    return length_sorted


def causal_cases(
    repository: Path, checkpoint: Path, client: Any, runner: Any, documents: list[str]
) -> list[Case]:
    """The causal-LM row (Qwen3-Reranker shape, its default instruction, documents of 60-200
    tokens): CrossEncoder on the checkpoint, ONNX Runtime sorted in-process on the graph of
    whole rows, and this server at concurrency 4 with each group's shared prompt run once,
    paired with the same model built to run every row whole. Then the short prompt: the
    template-less checkpoint, whose rows begin with a 5-token query, served both ways."""
    from sentence_transformers import CrossEncoder

    from reranker.backend.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate
    from reranker.contract.model import PairMode

    tokenizer_dir = repository / "qwen3__tokenizer" / "1"
    prompt = PromptTemplate.from_json(json.loads((tokenizer_dir / "prompt.json").read_text()))
    config = PairTokenizerConfig(512, PairMode.PROMPT, 512 * 16, prompt=prompt)
    tokenizer = PairTokenizer.from_file(str(tokenizer_dir / "tokenizer.json"), config)
    cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
    n = len(documents)
    ideal = shared_prompt_ideal(tokenizer, documents)
    print(f"  ideal speedup of a shared prompt: {ideal:.2f}x", flush=True)

    def served(model: str, query: str = QUERY, **options: str) -> Callable[[], object]:
        return partial(client.rank, query, documents, model=model, **options)

    def reference() -> object:
        return cross_encoder.rank(QUERY, documents, prompt=CAUSAL_INSTRUCTION)

    instructed = {"instruction": CAUSAL_INSTRUCTION}
    whole = Case(WHOLE_ROWS, "qwen3", "a", 4, served("qwen3-whole", **instructed), n)
    short_whole = Case(WHOLE_ROWS, "qwen3-plain", "a", 4, served("qwen3-plain-whole", SHORT), n)
    return [
        Case("CrossEncoder.rank", "qwen3", "a", 1, reference, n),
        Case("onnxruntime sorted", "qwen3", "a", 1, prompt_sorted(runner, tokenizer, documents), n),
        whole,
        Case("this server", "qwen3", "a", 4, served("qwen3", **instructed), n, whole, ideal),
        short_whole,
        Case("this server", "qwen3-plain", "a", 4, served("qwen3-plain", SHORT), n, short_whole),
    ]


# The causal row's server case with every row run whole (the graph without a prefix input).
WHOLE_ROWS = "this server, rows whole"
# The short-prompt case's query: about 5 tokens, behind no template.
SHORT = "how do rerankers work"


def shared_prompt_ideal(tokenizer: Any, documents: list[str]) -> float:
    """The work left when a call's shared prompt prefix runs once: its rows' tokens over the
    prefix once plus each row's rest (attention's quadratic share left aside)."""
    options = TruncationOptions(instruction=CAUSAL_INSTRUCTION)
    rows = [row.ids for row in tokenizer.tokenize([QUERY] * len(documents), documents, options)]
    prefix = 0
    while all(len(r) > prefix + 1 and r[prefix] == rows[0][prefix] for r in rows):
        prefix += 1
    whole = sum(len(r) for r in rows)
    return whole / (prefix + whole - prefix * len(rows))


def precision_of(served: str) -> str:
    """The precision a benchmark model name carries (``minilm-bf16`` is bf16)."""
    suffix = served.rsplit("-", 1)[-1]
    return suffix if suffix in ("int8", "bf16") else "fp32"


def in_process_label(precision: str) -> str:
    return "openvino" if precision == "bf16" else "onnxruntime"


def suffix_for(precision: str) -> str:
    return "" if precision == "fp32" else f" {precision}"


def served_parts(name: str) -> tuple[str, str, str]:
    """The Triton models one served model is: its ensemble, tokenizer and encoder."""
    return name, name + TOKENIZER_SUFFIX, name + ENCODER_SUFFIX


def build_current(checkpoint: Path, options: Any, repository: Path) -> None:
    """Builds ``checkpoint`` into ``repository`` as ``options.name`` unless the model there was
    built by this build code with these options, so a changed default (a config parameter, a
    graph change) reaches the benchmark's models instead of it measuring a stale build."""
    from reranker.builder.builder import build

    stamps_file = repository.with_name(repository.name + ".stamps.json")
    stamps = json.loads(stamps_file.read_text()) if stamps_file.exists() else {}
    fingerprint = build_fingerprint(options)
    name = options.name
    if (repository / name).is_dir() and stamps.get(name) == fingerprint:
        return
    for part in served_parts(name):
        shutil.rmtree(repository / part, ignore_errors=True)
    # Each model with its own tokenizer model: the rows measure and profile a model's own
    # processes (the catalog row measures sharing).
    build(str(checkpoint), replace(options, share_tokenizer=False), repository)
    stamps[name] = fingerprint
    stamps_file.write_text(json.dumps(stamps, indent=1, sort_keys=True))


def start_bench_server(
    repository: Path, workdir: Path, default_model: str = "minilm", **settings: str
) -> Server:
    """This server (Triton + rank service) on loopback, launched as the test suite launches it,
    with the benchmark's settings (``settings`` override them)."""
    defaults = {
        # Deep queues at high concurrency are the point here, not a failure.
        "inference_timeout_s": "600",
        "max_rows_in_flight": "100000",
        "max_documents_per_call": "100000",
        # An idle model's canary runs its encoder: not while the in-process engines are
        # measured.
        "health_interval_s": "60",
    }
    return start_server(repository, workdir, default_model, **{**defaults, **settings})


class CohereHttp:
    """This server's HTTP front door in Cohere's v2 shape (``POST /v2/rerank``)."""

    def __init__(self, base_url: str) -> None:
        import httpx

        self._client = httpx.Client(base_url=base_url, timeout=600)

    def rank(self, documents: list[str]) -> object:
        response = self._client.post(
            "/v2/rerank", json={"model": "minilm", "query": QUERY, "documents": documents}
        )
        response.raise_for_status()
        return response.json()["results"]

    def close(self) -> None:
        self._client.close()


class Infinity:
    """Infinity (infinity-emb) serving the same checkpoint, in its own environment."""

    def __init__(self, venv: Path, checkpoint: Path, log: Path, dtype: str = "float32") -> None:
        self.port = free_port()
        with open(log, "wb") as out:
            # Dies with the benchmark, however the benchmark ends.
            self.process = subprocess.Popen(
                dies_with_parent(
                    [
                        str(venv / "bin" / "infinity_emb"),
                        "v2",
                        "--model-id",
                        str(checkpoint),
                        "--served-model-name",
                        "reranker",
                        "--engine",
                        "torch",
                        "--device",
                        "cpu",
                        "--port",
                        str(self.port),
                        "--host",
                        "127.0.0.1",
                        "--batch-size",
                        "32",
                        "--dtype",
                        dtype,
                    ]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0"),
            )
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"infinity did not start; see {log}") from None
                time.sleep(1)

    def rank(self, documents: list[str]) -> object:
        body = json.dumps({"model": "reranker", "query": QUERY, "documents": documents}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/rerank", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def engines(
    model: str,
    name: str,
    documents: list[str],
    cross_encoder: Any,
    tokenizer: Any,
    runners: dict[str, Any],
    client: Any,
    http: CohereHttp,
    infinity: dict[str, Infinity],
    concurrency: Sequence[int],
) -> list[Case]:
    """The cases measured together for one model and workload."""
    n = len(documents)
    # The row whose targets compare concurrencies and engines round by round: a run of an
    # engine whose call takes about a second holds as many calls as a run at c=4.
    calls = COMPARED_CALLS if (model, name) == ("minilm", "a") else 0
    cases = [
        Case("CrossEncoder.rank", model, name, 1, lambda: cross_encoder.rank(QUERY, documents), n)
    ]
    for served, runner in runners.items():
        precision = precision_of(served)
        for kind, call in graph_engines(runner, tokenizer, documents).items():
            if kind == "naive" and (precision != "fp32" or name != "a"):
                continue  # naive batches are a reference once: fp32, workload (a)
            label = f"{in_process_label(precision)} {kind}{suffix_for(precision)}"
            sorted_calls = calls if kind == "sorted" else 0  # a naive call takes 5 s
            cases.append(Case(label, model, name, 1, call, n, calls=sorted_calls))
    for served in runners:
        precision = precision_of(served)
        if model != "minilm":
            levels: Sequence[int] = [1]  # a call takes seconds: deeper queues add nothing
        elif name == "a" and precision == "fp32":
            levels = concurrency
        else:
            levels = [4]
        for level in levels:
            cases.append(
                Case(
                    "this server" + suffix_for(precision),
                    model,
                    name,
                    level,
                    partial(client.rank, QUERY, documents, model=served),
                    n,
                    calls=calls,
                )
            )
    if model == "minilm" and name == "a":
        grpc = next(c for c in cases if (c.engine, c.concurrency) == ("this server", 4))
        call = partial(http.rank, documents)
        cases.append(Case("this server HTTP /v2/rerank", model, name, 4, call, n, partner=grpc))
        for dtype, peer in infinity.items():
            label = "infinity" + ("" if dtype == "float32" else " bf16")
            cases.append(Case(label, model, name, 4, partial(peer.rank, documents), n))
        for case in cases:
            if (case.engine, case.concurrency) not in PER_ROUND:
                case.rounds = SHORT_ROUNDS
    return cases


def long_context_cases(
    repository: Path, client: Any, runners: dict[str, Any], tokenizer: Any
) -> list[Case]:
    """One query and four documents of about 8k tokens on the JinaBERT-like 8k model, served
    and in-process (one row per run, as the encoder's attention-cell budget runs them)."""
    documents = long_documents()
    cases = []
    for served, runner in runners.items():
        precision = precision_of(served)

        def in_process(runner: Any = runner) -> object:
            return [graph_engines(runner, tokenizer, [d])["naive"]() for d in documents]

        label = f"{in_process_label(precision)} one row per run{suffix_for(precision)}"
        cases.append(Case(label, "jina", "lc", 1, in_process, len(documents)))
        call = partial(client.rank, QUERY, documents, model=served)
        cases.append(
            Case("this server" + suffix_for(precision), "jina", "lc", 1, call, len(documents))
        )
    return cases
