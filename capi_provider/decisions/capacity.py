"""Scale from zero: the capacity a node made from a template would have, and which hosts a warm pool keeps."""

from __future__ import annotations

from capi_provider.api.types import Hardware
from capi_provider.decisions.hostmatch import HostFacts
from capi_provider.decisions.quantity import format_bytes, parse_quantity


def node_capacity(hw: Hardware) -> dict[str, str]:
    """cpu, memory, ephemeral-storage (the first disk, where the OS lives) and declared extended resources,
    in the units a kubelet reports them."""
    cap = {"cpu": str(hw.cpuCores), "memory": format_bytes(parse_quantity(hw.memory))}
    if hw.disks:
        cap["ephemeral-storage"] = format_bytes(parse_quantity(hw.disks[0].size))
    for name, qty in (hw.extendedResources or {}).items():
        cap[name] = str(qty)
    return cap


def warm_pool_choice(matching_best_first: list[HostFacts], size: int) -> list[str]:
    """The hosts to keep warm: the ones the next claims would take (best fit first, and hosts that are
    already warm first, so the pool does not churn)."""
    return [h.name for h in matching_best_first[: max(size, 0)]]
