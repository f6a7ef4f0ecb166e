"""The GPU check's kit on a machine whose numpy is 2: the check keeps the machine's numpy, the
Triton stubs get the kit's numpy 1; and a run cut short by its deadline still writes its
report, every step not run carrying the reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from gpucheck import cli, measure, preflight  # noqa: E402
from gpucheck.machine import kit_environment  # noqa: E402
from gpucheck.report import Results  # noqa: E402
from gpucheck.scale import CPU  # noqa: E402

from reranker.service.triton_server import TritonServer  # noqa: E402

THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _package(folder: Path, name: str, text: str) -> Path:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(text)
    return folder


def _tarball(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:xz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)


def _wheel(folder: Path, name: str) -> str:
    """A wheel of one empty package ``name``, version 1.0."""
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel.name


def a_kit(root: Path) -> Path:
    """A kit laid out as ``make gpu-kit`` lays it out: a wheel, and archives holding marker
    packages (Triton's place, and numpy 1.26.4's)."""
    kit = root / "kit"
    (kit / "wheels").mkdir(parents=True)
    (kit / "fallback").mkdir()
    wheel = _wheel(kit / "wheels", "kit_wheel_marker")
    _tarball(_package(root / "t", "kit_triton_marker", ""), kit / "triton.tar.xz")
    numpy_1 = _package(root / "n", "numpy", '__version__ = "1.26.4"\n')
    _tarball(numpy_1, kit / "stub-numpy.tar.xz")
    manifest = {
        "python": THIS_PYTHON,
        "wheels": [wheel],
        "fallback": {"grpcio": "1.85.1", "protobuf": "6.33.6"},
        "fallback_wheels": [],
        "triton": {"archive": "triton.tar.xz", "version": "0.7.0"},
        "stub_numpy": {"archive": "stub-numpy.tar.xz", "version": "1.26.4"},
    }
    (kit / "kit.json").write_text(json.dumps(manifest))
    return kit


# The driver: this interpreter with numpy 2.5.2 in front of its own (a folder on its path, as
# the GPU image's site-packages is), making the kit's environments.
DRIVER = """
import json, sys
from pathlib import Path
sys.path[:0] = [{fake_site!r}, {bench!r}]
import numpy
from gpucheck.machine import kit_environment
environment = kit_environment(Path({kit!r}), Path({work!r}))
print(json.dumps([numpy.__version__, str(environment.python), str(environment.stub_python)]))
"""


def test_the_stubs_get_the_kits_numpy_1_while_the_check_keeps_numpy_2(tmp_path: Path) -> None:
    kit = a_kit(tmp_path)
    fake_site = _package(tmp_path / "image-site-packages", "numpy", '__version__ = "2.5.2"\n')
    driver = DRIVER.format(
        fake_site=str(fake_site), bench=str(ROOT / "bench"), kit=str(kit), work=str(tmp_path / "w")
    )
    run = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    driver_numpy, python, stub_python = json.loads(run.stdout.splitlines()[-1])
    assert driver_numpy == "2.5.2"

    def numpy_of(interpreter: str) -> str:
        probe = "import numpy, kit_triton_marker, kit_wheel_marker; print(numpy.__version__)"
        found = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True)
        assert found.returncode == 0, found.stderr[-2000:]
        return found.stdout.strip()

    # The check's environment sees the machine's numpy and the kit's Triton; the stubs' sees
    # the kit's numpy first, and the same Triton.
    assert numpy_of(python) == "2.5.2"
    assert numpy_of(stub_python) == "1.26.4"
    assert preflight.stub_numpy(stub_python) == "1.26.4"
    # Triton's stubs find their environment through PATH: the stubs' comes first there.
    path = TritonServer.environment(stub_python)["PATH"].split(":")
    assert path[0] == str(Path(stub_python).parent)
    assert measure.server_settings(CPU, stub_python)["triton_python"] == stub_python


def test_a_kit_for_another_python_is_refused_by_name(tmp_path: Path) -> None:
    kit = a_kit(tmp_path)
    manifest = json.loads((kit / "kit.json").read_text())
    (kit / "kit.json").write_text(json.dumps({**manifest, "python": "3.2"}))
    with pytest.raises(SystemExit, match=r"the kit is for Python 3\.2"):
        kit_environment(kit, tmp_path / "w")


def test_the_deadline_cuts_a_step_short_and_the_report_names_every_step_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command line and report; the measuring replaced by two steps, the second
    longer than the deadline allows."""
    reached: list[str] = []

    def measuring(scale: Any, work: Path, results: Results, stub_python: str = "") -> None:
        with results.step("build minilm-l6"):
            pass
        with results.step("build bert-base"):
            reached.append("bert-base")
            time.sleep(30)
            reached.append("past the deadline")

    monkeypatch.setattr(cli, "measure", measuring)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    code = cli.main([str(tmp_path / "out"), "--cpu", "--deadline-s", "3"])
    assert time.monotonic() - started < 25
    assert code == 1
    # This process's signal handling is as it was: what it starts next does not inherit a
    # stop's ignored signals.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert reached == ["bert-base"]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    steps = report["steps"]
    assert steps["build minilm-l6"]["ok"]
    assert steps["build bert-base"]["error"].startswith("stopped: the run's deadline")
    not_run = [
        name for name in measure.planned_steps(CPU) if name not in reached and "build" not in name
    ]
    assert not_run and all(
        steps[name]["error"] == "skipped: the run's deadline is reached" for name in not_run
    ), steps
    table = (tmp_path / "out" / "results.md").read_text()
    assert "- step 'compile' skipped: the run's deadline is reached" in table
    assert "- step 'build bert-base' failed: stopped: the run's deadline is reached" in table
    assert report["preflight"]["found"]["stub_numpy"].startswith("1.")


