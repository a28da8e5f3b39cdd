"""BareMetalCluster: there is no cluster-wide hardware to create, so it is ready as soon as it says where the
control plane is; it publishes its failure domains and honours pause."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from capi_provider import api
from capi_provider.controller.context import Context, Kind, ObjKey, run_daemon
from capi_provider.controller.status import write_status
from capi_provider.decisions.conditions import READY, set_condition
from capi_provider.decisions.machine import paused_condition

KIND = Kind.CLUSTER


def owner_cluster_name(body: Any) -> str | None:
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Cluster" and ref.get("apiVersion", "").startswith(api.CAPI_GROUP + "/"):
            return str(ref["name"])
    return None


async def reconcile_cluster(ctx: Context, body: Any) -> float:
    key = ObjKey.of(body)
    if api.MANAGED_BY_ANNOTATION in (body["metadata"].get("annotations") or {}):
        return 600.0  # externally managed infrastructure (CAPI contract): someone else writes its status
    generation = body["metadata"].get("generation")
    current = dict(body.get("status") or {})
    status: dict[str, Any] = {}
    owner = owner_cluster_name(body)
    cluster = (
        await ctx.kube.get(api.CAPI_GROUP, api.CAPI_VERSION, "clusters", key.namespace, owner)
        if owner
        else None
    )
    paused = api.PAUSED_ANNOTATION in (body["metadata"].get("annotations") or {}) or bool(
        cluster and (cluster.get("spec") or {}).get("paused")
    )
    conds = paused_condition(current.get("conditions"), paused, generation)
    if not paused:
        spec = body.get("spec") or {}
        endpoint = spec.get("controlPlaneEndpoint") or {}
        cluster_endpoint = ((cluster or {}).get("spec") or {}).get("controlPlaneEndpoint") or {}
        if owner is None:
            conds = set_condition(
                conds, READY, False, "WaitingForClusterOwner", "no CAPI Cluster owns this yet", generation
            )
        elif endpoint.get("host") or cluster_endpoint.get("host"):
            conds = set_condition(conds, READY, True, "Ready", "", generation)
            status["initialization"] = {"provisioned": True}
            if spec.get("failureDomains"):
                status["failureDomains"] = spec["failureDomains"]
        else:
            conds = set_condition(
                conds,
                READY,
                False,
                "WaitingForControlPlaneEndpoint",
                "set spec.controlPlaneEndpoint here or on the Cluster",
                generation,
            )
    status["conditions"] = conds
    await write_status(ctx.kube, api.CLUSTERS, key, current, status)
    return 600.0


@kopf.daemon(
    api.GROUP, api.VERSION, api.CLUSTERS, id="cluster", cancellation_backoff=1.0, cancellation_timeout=10.0
)
async def cluster_daemon(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    ctx: Context = memo.ctx
    await run_daemon(ctx, KIND, ObjKey.of(body), stopped, logger, lambda: reconcile_cluster(ctx, body))


@kopf.on.event(api.GROUP, api.VERSION, api.CLUSTERS, id="bmcluster-changed")
def bmcluster_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.ctx.wakers.wake_on_change(KIND, body)
