"""BareMetalHost: registration, power monitoring with backoff, free-host power policy, the end of
deprovisioning for hosts whose machine is gone, and safe deletion.

One kopf daemon per host observes its BMC (never the API: an idle host costs no API requests), decides with
capi_provider/decisions/host.py, and writes status only when something changed. It is the only writer of
BareMetalHost status; the machine controller hands it power events through the shared Context.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from capi_provider import api
from capi_provider.bmc.base import PowerState
from capi_provider.controller import hostops
from capi_provider.controller.context import Context, ObjKey, run_daemon
from capi_provider.controller.hostio import HostAccessError, bmc_credentials, bmc_op, with_ssh
from capi_provider.controller.inventory import HostRecord, host_record, one, records
from capi_provider.controller.machines import DELETE_FOR_MOVE, release_host
from capi_provider.decisions import host as h
from capi_provider.decisions.conditions import now, status_changed

KIND = "host"


class HostMonitor:
    """State that lives as long as the host's daemon: the poll schedule and the last observation."""

    def __init__(self, ctx: Context, key: ObjKey) -> None:
        self.ctx = ctx
        self.key = key
        s = ctx.settings
        self.schedule = h.PollSchedule(s.poll_interval, s.poll_max, s.error_backoff_max)
        self.observation: h.BmcObservation | None = None
        self.credentials_version: str | None = None
        self.warm_verified = False
        self.rejected_once = False
        self.last_reported: tuple[str | None, str | None] = (None, None)

    async def observe(self, rec: HostRecord) -> h.BmcObservation:
        try:
            creds, version = await bmc_credentials(self.ctx, rec.key.namespace, rec.spec)
            power = await bmc_op(self.ctx, rec.spec, creds, lambda d: d.get_power())
        except HostAccessError as e:
            message = e.message
            if e.reason in ("CredentialsRejected", "CredentialsSecretMissing"):
                # Read the Secret again next time, whatever the watch said: it may have just been fixed.
                self.ctx.secrets.pop(ObjKey(rec.key.namespace, rec.spec.bmc.credentialsName), None)
            if e.reason == "CredentialsRejected":
                # Say which Secret to fix; the BMC's own words follow.
                message = (
                    f"the BMC rejected the credentials in Secret {rec.key.namespace}/"
                    f"{rec.spec.bmc.credentialsName}: {e.message}"
                )
            return h.BmcObservation(error_reason=e.reason, error_message=message)
        self.credentials_version = version
        return h.BmcObservation(power=power.value)

    async def pass_once(self, body: Any, machine_inventory: kopf.Index, logger: logging.Logger) -> float:
        rec = host_record(body)
        if rec.paused:
            return 600.0
        before = self.observation
        obs = await self.observe(rec)
        if obs.error_reason == "CredentialsRejected" and not self.rejected_once:
            # A loaded BMC can fail one RMCP+ handshake as if the password were wrong. Ask again shortly
            # before telling anyone; a wrong password is refused the second time as well.
            self.rejected_once = True
            return 2.0
        self.rejected_once = obs.error_reason == "CredentialsRejected"
        consumer = rec.consumer
        consumer_phase: h.ConsumerPhase | None = None
        if consumer is not None:
            mrec = one(machine_inventory, consumer)
            consumer_phase = "missing" if mrec is None else mrec.phase
            if consumer_phase == "missing" and await self.really_orphaned(rec):
                obs = await self.finish_orphan(rec, obs, logger)
        elif obs.ok and not rec.deleting:
            obs = await self.enforce_free_power(rec, obs, logger)
        await self.write_status(body, rec, obs, consumer_phase)
        self.report_transitions(body, obs)
        self.observation = obs
        changed = before is None or before.power != obs.power or before.error_reason != obs.error_reason
        return self.schedule.next_delay(obs.ok, changed)

    async def enforce_free_power(
        self, rec: HostRecord, obs: h.BmcObservation, logger: logging.Logger
    ) -> h.BmcObservation:
        warm = rec.key in self.ctx.warm_wanted
        want = h.desired_free_power(rec.spec.online, warm)
        if obs.power != want:
            # Changing the power of a server is not something to do on a watch view that may lag: the host
            # may have been claimed a moment ago (its machine is powering it on). Confirm with the API.
            if rec.key in self.ctx.pending_claims:
                return obs
            fresh = await self.ctx.kube.get(
                api.GROUP, api.VERSION, api.HOSTS, rec.key.namespace, rec.key.name
            )
            if fresh is None or (fresh.get("spec") or {}).get("consumerRef"):
                return obs
            want = h.desired_free_power(bool((fresh.get("spec") or {}).get("online")), warm)
            if obs.power == want:
                return obs
            try:
                await hostops.set_power(self.ctx, rec.key, rec.spec, PowerState(want))
            except HostAccessError as e:
                return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
            reason = "WarmPool" if warm and not rec.spec.online else "OnlineSpec"
            self.ctx.power_events[rec.key] = {"action": want, "reason": reason}
            logger.info("%s: powered %s (%s)", rec.key, want, reason)
            self.warm_verified = False
            obs = h.BmcObservation(power=want)
        if warm and obs.power == "on" and not self.warm_verified:
            # Warm means usable at once: booted, SSH up, host key verified. Waits (bounded) for the boot.
            try:
                await with_ssh(
                    self.ctx,
                    rec.key,
                    rec.spec,
                    lambda shell: None,
                    wait=self.ctx.settings.boot_timeout,
                    timeout=5,
                )
                self.warm_verified = True
            except HostAccessError as e:
                logger.warning("%s: warm host not usable over SSH: %s", rec.key, e)
        if not warm:
            self.warm_verified = False
        return obs

    async def really_orphaned(self, rec: HostRecord) -> bool:
        """Our views come from watches and can lag (a just-released host still shows its old consumer).
        Powering off a host is not something to do on a stale view, so ask the API server directly."""
        kube = self.ctx.kube
        fresh = await kube.get(api.GROUP, api.VERSION, api.HOSTS, rec.key.namespace, rec.key.name)
        ref = ((fresh or {}).get("spec") or {}).get("consumerRef") or {}
        if not fresh or (ref.get("namespace"), ref.get("name")) != (
            rec.consumer.namespace,
            rec.consumer.name,
        ):
            return False
        consumer = await kube.get(api.GROUP, api.VERSION, api.MACHINES, ref["namespace"], ref["name"])
        return consumer is None

    async def finish_orphan(
        self, rec: HostRecord, obs: h.BmcObservation, logger: logging.Logger
    ) -> h.BmcObservation:
        """The machine holding this host is gone (deleted while its BMC was dead, or finalizers removed by
        hand). Finish its deprovisioning: the host returns to the pool only once it is really off."""
        if not obs.ok:
            return obs
        try:
            # Clean as the machine asked when it claimed the host; unknown (older claim): the safe choice.
            cleaning = (rec.spec.consumerRef.cleaning if rec.spec.consumerRef else None) or "metadata"
            notes = await hostops.deprovision(self.ctx, rec.key, rec.spec, cleaning=cleaning)
        except HostAccessError as e:
            return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
        logger.info("%s: consumer %s gone; %s", rec.key, rec.consumer, ", ".join(notes))
        self.ctx.power_events[rec.key] = {"action": "off", "reason": "Deprovisioning"}
        assert rec.consumer is not None
        await release_host(self.ctx, rec.key, rec.consumer)
        return h.BmcObservation(power="off")

    async def write_status(
        self, body: Any, rec: HostRecord, obs: h.BmcObservation, consumer_phase: h.ConsumerPhase | None
    ) -> None:
        current = dict(body.get("status") or {})
        generation = body["metadata"].get("generation")
        new: dict[str, Any] = {
            "provisioningState": h.host_state(rec.consumer is not None, consumer_phase, obs),
            "powerState": obs.power or current.get("powerState") or "unknown",
        }
        last_error, count = h.error_status(current.get("lastError"), obs, int(current.get("errorCount") or 0))
        new["lastError"] = last_error
        new["errorCount"] = count
        new["conditions"] = h.host_conditions(current.get("conditions"), obs, generation)
        if obs.ok:
            new["credentialsVersion"] = self.credentials_version
        warm = rec.consumer is None and rec.key in self.ctx.warm_wanted and self.warm_verified
        new["warm"] = warm or None
        op = self.ctx.power_events.pop(rec.key, None)
        if op:
            new["lastPowerOperation"] = {**op, "time": now()}
        if status_changed(current, new):
            if obs.ok:
                new["lastPolled"] = now()
            await self.ctx.kube.patch(
                api.GROUP,
                api.VERSION,
                api.HOSTS,
                rec.key.namespace,
                rec.key.name,
                {"status": new},
                status=True,
            )

    def report_transitions(self, body: Any, obs: h.BmcObservation) -> None:
        """Events for changes an operator should hear about, once per change, never per poll."""
        now_reported = (obs.error_reason, obs.power)
        if now_reported == self.last_reported:
            return
        prev_error = self.last_reported[0]
        self.last_reported = now_reported
        if obs.error_reason and obs.error_reason != prev_error:
            kopf.warn(body, reason=obs.error_reason, message=obs.error_message or "")
        elif not obs.error_reason and prev_error:
            kopf.info(body, reason="BMCRecovered", message=f"BMC answers again; power {obs.power}")
        elif self.observation is None and obs.ok:
            kopf.info(
                body, reason="Registered", message=f"BMC reachable, credentials accepted, power {obs.power}"
            )