def test_a_small_dev_shm_skips_the_vision_row_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's default /dev/shm (64 MiB) cannot carry the GPU scale's 20 pages of 768 x 1024
    (their pixel values, as the processor gives them to the encoder)."""
    from gpucheck.scale import GPU, VISION

    real = preflight.shutil.disk_usage

    def small_shm(path: str) -> Any:
        usage = real(path)
        return usage._replace(free=64 * 2**20) if str(path) == "/dev/shm" else usage

    monkeypatch.setattr(preflight.shutil, "disk_usage", small_shm)
    found = preflight.preflight(GPU, "")
    assert set(found["cannot_run"]) == {VISION}, found
    assert "/dev/shm has 64 MiB free" in found["cannot_run"][VISION]
    assert found["found"]["shm_needed_by_vision_mib"] > 64


def test_parity_orders_only_what_the_reference_tells_apart() -> None:
    from gpucheck.rows import order_kept

    bound = 0.01
    reference = [0.90, 0.50, 0.505, 0.10]
    # 0.50 and 0.505 are within twice the bound: either order keeps the ranking.
    assert order_kept([0.90, 0.509, 0.501, 0.10], reference, bound)
    assert order_kept([0.899, 0.50, 0.505, 0.11], reference, bound)
    # Told apart by the reference, swapped by the server: not kept.
    assert not order_kept([0.40, 0.50, 0.505, 0.10], reference, bound)
    # A document outside the reference's top ten that the server lifts above one inside it.
    eleven = [1.0 - i / 20 for i in range(11)]
    lifted = [*eleven[:10], eleven[0] + 0.001]
    assert not order_kept(lifted, eleven, bound)
    assert order_kept(eleven, eleven, bound)


def test_stage_times_count_an_execution_once_and_the_encoders_idle_time() -> None:
    from gpucheck.rows import stage_times

    def stats(executions: float, execution_ns: float) -> dict[str, dict[str, float]]:
        # Each execution merged 4 requests of 8 rows: the inference statistics count its
        # time once for each request, the batch statistics once.
        counts = {"inferences": 32 * executions, "executions": executions}
        counts |= {"requests": 4 * executions, "queue_ns": 0.0}
        counts |= {"compute_ns": 4 * execution_ns, "execution_compute_ns": execution_ns}
        return {"m__tokenizer": dict(counts), "m__encoder": dict(counts)}

    before, after = stats(10, 1e9), stats(30, 3e9)  # 20 executions, 2 s of executing
    times = stage_times(before, after, "m", wall_s=4.0, instances={"encoder": 2})
    encoder = times["encoder"]
    assert encoder["rows_per_execution"] == 32
    assert encoder["compute_ms_per_execution"] == 100.0  # 2 s over 20 executions
    # 2 s of executing over 4 s of two instances: idle three quarters of the time.
    assert encoder["instances"] == 2 and encoder["idle_fraction"] == 0.75
    assert times["tokenizer"]["idle_fraction"] == 0.5
    assert "idle_fraction" not in stage_times(before, after, "m")["encoder"]
