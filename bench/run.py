"""Side-by-side reranking benchmark: the same checkpoints and inputs through this server and
the alternatives, on this machine, in one run (``make bench``).

Engines: sentence-transformers ``CrossEncoder.rank`` in-process; ONNX Runtime in-process on
the served ONNX file (all documents in one padded batch, and length-sorted batches); this
server through ``RerankClient.rank``; Infinity serving the same checkpoint; and
``perf_analyzer`` against the Triton ensemble alone. Prints a table, writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUERY = "how does the interpreter handle an exception raised inside a loop"
# name: (documents, fewest words, most words)
WORKLOADS = {"a": (100, 55, 80), "b": (100, 15, 25), "c": (20, 1400, 1600)}
SORTED_BATCH = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workload(name: str, seed: int = 0) -> list[str]:
    """Deterministic documents of real prose (the Python reference topics, without their
    grammar rules and code samples)."""
    from pydoc_data.topics import topics

    from reranker.evaluation import prose_paragraphs

    words = " ".join(
        p for _, text in sorted(topics.items()) for p in prose_paragraphs(text)
    ).split()
    count, fewest, most = WORKLOADS[name]
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        size = rng.randint(fewest, most)
        start = rng.randrange(len(words) - size)
        documents.append(" ".join(words[start : start + size]))
    return documents


@dataclass
class Result:
    engine: str
    model: str
    workload: str
    concurrency: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    ratio_to_ort_naive: float = 0.0
    flop_fraction: float = 0.0
    # The GEMM rate the FLOP bound of ``flop_fraction`` assumes: fp32, or bf16 for bf16 rows.
    bound: str = "fp32"
    # Each run's pairs/s in round order: a slow stretch of this shared machine shows up as
    # one or two low runs, which the median leaves out.
    run_pairs_per_s: list[float] = field(default_factory=list)


@dataclass
class Case:
    """One engine at one concurrency on one model and workload: a run is ``concurrency``
    workers making one call each; throughput per run, latency per call."""

    engine: str
    model: str
    workload: str
    concurrency: int
    call: Callable[[], object]
    pairs: int
    throughputs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def warm_up(self) -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: self.call(), range(min(self.concurrency, 2))))

    def run(self) -> None:
        def timed(_: int) -> None:
            start = time.perf_counter()
            self.call()
            self.latencies.append(time.perf_counter() - start)

        with ThreadPoolExecutor(self.concurrency) as pool:
            start = time.perf_counter()
            list(pool.map(timed, range(self.concurrency)))
            self.throughputs.append(self.pairs * self.concurrency / (time.perf_counter() - start))

    def result(self) -> Result:
        ordered = sorted(self.latencies)
        return Result(
            self.engine,
            self.model,
            self.workload,
            self.concurrency,
            statistics.median(self.throughputs),
            1000 * ordered[len(ordered) // 2],
            1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            run_pairs_per_s=[round(value, 1) for value in self.throughputs],
        )


def interleave(cases: list[Case], runs: int) -> list[Result]:
    """Warms every case up, then takes ``runs`` rounds of one run per case, the order rotated
    each round: drift of this machine's speed then falls on all engines alike, so the ratios
    between them hold even when the absolute figures move."""
    for case in cases:
        case.warm_up()
    for round_ in range(runs):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            case.run()
    results = [case.result() for case in cases]
    for result in results:
        print(
            f"  {result.engine:<24} {result.model:<8} ({result.workload}) "
            f"c={result.concurrency:<2} {result.pairs_per_s:7.1f} pairs/s  "
            f"p50 {result.p50_ms:7.0f} ms",
            flush=True,
        )
    return results


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


def precision_of(served: str) -> str:
    """The precision a benchmark model name carries (``minilm-bf16`` is bf16)."""
    suffix = served.rsplit("-", 1)[-1]
    return suffix if suffix in ("int8", "bf16") else "fp32"


def in_process_label(precision: str) -> str:
    return "openvino" if precision == "bf16" else "onnxruntime"


def _suffix(precision: str) -> str:
    return "" if precision == "fp32" else f" {precision}"


class Server:
    """This server (Triton + rank service) on loopback."""

    def __init__(
        self,
        repository: Path,
        log: Path,
        default_model: str = "minilm",
        settings: dict[str, str] | None = None,
    ) -> None:
        from reranker.triton_server import dies_with_parent

        self.port, self.http_port, self.triton = free_port(), free_port(), free_port()
        env = dict(
            os.environ,
            RERANKER_GRPC_PORT=str(self.port),
            RERANKER_HTTP_PORT=str(self.http_port),
            RERANKER_METRICS_PORT=str(free_port()),
            RERANKER_MODEL_REPOSITORY=str(repository),
            RERANKER_DEFAULT_MODEL=default_model,
            RERANKER_TRITON_GRPC_PORT=str(self.triton),
            RERANKER_TRITON_HTTP_PORT=str(free_port()),
            RERANKER_TRITON_METRICS_PORT=str(free_port()),
            RERANKER_TRITON_LOG=str(log.with_name("tritonserver.log")),
            # Deep queues at high concurrency are the point here, not a failure.
            RERANKER_INFERENCE_TIMEOUT_S="600",
            RERANKER_MAX_ROWS_IN_FLIGHT="100000",
            RERANKER_MAX_DOCUMENTS_PER_CALL="100000",
            # An idle model's canary wakes ONNX Runtime's spinning worker threads (about 2.5% of
            # a core per model every 2 s): not while the in-process engines are measured.
            RERANKER_HEALTH_INTERVAL_S="60",
        )
        env.update({"RERANKER_" + k.upper(): v for k, v in (settings or {}).items()})
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                dies_with_parent([sys.executable, "-m", "reranker", "serve"]),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 300
        while b"SERVING on" not in log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


class CohereHttp:
    """This server's HTTP front door in Cohere's v2 shape (``POST /v2/rerank``)."""

    def __init__(self, port: int) -> None:
        import httpx

        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

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
            self.process = subprocess.Popen(
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
                ],
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


def perf_analyzer(
    binary: Path, triton: int, documents: list[str], workdir: Path
) -> dict[str, float]:
    """Rows/s Triton's ensemble sustains alone (perf_analyzer, requests of 25 rows)."""
    rows = 25
    data = {"data": [{"QUERY": [QUERY], "DOCUMENT": [document]} for document in documents]}
    (workdir / "pa-input.json").write_text(json.dumps(data))
    libs = workdir / "pa-libs"
    libs.mkdir(exist_ok=True)
    import pytriton

    # The nvidia-pytriton wheel's bundled libraries include the two perf_analyzer needs.
    shipped = Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs"
    for pattern, name in (
        ("libb64-*.so.0d", "libb64.so.0d"),
        ("libcudart-*.so.12*", "libcudart.so.12"),
    ):
        link = libs / name
        if not link.exists():
            link.symlink_to(next(shipped.glob(pattern)))
    completed = subprocess.run(
        [
            str(binary),
            "-m",
            "minilm",
            "-u",
            f"127.0.0.1:{triton}",
            "-i",
            "grpc",
            "--input-data",
            str(workdir / "pa-input.json"),
            "-b",
            str(rows),
            "--concurrency-range",
            "4",
            "--measurement-interval",
            "5000",
            # A shared 2-core machine drifts: accept a looser stability band, more trials.
            "--stability-percentage",
            "25",
            "--max-trials",
            "10",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, LD_LIBRARY_PATH=str(libs)),
        check=False,
    )
    output = completed.stdout + completed.stderr
    for line in output.splitlines():
        if "Throughput:" in line:
            # "infer/sec" counts batch rows (requests x batch size), i.e. pairs.
            pairs = float(line.split("Throughput:")[1].split()[0])
            return {"requests_per_s": pairs / rows, "pairs_per_s": pairs}
    raise RuntimeError(f"perf_analyzer printed no throughput:\n{output[-2000:]}")


