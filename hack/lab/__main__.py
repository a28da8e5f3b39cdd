"""`python -m lab up|down`: the lab in the background for exploring with kubectl
(`make lab-up` / `make lab-down`).

`up` starts a detached supervisor that owns every lab process (they die with it: PDEATHSIG), waits until
the lab is ready and returns; `down` stops the supervisor, which stops everything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.procs import read_pidfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "supervisor.pid"
    for pid in read_pidfile(pidfile):
        if _alive(pid):
            print(f"lab already running (pid {pid}); kubeconfig: {workdir / 'kubeconfig'}")
            return 0
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    logfile = (workdir / "lab.log").open("ab")
    sup = subprocess.Popen(
        [sys.executable, "-m", "lab", "serve", "--dir", str(workdir), "--hosts", str(args.hosts)],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the `make` that started it
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    pidfile.write_text(f"{sup.pid}\n")
    print(f"[lab] starting (log: {workdir / 'lab.log'}) ...", flush=True)
    start = time.monotonic()
    last = 0.0
    while not ready.exists():
        if sup.poll() is not None:
            print(f"[lab] supervisor exited with {sup.returncode}; last log lines:", file=sys.stderr)
            print("\n".join((workdir / "lab.log").read_text().splitlines()[-40:]), file=sys.stderr)
            return 1
        if time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"[lab] ... {time.monotonic() - start:.0f}s", flush=True)
        time.sleep(0.5)
    info = json.loads(ready.read_text())
    print(f"[lab] ready in {time.monotonic() - start:.0f}s")
    print(f"      export KUBECONFIG={info['kubeconfig']}")
    for line in info.get("summary", []):
        print(f"      {line}")
    print("      stop it with: make lab-down")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    pids = read_pidfile(workdir / "supervisor.pid")
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # Belt and braces: components die with the supervisor, but sweep their process groups anyway.
    for pid in read_pidfile(workdir / "cluster" / "pids"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    (workdir / "supervisor.pid").unlink(missing_ok=True)
    (workdir / "ready.json").unlink(missing_ok=True)
    print("[lab] stopped")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lab.lab import Lab, LabConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = Path(args.dir).resolve()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    lab = Lab(LabConfig(workdir=workdir, hosts=args.hosts))
    try:
        lab.start()
        if args.hosts:
            lab.wait_hosts_available()  # "ready" means the provider has registered the hosts too
        (workdir / "ready.json").write_text(json.dumps(lab.describe()))
        while not stop:
            time.sleep(0.5)
    finally:
        lab.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m lab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("up", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=".lab")
        p.add_argument("--hosts", type=int, default=5)
    down = sub.add_parser("down")
    down.add_argument("--dir", default=".lab")
    args = parser.parse_args()
    return {"up": cmd_up, "down": cmd_down, "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
