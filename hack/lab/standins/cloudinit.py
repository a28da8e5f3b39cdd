"""`cloud-init` on a lab host: the NoCloud seed, four boot stages, status and clean.

The provider writes /var/lib/cloud/seed/nocloud/{meta-data,user-data[,network-config]} over SSH and then
runs the stages itself (nothing runs them at boot in the lab). Like real cloud-init, every stage runs once
per instance-id (a semaphore file is written before the stage runs, so a failed stage is not retried
either; `cloud-init clean` starts over), and asking for a later stage first runs the earlier ones.

    init --local          read the seed, keep meta-data and user-data, write instance data
    init                  render jinja user-data, set the hostname, bootcmd, write_files
    modules --mode=config store runcmd as a script
    modules --mode=final  deferred write_files, runcmd (each item with bash, stopping at the first
                          failure), a #! user-data script; then result.json
    status [--wait] [--long] [--format json]
    clean [--logs] [--seed]

Logs go to /var/log/cloud-init.log, command output to /var/log/cloud-init-output.log (and our stdout).
File contents are never logged: user-data carries the bootstrap token and keys.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.standins import userdata
from lab.standins.hostfs import HostFS, clear_directory, file_logger, write_file

VERSION = "24.4-lab"
SEED = "/var/lib/cloud/seed/nocloud"
CLOUD_DIR = "/var/lib/cloud"
DATA_DIR = "/var/lib/cloud/data"
RUN_DIR = "/run/cloud-init"
LOG = "/var/log/cloud-init.log"
OUTPUT_LOG = "/var/log/cloud-init-output.log"
DATASOURCE = f"DataSourceNoCloud [seed={SEED}]"
STAGES = ("init-local", "init", "modules-config", "modules-final")
# Cloud-config keys a real image would act on but the lab does not model; they are logged, not applied.
_IGNORED_KEYS = ("users", "ssh_authorized_keys", "ntp", "mounts", "disk_setup", "fs_setup", "packages", "apt")


class StageError(Exception):
    pass


@dataclass
class Context:
    fs: HostFS
    log: Any  # logging.Logger
    out: Any = sys.stdout

    def p(self, path: str) -> Path:
        return self.fs.path(path)


class Instance:
    """/var/lib/cloud/instances/<instance-id>: what this instance has seen and done."""

    def __init__(self, ctx: Context, instance_id: str) -> None:
        self.id = instance_id
        self.dir = ctx.p(f"{CLOUD_DIR}/instances/{instance_id}")

    def has_run(self, stage: str) -> bool:
        return (self.dir / "sem" / stage).exists()

    def mark(self, stage: str) -> None:
        write_file(self.dir / "sem" / stage, f"{time.time()}\n", 0o644)

    def save(self, name: str, data: bytes | str, mode: int = 0o600) -> None:
        write_file(self.dir / name, data, mode)

    def load(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None


# --- stages -----------------------------------------------------------------------------------------


def stage_init_local(ctx: Context, inst: Instance) -> None:
    seed = ctx.p(SEED)
    inst.save("user-data.txt", (seed / "user-data").read_bytes())
    meta = read_meta_data(ctx)
    inst.save("meta-data.json", json.dumps(meta, indent=1))
    if (seed / "network-config").exists():
        inst.save("network-config", (seed / "network-config").read_bytes())
        ctx.log.info("network-config present: kept, not applied (lab hosts have no network to configure)")
    data = instance_data(ctx, meta)
    inst.save("instance-data.json", json.dumps(data, indent=1))
    write_file(ctx.p(f"{RUN_DIR}/instance-data.json"), json.dumps(data, indent=1), 0o600)
    ctx.log.info("instance %s: found %s", inst.id, DATASOURCE)


def stage_init(ctx: Context, inst: Instance) -> None:
    raw = inst.load("user-data.txt")
    data_raw = inst.load("instance-data.json")
    if raw is None or data_raw is None:
        raise StageError("init-local did not store user-data for this instance")
    text = userdata.decode_raw(raw)
    if userdata.is_jinja(text):
        text = userdata.render(text, json.loads(data_raw))
        missing = userdata.missing_variables(text)
        if missing:
            ctx.log.warning("could not render jinja template variables in user-data: %s", ", ".join(missing))
    payload = userdata.parse_payload(text)
    inst.save(
        "payload.json", json.dumps({"kind": payload.kind, "config": payload.config, "script": payload.script})
    )
    ctx.log.info("user-data is %s", payload.kind)
    config = payload.config
    for key in _IGNORED_KEYS:
        if key in config:
            ctx.log.info("cloud-config %s: not applied in the lab", key)
    set_hostname(ctx, config, json.loads(inst.load("meta-data.json") or b"{}"))
    run_commands(ctx, userdata.commands(config, "bootcmd"), "bootcmd")
    apply_write_files(ctx, [f for f in userdata.write_files(config) if not f.defer])


def stage_modules_config(ctx: Context, inst: Instance) -> None:
    config = _payload(inst)["config"]
    runcmd = userdata.commands(config, "runcmd")
    # Like cloud-init's runcmd module: the commands become a script, executed by the final stage.
    inst.save("scripts/runcmd", "#!/bin/sh\n" + "".join(f"{c}\n" for c in runcmd), 0o700)
    inst.save("scripts/runcmd.json", json.dumps(runcmd))
    ctx.log.info("runcmd: %d command(s) stored", len(runcmd))


def stage_modules_final(ctx: Context, inst: Instance) -> None:
    payload = _payload(inst)
    apply_write_files(ctx, [f for f in userdata.write_files(payload["config"]) if f.defer])
    runcmd = json.loads(inst.load("scripts/runcmd.json") or b"[]")
    run_commands(ctx, runcmd, "runcmd")
    if payload["kind"] == "script":
        inst.save("scripts/user-data.sh", payload["script"], 0o700)
        run_commands(ctx, [str(inst.dir / "scripts" / "user-data.sh")], "user-data script")
    ctx.log.info("Cloud-init v. %s finished", VERSION)


_STAGE_FUNCS: dict[str, Callable[[Context, Instance], None]] = {
    "init-local": stage_init_local,
    "init": stage_init,
    "modules-config": stage_modules_config,
    "modules-final": stage_modules_final,
}


def _payload(inst: Instance) -> dict[str, Any]:
    raw = inst.load("payload.json")
    if raw is None:
        raise StageError("user-data was not processed for this instance (the init stage did not complete)")
    return json.loads(raw)


# --- stage helpers ----------------------------------------------------------------------------------


def read_meta_data(ctx: Context) -> dict[str, Any]:
    path = ctx.p(f"{SEED}/meta-data")
    try:
        meta = yaml.safe_load(userdata.decode_raw(path.read_bytes())) or {}
    except yaml.YAMLError as e:
        raise StageError(f"meta-data is not valid YAML: {e}") from None
    if not isinstance(meta, dict):
        raise StageError("meta-data must be a YAML mapping")
    meta.setdefault("instance-id", "nocloud")  # NoCloud's default when the seed has none
    return meta


def instance_data(ctx: Context, meta: dict[str, Any]) -> dict[str, Any]:
    facts = ctx.fs.host_facts()
    keys = meta.get("public-keys") or []
    return {
        "ds": {"_doc": "EXPERIMENTAL: datasource-specific metadata", "meta_data": meta},
        "v1": {
            "cloud_id": "nocloud",
            "cloud_name": "nocloud",
            "platform": "nocloud",
            "subplatform": f"seed-dir ({SEED})",
            "instance_id": str(meta.get("instance-id")),
            "local_hostname": meta.get("local-hostname") or facts.get("name") or socket.gethostname(),
            "availability_zone": meta.get("availability-zone"),
            "region": None,
            "machine": facts.get("architecture") or platform.machine(),
            "distro": "debian",
            "public_ssh_keys": keys if isinstance(keys, list) else [keys],
            "kernel_release": platform.release(),
            "python_version": platform.python_version(),
        },
    }


def set_hostname(ctx: Context, config: dict[str, Any], meta: dict[str, Any]) -> None:
    if config.get("preserve_hostname"):
        return
    name = config.get("hostname") or meta.get("local-hostname")
    if not name:
        return
    name = str(name).split(".")[0]
    # Written in place: on a lab host /etc/hostname is a bind mount (a rename over it would fail), and the
    # host shell sets each session's hostname from it.
    path = ctx.p("/etc/hostname")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(name + "\n")
    ctx.log.info("hostname set to %s", name)


def apply_write_files(ctx: Context, files: list[userdata.WriteFile]) -> None:
    for f in files:
        path = ctx.p(f.path)
        write_file(path, f.content, f.permissions, append=f.append)
        ctx.log.info("write_files: %s (%d bytes, mode %o%s)", f.path, len(f.content), f.permissions,
                     ", appended" if f.append else "")  # fmt: skip


def run_commands(ctx: Context, items: list[str], what: str) -> None:
    """Each item with `bash -c`, in order; the first non-zero exit stops the stage."""
    for i, command in enumerate(items):
        ctx.log.info("%s[%d]: running %s", what, i, _short(command))
        code = _run_teed(ctx, command)
        if code != 0:
            ctx.log.error("%s[%d] failed with exit code %d", what, i, code)
            raise StageError(f"{what}[{i}] failed with exit code {code}: {_short(command)}")


def _run_teed(ctx: Context, command: str) -> int:
    # Output goes to cloud-init-output.log and to our stdout, as with cloud-init's default `output` config.
    logpath = ctx.p(OUTPUT_LOG)
    logpath.parent.mkdir(parents=True, exist_ok=True)
    with open(logpath, "ab") as logf:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        out = getattr(ctx.out, "buffer", None)
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            logf.write(chunk)
            logf.flush()
            if out is not None:
                out.write(chunk)
            else:
                ctx.out.write(chunk.decode(errors="replace"))
            ctx.out.flush()
        return proc.wait()


_TOKEN_RE = re.compile(r"\b([a-z0-9]{6})\.[a-z0-9]{16}\b")


def _short(command: str) -> str:
    """A command for logs and errors: first line, shortened, bootstrap tokens redacted (a runcmd could
    carry one inline, e.g. `kubeadm join --token ...`)."""
    line = command.strip().splitlines()[0] if command.strip() else ""
    line = _TOKEN_RE.sub(r"\1.<redacted>", line)
    return line if len(line) <= 160 else line[:157] + "..."


# --- status bookkeeping -----------------------------------------------------------------------------


def _status_path(ctx: Context) -> Path:
    return ctx.p(f"{DATA_DIR}/status.json")


def load_status(ctx: Context) -> dict[str, Any]:
    try:
        return json.loads(_status_path(ctx).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"v1": {"datasource": None, "stage": None}}


def save_status(ctx: Context, status: dict[str, Any]) -> None:
    write_file(_status_path(ctx), json.dumps(status, indent=1), 0o644)


def load_result(ctx: Context) -> dict[str, Any] | None:
    try:
        return json.loads(ctx.p(f"{DATA_DIR}/result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def locked(ctx: Context) -> Iterator[None]:
    # One stage at a time per host: concurrent SSH sessions must not apply the same instance twice.
    path = ctx.p(f"{DATA_DIR}/.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_stage(ctx: Context, stage: str) -> int:
    with locked(ctx):
        seed = ctx.p(SEED)
        if not (seed / "meta-data").exists() or not (seed / "user-data").exists():
            msg = f"no NoCloud seed: {SEED}/meta-data and {SEED}/user-data are required"
            ctx.log.error(msg)
            print(msg, file=sys.stderr)
            return 1
        try:
            meta = read_meta_data(ctx)
        except StageError as e:
            print(str(e), file=sys.stderr)
            return 1
        inst = Instance(ctx, str(meta["instance-id"]))
        _switch_instance(ctx, inst)
        for name in STAGES[: STAGES.index(stage) + 1]:
            if inst.has_run(name):
                if name == stage:
                    ctx.log.info("stage %s already ran for instance %s: skipped", name, inst.id)
                    print(f"cloud-init {name}: already ran for instance {inst.id}, skipped", file=sys.stderr)
                continue
            if not _run_one(ctx, inst, name):
                return 1
        return 0


def _switch_instance(ctx: Context, inst: Instance) -> None:
    """A new instance-id is a new machine to cloud-init: status and result start over."""
    iid_file = ctx.p(f"{DATA_DIR}/instance-id")
    previous = iid_file.read_text().strip() if iid_file.exists() else None
    if previous == inst.id:
        return
    ctx.log.info("new instance %s (previous: %s)", inst.id, previous)
    ctx.p(f"{DATA_DIR}/result.json").unlink(missing_ok=True)
    save_status(ctx, {"v1": {"datasource": DATASOURCE, "stage": None}})
    write_file(iid_file, inst.id + "\n", 0o644)
    link = ctx.p(f"{CLOUD_DIR}/instance")
    if link.is_symlink() or link.exists():
        link.unlink()
    inst.dir.mkdir(parents=True, exist_ok=True)
    link.symlink_to(inst.dir)


def _run_one(ctx: Context, inst: Instance, stage: str) -> bool:
    status = load_status(ctx)
    v1 = status.setdefault("v1", {})
    v1["datasource"] = DATASOURCE
    v1["stage"] = stage
    v1[stage] = {"start": time.time(), "finished": None, "errors": []}
    save_status(ctx, status)
    inst.mark(stage)  # before running, as cloud-init's semaphores do: a failed stage is not re-run
    ctx.log.info("stage %s: start (instance %s)", stage, inst.id)
    errors: list[str] = []
    try:
        _STAGE_FUNCS[stage](ctx, inst)
    except (StageError, userdata.UserDataError, OSError) as e:
        errors.append(str(e))
        ctx.log.error("stage %s failed: %s", stage, e)
        print(f"cloud-init {stage}: {e}", file=sys.stderr)
    v1["stage"] = None
    v1[stage].update(finished=time.time(), errors=errors)
    save_status(ctx, status)
    if stage == "modules-final" or errors:
        all_errors = [e for s in STAGES for e in (v1.get(s) or {}).get("errors", [])]
        result = {"v1": {"datasource": DATASOURCE, "errors": all_errors, "recoverable_errors": {}}}
        write_file(ctx.p(f"{DATA_DIR}/result.json"), json.dumps(result, indent=1), 0o644)
    ctx.log.info("stage %s: %s", stage, "failed" if errors else "done")
    return not errors


# --- status / clean ---------------------------------------------------------------------------------


def current_status(ctx: Context) -> tuple[str, list[str], dict[str, Any]]:
    status = load_status(ctx)
    v1 = status.get("v1", {})
    result = load_result(ctx)
    if result is not None:
        errors = result.get("v1", {}).get("errors", [])
        return ("error" if errors else "done"), errors, v1
    if v1.get("stage") or any(isinstance(v1.get(s), dict) for s in STAGES):
        return "running", [], v1
    return "not started", [], v1


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    if args.wait:
        # A stage in progress holds the lock; once we get it, nothing is running.
        with locked(ctx):
            pass
    state, errors, v1 = current_status(ctx)
    if args.format == "json":
        print(
            json.dumps({"status": state, "errors": errors, "datasource": v1.get("datasource"), "stage": None})
        )
    else:
        print(f"status: {state}")
        if args.long:
            print(f"extended_status: {state}")
            print("boot_status_code: enabled-by-lab")
            print(f"detail: {v1.get('datasource') or 'no datasource yet'}")
            print(f"errors: {errors}")
    return 1 if state == "error" else 0


def cmd_clean(ctx: Context, args: argparse.Namespace) -> int:
    with locked(ctx):
        cloud = ctx.p(CLOUD_DIR)
        if cloud.is_dir():
            for child in cloud.iterdir():
                if child.name == "seed" and not args.seed:
                    continue
                if child.name == "data":
                    # Keep the lock file we are holding; everything else goes.
                    for item in child.iterdir():
                        if item.name != ".lock":
                            _remove(item)
                    continue
                _remove(child)
        clear_directory(ctx.p(RUN_DIR))
        if args.logs:
            for log in (LOG, OUTPUT_LOG):
                ctx.p(log).unlink(missing_ok=True)
    if args.reboot:
        print(
            "cloud-init clean: --reboot is not supported on lab hosts (power-cycle through the BMC)",
            file=sys.stderr,
        )
    if not args.logs:
        ctx.log.info("clean: instance state removed")
    return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        clear_directory(path)
        path.rmdir()
    else:
        path.unlink()


# --- CLI --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-init", description="cloud-init stand-in for lab hosts")
    p.add_argument("--version", "-v", action="version", version=f"/usr/bin/cloud-init {VERSION}")
    p.add_argument("--debug", "-d", action="store_true")
    p.add_argument("--force", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--local", "-l", action="store_true")
    modules = sub.add_parser("modules")
    modules.add_argument("--mode", "-m", choices=["init", "config", "final"], default="config")
    status = sub.add_parser("status")
    status.add_argument("--wait", "-w", action="store_true")
    status.add_argument("--long", "-l", action="store_true")
    status.add_argument("--format", choices=["json", "tabular", "yaml"], default="tabular")
    clean = sub.add_parser("clean")
    clean.add_argument("--logs", "-l", action="store_true")
    clean.add_argument("--seed", action="store_true")
    clean.add_argument("--reboot", "-r", action="store_true")
    clean.add_argument("--machine-id", action="store_true")
    clean.add_argument("--configs", "-c", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fs = HostFS()
    ctx = Context(fs, file_logger("cloud-init", fs, LOG))
    ctx.log.debug("invoked: cloud-init %s", " ".join(argv if argv is not None else sys.argv[1:]))
    if args.command == "init":
        return run_stage(ctx, "init-local" if args.local else "init")
    if args.command == "modules":
        return run_stage(
            ctx, {"init": "init", "config": "modules-config", "final": "modules-final"}[args.mode]
        )
    if args.command == "status":
        return cmd_status(ctx, args)
    return cmd_clean(ctx, args)


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
