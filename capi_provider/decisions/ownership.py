"""Whether a BareMetalMachine may use a BareMetalHost: ownership is proven, never assumed.

A machine uses a host only if the host is in the machine's own namespace and the host's `consumerRef`
names this machine: namespace, name **and uid**. A uid differs for exactly two reasons: the machine was
deleted and a new one with the same name created (the new one must not inherit the old one's server, which
may still await cleaning), or `clusterctl move` re-created the very same machine in another management
cluster. The moved machine proves itself with its `spec.providerID`, which names the host and the uid that
claimed it; only then is the claim re-stamped with the new uid.
"""

from __future__ import annotations

from enum import StrEnum

from capi_provider import api
from capi_provider.api.types import ConsumerRef


class Claim(StrEnum):
    OURS = "ours"  # host in our namespace, consumerRef = (namespace, name, uid)
    MOVED = "moved"  # ours before a clusterctl move (providerID proves it): re-stamp the uid
    FREE = "free"  # no consumer
    FOREIGN = "foreign"  # another machine's, another namespace's, or an unproven same-name claim


def provider_id(namespace: str, host: str, machine_uid: str) -> str:
    """baremetal://<namespace>/<host>/<machine uid>: readable, and its last segment (what the autoscaler
    matches nodes on) is unique cluster-wide."""
    return f"{api.PROVIDER_ID_SCHEME}://{namespace}/{host}/{machine_uid}"


def claim_of(
    *,
    host_namespace: str,
    host_name: str,
    consumer: ConsumerRef | None,
    machine_namespace: str,
    machine_name: str,
    machine_uid: str,
    machine_provider_id: str | None,
) -> Claim:
    if host_namespace != machine_namespace:
        return Claim.FOREIGN
    if consumer is None:
        return Claim.FREE
    if (consumer.kind, consumer.namespace, consumer.name) != (
        "BareMetalMachine",
        machine_namespace,
        machine_name,
    ):
        return Claim.FOREIGN
    if consumer.uid == machine_uid:
        return Claim.OURS
    if consumer.uid and machine_provider_id == provider_id(host_namespace, host_name, consumer.uid):
        return Claim.MOVED
    return Claim.FOREIGN