def bert_flops(length: float, hidden: int, layers: int, intermediate: int) -> float:
    """Multiply-add FLOPs of one sequence through a BERT-style encoder."""
    projections = 2 * length * hidden * hidden * 4
    feed_forward = 2 * length * hidden * intermediate * 2
    attention = 2 * length * length * hidden * 2
    return layers * (projections + feed_forward + attention)


def deberta_flops(length: float, hidden: int, layers: int, intermediate: int) -> float:
    """BERT's FLOPs plus disentangled attention over the relative positions a sequence of
    this length can use (2 x length, not the 512 Hugging Face's code computes against)."""
    relative = min(2 * length, 512)
    extra = 2 * (2 * length * relative * hidden) + 2 * (2 * relative * hidden * hidden)
    return bert_flops(length, hidden, layers, intermediate) + layers * extra


def gemm_peak_gflops(size: int = 1024, repeats: int = 10) -> tuple[float, float]:
    """Median and best fp32 GEMM rate of this machine (numpy, all cores)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), max(rates)


def bf16_gemm_gflops(size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """Median and best bf16 GEMM rate (torch, all cores): the bound of bf16 rows."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    a @ a
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), max(rates)


def build_models(workdir: Path, deberta: bool, bf16: bool) -> Path:
    """The benchmark's repository, built once and reused: the MiniLM cross-encoder in fp32,
    int8 and (where the CPU has native BF16) bf16; DeBERTa-v2 of the mxbai-rerank-xsmall-v1
    shape, 12 layers, in fp32 and bf16; the JinaBERT-like 8k model in fp32 and bf16."""
    from reranker.builder import BuildOptions, build
    from reranker.checkpoints import (
        deberta_v2_cross_encoder,
        jina_bert_like_onnx,
        minilm_cross_encoder,
    )
    from reranker.precision import Precision

    repository = workdir / "model_repository"
    checkpoints = workdir / "checkpoints"

    def variants(name: str, precisions: Sequence[Precision]) -> None:
        for precision in precisions:
            served = name + _suffix(precision.value).replace(" ", "-")
            if not (repository / served).is_dir():
                options = BuildOptions(name=served, precision=precision)
                build(str(checkpoints / name), options, repository)

    reduced = [Precision.BF16] if bf16 else []
    if not (checkpoints / "minilm").is_dir():
        minilm_cross_encoder(checkpoints / "minilm")
    variants("minilm", [Precision.FP32, Precision.INT8, *reduced])
    if deberta:
        if not (checkpoints / "deberta").is_dir():
            deberta_v2_cross_encoder(checkpoints / "deberta", layers=12)
        variants("deberta", [Precision.FP32, *reduced])
    if not (checkpoints / "jina").is_dir():
        jina_bert_like_onnx(checkpoints / "jina")
    variants("jina", [Precision.FP32, *reduced])
    return repository


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    chosen = [r for r in results if r.model == "minilm" and r.workload == "a"]
    for n, engine in enumerate(dict.fromkeys(r.engine for r in chosen)):
        points = sorted((r.concurrency, r.pairs_per_s) for r in chosen if r.engine == engine)
        color = f"C{n % 10}"
        if len(points) > 1:
            axis.plot(*zip(*points, strict=True), marker="o", color=color, label=engine)
        elif engine.startswith(("this server", "infinity")):
            axis.plot(*points[0], marker="s", color=color, label=f"{engine} (c={points[0][0]})")
        else:
            axis.axhline(
                points[0][1],
                linestyle="--",
                linewidth=1,
                color=color,
                label=f"{engine} (in-process)",
            )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent rank calls")
    axis.set_ylabel("pairs / s")
    axis.set_title("MiniLM-L6 cross-encoder, 1 query x 100 passages (workload a), 2 CPU cores")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


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
    cases = [
        Case("CrossEncoder.rank", model, name, 1, lambda: cross_encoder.rank(QUERY, documents), n)
    ]
    for served, runner in runners.items():
        precision = precision_of(served)
        for kind, call in graph_engines(runner, tokenizer, documents).items():
            if precision != "fp32" and kind == "naive":
                continue  # reduced precisions are compared with sorted in-process batches only
            label = f"{in_process_label(precision)} {kind}{_suffix(precision)}"
            cases.append(Case(label, model, name, 1, call, n))
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
                    "this server" + _suffix(precision),
                    model,
                    name,
                    level,
                    partial(client.rank, QUERY, documents, model=served),
                    n,
                )
            )
    if model == "minilm" and name == "a":
        call = partial(http.rank, documents)
        cases.append(Case("this server HTTP /v2/rerank", model, name, 4, call, n))
        for dtype, peer in infinity.items():
            levels = concurrency if dtype == "float32" else [4]
            label = "infinity" + ("" if dtype == "float32" else " bf16")
            for level in levels:
                cases.append(Case(label, model, name, level, partial(peer.rank, documents), n))
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

        label = f"{in_process_label(precision)} one row per run{_suffix(precision)}"
        cases.append(Case(label, "jina", "lc", 1, in_process, len(documents)))
        call = partial(client.rank, QUERY, documents, model=served)
        cases.append(
            Case("this server" + _suffix(precision), "jina", "lc", 1, call, len(documents))
        )
    return cases


