"""``bench/gpu_check OUT`` (``python bench/gpucheck OUT``): the command line, the kit's
environment, the run."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpu_kit import MANIFEST

from gpucheck import __doc__ as DESCRIPTION
from gpucheck.machine import (
    Stopped,
    _stop,
    check_numpy,
    check_versions,
    device_facts,
    kit_environment,
    versions,
)
from gpucheck.measure import measure, planned_steps
from gpucheck.preflight import preflight
from gpucheck.report import DeadlineReached, Results, markdown, targets
from gpucheck.scale import CPU, DRY_RUN, GPU, SOURCES

# The package's folder: what the kit's interpreter runs again.
PACKAGE = Path(__file__).resolve().parent
# Inside a 600 s command limit: the rest stops the server and writes the report.
DEADLINE_S = 540.0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(DESCRIPTION or "").split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--wheels", type=Path, help="the kit's folder (make gpu-kit)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (fp32)")
    parser.add_argument(
        "--scale",
        choices=["small", "gpu"],
        help="small: a few calls of 1-layer models (the default on CPU); gpu: the GPU run's "
        "call sizes, concurrency and row counts (the default on a GPU; with --cpu, a dry run "
        "with a tiny model)",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=DEADLINE_S,
        help="the run ends by then, with its report written: a step in progress is cut "
        "short and the steps not begun are recorded as skipped (default: %(default)s, inside "
        "a 600 s command limit)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--in-kit-environment", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stub-python", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


LOG_TAIL_LINES = 500


def keep_log_tails(logs: Path, output: Path) -> None:
    """The last lines of the rank service's and Triton's logs beside the report: the work
    folder they are in goes with the run."""
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        (output / f"{log.stem}.tail.log").write_text("\n".join(lines) + "\n")


def _in_kit(args: argparse.Namespace, argv: list[str], work: Path, started: float) -> int:
    """The check again, under the kit's environment, with the time left."""
    environment = kit_environment(args.wheels, work)
    left = args.deadline_s - (time.monotonic() - started)
    again = [str(environment.python), str(PACKAGE), *argv, "--in-kit-environment"]
    again += ["--workdir", str(work), "--stub-python", str(environment.stub_python)]
    again += ["--deadline-s", f"{left:.0f}"]
    child = subprocess.Popen(again)
    try:
        return child.wait()
    except Stopped:
        # Passed on (a child already stopping ignores it), so the child's own cleanup runs
        # and writes its report; its exit code is the run's.
        child.send_signal(signal.SIGINT)
        return child.wait()


def main(argv: list[str] | None = None) -> int:
    """The run, its signal handling in place for its length only: a stop ignores later
    signals through its cleanup, and processes started after the run (a caller's, when it is
    called in-process) must not inherit that."""
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    try:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        return _run(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(argv: list[str] | None) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    scale = {(False, "gpu"): GPU, (True, "gpu"): DRY_RUN}.get((args.cpu, args.scale), GPU)
    if args.cpu and args.scale != "gpu":
        scale = CPU
    args.output.mkdir(parents=True, exist_ok=True)
    # Before anything is installed: what the project's and the kit's generated code needs.
    check_numpy(args.wheels)
    check_versions(args.wheels)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        if args.wheels and not args.in_kit_environment:
            return _in_kit(args, sys.argv[1:] if argv is None else argv, work, started)
        sys.path[:0] = [str(p) for p in SOURCES]
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "scale": asdict(scale),
            "versions": versions(),
            "kit": json.loads((args.wheels / MANIFEST).read_text()) if args.wheels else None,
            "device": device_facts(scale),
        }
        print(f"GPU check on {report['device']['device']}: {json.dumps(report['versions'])}")
        results = Results(args.output, report, started, args.deadline_s)
        try:
            report["preflight"] = preflight(scale, args.stub_python)
        except Exception as error:  # noqa: BLE001 - the check goes on without its verdicts
            report["preflight"] = {"error": f"{type(error).__name__}: {error}"}
        print(f"preflight: {json.dumps(report['preflight'])}", flush=True)
        results.arm_deadline()
        try:
            measure(scale, work, results, args.stub_python)
        except Stopped as stopped:
            results.disarm_deadline()
            # What was measured is judged, whatever was cut short.
            report["targets"] = targets(results.rows, scale, report)
            results.skip_the_rest(planned_steps(scale), str(stopped))
            print(f"stopped ({stopped}); every process it started is stopped", file=sys.stderr)
            return 1 if isinstance(stopped, DeadlineReached) else 143
        finally:
            results.disarm_deadline()
            keep_log_tails(work / "server", args.output)
            results.write()
    print(markdown(report))
    print(f"wrote {args.output / 'results.json'} and {args.output / 'results.md'}")
    if results.failed:
        print(f"failed steps: {', '.join(results.failed)}", file=sys.stderr)
        return 1
    return 0