@kopf.daemon(
    api.GROUP, api.VERSION, api.HOSTS, id="monitor", cancellation_backoff=1.0, cancellation_timeout=10.0
)
async def host_daemon(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger,
    machine_inventory: kopf.Index,
    **_: Any,
) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    monitor = HostMonitor(ctx, key)
    if not (body.get("status") or {}).get("provisioningState"):
        # A new host says so at once; the first BMC contact can take as long as the BMC timeout.
        await ctx.kube.patch(
            api.GROUP,
            api.VERSION,
            api.HOSTS,
            key.namespace,
            key.name,
            {
                "status": {
                    "provisioningState": "registering",
                    "conditions": h.host_conditions(None, None, None),
                }
            },
            status=True,
        )
    try:
        await run_daemon(
            ctx, KIND, key, stopped, logger, lambda: monitor.pass_once(body, machine_inventory, logger)
        )
    finally:
        ctx.power_events.pop(key, None)


@kopf.on.event(api.GROUP, api.VERSION, api.HOSTS, id="host-changed")
def host_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    rec = host_record(body)
    if rec.consumer is not None:
        ctx.pending_claims.pop(key, None)  # the watch caught up with our claim
    changed = ctx.wakers.wake_on_change(KIND, body)
    free = rec.consumer is None and rec.state == "available" and not rec.deleting
    if free and (key not in ctx.free_hosts or changed):
        # A host just became usable, or a free one was relabelled: machines waiting for one look again.
        ctx.free_hosts.add(key)
        ctx.wakers.wake_all("machine", ctx.waiting_for_host)
    elif not free:
        ctx.free_hosts.discard(key)
    if changed:
        # A spec change may be the fix a stopped machine waits for (e.g. a corrected pinned host key).
        ctx.wakers.wake_all("machine", [m for m, b in ctx.blocked.items() if b[3] == key])
    ctx.wakers.wake_all("template")