def long_documents(count: int = 4, words: int = 7000) -> list[str]:
    from pydoc_data.topics import topics

    from reranker.evaluation import prose_paragraphs

    text = " ".join(p for _, t in sorted(topics.items()) for p in prose_paragraphs(t)).split()
    return [" ".join(text[i * words : (i + 1) * words]) for i in range(count)]


def table(results: Sequence[Result]) -> str:
    columns = (
        "engine",
        "model",
        "wl",
        "c",
        "pairs/s",
        "p50 ms",
        "p99 ms",
        "x naive",
        "of bound (GEMM)",
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = (
            r.engine,
            r.model,
            r.workload,
            str(r.concurrency),
            f"{r.pairs_per_s:.1f}",
            f"{r.p50_ms:.0f}",
            f"{r.p99_ms:.0f}",
            f"{r.ratio_to_ort_naive:.2f}" if r.ratio_to_ort_naive else "",
            f"{r.flop_fraction:.2f} ({r.bound})" if r.flop_fraction else "",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The performance targets, each as a ratio of two results of this run (workload a)."""

    def find(
        engine: str, concurrency: int = 1, model: str = "minilm", workload: str = "a"
    ) -> Result | None:
        return next(
            (
                r
                for r in results
                if (r.engine, r.concurrency, r.model, r.workload)
                == (engine, concurrency, model, workload)
            ),
            None,
        )

    server, int8 = find("this server", 4), find("this server int8", 4)
    server_c1, deberta = find("this server", 1), find("this server", 1, "deberta")
    checks: list[tuple[str, float | None, str, float]] = []

    def throughput(ours: Result | None, theirs: Result | None) -> float | None:
        return ours.pairs_per_s / theirs.pairs_per_s if ours and theirs else None

    checks += [
        ("fp32 c=4 / ORT naive", throughput(server, find("onnxruntime naive")), ">=", 1.0),
        ("fp32 c=4 / ORT sorted", throughput(server, find("onnxruntime sorted")), ">=", 0.95),
        ("fp32 c=4 / CrossEncoder", throughput(server, find("CrossEncoder.rank")), ">=", 1.15),
        ("fp32 c=4 / Infinity c=4", throughput(server, find("infinity", 4)), ">=", 1.15),
        (
            "HTTP /v2/rerank c=4 / gRPC c=4",
            throughput(find("this server HTTP /v2/rerank", 4), server),
            ">=",
            0.95,
        ),
        ("int8 c=4 / CrossEncoder fp32", throughput(int8, find("CrossEncoder.rank")), ">=", 2.2),
        (
            "int8 c=4 / ORT int8 sorted",
            throughput(int8, find("onnxruntime sorted int8")),
            ">=",
            0.95,
        ),
    ]
    sorted_c1 = find("onnxruntime sorted")
    latency = server_c1.p50_ms / sorted_c1.p50_ms if server_c1 and sorted_c1 else None
    checks.append(("p50 c=1 / ORT sorted p50", latency, "<=", 1.15))
    fraction = deberta.flop_fraction if deberta else None
    checks.append(("DeBERTa fp32, fraction of FLOP bound", fraction, ">=", 0.70))
    bf16 = find("this server bf16", 4)
    checks += [
        ("bf16 c=4 / this server fp32 c=4", throughput(bf16, server), ">=", 2.5),
        (
            "bf16 c=4 / ORT int8 sorted",
            throughput(bf16, find("onnxruntime sorted int8")),
            ">=",
            1.3,
        ),
        (
            "bf16 c=4 / OpenVINO bf16 sorted",
            throughput(bf16, find("openvino sorted bf16")),
            ">=",
            0.95,
        ),
        ("bf16 c=4 / Infinity bf16 c=4", throughput(bf16, find("infinity bf16", 4)), ">=", 1.15),
        (
            "DeBERTa bf16 / fp32 (this server)",
            throughput(find("this server bf16", 1, "deberta"), deberta),
            ">=",
            1.4,
        ),
    ]
    for precision, suffix in (("fp32", ""), ("bf16", " bf16")):
        engine = in_process_label(precision)
        checks.append(
            (
                f"long context {precision}: served / in-process",
                throughput(
                    find("this server" + suffix, 1, "jina", "lc"),
                    find(f"{engine} one row per run{suffix}", 1, "jina", "lc"),
                ),
                ">=",
                0.9,
            )
        )
    return [
        {
            "target": name,
            "measured": value,
            "goal": f"{relation} {goal}",
            "met": value is not None and (value >= goal if relation == ">=" else value <= goal),
        }
        for name, value, relation, goal in checks
    ]


def target_lines(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["targets (workload a unless named, ratios within this run):"]
    for check in checks:
        value = "n/a" if check["measured"] is None else f"{check['measured']:.2f}"
        verdict = "met" if check["met"] else "NOT met"
        lines.append(f"  {check['target']:<38} {value:>5}  (goal {check['goal']}): {verdict}")
    return "\n".join(lines)


def show(path: Path) -> int:
    """Prints the table and the targets of an earlier run's JSON."""
    report = json.loads(path.read_text())
    results = [Result(**r) for r in report["results"]]
    print(table(results))
    print(target_lines(targets(results)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--infinity-venv", type=Path, default=ROOT / "build" / "infinity-venv")
    parser.add_argument("--perf-analyzer", type=Path, default=ROOT / "build" / "perf_analyzer")
    parser.add_argument("--no-deberta", action="store_true")
    parser.add_argument("--show", type=Path, help="print the table of an earlier results.json")
    args = parser.parse_args()
    if args.show:
        return show(args.show)
    began = time.monotonic()

    def elapsed() -> str:
        return f"[{(time.monotonic() - began) / 60:4.1f} min]"

    from reranker_client import RerankClient
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    from reranker.precision import runner_for
    from reranker.runtimes import cpu_flags, has_native_bf16

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.output.mkdir(parents=True, exist_ok=True)
    bf16 = has_native_bf16(cpu_flags())
    repository = build_models(args.workdir, deberta=not args.no_deberta, bf16=bf16)
    models = ["minilm"] + ([] if args.no_deberta else ["deberta"])
    results: list[Result] = []
    lengths: dict[str, dict[str, float]] = {}
    gemm = [gemm_peak_gflops()]
    print(f"fp32 GEMM: median {gemm[0][0]:.0f} GFLOP/s, best {gemm[0][1]:.0f}", flush=True)
    gemm_bf16 = [bf16_gemm_gflops()] if bf16 else []
    if gemm_bf16:
        rate, best = gemm_bf16[0]
        print(f"bf16 GEMM: median {rate:.0f} GFLOP/s, best {best:.0f}", flush=True)

    def runners(model: str) -> dict[str, Any]:
        served = [m for m in (model, f"{model}-int8", f"{model}-bf16") if (repository / m).is_dir()]
        return {
            m: runner_for(repository / f"{m}__encoder" / "1" / "model.onnx", precision_of(m))
            for m in served
        }

    # Every engine is up for the whole run, so each model and workload measures all engines
    # round by round (see ``interleave``).
    server = Server(repository, args.workdir / "reranker.log")
    infinity: dict[str, Infinity] = {}
    perf: dict[str, float] = {}
    stack = contextlib.ExitStack()
    try:
        if (args.infinity_venv / "bin" / "infinity_emb").exists():
            for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
                infinity[dtype] = Infinity(
                    args.infinity_venv,
                    args.workdir / "checkpoints" / "minilm",
                    args.workdir / f"infinity-{dtype}.log",
                    dtype,
                )
        client = stack.enter_context(RerankClient(f"127.0.0.1:{server.port}", timeout=600))
        http = CohereHttp(server.http_port)
        stack.callback(http.close)
        for model in models:
            checkpoint = args.workdir / "checkpoints" / model
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
            in_process = runners(model)
            for name in WORKLOADS if model == "minilm" else ["a"]:
                documents = workload(name)
                pair_lengths = [
                    len(i)
                    for i in tokenizer([QUERY] * len(documents), documents, truncation=True)[
                        "input_ids"
                    ]
                ]
                lengths[f"{model}/{name}"] = {
                    "mean": float(np.mean(pair_lengths)),
                    "max": float(max(pair_lengths)),
                }
                print(f"{elapsed()} {model} ({name})", flush=True)
                results += interleave(
                    engines(
                        model,
                        name,
                        documents,
                        cross_encoder,
                        tokenizer,
                        in_process,
                        client,
                        http,
                        infinity,
                        args.concurrency,
                    ),
                    args.runs,
                )
                gemm.append(gemm_peak_gflops())
                gemm_bf16 += [bf16_gemm_gflops()] if bf16 else []
            del in_process
        print(f"{elapsed()} jina (long context)", flush=True)
        jina_tokenizer = AutoTokenizer.from_pretrained(args.workdir / "checkpoints" / "jina")
        lc_runners = runners("jina")
        results += interleave(
            long_context_cases(repository, client, lc_runners, jina_tokenizer), args.runs
        )
        del lc_runners
        print(f"{elapsed()} perf_analyzer", flush=True)
        binary = args.perf_analyzer / "perf_analyzer"
        if binary.exists():
            try:
                perf = perf_analyzer(binary, server.triton, workload("a"), args.workdir)
            except RuntimeError as error:  # recorded, not fatal: the other engines still count
                print(f"  perf_analyzer failed: {error}", flush=True)
                perf = {"error": str(error)[-500:]}  # type: ignore[dict-item]
            else:
                print(
                    f"  perf_analyzer (Triton ensemble alone, c=4): "
                    f"{perf['pairs_per_s']:.1f} pairs/s",
                    flush=True,
                )
    finally:
        stack.close()
        server.stop()
        for peer in infinity.values():
            peer.stop()
    median_gflops = statistics.median(rate for rate, _ in gemm)
    best_gflops = max(best for _, best in gemm)
    median_bf16 = statistics.median(rate for rate, _ in gemm_bf16) if gemm_bf16 else 0.0

    for result in results:
        naive = next(
            (
                r.pairs_per_s
                for r in results
                if r.engine == "onnxruntime naive"
                and r.model == result.model
                and r.workload == result.workload
            ),
            None,
        )
        key = f"{result.model}/{result.workload}"
        if naive is None or key not in lengths:
            continue  # the long-context row compares served with in-process only
        result.ratio_to_ort_naive = result.pairs_per_s / naive
        flops = (deberta_flops if result.model == "deberta" else bert_flops)(
            lengths[key]["mean"], 384, 12 if result.model == "deberta" else 6, 1536
        )
        if result.engine.endswith("bf16") and median_bf16:
            result.bound = "bf16"
            result.flop_fraction = result.pairs_per_s * flops / (median_bf16 * 1e9)
        else:
            result.flop_fraction = result.pairs_per_s * flops / (median_gflops * 1e9)

    print()
    print(table(results))
    bounds = {
        key: {
            "flops_per_pair": (deberta_flops if key.startswith("deberta") else bert_flops)(
                value["mean"], 384, 12 if key.startswith("deberta") else 6, 1536
            ),
        }
        for key, value in lengths.items()
    }
    for key, value in bounds.items():
        value["bound_pairs_per_s_median_gemm"] = median_gflops * 1e9 / value["flops_per_pair"]
        value["bound_pairs_per_s_best_gemm"] = best_gflops * 1e9 / value["flops_per_pair"]
        if median_bf16:
            value["bound_pairs_per_s_median_bf16_gemm"] = (
                median_bf16 * 1e9 / value["flops_per_pair"]
            )
        median, best = value["bound_pairs_per_s_median_gemm"], value["bound_pairs_per_s_best_gemm"]
        print(f"bound {key}: {median:.1f} pairs/s at the median GEMM rate ({best:.1f} at the best)")
    if "pairs_per_s" in perf:
        rate = perf["pairs_per_s"]
        print(f"perf_analyzer, Triton ensemble alone (minilm, a, c=4): {rate:.1f} pairs/s")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "versions": _versions(),
        "gemm_gflops": {"median": median_gflops, "best": best_gflops},
        "bf16_gemm_gflops": {
            "median": median_bf16,
            "best": max((best for _, best in gemm_bf16), default=0.0),
        },
        "token_lengths": lengths,
        "bounds": bounds,
        "perf_analyzer": perf,
        "results": [asdict(r) for r in results],
    }
    checks = targets(results)
    report["targets"] = checks
    print(target_lines(checks))
    (args.output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.output / "throughput.png")
    print(f"wrote {args.output / 'results.json'} and {args.output / 'throughput.png'}")
    print(f"{elapsed()} done")
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = [
        "onnxruntime",
        "torch",
        "transformers",
        "sentence-transformers",
        "tokenizers",
        "nvidia-pytriton",
    ]
    return {name: version(name) for name in names}


if __name__ == "__main__":
    sys.exit(main())
