"""BareMetalHost: registration, power monitoring with backoff, free-host power policy, finishing the
deprovisioning of hosts whose machine is gone, quarantined hosts, and safe deletion.

One kopf daemon per host observes its BMC (never the API: an idle host costs no API requests), decides with
capi_provider/decisions/host.py, and writes status only when something changed. It is the only writer of
BareMetalHost status; the machine controller hands it power events through the shared state.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from capi_provider import api
from capi_provider.bmc.base import PowerState
from capi_provider.controller import claims
from capi_provider.controller.claims import OwnershipLost
from capi_provider.controller.context import Context, Kind, ObjKey, PowerEvent, run_daemon
from capi_provider.controller.deprovision import deprovision
from capi_provider.controller.inventory import HostRecord, host_record, one
from capi_provider.controller.machines import DELETE_FOR_MOVE, quarantine_for, wake_after_release
from capi_provider.controller.status import write_status
from capi_provider.decisions import host as h
from capi_provider.decisions.conditions import now, status_changed
from capi_provider.decisions.ownership import provider_id
from capi_provider.provisioner.base import ProvisionerError

KIND = Kind.HOST
QUIET = 600.0


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
        self.orphan_since: float | None = None  # when its machine was first seen missing
        self.cleaning_attempts = 0
        self.next_cleaning = 0.0  # time.monotonic() of the next attempt to clean a quarantined host

    async def observe(self, rec: HostRecord) -> h.BmcObservation:
        try:
            _, _, version = await self.ctx.credentials.bmc(rec.target)
            power = await self.ctx.provisioner.read_power(rec.target)
        except ProvisionerError as e:
            message = e.message
            if e.reason == "CredentialsRejected":
                # Say which Secret to fix; the BMC's own words follow.
                message = (
                    f"the BMC rejected the credentials in Secret {rec.key.namespace}/"
                    f"{rec.spec.bmc.credentialsName}: {e.message}"
                )
            return h.BmcObservation(error_reason=e.reason, error_message=message)
        self.credentials_version = version
        return h.BmcObservation(power=power.value)

    async def pass_once(self, body: Any, machine_index: Any, logger: logging.Logger) -> float:
        rec = host_record(body)
        if rec.paused:
            return QUIET
        before = self.observation
        obs = await self.observe(rec)
        if obs.error_reason == "CredentialsRejected" and not self.rejected_once:
            # A loaded BMC can fail one RMCP+ handshake as if the password were wrong. Ask again shortly
            # before telling anyone; a wrong password is refused the second time as well.
            self.rejected_once = True
            return 2.0
        self.rejected_once = obs.error_reason == "CredentialsRejected"
        consumer_phase: h.ConsumerPhase | None = None
        if rec.spec.consumerRef is not None:
            consumer_phase = self.consumer_phase(rec, machine_index)
            if consumer_phase == "missing" and obs.ok:
                obs = await self.finish_orphan(rec, obs, logger)
            else:
                self.orphan_since = None
        elif rec.quarantine is not None:
            obs = await self.tend_quarantine(body, rec, obs, logger)
        elif obs.ok and not rec.deleting:
            obs = await self.enforce_free_power(rec, obs, logger)
        await self.write_status(body, rec, obs, consumer_phase)
        self.report_transitions(body, obs)
        self.observation = obs
        changed = before is None or before.power != obs.power or before.error_reason != obs.error_reason
        delay = self.schedule.next_delay(obs.ok, changed)
        if self.orphan_since is not None:
            delay = min(delay, 30.0)  # an orphan waiting out its grace period is looked at again soon
        return delay

    def consumer_phase(self, rec: HostRecord, machine_index: Any) -> h.ConsumerPhase:
        """The claiming machine's phase as our watch sees it; `missing` if it is gone, or if a machine of the
        same name is a different one (another uid, with no providerID proving it is the same one moved)."""
        ref = rec.spec.consumerRef
        assert ref is not None
        mrec = one(machine_index, ObjKey(ref.namespace, ref.name))
        if mrec is None:
            return "missing"
        if (
            ref.uid
            and mrec.uid != ref.uid
            and mrec.provider_id != provider_id(rec.key.namespace, rec.key.name, ref.uid)
        ):
            return "missing"
        phase: h.ConsumerPhase = mrec.phase
        return phase

    async def enforce_free_power(
        self, rec: HostRecord, obs: h.BmcObservation, logger: logging.Logger
    ) -> h.BmcObservation:
        state = self.ctx.state
        warm = rec.key in state.warm_wanted
        want = h.desired_free_power(rec.spec.online, warm)
        if obs.power != want:
            # Changing the power of a server is not something to do on a watch view that may lag: the host
            # may have been claimed a moment ago (its machine is powering it on). Confirm with the API.
            if rec.key in state.pending_claims:
                return obs
            fresh = await claims.fresh_host(self.ctx, rec.key)
            if fresh is None or fresh.spec.consumerRef is not None or fresh.quarantine is not None:
                return obs
            want = h.desired_free_power(fresh.spec.online, warm)
            if obs.power == want:
                return obs
            try:
                await self.ctx.provisioner.set_power(fresh.target, PowerState(want))
            except ProvisionerError as e:
                return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
            reason = "WarmPool" if warm and not fresh.spec.online else "OnlineSpec"
            state.power_events[rec.key] = PowerEvent(want, reason)
            logger.info("%s: powered %s (%s)", rec.key, want, reason)
            self.warm_verified = False
            obs = h.BmcObservation(power=want)
        if warm and obs.power == "on" and not self.warm_verified:
            # Warm means usable at once: booted, OS answering with its pinned identity.
            try:
                await self.ctx.provisioner.wait_for_os(rec.target, self.ctx.settings.boot_timeout)
                self.warm_verified = True
            except ProvisionerError as e:
                logger.warning("%s: warm host not usable: %s", rec.key, e)
            finally:
                self.ctx.provisioner.end_session(rec.key)
        if not warm:
            self.warm_verified = False
        return obs

    async def finish_orphan(
        self, rec: HostRecord, obs: h.BmcObservation, logger: logging.Logger
    ) -> h.BmcObservation:
        """The machine holding this host is gone (deleted while its BMC was dead, finalizers removed by hand,
        or re-created under its name). Our views come from watches and can lag, and wiping a server is not
        something to do on a stale view: confirm with the API server, respect its Cluster's pause (clusterctl
        move), then finish its deprovisioning. The host returns to the pool only once it is clean and off."""
        ref = rec.spec.consumerRef
        assert ref is not None
        kube = self.ctx.kube
        fresh = await claims.fresh_host(self.ctx, rec.key)
        if fresh is None or fresh.spec.consumerRef != ref:
            return obs
        machine = await kube.get(api.GROUP, api.VERSION, api.MACHINES, ref.namespace, ref.name)
        if machine is not None:
            pid = (machine.get("spec") or {}).get("providerID")
            uid = machine["metadata"]["uid"]
            if not ref.uid or uid == ref.uid or pid == provider_id(rec.key.namespace, rec.key.name, ref.uid):
                return obs  # it is there after all (our watch lagged)
        cluster_state: h.OrphanCluster = "running"
        if ref.cluster:
            cluster = await kube.get(api.CAPI_GROUP, api.CAPI_VERSION, "clusters", ref.namespace, ref.cluster)
            if cluster is None:
                cluster_state = "absent"
            elif (cluster.get("spec") or {}).get("paused") or api.PAUSED_ANNOTATION in (
                cluster["metadata"].get("annotations") or {}
            ):
                cluster_state = "paused"
        if self.orphan_since is None:
            self.orphan_since = time.monotonic()
        action = h.orphan_action(
            cluster_state, time.monotonic() - self.orphan_since, self.ctx.settings.orphan_grace
        )
        if action == "wait":
            return obs
        cleaning = ref.cleaning or "metadata"  # unknown (older claim): the safe choice
        try:
            outcome = await deprovision(
                self.ctx.provisioner,
                self.ctx.settings,
                fresh,
                cleaning,
                lambda: claims.verify_unchanged(self.ctx, rec.key, ref),
            )
        except OwnershipLost as e:
            logger.info("%s: %s", rec.key, e.message)
            return obs
        except ProvisionerError as e:
            return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
        self.orphan_since = None
        logger.info("%s: consumer %s/%s gone; %s", rec.key, ref.namespace, ref.name, ", ".join(outcome.notes))
        self.ctx.state.power_events[rec.key] = PowerEvent("off", "Deprovisioning")
        await claims.release(
            self.ctx, rec.key, ref, quarantine_for(outcome.problem, outcome.generation, cleaning)
        )
        wake_after_release(self.ctx, rec.key)
        return h.BmcObservation(power="off")

    async def tend_quarantine(
        self, body: Any, rec: HostRecord, obs: h.BmcObservation, logger: logging.Logger
    ) -> h.BmcObservation:
        """A quarantined host is kept off (never left running unowned) and its cleaning retried with backoff,
        except after a foreign host key: then only a change to its spec (or an operator) releases it."""
        q = rec.quarantine
        assert q is not None
        if not obs.ok:
            return obs
        if not h.may_retry_cleaning(q, rec.generation) or time.monotonic() < self.next_cleaning:
            if obs.power == "on":
                try:
                    fresh = await claims.verify_unchanged(self.ctx, rec.key, None)
                    await self.ctx.provisioner.set_power(fresh.target, PowerState.OFF)
                except ProvisionerError as e:
                    return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
                self.ctx.state.power_events[rec.key] = PowerEvent("off", "Quarantined")
                return h.BmcObservation(power="off")
            return obs
        self.cleaning_attempts += 1
        try:
            outcome = await deprovision(
                self.ctx.provisioner,
                self.ctx.settings,
                rec,
                q.cleaning,
                lambda: claims.verify_unchanged(self.ctx, rec.key, None),
            )
        except OwnershipLost:
            return obs
        except ProvisionerError as e:
            return h.BmcObservation(power=obs.power, error_reason=e.reason, error_message=e.message)
        self.ctx.state.power_events[rec.key] = PowerEvent("off", "Quarantined")
        if outcome.clean and await claims.lift_quarantine(self.ctx, rec.key, rec.quarantine_text or ""):
            logger.info("%s: cleaned; quarantine lifted (%s)", rec.key, ", ".join(outcome.notes))
            self.cleaning_attempts = 0
            self.ctx.events.info(body, "QuarantineLifted", "cleaned: back in the pool")
            wake_after_release(self.ctx, rec.key)
        else:
            self.next_cleaning = time.monotonic() + h.cleaning_retry_delay(self.cleaning_attempts)
            logger.warning("%s: still quarantined: %s", rec.key, outcome.problem)
        return h.BmcObservation(power="off")

    async def write_status(
        self, body: Any, rec: HostRecord, obs: h.BmcObservation, consumer_phase: h.ConsumerPhase | None
    ) -> None:
        current = dict(body.get("status") or {})
        generation = body["metadata"].get("generation")
        quarantine = rec.quarantine if rec.spec.consumerRef is None else None
        new: dict[str, Any] = {
            "provisioningState": h.host_state(
                rec.spec.consumerRef is not None, consumer_phase, obs, quarantined=quarantine is not None
            ),
            "powerState": obs.power or current.get("powerState") or "unknown",
        }
        last_error, count = h.error_status(current.get("lastError"), obs, int(current.get("errorCount") or 0))
        new["lastError"] = last_error
        new["errorCount"] = count
        new["conditions"] = h.host_conditions(current.get("conditions"), obs, generation, quarantine)
        if obs.ok:
            new["credentialsVersion"] = self.credentials_version
        event = self.ctx.state.power_events.pop(rec.key, None)
        if event:
            new["lastPowerOperation"] = {"action": event.action, "reason": event.reason, "time": now()}
            if event.reason == "Provisioning":
                self.warm_verified = False  # its machine took it over
        # A warm host stays warm once claimed, until its machine's PowerOn has used it: that step reads this
        # to keep the host running instead of cycling it.
        wanted = rec.spec.consumerRef is not None or rec.key in self.ctx.state.warm_wanted
        new["warm"] = (wanted and self.warm_verified) or None
        if obs.ok and status_changed(current, new):
            new["lastPolled"] = now()
        await write_status(self.ctx.kube, api.HOSTS, rec.key, current, new)

    def report_transitions(self, body: Any, obs: h.BmcObservation) -> None:
        """Events for changes an operator should hear about, once per change, never per poll."""
        now_reported = (obs.error_reason, obs.power)
        if now_reported == self.last_reported:
            return
        prev_error = self.last_reported[0]
        self.last_reported = now_reported
        events = self.ctx.events
        if obs.error_reason and obs.error_reason != prev_error:
            events.warn(body, obs.error_reason, obs.error_message or "")
        elif not obs.error_reason and prev_error:
            events.info(body, "BMCRecovered", f"BMC answers again; power {obs.power}")
        elif self.observation is None and obs.ok:
            events.info(body, "Registered", f"BMC reachable, credentials accepted, power {obs.power}")


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
        await write_status(
            ctx.kube,
            api.HOSTS,
            key,
            {},
            {"provisioningState": "registering", "conditions": h.host_conditions(None, None, None)},
        )
    try:
        await run_daemon(
            ctx, KIND, key, stopped, logger, lambda: monitor.pass_once(body, machine_inventory, logger)
        )
    finally:
        ctx.state.forget_host(key)
        spec = host_record(body).spec
        for name in (spec.bmc.credentialsName, spec.ssh.privateKeySecretName, spec.bmc.caBundleName):
            if name:  # read again if another host needs it
                ctx.credentials.forget(key.namespace, name)


@kopf.on.event(api.GROUP, api.VERSION, api.HOSTS, id="host-changed")
def host_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    state = ctx.state
    key = ObjKey.of(body)
    rec = host_record(body)
    if rec.consumer is not None:
        state.pending_claims.pop(key, None)  # the watch caught up with our claim
    changed = ctx.wakers.wake_on_change(KIND, body)
    free = rec.consumer is None and rec.state == "available" and not rec.deleting and rec.quarantine is None
    if free and (key not in state.free_hosts or changed):
        # A host just became usable, or a free one was relabelled: machines waiting for one look again.
        state.free_hosts.add(key)
        ctx.wakers.wake_all(Kind.MACHINE, state.waiting_for_host)
    elif not free:
        state.free_hosts.discard(key)
    if state.host_states.get(key) != rec.state:
        state.host_states[key] = rec.state
        if rec.consumer is not None:
            ctx.wakers.wake(Kind.MACHINE, rec.consumer)  # Finalize waits for its host to show provisioned
    if changed:
        # A spec change may be the fix a stopped machine waits for (e.g. a corrected pinned host key).
        ctx.wakers.wake_all(Kind.MACHINE, [m for m, b in state.blocked.items() if b.host == key])
    ctx.wakers.wake_all(Kind.TEMPLATE)


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
    ctx.state.free_hosts.discard(rec.key)
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
        await ctx.provisioner.set_power(rec.target, PowerState.OFF)
    except ProvisionerError as e:
        if retry + 1 < ctx.settings.power_off_attempts:
            raise kopf.TemporaryError(
                f"powering off before removal: {e.reason}: {e.message}", delay=15
            ) from None
        ctx.events.warn(
            body,
            "RemovedWithoutPowerOff",
            f"BMC still failing ({e.reason}); removed from inventory, power state unknown",
        )
        return
    logger.info("%s powered off and removed from the inventory", rec.key)
