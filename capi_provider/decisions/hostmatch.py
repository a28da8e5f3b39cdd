"""Which server serves a requested node: label selector + hardware minimums + failure domain, best fit.

Among the free hosts that qualify, the machine gets the warm one (already booted, for the warm pool)
if any, then the one with the fewest spare CPU cores, then the least spare memory, then by name — so a
request for 8 cores takes a 16-core server and leaves the 64-core one for a request that needs it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from capi_provider.api import FAILURE_DOMAIN_LABEL
from capi_provider.api.types import HardwareRequirements, HostSelector
from capi_provider.decisions.quantity import parse_quantity


@dataclass(frozen=True)
class HostFacts:
    """What matching needs to know about one host (built from a BareMetalHost by the adapter)."""

    name: str
    labels: dict[str, str] = field(hash=False)
    cpu_cores: int
    memory_bytes: Fraction
    architecture: str
    disks: tuple[tuple[str, Fraction], ...] = ()  # (type, size bytes)
    free: bool = True  # registered, healthy, no consumer, not paused
    warm: bool = False


@dataclass(frozen=True)
class MachineRequest:
    selector: HostSelector | None = None
    requirements: HardwareRequirements | None = None
    failure_domain: str | None = None


def selector_matches(selector: HostSelector | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.matchLabels or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.matchExpressions or []:
        present = expr.key in labels
        values = set(expr.values or [])
        ok = {
            "In": present and labels.get(expr.key) in values,
            "NotIn": not present or labels.get(expr.key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[expr.operator]
        if not ok:
            return False
    return True


def unmet_requirement(req: HardwareRequirements | None, host: HostFacts) -> str | None:
    """The first hardware requirement the host fails, as a short phrase, or None when it qualifies."""
    if req is None:
        return None
    if req.architecture and host.architecture != req.architecture:
        return f"architecture {req.architecture}"
    if req.minCPUCores and host.cpu_cores < req.minCPUCores:
        return f"{req.minCPUCores} CPU cores"
    if req.minMemory and host.memory_bytes < parse_quantity(req.minMemory):
        return f"{req.minMemory} memory"
    if req.disk:
        want_type, want_size = req.disk.type, parse_quantity(req.disk.minSize) if req.disk.minSize else 0
        if not any((not want_type or t == want_type) and size >= want_size for t, size in host.disks):
            return f"a {want_type or ''} disk of {req.disk.minSize or 'any size'}".replace("  ", " ")
    return None


def qualifies(request: MachineRequest, host: HostFacts) -> bool:
    return (
        selector_matches(request.selector, host.labels)
        and unmet_requirement(request.requirements, host) is None
        and (not request.failure_domain or host.labels.get(FAILURE_DOMAIN_LABEL) == request.failure_domain)
    )


def fit_key(request: MachineRequest, host: HostFacts) -> tuple[bool, int, Fraction, str]:
    req = request.requirements
    want_cores = req.minCPUCores if req and req.minCPUCores else 0
    want_mem = parse_quantity(req.minMemory) if req and req.minMemory else Fraction(0)
    return (not host.warm, host.cpu_cores - want_cores, host.memory_bytes - want_mem, host.name)


def best_fit(request: MachineRequest, hosts: list[HostFacts]) -> list[HostFacts]:
    """Free qualifying hosts, best first. The caller claims the first; on a lost race it tries the next."""
    return sorted((h for h in hosts if h.free and qualifies(request, h)), key=lambda h: fit_key(request, h))


def explain_no_match(request: MachineRequest, hosts: list[HostFacts]) -> str:
    """Why nothing qualifies, in one line an operator can act on."""
    free = [h for h in hosts if h.free]
    if not hosts:
        return "no BareMetalHosts exist in this namespace"
    if not free:
        return f"all {len(hosts)} hosts are in use or not available"
    reasons: Counter[str] = Counter()
    for h in free:
        if not selector_matches(request.selector, h.labels):
            reasons["do not match the host selector"] += 1
        elif (unmet := unmet_requirement(request.requirements, h)) is not None:
            reasons[f"lack {unmet}"] += 1
        elif request.failure_domain and h.labels.get(FAILURE_DOMAIN_LABEL) != request.failure_domain:
            reasons[f"are not in failure domain {request.failure_domain}"] += 1
    detail = "; ".join(f"{n} {why}" for why, n in reasons.most_common())
    return f"none of {len(free)} free hosts qualify: {detail}"
