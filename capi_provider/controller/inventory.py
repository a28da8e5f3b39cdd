"""In-memory views of hosts and machines, kept by kopf indices from the watch streams.

Kopf fills indices completely before any handler runs, which matters: the host controller decides a claimed
host is orphaned only if its consumer is absent from `machine_inventory`, and that must never be decided on
a half-loaded view. Records are small (no managedFields, no status history) to keep memory flat with
hundreds of hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import kopf

from capi_provider import api
from capi_provider.api.schema import from_obj
from capi_provider.api.types import BareMetalHostSpec
from capi_provider.decisions.host import Quarantine
from capi_provider.decisions.hostmatch import HostFacts
from capi_provider.decisions.quantity import parse_quantity
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import Target


@dataclass(frozen=True)
class HostRecord:
    key: ObjKey
    uid: str
    resource_version: str
    generation: int
    labels: dict[str, str]
    spec: BareMetalHostSpec
    state: str | None
    power: str | None
    warm: bool
    deleting: bool
    paused: bool
    quarantine: Quarantine | None = None
    quarantine_text: str | None = None  # the annotation as written (lifting it tests this exact value)

    @property
    def consumer(self) -> ObjKey | None:
        c = self.spec.consumerRef
        return ObjKey(c.namespace, c.name) if c else None

    @property
    def target(self) -> Target:
        return Target(self.key, self.uid, self.spec)

    def facts(self, claimed_locally: bool) -> HostFacts:
        hw = self.spec.hardware
        disks = tuple((d.type, parse_quantity(d.size)) for d in (hw.disks or []))
        free = (
            self.consumer is None
            and not claimed_locally
            and self.state == "available"
            and not self.deleting
            and not self.paused
            and self.quarantine is None
        )
        return HostFacts(
            name=self.key.name,
            labels=self.labels,
            cpu_cores=hw.cpuCores,
            memory_bytes=parse_quantity(hw.memory) if hw.memory else Fraction(0),
            architecture=hw.architecture,
            disks=disks,
            free=free,
            warm=self.warm and self.power == "on",
        )


def host_record(body: Any) -> HostRecord:
    meta = body["metadata"]
    status = body.get("status") or {}
    return HostRecord(
        key=ObjKey(meta["namespace"], meta["name"]),
        uid=meta["uid"],
        resource_version=meta["resourceVersion"],
        generation=int(meta.get("generation") or 0),
        labels=dict(meta.get("labels") or {}),
        spec=from_obj(BareMetalHostSpec, body.get("spec")),
        state=status.get("provisioningState"),
        power=status.get("powerState"),
        warm=bool(status.get("warm")),
        deleting=bool(meta.get("deletionTimestamp")),
        paused=api.HOST_PAUSED_ANNOTATION in (meta.get("annotations") or {}),
        quarantine=Quarantine.parse((meta.get("annotations") or {}).get(api.QUARANTINE_ANNOTATION)),
        quarantine_text=(meta.get("annotations") or {}).get(api.QUARANTINE_ANNOTATION),
    )


@dataclass(frozen=True)
class MachineRecord:
    key: ObjKey
    uid: str
    deleting: bool
    provisioned: bool
    host: str | None  # host name from the claim annotation
    cluster: str | None
    provider_id: str | None = None

    @property
    def phase(self) -> str:
        """Its host's view of it. Provisioned from the moment the providerID is set: the machine reports
        itself provisioned only once its host shows it (see MachineReconciler.finalize)."""
        if self.deleting:
            return "deleting"
        return "provisioned" if self.provider_id else "provisioning"


def machine_record(body: Any) -> MachineRecord:
    meta = body["metadata"]
    status = body.get("status") or {}
    host = (meta.get("annotations") or {}).get(api.HOST_ANNOTATION)
    return MachineRecord(
        key=ObjKey(meta["namespace"], meta["name"]),
        uid=meta["uid"],
        deleting=bool(meta.get("deletionTimestamp")),
        provisioned=bool((status.get("initialization") or {}).get("provisioned")),
        host=host.split("/", 1)[1] if host and "/" in host else None,
        cluster=(meta.get("labels") or {}).get(api.CLUSTER_NAME_LABEL),
        provider_id=(body.get("spec") or {}).get("providerID"),
    )


@kopf.index(api.GROUP, api.VERSION, api.HOSTS)
def host_inventory(body: kopf.Body, **_: Any) -> dict[ObjKey, HostRecord]:
    rec = host_record(body)
    return {rec.key: rec}


@kopf.index(api.GROUP, api.VERSION, api.MACHINES)
def machine_inventory(body: kopf.Body, **_: Any) -> dict[ObjKey, MachineRecord]:
    rec = machine_record(body)
    return {rec.key: rec}


def one(index: kopf.Index, key: ObjKey) -> Any | None:
    """The single record under `key`, or None."""
    store = index.get(key)
    if not store:
        return None
    return next(iter(store), None)


def records(index: kopf.Index) -> list[Any]:
    return [rec for store in index.values() for rec in store]
