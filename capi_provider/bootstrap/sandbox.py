"""Rendering seed templates off the event loop, and operator templates inside resource limits.

Our own templates are trusted and cheap: they render on a worker thread. An operator's templates (a
ConfigMap named by `seedTemplatesRef`) may be anything: `{{ 'x' * 2**31 }}` or `{{ 9**9**9 }}` would otherwise
exhaust the controller's memory or CPU and crash-loop it for every tenant. They render in a child process
(`python -m capi_provider.bootstrap.sandbox`) with CPU-time, address-space and output-size limits and a wall
deadline; the inputs travel on its stdin, the files come back on its stdout. Over any limit fails that
machine only, with the template file, line and exception type, never a message or any data.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from dataclasses import dataclass
from typing import Any

from capi_provider.bootstrap.render import (
    DEFAULT_MAX_OUTPUT,
    SEED_FILES,
    SeedInputs,
    SeedTemplateError,
    render_seed,
    render_templates,
    templates_for,
)


@dataclass(frozen=True)
class TemplateLimits:
    cpu_seconds: int = 2
    memory_bytes: int = 512 << 20  # address space of the child (the interpreter and jinja need ~100 MiB)
    output_bytes: int = DEFAULT_MAX_OUTPUT
    wall_seconds: float = 10.0


async def render_seed_bounded(
    inputs: SeedInputs, overrides: dict[str, str] | None, limits: TemplateLimits
) -> dict[str, bytes]:
    if not overrides:
        return await asyncio.to_thread(render_seed, inputs, None, limits.output_bytes)
    request = json.dumps(
        {
            "templates": templates_for(overrides),
            "context": inputs.context(),
            "max_output": limits.output_bytes,
        }
    ).encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-s",  # no user site-packages
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=lambda: _limit(limits),
        # Nothing of the controller's environment (kubeconfig paths, tokens): only where to import from.
        env={"PYTHONPATH": ":".join(p for p in sys.path if p)},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(request), limits.wall_seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SeedTemplateError(
            "(operator templates)", None, f"Timeout (over {limits.wall_seconds:g}s)"
        ) from None
    return _decode(out, proc.returncode)


def _limit(limits: TemplateLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _decode(out: bytes, returncode: int | None) -> dict[str, bytes]:
    try:
        answer = json.loads(out) if out else {}
    except ValueError:
        answer = {}
    if "files" in answer and returncode == 0:
        files = answer["files"]
        if isinstance(files, dict) and set(files) == set(SEED_FILES):
            return {name: str(files[name]).encode() for name in SEED_FILES}
    if "error" in answer:
        e = answer["error"]
        raise SeedTemplateError(str(e.get("file")), e.get("line"), str(e.get("kind")))
    # Killed by a limit: the CPU limit sends SIGXCPU, the memory limit surfaces as a MemoryError or a crash.
    kind = {-24: "CPUTimeLimitExceeded", -9: "Killed"}.get(returncode or 0, f"ExitStatus{returncode}")
    raise SeedTemplateError("(operator templates)", None, kind)


def main() -> int:
    request: dict[str, Any] = json.load(sys.stdin)
    try:
        files = render_templates(request["templates"], request["context"], int(request["max_output"]))
    except SeedTemplateError as e:
        json.dump({"error": {"file": e.file, "line": e.line, "kind": e.kind}}, sys.stdout)
        return 1
    except MemoryError:
        json.dump(
            {"error": {"file": "(operator templates)", "line": None, "kind": "MemoryError"}}, sys.stdout
        )
        return 1
    json.dump({"files": {k: v.decode() for k, v in files.items()}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