@kopf.on.event("", "v1", "secrets", id="credentials-changed")
def secret_changed(body: kopf.Body, memo: kopf.Memo, host_inventory: kopf.Index, **_: Any) -> None:
    """A rotated BMC password or SSH key: look again now instead of at the next poll."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    memo.ctx.secrets.pop(ObjKey(ns, name), None)
    for rec in records(host_inventory):
        if rec.key.namespace == ns and name in (
            rec.spec.bmc.credentialsName,
            rec.spec.ssh.privateKeySecretName,
        ):
            memo.ctx.wakers.wake(KIND, rec.key)


@kopf.on.delete(api.GROUP, api.VERSION, api.HOSTS, id="host-delete")
async def host_deleted(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger,
    machine_inventory: kopf.Index,
    retry: int,
    **_: Any,
) -> None:
    """A host leaving the inventory is powered off first: nothing would manage it afterwards. A host still
    serving a live machine is not pulled from under it: delete (or scale down) the machine first."""
    ctx: Context = memo.ctx
    rec = host_record(body)
    ctx.free_hosts.discard(rec.key)
    if DELETE_FOR_MOVE in (body["metadata"].get("annotations") or {}):
        logger.info("%s deleted by clusterctl move; hardware left as is", rec.key)
        return
    if rec.consumer is not None:
        mrec = one(machine_inventory, rec.consumer)
        if mrec is not None and not mrec.deleting:
            raise kopf.TemporaryError(
                f"in use by BareMetalMachine {rec.consumer}: delete or scale down that machine first",
                delay=30,
            )
    try:
        await hostops.set_power(ctx, rec.key, rec.spec, PowerState.OFF)
    except HostAccessError as e:
        if retry < 4:
            raise kopf.TemporaryError(
                f"powering off before removal: {e.reason}: {e.message}", delay=15
            ) from None
        kopf.warn(
            body,
            reason="RemovedWithoutPowerOff",
            message=f"BMC still failing ({e.reason}); removed from inventory, power state unknown",
        )
        return
    logger.info("%s powered off and removed from the inventory", rec.key)
