"""Child processes of the lab that can never outlive it.

Every component runs in its own process group (so stop() takes its children too) and gets
PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed pytest or lab supervisor leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Proc:
    """One long-running component with its output in `<logdir>/<name>.log`."""

    def __init__(
        self, name: str, argv: Sequence[str | Path], logdir: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = logdir / f"{name}.log"
        self._env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self._env or {})},
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; last log lines:\n{self.tail()}"
            )

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, procs: Sequence[Proc] = (), interval: float = 0.2
) -> None:
    """Poll `check` until it holds; fail early, with the log tail, if a component it depends on died."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.check_alive()
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0, context: object = None) -> bool:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # type: ignore[arg-type]
        return bool(resp.status == 200)


def read_pidfile(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split() if x.strip().isdigit()]
