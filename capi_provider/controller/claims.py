"""Claims on hosts, in one place for both controllers: take a host, prove a claim is still ours right before
acting on the server, re-stamp a claim after `clusterctl move`, release (or quarantine) a host.

There are no locks between objects or replicas: the API server's optimistic concurrency decides. A claim is
a JSON patch with `test /metadata/resourceVersion`; a release and a re-stamp test the claim they change.
Two machines (or two replicas) can never hold one host, and nothing frees a host someone else now holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from capi_provider import api
from capi_provider.api.types import ConsumerRef
from capi_provider.controller.context import Context
from capi_provider.controller.inventory import HostRecord, host_record
from capi_provider.decisions.host import Quarantine
from capi_provider.decisions.ownership import Claim, claim_of
from capi_provider.k8s import Conflict
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import ProvisionerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """A BareMetalMachine as a claimant: its identity and the providerID it may carry from before a move."""

    namespace: str
    name: str
    uid: str
    provider_id: str | None = None

    @property
    def key(self) -> ObjKey:
        return ObjKey(self.namespace, self.name)

    @classmethod
    def of(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(meta["namespace"], meta["name"], meta["uid"], (body.get("spec") or {}).get("providerID"))

    def claim_on(self, host: HostRecord) -> Claim:
        return claim_of(
            host_namespace=host.key.namespace,
            host_name=host.key.name,
            consumer=host.spec.consumerRef,
            machine_namespace=self.namespace,
            machine_name=self.name,
            machine_uid=self.uid,
            machine_provider_id=self.provider_id,
        )


class OwnershipLost(ProvisionerError):
    def __init__(self, message: str) -> None:
        super().__init__("HostNotOwned", message)


async def fresh_host(ctx: Context, key: ObjKey) -> HostRecord | None:
    body = await ctx.kube.get(api.GROUP, api.VERSION, api.HOSTS, key.namespace, key.name)
    return host_record(body) if body else None


async def claim(ctx: Context, host: HostRecord, owner: Owner, *, cleaning: str, cluster: str | None) -> bool:
    """Take the host only if it is exactly as we saw it (resourceVersion test)."""
    ref = {
        "kind": "BareMetalMachine",
        "name": owner.name,
        "namespace": owner.namespace,
        "uid": owner.uid,
        "cleaning": cleaning,
    }
    if cluster:
        ref["cluster"] = cluster
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": host.resource_version},
        {"op": "add", "path": "/spec/consumerRef", "value": ref},
    ]
    try:
        await ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, host.key.namespace, host.key.name, ops)
    except Conflict:
        log.info("host %s changed under us; trying the next best", host.key)
        return False
    ctx.state.pending_claims[host.key] = owner.key
    return True


async def verify(ctx: Context, key: ObjKey, owner: Owner) -> HostRecord:
    """Read the host fresh and prove it is `owner`'s (re-stamping a claim moved by clusterctl): called right
    before anything that acts on the server. Raises OwnershipLost otherwise."""
    host = await fresh_host(ctx, key)
    if host is None:
        raise OwnershipLost(f"BareMetalHost {key} no longer exists")
    claim = owner.claim_on(host)
    if claim is Claim.MOVED:
        return await restamp(ctx, host, owner)
    if claim is not Claim.OURS:
        raise OwnershipLost(
            f"BareMetalHost {key} is not claimed by this machine ({describe(host.spec.consumerRef)})"
        )
    return host


async def restamp(ctx: Context, host: HostRecord, owner: Owner) -> HostRecord:
    """After clusterctl move the same machine has a new uid; its providerID proved the old one was its own."""
    assert host.spec.consumerRef is not None
    ops = [
        {"op": "test", "path": "/spec/consumerRef/uid", "value": host.spec.consumerRef.uid},
        {"op": "replace", "path": "/spec/consumerRef/uid", "value": owner.uid},
    ]
    try:
        body = await ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, host.key.namespace, host.key.name, ops)
    except Conflict:
        raise OwnershipLost(f"BareMetalHost {host.key} changed while re-stamping its claim") from None
    log.info(
        "host %s: claim re-stamped for %s (moved: uid %s -> %s)",
        host.key,
        owner.key,
        host.spec.consumerRef.uid,
        owner.uid,
    )
    return host_record(body)


async def verify_unchanged(ctx: Context, key: ObjKey, expected: ConsumerRef | None) -> HostRecord:
    """For work the host controller does on its own (an orphan's cleanup, a quarantined host's retry): the
    host's claim must still be exactly what the decision was made on."""
    host = await fresh_host(ctx, key)
    if host is None:
        raise OwnershipLost(f"BareMetalHost {key} no longer exists")
    if _ident(host.spec.consumerRef) != _ident(expected):
        raise OwnershipLost(f"BareMetalHost {key} was claimed or released meanwhile")
    return host


async def release(
    ctx: Context, key: ObjKey, consumer: ConsumerRef, quarantine: Quarantine | None = None
) -> bool:
    """Clear the claim, but only if it is still exactly `consumer`'s (test ops): never free a host someone
    else now holds. With `quarantine`, the host is first marked so that it stays out of the pool."""
    if quarantine is not None:
        await ctx.kube.patch(
            api.GROUP,
            api.VERSION,
            api.HOSTS,
            key.namespace,
            key.name,
            {"metadata": {"annotations": {api.QUARANTINE_ANNOTATION: quarantine.to_annotation()}}},
        )
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/spec/consumerRef/name", "value": consumer.name},
        {"op": "test", "path": "/spec/consumerRef/namespace", "value": consumer.namespace},
    ]
    if consumer.uid:
        ops.append({"op": "test", "path": "/spec/consumerRef/uid", "value": consumer.uid})
    ops.append({"op": "remove", "path": "/spec/consumerRef"})
    released = True
    try:
        await ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, key.namespace, key.name, ops)
    except Conflict:
        log.warning("host %s no longer held by %s; not releasing", key, describe(consumer))
        released = False
    ctx.state.pending_claims.pop(key, None)
    return released


async def lift_quarantine(ctx: Context, key: ObjKey, quarantine_text: str) -> bool:
    """Remove the quarantine mark, only if it is still the one we cleaned for (test op)."""
    path = "/metadata/annotations/" + api.QUARANTINE_ANNOTATION.replace("~", "~0").replace("/", "~1")
    ops = [{"op": "test", "path": path, "value": quarantine_text}, {"op": "remove", "path": path}]
    try:
        await ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, key.namespace, key.name, ops)
    except Conflict:
        return False
    return True


def describe(ref: ConsumerRef | None) -> str:
    return "free" if ref is None else f"held by {ref.kind} {ref.namespace}/{ref.name}"


def _ident(ref: ConsumerRef | None) -> tuple[str, str, str | None] | None:
    return None if ref is None else (ref.namespace, ref.name, ref.uid)
