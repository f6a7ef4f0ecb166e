"""The report: written after every step (a failed step is recorded and the run goes on), the
targets judged within the run, and its table."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpucheck.machine import Stopped, ignore_further_signals
from gpucheck.rows import Row
from gpucheck.scale import CAUSAL, LATE, VISION, Scale

DEADLINE_REACHED = "the run's deadline is reached"


class DeadlineReached(Stopped):
    """The run's ``--deadline-s`` is spent: the step in progress is cut short, the steps not
    begun are recorded as skipped, and the report is written."""


def _deadline_reached(_signum: int, _frame: Any) -> None:
    ignore_further_signals()
    raise DeadlineReached(DEADLINE_REACHED)


class Results:
    """The report, written to the output folder after every step, each step guarded: a step
    that fails records its error and the run goes on with what does not depend on it, so a
    late failure (a compile error, say) loses none of the earlier measurements. Steps not run
    (the deadline came first, or the machine cannot run them) are recorded with the reason."""

    def __init__(
        self,
        output: Path,
        report: dict[str, Any],
        started: float,
        deadline_s: float = float("inf"),
    ) -> None:
        self.output = output
        self.report = report
        self.report.setdefault("steps", {})
        self.rows: list[Row] = []
        self._started = started
        self._deadline = started + deadline_s
        self.report["deadline_s"] = deadline_s if deadline_s != float("inf") else None

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self._started:5.0f} s]"

    def time_left(self) -> float:
        return self._deadline - time.monotonic()

    def arm_deadline(self) -> None:
        """From now on, the deadline interrupts whatever step runs (SIGALRM, main thread)."""
        left = self.time_left()
        if left != float("inf"):
            signal.signal(signal.SIGALRM, _deadline_reached)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))

    def disarm_deadline(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.time_left() <= 0:  # the alarm came while no step ran
            raise DeadlineReached(DEADLINE_REACHED)
        started = time.monotonic()
        entry: dict[str, Any] = {"ok": True}
        try:
            yield
        except Stopped as stopped:
            entry = {"ok": False, "error": f"stopped: {stopped}"}
            raise
        except Exception as error:  # noqa: BLE001 - recorded, and the run goes on
            entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            print(f"{self.elapsed()} step {name!r} failed:", file=sys.stderr)
            traceback.print_exc()
        finally:
            entry["seconds"] = round(time.monotonic() - started, 1)
            self.report["steps"][name] = entry
            self.write()

    def skip(self, name: str, reason: str) -> None:
        self.skip_the_rest([name], reason)

    def skip_the_rest(self, planned: Sequence[str], reason: str) -> None:
        """Every planned step that has not run, recorded as skipped for ``reason``."""
        for name in planned:
            self.report["steps"].setdefault(
                name, {"ok": False, "error": f"skipped: {reason}", "seconds": 0.0}
            )
        self.write()

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.report["steps"].items() if not entry["ok"]]

    def write(self) -> None:
        self.report["rows"] = [asdict(r) for r in self.rows]
        self.report["wall_s"] = time.monotonic() - self._started
        # Whole or not at all: a stop while writing leaves the last complete report.
        for name, text in (
            ("results.json", json.dumps(self.report, indent=2) + "\n"),
            ("results.md", markdown(self.report)),
        ):
            partial = self.output / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, self.output / name)


def targets(rows: list[Row], scale: Scale, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU targets, as ratios within this run, per model, and each parity check."""

    def find(engine: str, model: str, case: str, concurrency: int) -> Row | None:
        key = (engine, model, case, concurrency)
        return next((r for r in rows if (r.engine, r.model, r.case, r.concurrency) == key), None)

    checks = []
    for model, facts in sorted(report.get("models", {}).items()):
        engine = facts.get("reference_engine", "CrossEncoder")
        for reference, check in facts.get("parity", {}).items():
            checks.append(
                {
                    "target": f"{model}: parity with {engine} ({reference}), max |diff|",
                    "measured": check["max_abs_diff"],
                    "goal": f"<= {check['bound']:g}, finite, same top 10",
                    "met": check["passed"],
                }
            )
    shared = find("this server", CAUSAL, "causal", 4)
    if shared:
        checks.append(
            {
                "target": f"{CAUSAL}: shared prompt c=4 / rows whole c=4, paired",
                "measured": shared.paired_ratio,
                "goal": ">= 1.3",
                "met": shared.paired_ratio >= 1.3,
            }
        )
    pages, reference = (
        find("this server", VISION, "pages", 4),
        find("CrossEncoder.rank", VISION, "pages", 1),
    )
    if pages and reference:
        checks.append(
            {
                "target": f"{VISION}: pages c=4 / CrossEncoder.rank",
                "measured": pages.pairs_per_s / reference.pairs_per_s,
                "goal": ">= 1.2",
                "met": pages.pairs_per_s >= 1.2 * reference.pairs_per_s,
            }
        )
    late, encoder = (
        find("this server", LATE, "late", 4),
        find("MultiVectorEncoder", LATE, "late", 1),
    )
    if late and encoder:
        checks.append(
            {
                "target": f"{LATE}: c=4 / MultiVectorEncoder",
                "measured": late.pairs_per_s / encoder.pairs_per_s,
                "goal": ">= 1.3",
                "met": late.pairs_per_s >= 1.3 * encoder.pairs_per_s,
            }
        )
    level = 16 if 16 in scale.concurrency else max(scale.concurrency)
    # Models measured on workload (a): the instance-count variant has its large call alone.
    for model in sorted({r.model for r in rows if r.case == "a"}):
        ours = find("this server", model, "a", level)
        shipped = find(f"CrossEncoder.rank bs={scale.shipped_batch_size}", model, "a", 1)
        best = max(
            (r for r in rows if r.model == model and r.engine.startswith("CrossEncoder")),
            key=lambda r: r.pairs_per_s,
            default=None,
        )
        small = find("this server", model, "small", scale.small_callers)
        for name, value, goal in (
            (
                f"{model}: server c={level} / CrossEncoder bs={scale.shipped_batch_size}",
                ours.pairs_per_s / shipped.pairs_per_s if ours and shipped else None,
                2.0,
            ),
            (
                f"{model}: server c={level} / CrossEncoder best batch",
                ours.pairs_per_s / best.pairs_per_s if ours and best else None,
                1.2,
            ),
        ):
            checks.append(
                {
                    "target": name,
                    "measured": value,
                    "goal": f">= {goal}",
                    "met": bool(value and value >= goal),
                }
            )
        ratio = small.p99_ms / small.p50_ms if small and small.p50_ms else None
        checks.append(
            {
                "target": f"{model}: {scale.small_callers} callers x "
                f"{scale.small_documents} docs, p99 / p50",
                "measured": ratio,
                "goal": "<= 3.0",
                "met": bool(ratio is not None and ratio <= 3.0),
            }
        )
        if ours:
            checks.append(
                {
                    "target": f"{model}: server c={level}, fraction of the FLOP bound",
                    "measured": ours.flop_fraction,
                    "goal": "reported",
                    "met": True,
                }
            )
    return checks


