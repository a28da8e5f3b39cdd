"""Render the NoCloud seed (user-data, meta-data, network-config) for one host and machine.

The templates are Jinja2 rendered in a sandbox with strict undefined variables: an operator's override
template (BareMetalMachine.spec.seedTemplatesRef) can read the documented inputs and nothing else, and a
typo in a variable name is an error instead of an empty string in a file that configures a server. The
sandbox also bounds what an expression can make: `*` and `**` refuse results beyond MAX_VALUE_SIZE (ranges
are bounded by jinja's sandbox itself), and the output beyond `max_output` bytes. Operator templates
additionally render in a child process with CPU and memory limits (sandbox.py).

A failing template is reported by file, line and exception type only: jinja's messages can quote the data
being rendered (the bootstrap data holds a join token, for a control plane the cluster's CA keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SEED_FILES = ("user-data", "meta-data", "network-config")
MAX_VALUE_SIZE = 1 << 20  # items/characters a `*` may produce; digits (roughly) a `**` may produce
DEFAULT_MAX_OUTPUT = 4 << 20  # bytes of all seed files together


class SeedTemplateError(ValueError):
    """A template does not render; the message names the file, the line and the exception type."""

    def __init__(self, file: str, line: int | None, kind: str) -> None:
        where = f"seed template {file}" + (f" line {line}" if line else "")
        super().__init__(f"{where}: {kind}")
        self.file, self.line, self.kind = file, line, kind


class _Bounded(ImmutableSandboxedEnvironment):
    """The sandbox, plus `*` and `**` that refuse to build huge values (`'x' * 2**31`, `9**9**9`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple | bytes) and isinstance(n, int)
                if sized and len(seq) * max(n, 0) > MAX_VALUE_SIZE:
                    raise OverflowError("repetition too large")
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            magnitude = abs(left)
            if magnitude > 1 and right > 0 and right * math.log10(magnitude) > MAX_VALUE_SIZE / 1000:
                raise OverflowError("power too large")
        return super().call_binop(context, operator, left, right)


@dataclass(frozen=True)
class NicInput:
    name: str
    mac: str
    ip: str | None = None
    gateway: str | None = None


@dataclass(frozen=True)
class HostInput:
    name: str
    nics: tuple[NicInput, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedInputs:
    """Everything a seed template may use. Documented in docs/seed-templates.md."""

    bootstrap_data: str
    instance_id: str
    hostname: str
    provider_id: str
    cluster_name: str
    machine_name: str
    machine_namespace: str
    host: HostInput
    failure_domain: str | None = None

    def __repr__(self) -> str:  # the bootstrap data holds a join token
        return f"SeedInputs(hostname={self.hostname!r}, provider_id={self.provider_id!r})"

    def context(self) -> dict[str, Any]:
        return {
            "bootstrap_data": self.bootstrap_data,
            "instance_id": self.instance_id,
            "hostname": self.hostname,
            "provider_id": self.provider_id,
            "cluster_name": self.cluster_name,
            "machine_name": self.machine_name,
            "machine_namespace": self.machine_namespace,
            "failure_domain": self.failure_domain,
            "host": {
                "name": self.host.name,
                "labels": dict(self.host.labels),
                "nics": [
                    {"name": n.name, "mac": n.mac, "ip": n.ip, "gateway": n.gateway} for n in self.host.nics
                ],
            },
        }


def _environment(templates: dict[str, str]) -> _Bounded:
    return _Bounded(
        loader=jinja2.DictLoader(templates),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def default_template(name: str) -> str:
    return resources.files("capi_provider.bootstrap").joinpath("seed_templates", f"{name}.j2").read_text()


def render_seed(
    inputs: SeedInputs, overrides: dict[str, str] | None = None, max_output: int = DEFAULT_MAX_OUTPUT
) -> dict[str, bytes]:
    """The three seed files. `overrides` maps a file name to a replacement template."""
    return render_templates(templates_for(overrides), inputs.context(), max_output)


def templates_for(overrides: dict[str, str] | None) -> dict[str, str]:
    """Each seed file's template source: the operator's override, else ours."""
    unknown = sorted(set(overrides or {}) - set(SEED_FILES))
    if unknown:
        raise SeedTemplateError(
            f"(unknown keys {', '.join(unknown)}; use {', '.join(SEED_FILES)})", None, "KeyError"
        )
    return {name: (overrides or {}).get(name) or default_template(name) for name in SEED_FILES}


def render_templates(templates: dict[str, str], context: dict[str, Any], max_output: int) -> dict[str, bytes]:
    env = _environment(templates)
    out: dict[str, bytes] = {}
    total = 0
    for name in SEED_FILES:
        try:
            text = env.get_template(name).render(context)
        except jinja2.TemplateSyntaxError as e:
            raise SeedTemplateError(name, e.lineno, type(e).__name__) from None
        except Exception as e:  # anything a template can raise: report where and what kind, never the text
            raise SeedTemplateError(name, _template_line(e), type(e).__name__) from None
        out[name] = text.encode()
        total += len(out[name])
        if total > max_output:
            raise SeedTemplateError(name, None, f"OutputTooLarge (over {max_output} bytes)")
    return out


def _template_line(e: BaseException) -> int | None:
    """The template line that raised: jinja rewrites tracebacks so that template code shows as frames of
    file `<template>` at template line numbers (the innermost one is where it raised)."""
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
