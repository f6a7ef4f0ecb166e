"""The results table, the targets checked within one run, and the plot."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from catalog import catalog_targets
from engines import WHOLE_ROWS, in_process_label
from harness import Result
from shared import shared_service_targets

from reranker.backend.cpu import MATRIX_FEATURES, cpu_flags, has_native_bf16


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


class Check(NamedTuple):
    name: str
    measured: float | None
    relation: str  # ">=" or "<="
    goal: float
    # Why the target does not apply to this CPU; "" where it does.
    not_applicable: str = ""

    def verdict(self) -> dict[str, Any]:
        value, goal = self.measured, self.goal
        met = value is not None and (value >= goal if self.relation == ">=" else value <= goal)
        return {
            "target": self.name,
            "measured": value,
            "goal": f"{self.relation} {goal}",
            "met": None if self.not_applicable else met,
            "not_applicable": self.not_applicable,
        }


def cpu_facts() -> dict[str, Any]:
    """The CPU a run measures on, as its report names it: the model, and the matrix features
    that decide which targets apply (:func:`targets`)."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {"model": model, "features": sorted(cpu_flags() & MATRIX_FEATURES)}


class _Run:
    """One run's results, looked up and compared."""

    def __init__(self, results: Sequence[Result]) -> None:
        self._results = results

    def find(
        self, engine: str, concurrency: int = 1, model: str = "minilm", workload: str = "a"
    ) -> Result | None:
        key = (engine, concurrency, model, workload)
        return next(
            (r for r in self._results if (r.engine, r.concurrency, r.model, r.workload) == key),
            None,
        )

    @staticmethod
    def throughput(ours: Result | None, theirs: Result | None) -> float | None:
        return ours.pairs_per_s / theirs.pairs_per_s if ours and theirs else None

    def paired(self, ours: Result | None, theirs: Result | None) -> float | None:
        """The ratio of rounds run back to back where the run measured them so."""
        return ours.paired_ratio if ours and ours.paired_ratio else self.throughput(ours, theirs)

    @staticmethod
    def per_round(ours: Result | None, theirs: Result | None) -> list[float]:
        if not ours or not theirs:
            return []
        pairs = zip(ours.run_pairs_per_s, theirs.run_pairs_per_s, strict=False)
        return [a / b for a, b in pairs]


# A target's fields, the last one only where it does not apply to this CPU.
_Target = tuple[Any, ...]