def markdown(report: dict[str, Any]) -> str:
    """The report as a table; a run cut short shows what it has, and each failed step."""
    facts = report.get("device", {})
    lines = [
        f"GPU check, {report.get('date', '')}, {facts.get('device', '')}"
        + (
            f", CUDA {facts['cuda']}, driver {facts.get('driver', '')}" if facts.get("cuda") else ""
        ),
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()),
        "",
        "| engine | model | case | c | pairs/s | p50 ms | p99 ms | FLOP bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("rows", []):
        fraction = f"{r['flop_fraction']:.2f}" if r["flop_fraction"] else ""
        lines.append(
            f"| {r['engine']} | {r['model']} | {r['case']} | {r['concurrency']} | "
            f"{r['pairs_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {fraction} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for check in report.get("targets", []):
        value = "n/a" if check["measured"] is None else f"{check['measured']:.3g}"
        lines.append(f"| {check['target']} | {value} | {check['goal']} | {check['met']} |")
    lines.append("")
    for model, facts_of in report.get("models", {}).items():
        lines.append(f"- {model}: parity {json.dumps(facts_of.get('parity', {}))}")
        for step in ("workload_a", "large_call"):
            for stage, times in facts_of.get(f"stages_{step}", {}).items():
                cells = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
                lines.append(f"  - {stage} ({step.replace('_', ' ')}): {cells}")
    if "gpu_memory_peak_mib" in report:
        lines.append(
            f"- GPU memory: peak {report['gpu_memory_peak_mib']:.0f} MiB "
            f"(baseline {report['gpu_memory_baseline_mib']:.0f} MiB)"
        )
    if report.get("gpu_memory_by_model_mib"):
        held = report["gpu_memory_by_model_mib"]
        cells = ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(held.items()))
        lines.append(f"- GPU memory by model process, CUDA context included (MiB): {cells}")
    if report.get("encoder_instances"):
        cells = ", ".join(f"{m} {n}" for m, n in report["encoder_instances"].items())
        lines.append(f"- encoder instances (the figures above are with these): {cells}")
    if "gemm_tflops" in report:
        lines.append(f"- GEMM: {report['gemm_tflops']:.1f} TFLOP/s")
    if "compile" in report:
        lines.append(f"- torch.compile: {json.dumps(report['compile'])}")
    if report.get("preflight"):
        lines.append(f"- preflight: {json.dumps(report['preflight'])}")
    for name, step in report.get("steps", {}).items():
        if not step["ok"]:
            skipped = step["error"].startswith("skipped: ")
            what = "skipped" if skipped else "failed"
            reason = step["error"].removeprefix("skipped: ")
            lines.append(f"- step {name!r} {what}: {reason}")
    lines.append(f"- wall time: {report.get('wall_s', 0.0):.0f} s")
    return "\n".join(lines) + "\n"
