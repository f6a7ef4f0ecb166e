"""How Triton is launched: a child that cannot outlive the process that started it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from reranker.service.triton_server import dies_with_parent

_PARENT = """
import subprocess, sys, time
from reranker.service.triton_server import dies_with_parent
child = subprocess.Popen(dies_with_parent([sys.executable, "-c", "import time; time.sleep(60)"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_child_dies_when_its_parent_is_killed_outright() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # setpriv asks for the signal, then execs the command: once the command runs, the
        # request is in place (a parent killed before it would leave the child unasked).
        deadline = time.monotonic() + 10
        while "setpriv" in " ".join(psutil.Process(child).cmdline()):
            assert time.monotonic() < deadline, "setpriv never ran the command"
            time.sleep(0.01)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
        if child is not None and _alive(child):
            psutil.Process(child).kill()


def test_the_command_itself_is_unchanged_after_the_prefix() -> None:
    command = ["tritonserver", "--model-repository=/models", "--log-verbose=0"]
    wrapped = dies_with_parent(command)
    assert wrapped[-len(command) :] == command
    assert subprocess.run(dies_with_parent(["true"]), check=False).returncode == 0
