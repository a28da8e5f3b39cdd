"""BareMetalMachineTemplate: what a node from this template would look like (for the cluster-autoscaler to
scale a node group up from zero), how many free hosts match, and the warm pool.

Whenever the inventory changes (a host registers, is claimed or released) each template's daemon recomputes
from the in-memory host inventory; no API reads, one status write when something visible changed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from capi_provider import api
from capi_provider.api.schema import from_obj
from capi_provider.api.types import BareMetalMachineTemplateSpec
from capi_provider.controller.context import Context, Kind, ObjKey, run_daemon
from capi_provider.controller.inventory import HostRecord, records
from capi_provider.controller.status import write_status
from capi_provider.decisions.capacity import node_capacity, warm_pool_choice
from capi_provider.decisions.hostmatch import MachineRequest, best_fit

KIND = Kind.TEMPLATE
DEBOUNCE = 1.0  # a burst of host events (a rack registering) becomes one recomputation


def plan(
    ctx: Context, key: ObjKey, spec: BareMetalMachineTemplateSpec, host_inventory: Any
) -> tuple[dict[str, Any], set[ObjKey]]:
    """The template's status and the hosts its warm pool wants booted."""
    request = MachineRequest(
        selector=spec.template.spec.hostSelector, requirements=spec.template.spec.requirements
    )
    hosts: dict[str, HostRecord] = {
        r.key.name: r for r in records(host_inventory) if r.key.namespace == key.namespace
    }
    facts = [r.facts(claimed_locally=r.key in ctx.state.pending_claims) for r in hosts.values()]
    matching = best_fit(request, facts)
    status: dict[str, Any] = {"matchingHosts": len(matching), "warmHosts": 0}
    if matching:
        best = hosts[matching[0].name]
        status["capacity"] = node_capacity(best.spec.hardware)
        status["nodeInfo"] = {"architecture": best.spec.hardware.architecture, "operatingSystem": "linux"}
    else:
        # No host could serve a new machine: claiming capacity would make the autoscaler wait on nothing.
        status["capacity"] = None
        status["nodeInfo"] = None
    size = spec.warmPool.size if spec.warmPool else 0
    taken_elsewhere = (
        set().union(*(v for k, v in ctx.state.warm_by_template.items() if k != key)) if size else set()
    )
    wanted = warm_pool_choice(
        [f for f in matching if ObjKey(key.namespace, f.name) not in taken_elsewhere], size
    )
    wanted_keys = {ObjKey(key.namespace, n) for n in wanted}
    status["warmHosts"] = sum(1 for n in wanted if hosts[n].warm and hosts[n].power == "on")
    return status, wanted_keys


async def reconcile_template(ctx: Context, body: Any, host_inventory: Any, logger: logging.Logger) -> None:
    key = ObjKey.of(body)
    spec = from_obj(BareMetalMachineTemplateSpec, body.get("spec"))
    status, wanted = plan(ctx, key, spec, host_inventory)
    before = ctx.state.warm_by_template.get(key, set())
    if wanted != before:
        ctx.state.set_warm_pool(key, wanted)
        for host in wanted ^ before:  # newly wanted warm, or no longer: their daemons act now
            ctx.wakers.wake(Kind.HOST, host)
        logger.info("%s: warm pool now %s", key, sorted(h.name for h in wanted))
    await write_status(ctx.kube, api.MACHINE_TEMPLATES, key, body.get("status"), status)


@kopf.daemon(
    api.GROUP,
    api.VERSION,
    api.MACHINE_TEMPLATES,
    id="capacity",
    cancellation_backoff=1.0,
    cancellation_timeout=10.0,
)
async def template_daemon(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger,
    host_inventory: kopf.Index,
    **_: Any,
) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)

    async def one_pass() -> float:
        await asyncio.sleep(DEBOUNCE)
        await reconcile_template(ctx, body, host_inventory, logger)
        return 600.0

    try:
        await run_daemon(ctx, KIND, key, stopped, logger, one_pass)
    finally:
        ctx.state.forget_template(key)  # a deleted template stops holding hosts warm


@kopf.on.event(api.GROUP, api.VERSION, api.MACHINE_TEMPLATES, id="template-changed")
def template_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.ctx.wakers.wake_on_change(KIND, body)
