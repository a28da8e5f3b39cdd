"""Render the NoCloud seed (user-data, meta-data, network-config) for one host and machine.

The templates are Jinja2 rendered in a sandbox with strict undefined variables: an operator's override
template (BareMetalMachine.spec.seedTemplatesRef) can read the documented inputs and nothing else, and a
typo in a variable name is an error instead of an empty string in a file that configures a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SEED_FILES = ("user-data", "meta-data", "network-config")


class SeedTemplateError(ValueError):
    """An operator's template does not render; the message names the file and the problem."""


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
    """Everything a seed template may use. Documented in docs/templates.md."""

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


_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)


def default_template(name: str) -> str:
    return resources.files("capi_provider.bootstrap").joinpath("seed_templates", f"{name}.j2").read_text()


def render_seed(inputs: SeedInputs, overrides: dict[str, str] | None = None) -> dict[str, bytes]:
    """The three seed files. `overrides` maps a file name to a replacement template."""
    unknown = unknown_override_keys(overrides or {})
    if unknown:
        raise SeedTemplateError(f"unknown seed template keys {unknown}: use {', '.join(SEED_FILES)}")
    out: dict[str, bytes] = {}
    ctx = inputs.context()
    for name in SEED_FILES:
        source = (overrides or {}).get(name) or default_template(name)
        try:
            text = _ENV.from_string(source).render(ctx)
        except jinja2.TemplateError as e:
            # The message names the template problem (e.g. an undefined variable); it never echoes inputs.
            raise SeedTemplateError(f"seed template {name}: {type(e).__name__}: {e.message}") from None
        out[name] = text.encode()
    return out


def unknown_override_keys(overrides: dict[str, str]) -> list[str]:
    return sorted(set(overrides) - set(SEED_FILES))
