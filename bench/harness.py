"""The timing harness: cases run round by round, so machine drift falls on all engines alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


def p99(values: Sequence[float]) -> float:
    """The 99th percentile as the benchmark reads it: the value at 99% of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


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
    # Against a partner case run back to back with this one in every round: the median of the
    # rounds' ratios. Both runs of a round see the same state of the machine, so this ratio
    # holds where the medians of the two rows fall into different speed states.
    partner: str = ""
    paired_ratio: float = 0.0
    # The speedup over the partner that the work left predicts (a shared prompt run once).
    ideal_ratio: float = 0.0


@dataclass
class Case:
    """One engine at one concurrency on one model and workload: a run is one call per
    worker, or ``calls`` calls if more, made by ``concurrency`` workers; throughput per run,
    latency per call."""

    engine: str
    model: str
    workload: str
    concurrency: int
    call: Callable[[], object]
    pairs: int
    # The case this one is compared with: the two run back to back in every round.
    partner: Case | None = None
    ideal_ratio: float = 0.0
    throughputs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # A smaller call that warms the same paths up, for a case whose call takes minutes.
    warm_call: Callable[[], object] | None = None
    # Calls a run makes at least (it makes one per worker anyway). Rows compared across
    # concurrencies give every run the same calls, so a run at c=1 is not one call of a
    # second, which this machine's second-to-second jitter moves by 20% (docs/benchmark.md).
    calls: int = 0
    # The rounds a run of this case is taken in, the first ones (0: every round): a row whose
    # targets hold per round runs its other cases in fewer rounds, where a median is enough.
    rounds: int = 0

    def warm_up(self) -> None:
        call = self.warm_call or self.call
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: call(), range(min(self.concurrency, 2))))

    def run(self) -> None:
        def timed(_: int) -> None:
            start = time.perf_counter()
            self.call()
            self.latencies.append(time.perf_counter() - start)

        calls = max(self.calls, self.concurrency)
        with ThreadPoolExecutor(self.concurrency) as pool:
            start = time.perf_counter()
            list(pool.map(timed, range(calls)))
            self.throughputs.append(self.pairs * calls / (time.perf_counter() - start))

    def result(self) -> Result:
        ordered = sorted(self.latencies)
        partner = self.partner
        ratios = (
            [
                ours / theirs
                for ours, theirs in zip(self.throughputs, partner.throughputs, strict=True)
            ]
            if partner
            else []
        )
        return Result(
            self.engine,
            self.model,
            self.workload,
            self.concurrency,
            statistics.median(self.throughputs),
            1000 * ordered[len(ordered) // 2],
            1000 * p99(ordered),
            run_pairs_per_s=[round(value, 3) for value in self.throughputs],
            partner=f"{partner.engine} c={partner.concurrency}" if partner else "",
            paired_ratio=statistics.median(ratios) if ratios else 0.0,
            ideal_ratio=self.ideal_ratio,
        )


def interleave(cases: list[Case], runs: int) -> list[Result]:
    """Warms every case up, then takes ``runs`` rounds of one run per case, the order rotated
    each round: drift of this machine's speed then falls on all engines alike, so the ratios
    between them hold even when the absolute figures move. A case with a partner runs right
    after it (before it in odd rounds), so each round gives one paired ratio."""
    for case in cases:
        case.warm_up()
    units = _units(cases)
    for round_ in range(runs):
        shift = round_ % len(units)
        for unit in units[shift:] + units[:shift]:
            for case in unit if round_ % 2 == 0 else unit[::-1]:
                if not case.rounds or round_ < case.rounds:
                    case.run()
    results = [case.result() for case in cases]
    for result in results:
        print(
            f"  {result.engine:<24} {result.model:<8} ({result.workload}) "
            f"c={result.concurrency:<2} {result.pairs_per_s:7.1f} pairs/s  "
            f"p50 {result.p50_ms:7.0f} ms"
            + (f"  {result.paired_ratio:.2f}x {result.partner}, paired" if result.partner else ""),
            flush=True,
        )
    return results


def _units(cases: list[Case]) -> list[list[Case]]:
    """The cases in order, each partnered case joined to its partner as one unit."""
    present = {id(case) for case in cases}
    partners = {id(case.partner): case.partner for case in cases if id(case.partner) in present}
    units: list[list[Case]] = []
    for case in cases:
        if id(case) in partners:
            continue  # runs inside the unit of the case it partners
        partner = partners.get(id(case.partner)) if case.partner else None
        units.append([partner, case] if partner else [case])
    return units