def targets(
    results: Sequence[Result], machine: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The performance targets, each a ratio of results of this run (workload a unless
    named), or a fraction of a bound measured in it. ``machine`` is the run's report (CPU
    features, memory): a target that needs a CPU feature this CPU lacks is not applicable."""
    machine = machine or {}
    run = _Run(results)
    features = set(machine.get("cpu", {}).get("features", []))
    checks = [
        *_fp32_targets(run),
        *_int8_targets(run),
        *_latency_and_flops_targets(run),
        *_bf16_targets(run, features),
        *_causal_targets(run),
        *_multimodal_and_long_context_targets(run),
        *_memory_targets(machine),
        *shared_service_targets(machine),
        *catalog_targets(machine),
    ]
    return [Check(*check).verdict() for check in checks]


def _fp32_targets(run: _Run) -> list[_Target]:
    find, throughput = run.find, run.throughput
    server, server_c1 = find("this server", 4), find("this server", 1)
    ort_sorted = find("onnxruntime sorted")
    rounds = run.per_round(server, ort_sorted)
    steady = (
        min(server.pairs_per_s, server_c1.pairs_per_s)
        / max(server.pairs_per_s, server_c1.pairs_per_s)
        if server and server_c1
        else None
    )
    return [
        ("fp32 c=4 / ORT sorted, every round", min(rounds) if rounds else None, ">=", 1.0),
        ("fp32 c=4 / ORT sorted", throughput(server, ort_sorted), ">=", 1.1),
        ("fp32 c=1 vs c=4, slower / faster", steady, ">=", 0.9),
        ("fp32 c=4 / ORT naive", throughput(server, find("onnxruntime naive")), ">=", 1.0),
        ("fp32 c=4 / CrossEncoder", throughput(server, find("CrossEncoder.rank")), ">=", 1.15),
        ("fp32 c=4 / Infinity c=4", throughput(server, find("infinity", 4)), ">=", 1.15),
        (
            "HTTP /v2/rerank c=4 / gRPC c=4, paired",
            run.paired(find("this server HTTP /v2/rerank", 4), server),
            ">=",
            0.95,
        ),
    ]


def _latency_and_flops_targets(run: _Run) -> list[_Target]:
    server_c1, ort_sorted = run.find("this server", 1), run.find("onnxruntime sorted")
    latency = server_c1.p50_ms / ort_sorted.p50_ms if server_c1 and ort_sorted else None
    deberta = run.find("this server", 1, "deberta")
    return [
        ("p50 c=1 / ORT sorted p50", latency, "<=", 1.15),
        (
            "DeBERTa fp32, fraction of FLOP bound",
            deberta.flop_fraction if deberta else None,
            ">=",
            0.70,
        ),
    ]


def _int8_targets(run: _Run) -> list[_Target]:
    int8 = run.find("this server int8", 4)
    return [
        (
            "int8 c=4 / CrossEncoder fp32",
            run.throughput(int8, run.find("CrossEncoder.rank")),
            ">=",
            2.2,
        ),
        (
            "int8 c=4 / ORT int8 sorted",
            run.throughput(int8, run.find("onnxruntime sorted int8")),
            ">=",
            0.95,
        ),
        (
            "int8 c=4, fraction of int8 GEMM bound",
            int8.flop_fraction if int8 else None,
            ">=",
            0.6,
        ),
    ]


def _bf16_targets(run: _Run, features: set[str]) -> list[_Target]:
    find, throughput = run.find, run.throughput
    amx_bf16 = "amx_bf16" in features
    no_amx = "" if amx_bf16 else "needs AMX (amx_bf16), which this CPU lacks"
    no_bf16 = "" if has_native_bf16(features) else "needs native BF16 (AMX or AVX-512 BF16)"
    avx512_only = (
        ""
        if has_native_bf16(features) and not amx_bf16
        else "the AVX-512 BF16 target; a CPU with AMX is held to the AMX one"
    )
    bf16 = find("this server bf16", 4)
    return [
        (
            "bf16 c=4 / this server fp32 c=4",
            throughput(bf16, find("this server", 4)),
            ">=",
            2.5,
            no_amx,
        ),
        (
            "bf16 c=4, fraction of bf16 GEMM bound",
            bf16.flop_fraction if bf16 else None,
            ">=",
            0.85,
            no_bf16 or avx512_only,
        ),
        (
            "bf16 c=4 / ORT int8 sorted",
            throughput(bf16, find("onnxruntime sorted int8")),
            ">=",
            1.3,
            no_amx,
        ),
        (
            "bf16 c=4 / OpenVINO bf16 sorted",
            throughput(bf16, find("openvino sorted bf16")),
            ">=",
            0.95,
            no_bf16,
        ),
        (
            "bf16 c=4 / Infinity bf16 c=4",
            throughput(bf16, find("infinity bf16", 4)),
            ">=",
            1.15,
            no_bf16,
        ),
        (
            "DeBERTa bf16 / fp32 (this server)",
            throughput(find("this server bf16", 1, "deberta"), find("this server", 1, "deberta")),
            ">=",
            1.4,
            no_amx,
        ),
    ]


def _causal_targets(run: _Run) -> list[_Target]:
    find, throughput = run.find, run.throughput
    causal = find("this server", 4, "qwen3", "a")
    whole = find(WHOLE_ROWS, 4, "qwen3", "a")
    short = find("this server", 4, "qwen3-plain", "a")
    shared_gain = run.paired(causal, whole)
    of_ideal = (
        shared_gain / causal.ideal_ratio if causal and causal.ideal_ratio and shared_gain else None
    )
    return [
        (
            "causal LM c=4 / ORT sorted",
            throughput(causal, find("onnxruntime sorted", 1, "qwen3", "a")),
            ">=",
            1.25,
        ),
        ("causal LM c=4 / rows whole, paired", shared_gain, ">=", 1.3),
        ("causal LM c=4: fraction of the ideal", of_ideal, ">=", 0.8),
        (
            "causal LM c=4 / CrossEncoder",
            throughput(causal, find("CrossEncoder.rank", 1, "qwen3", "a")),
            ">=",
            1.15,
        ),
        (
            "causal LM short prompt / rows whole, paired",
            run.paired(short, find(WHOLE_ROWS, 4, "qwen3-plain", "a")),
            ">=",
            0.95,
        ),
    ]


def _multimodal_and_long_context_targets(run: _Run) -> list[_Target]:
    checks: list[_Target] = [
        (
            "multimodal c=4 / CrossEncoder",
            run.throughput(
                run.find("this server", 4, "qwen3-vl", "pages"),
                run.find("CrossEncoder.rank", 1, "qwen3-vl", "pages"),
            ),
            ">=",
            1.2,
        )
    ]
    for precision, suffix in (("fp32", ""), ("bf16", " bf16")):
        engine = in_process_label(precision)
        checks.append(
            (
                f"long context {precision}: served / in-process",
                run.throughput(
                    run.find("this server" + suffix, 1, "jina", "lc"),
                    run.find(f"{engine} one row per run{suffix}", 1, "jina", "lc"),
                ),
                ">=",
                0.9,
            )
        )
    return checks


def _memory_targets(machine: dict[str, Any]) -> list[_Target]:
    memory = [row for row in machine.get("memory", []) if row.get("models") == 4]
    return [
        (
            f"MiniLM, {kind.upper()} per served model (4 served), MB",
            memory[0][kind] if memory else None,
            "<=",
            180,
        )
        for kind in ("rss", "pss")
    ]


def target_lines(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["targets (workload a unless named, ratios within this run):"]
    for check in checks:
        value = "n/a" if check["measured"] is None else f"{check['measured']:.2f}"
        verdict = "met" if check["met"] else "NOT met"
        if check.get("not_applicable"):
            verdict = f"not applicable: {check['not_applicable']}"
        lines.append(f"  {check['target']:<38} {value:>5}  (goal {check['goal']}): {verdict}")
    return "\n".join(lines)


def show(path: Path) -> int:
    """Prints the table and the targets of an earlier run's JSON."""
    report = json.loads(path.read_text())
    results = [Result(**r) for r in report["results"]]
    print(table(results))
    if report.get("shared_service"):
        from shared import shared_service_table

        print(shared_service_table(report["shared_service"]))
    print(target_lines(targets(results, report)))
    return 0
