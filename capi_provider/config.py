"""The controller's settings: flags and environment variables, validated once at startup."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from capi_provider.bootstrap.sandbox import TemplateLimits


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    namespace: str | None = None  # None: all namespaces (what clusterctl installs)
    health_port: int = 8081
    kubeconfig: str | None = None
    # Host power polling while nothing changes; doubles up to poll_max and resets on any change.
    poll_interval: float = 30.0
    poll_max: float = 300.0
    # Error backoff for an unreachable/slow BMC; caps how often a dead BMC is retried.
    error_backoff_max: float = 300.0
    bmc_timeout: float = 30.0  # one BMC operation (a dead BMC costs at most this per try)
    power_settle_timeout: float = 120.0  # a power change must be seen by the BMC within this
    boot_timeout: float = 1200.0  # power on -> SSH answering (real servers POST slowly)
    ssh_connect_timeout: float = 10.0
    bootstrap_timeout: float = 900.0  # cloud-init stages incl. kubeadm join
    reset_timeout: float = 120.0  # kubeadm reset on deprovisioning
    wipe_timeout: float = 300.0
    # Attempts to power a host off before a Machine's (or host's) deletion goes on without the BMC.
    power_off_attempts: int = 3
    # A claimed host whose machine is gone and whose Cluster does not exist waits this long for the machine
    # to arrive (clusterctl move creates hosts before their machines) before it is cleaned.
    orphan_grace: float = 600.0
    api_threads: int = 16
    bmc_threads: int = 256
    # Blocking BMC/SSH operations one namespace may have in flight: one tenant's dead BMCs cannot take every
    # thread (BMO's provisioning limit plays the same part).
    per_namespace_operations: int = 64
    redfish_ca_bundle: str | None = (
        None  # PEM file every Redfish BMC without its own caBundleName must chain to
    )
    template_limits: TemplateLimits = field(default_factory=TemplateLimits)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        p = argparse.ArgumentParser(prog="python -m capi_provider", description=__doc__)
        p.add_argument(
            "--namespace",
            default=os.environ.get("WATCH_NAMESPACE") or None,
            help="watch one namespace (default: all)",
        )
        p.add_argument("--health-port", type=int, default=int(os.environ.get("HEALTH_PORT", 8081)))
        p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None)
        p.add_argument("--poll-interval", type=float, default=_env_float("CAPBM_POLL_INTERVAL", 30.0))
        p.add_argument("--bmc-timeout", type=float, default=_env_float("CAPBM_BMC_TIMEOUT", 30.0))
        p.add_argument("--boot-timeout", type=float, default=_env_float("CAPBM_BOOT_TIMEOUT", 1200.0))
        p.add_argument(
            "--redfish-ca-bundle",
            default=os.environ.get("CAPBM_REDFISH_CA_BUNDLE") or None,
            help="PEM file of CAs Redfish BMC certificates must chain to (per host: bmc.caBundleName)",
        )
        p.add_argument(
            "--per-namespace-operations",
            type=int,
            default=int(os.environ.get("CAPBM_PER_NAMESPACE_OPERATIONS", 64)),
            help="BMC/SSH operations one namespace may have in flight",
        )
        a = p.parse_args(argv)
        if a.poll_interval <= 0 or a.bmc_timeout <= 0 or a.boot_timeout <= 0:
            p.error("intervals and timeouts must be positive")
        if a.per_namespace_operations < 1:
            p.error("--per-namespace-operations must be at least 1")
        if a.redfish_ca_bundle and not os.path.isfile(a.redfish_ca_bundle):
            p.error(f"--redfish-ca-bundle {a.redfish_ca_bundle}: no such file")
        return cls(
            namespace=a.namespace,
            health_port=a.health_port,
            kubeconfig=a.kubeconfig,
            poll_interval=a.poll_interval,
            bmc_timeout=a.bmc_timeout,
            boot_timeout=a.boot_timeout,
            redfish_ca_bundle=a.redfish_ca_bundle,
            per_namespace_operations=a.per_namespace_operations,
        )
