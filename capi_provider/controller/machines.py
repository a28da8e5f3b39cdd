"""BareMetalMachine: from CAPI creating it to a Running node, and back to a free host on deletion.

One kopf daemon per BareMetalMachine runs `MachineReconciler.reconcile` whenever something it depends on
changes (its own object, its CAPI Machine or Cluster, a host freeing up or changing state) or its requeue
time passes. The decisions live in capi_provider/decisions/ (machine.py, hostmatch.py, ownership.py); the
work on the server in the provisioner (capi_provider/provisioner/); claims in claims.py.

Ownership is proven, never assumed: a machine only uses a host of its own namespace whose consumerRef names
it (namespace, name and uid), and that is re-read from the API server right before every step.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from capi_provider import api
from capi_provider.api.schema import from_obj
from capi_provider.api.types import BareMetalMachineSpec, ConsumerRef
from capi_provider.bootstrap.render import HostInput, NicInput, SeedInputs, SeedTemplateError
from capi_provider.bootstrap.sandbox import render_seed_bounded
from capi_provider.controller import claims
from capi_provider.controller.claims import Owner, OwnershipLost
from capi_provider.controller.context import Blocked, Context, Followed, Kind, ObjKey, PowerEvent, run_daemon
from capi_provider.controller.deprovision import deprovision
from capi_provider.controller.inventory import HostRecord, one, records
from capi_provider.controller.status import write_status
from capi_provider.decisions import machine as m
from capi_provider.decisions.conditions import READY, now, set_condition
from capi_provider.decisions.host import Quarantine
from capi_provider.decisions.hostmatch import MachineRequest, best_fit, explain_no_match
from capi_provider.decisions.ownership import Claim, provider_id
from capi_provider.decisions.secrets import bootstrap_data_problem
from capi_provider.provisioner.base import ProvisionerError, Seed

KIND = Kind.MACHINE
BLOCK_MOVE = "clusterctl.cluster.x-k8s.io/block-move"
DELETE_FOR_MOVE = "clusterctl.cluster.x-k8s.io/delete-for-move"
LONG = 600.0  # requeue when only an event can change anything (events wake us much sooner)
HOST_STATE_WAIT = 30.0  # Finalize waiting for the host to show provisioned (its change wakes us sooner)


def owner_machine_name(body: Any) -> str | None:
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Machine" and ref.get("apiVersion", "").startswith(api.CAPI_GROUP + "/"):
            return str(ref["name"])
    return None


def is_paused(body: Any, cluster: dict[str, Any] | None) -> bool:
    if api.PAUSED_ANNOTATION in (body["metadata"].get("annotations") or {}):
        return True
    return bool(cluster and (cluster.get("spec") or {}).get("paused"))


def find_claimed_host(body: Any, host_index: Any) -> tuple[HostRecord | None, str | None]:
    """The host this machine holds and how it knows (None, problem) when it cannot prove one it names.

    By the annotation we set when claiming; else by a consumerRef naming this exact machine (uid included)
    in its namespace: a crash between claiming a host and annotating the machine leaves exactly that."""
    owner = Owner.of(body)
    annotation = (body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION)
    if annotation is not None:
        key = ObjKey.parse(annotation)
        if key is None or key.namespace != owner.namespace:
            return None, f"the host annotation names {annotation!r}, outside namespace {owner.namespace}"
        rec = one(host_index, key)
        if rec is None:
            return None, m.HOST_DELETED
        claim = owner.claim_on(rec)
        if claim in (Claim.OURS, Claim.MOVED):
            return rec, None
        return (
            None,
            f"BareMetalHost {key.name} is not claimed by this machine "
            f"({claims.describe(rec.spec.consumerRef)})",
        )
    for rec in records(host_index):
        if rec.key.namespace == owner.namespace and owner.claim_on(rec) is Claim.OURS:
            return rec, None
    return None, None


class MachineReconciler:
    def __init__(self, ctx: Context, body: Any, host_index: Any, logger: logging.Logger) -> None:
        self.ctx = ctx
        self.body = body
        self.key = ObjKey.of(body)
        self.owner = Owner.of(body)
        self.hosts = host_index
        self.log = logger
        self.spec = from_obj(BareMetalMachineSpec, body.get("spec"))
        self.status: dict[str, Any] = copy.deepcopy(dict(body.get("status") or {}))
        self._written_status = copy.deepcopy(self.status)
        self.generation = body["metadata"].get("generation")

    # ------------------------------------------------------------------ status plumbing
    async def flush(self) -> None:
        """Write status if it changed in a way an operator could see."""
        if await write_status(self.ctx.kube, api.MACHINES, self.key, self._written_status, self.status):
            self._written_status = copy.deepcopy(self.status)

    def conditions(
        self, *, claimed: tuple[bool, str, str], provisioned: tuple[bool | str, str, str] | None = None
    ) -> None:
        self.status["conditions"] = m.summarize(
            self.status.get("conditions"),
            claimed=claimed,
            provisioned=provisioned,
            generation=self.generation,
        )
        done = bool((self.status.get("initialization") or {}).get("provisioned"))
        reason = provisioned[1] if provisioned else claimed[1]
        self.status["phase"] = m.phase_for(reason if claimed[0] else claimed[1], done)

    async def _patch(self, body: dict[str, Any]) -> None:
        await self.ctx.kube.patch(
            api.GROUP, api.VERSION, api.MACHINES, self.key.namespace, self.key.name, body
        )

    async def annotate(self, annotations: dict[str, str | None]) -> None:
        await self._patch({"metadata": {"annotations": annotations}})

    # ------------------------------------------------------------------ the loop body
    async def reconcile(self) -> float:
        """One pass; returns seconds until the next pass unless something wakes us first."""
        try:
            return await self._reconcile()
        finally:
            await self.flush()

    async def _reconcile(self) -> float:
        kube = self.ctx.kube
        machine_name = owner_machine_name(self.body)
        if machine_name is None:
            self.conditions(
                claimed=(False, m.WAITING_FOR_MACHINE, "waiting for the CAPI Machine to own this")
            )
            return LONG
        machine = await kube.get(
            api.CAPI_GROUP, api.CAPI_VERSION, "machines", self.key.namespace, machine_name
        )
        if machine is None:
            self.conditions(claimed=(False, m.WAITING_FOR_MACHINE, f"Machine {machine_name} not found"))
            return LONG
        cluster_name = (machine.get("spec") or {}).get("clusterName")
        cluster = await kube.get(
            api.CAPI_GROUP, api.CAPI_VERSION, "clusters", self.key.namespace, cluster_name
        )
        paused = is_paused(self.body, cluster)
        self.status["conditions"] = m.paused_condition(self.status.get("conditions"), paused, self.generation)
        if paused:
            self.status["phase"] = "Paused"
            if (self.body["metadata"].get("annotations") or {}).get(BLOCK_MOVE):
                # clusterctl move waits for this to go: a paused machine runs no step, whatever state it
                # stopped in (a machine stuck in a failure must not block the move forever).
                await self.annotate({BLOCK_MOVE: None})
            return LONG
        if (
            not ((cluster or {}).get("status") or {})
            .get("initialization", {})
            .get("infrastructureProvisioned")
        ):
            self.conditions(
                claimed=(False, m.WAITING_FOR_CLUSTER, f"Cluster {cluster_name} infrastructure not ready")
            )
            return LONG

        host, problem = find_claimed_host(self.body, self.hosts)
        if problem == m.HOST_DELETED:
            self.conditions(claimed=(False, m.HOST_DELETED, "the BareMetalHost serving this machine is gone"))
            return LONG
        if problem:
            return self.host_not_owned(problem)
        if host is None:
            host = await self.claim(machine, cluster_name)
            if host is None:
                return LONG
        else:
            if self.owner.claim_on(host) is Claim.MOVED:
                try:
                    host = await claims.restamp(self.ctx, host, self.owner)
                except OwnershipLost as e:
                    return self.host_not_owned(e.message)
                self.ctx.events.info(
                    self.body, "ClaimRestamped", f"BareMetalHost {host.key.name}: claim moved here"
                )
            if not (self.body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION):
                await self.annotate({api.HOST_ANNOTATION: str(host.key)})
        return await self.provision(host, machine, cluster_name)

    def host_not_owned(self, message: str) -> float:
        """The machine names a host it cannot prove is its own (released or re-claimed behind its back, or an
        annotation written by someone else): nothing is done to that host, and the machine says so instead of
        reporting a healthy node."""
        reason = m.HOST_NOT_OWNED
        previous = next((c for c in self.status.get("conditions") or [] if c["type"] == m.HOST_CLAIMED), None)
        if not previous or (previous.get("reason"), previous.get("message")) != (reason, message):
            self.ctx.events.warn(self.body, reason, message)
        self.conditions(claimed=(False, reason, message), provisioned=(False, reason, message))
        return LONG

    # ------------------------------------------------------------------ claiming
    async def claim(self, machine: dict[str, Any], cluster_name: str | None) -> HostRecord | None:
        request = MachineRequest(
            selector=self.spec.hostSelector,
            requirements=self.spec.requirements,
            failure_domain=(machine.get("spec") or {}).get("failureDomain") or None,
        )
        state = self.ctx.state
        candidates = [rec for rec in records(self.hosts) if rec.key.namespace == self.key.namespace]
        facts = [rec.facts(claimed_locally=rec.key in state.pending_claims) for rec in candidates]
        by_name = {rec.key.name: rec for rec in candidates}
        for choice in best_fit(request, facts):
            rec = by_name[choice.name]
            if await claims.claim(
                self.ctx, rec, self.owner, cleaning=self.spec.cleaning, cluster=cluster_name
            ):
                state.waiting_for_host.discard(self.key)
                await self.annotate({api.HOST_ANNOTATION: str(rec.key)})
                self.status["host"] = {"name": rec.key.name}
                self.ctx.events.info(self.body, "HostClaimed", f"claimed BareMetalHost {rec.key.name}")
                self.ctx.wakers.wake(Kind.HOST, rec.key)
                self.ctx.wakers.wake_all(Kind.TEMPLATE)
                return rec
        state.waiting_for_host.add(self.key)
        why = explain_no_match(request, facts)
        previous = next((c for c in self.status.get("conditions") or [] if c["type"] == m.HOST_CLAIMED), None)
        if not previous or previous.get("message") != why:
            self.ctx.events.warn(self.body, m.WAITING_FOR_HOST, why)
        self.conditions(claimed=(False, m.WAITING_FOR_HOST, why))
        return None

    # ------------------------------------------------------------------ provisioning
    async def provision(self, host: HostRecord, machine: dict[str, Any], cluster_name: str) -> float:
        state = self.ctx.state
        self.status["host"] = {"name": host.key.name}
        claimed = (True, "HostClaimed", f"BareMetalHost {host.key.name}")
        data_secret = ((machine.get("spec") or {}).get("bootstrap") or {}).get("dataSecretName")
        blocked = state.blocked.get(self.key)
        if blocked and blocked.since == self.block_key(host) and not self.spec.providerID:
            self.conditions(claimed=claimed, provisioned=(False, blocked.reason, blocked.message))
            return LONG
        state.blocked.pop(self.key, None)
        steps = self.ctx.provisioner.steps
        needs_seed = {s.name for s in steps if s.needs_seed}
        while True:
            facts = m.Facts(
                steps_done=m.steps_done(self.status.get("steps")),
                bootstrap_data_ready=bool(data_secret),
                provider_id_set=bool(self.spec.providerID),
            )
            step = m.next_step(steps, facts)
            if step == m.WAITING_FOR_BOOTSTRAP:
                self.conditions(
                    claimed=claimed,
                    provisioned=(
                        False,
                        m.WAITING_FOR_BOOTSTRAP,
                        "host booted; waiting for CAPI bootstrap data",
                    ),
                )
                return LONG
            if step == m.FINALIZE:
                return await self.finalize(host, claimed)
            self.conditions(claimed=claimed, provisioned=(False, step, f"{step} on {host.key.name}"))
            if not (self.body["metadata"].get("annotations") or {}).get(BLOCK_MOVE):
                # clusterctl move must wait: a half-provisioned host cannot be handed to another controller.
                await self.annotate({BLOCK_MOVE: "true"})
            self.status["steps"] = m.start_step(self.status.get("steps"), step)
            await self.flush()
            try:
                host = await claims.verify(self.ctx, host.key, self.owner)  # proven right before acting
                seed = await self.render_seed(host, cluster_name, data_secret) if step in needs_seed else None
                note = await self.ctx.provisioner.run_step(step, host.target, seed=seed, warm=host.warm)
            except ProvisionerError as e:
                self.ctx.provisioner.end_session(host.key)
                if e.reason in m.BLOCKING_REASONS:
                    return self.block(step, host, e.reason, e.message)
                return self.step_failed(step, e.reason, e.message, claimed)
            if step == steps[0].name:
                state.power_events[host.key] = PowerEvent("on", "Provisioning")
                self.ctx.wakers.wake(Kind.HOST, host.key)
            self.status["steps"] = m.finish_step(self.status.get("steps"), step, note)
            state.step_failures.pop(self.key, None)
            self.log.info("%s: %s on %s: %s", self.key, step, host.key.name, note)

    def block(self, step: str, host: HostRecord, reason: str, message: str) -> float:
        """Stop at a failure that retrying cannot fix; visible in conditions, steps and an event. Provisioning
        resumes when the host's spec changes (e.g. the operator corrects the pinned host key)."""
        claimed = (True, "HostClaimed", f"BareMetalHost {host.key.name}")
        self.ctx.state.blocked[self.key] = Blocked(reason, message, host.key, self.block_key(host))
        self.status["steps"] = m.start_step(self.status.get("steps"), step, f"failed: {reason}")
        self.ctx.events.warn(self.body, reason, message)
        self.conditions(claimed=claimed, provisioned=(False, reason, message))
        return LONG

    def block_key(self, host: HostRecord) -> tuple[int, int, str | None]:
        retry = (self.body["metadata"].get("annotations") or {}).get(api.RETRY_ANNOTATION)
        return (host.generation, int(self.generation or 0), retry)

    def step_failed(self, step: str, reason: str, message: str, claimed: tuple[bool, str, str]) -> float:
        failures = self.ctx.state.step_failures
        attempt = failures[self.key] = failures.get(self.key, 0) + 1
        delay = m.step_retry_delay(attempt)
        self.conditions(
            claimed=claimed,
            provisioned=(False, reason, f"{step}: {message} (attempt {attempt}, next in {delay:.0f}s)"),
        )
        self.log.warning("%s: %s failed (attempt %d): %s: %s", self.key, step, attempt, reason, message)
        return delay

    async def render_seed(self, host: HostRecord, cluster_name: str, data_secret: str | None) -> Seed:
        secret = await self.ctx.kube.get_secret(self.key.namespace, data_secret or "")
        problem = bootstrap_data_problem(secret, data_secret or "", cluster_name)
        if problem:
            raise ProvisionerError(*problem)
        assert secret is not None
        overrides = None
        if self.spec.seedTemplatesRef:
            overrides = await self.ctx.kube.get_configmap(self.key.namespace, self.spec.seedTemplatesRef.name)
            if overrides is None:
                raise ProvisionerError(
                    "SeedTemplatesMissing", f"ConfigMap {self.spec.seedTemplatesRef.name} does not exist"
                )
        hw = host.spec.hardware
        inputs = SeedInputs(
            bootstrap_data=secret.data["value"].decode(),
            instance_id=self.owner.uid,
            hostname=self.key.name,
            provider_id=provider_id(self.key.namespace, host.key.name, self.owner.uid),
            cluster_name=cluster_name,
            machine_name=self.key.name,
            machine_namespace=self.key.namespace,
            host=HostInput(
                name=host.key.name,
                nics=tuple(NicInput(n.name, n.mac, n.ip, n.gateway) for n in hw.nics or []),
                labels=dict(host.labels),
            ),
            failure_domain=host.labels.get(api.FAILURE_DOMAIN_LABEL),
        )
        try:
            return await render_seed_bounded(inputs, overrides, self.ctx.settings.template_limits)
        except SeedTemplateError as e:
            raise ProvisionerError(m.SEED_TEMPLATE_INVALID, str(e)) from None

    async def finalize(self, host: HostRecord, claimed: tuple[bool, str, str]) -> float:
        """Contract fields last, so CAPI only sees a provisioned machine once the host really is one: first
        the providerID (from which the host's status says provisioned), then, once the host shows it,
        initialization.provisioned."""
        self.ctx.provisioner.end_session(host.key)
        if not self.spec.providerID:
            host = await claims.verify(self.ctx, host.key, self.owner)
            pid = provider_id(self.key.namespace, host.key.name, self.owner.uid)
            await self._patch({"spec": {"providerID": pid}, "metadata": {"annotations": {BLOCK_MOVE: None}}})
            self.spec.providerID = pid
            self.ctx.events.info(self.body, "Provisioned", f"{host.key.name} provisioned as {pid}")
            self.ctx.wakers.wake(Kind.HOST, host.key)
        if host.state != "provisioned":
            self.conditions(
                claimed=claimed,
                provisioned=(
                    False,
                    m.WAITING_FOR_HOST_STATE,
                    f"waiting for BareMetalHost {host.key.name} to show provisioned",
                ),
            )
            return HOST_STATE_WAIT
        self.status["initialization"] = {"provisioned": True}
        self.status["addresses"] = m.machine_addresses(
            self.key.name, host.spec.ssh.address, [n.ip for n in host.spec.hardware.nics or [] if n.ip]
        )
        fd = host.labels.get(api.FAILURE_DOMAIN_LABEL)
        if fd:
            self.status["failureDomain"] = fd
        self.conditions(claimed=claimed, provisioned=(True, "Provisioned", ""))
        return LONG


# ====================================================================================== deletion


async def deprovision_machine(
    ctx: Context, body: Any, host_index: Any, logger: logging.Logger, retry: int
) -> None:
    """Reset, clean and power off the machine's host, then release it (or quarantine it if it could not be
    cleaned). A BMC that stays dead must not hang the Machine's deletion: after the configured attempts the
    host stays claimed (out of the pool, visibly deprovisioning) and the host controller finishes the job."""
    key = ObjKey.of(body)
    owner = Owner.of(body)
    host, problem = find_claimed_host(body, host_index)
    if host is None:
        logger.info(
            "%s holds no host it can prove is its own (%s); nothing to deprovision", key, problem or "none"
        )
        return
    spec = from_obj(BareMetalMachineSpec, body.get("spec"))
    if retry == 0:
        status = dict(body.get("status") or {})
        conditions = set_condition(
            status.get("conditions"),
            READY,
            False,
            m.DELETING,
            f"deprovisioning BareMetalHost {host.key.name}",
        )
        await write_status(
            ctx.kube, api.MACHINES, key, status, {"phase": "Deprovisioning", "conditions": conditions}
        )
    try:
        outcome = await deprovision(
            ctx.provisioner, ctx.settings, host, spec.cleaning, lambda: claims.verify(ctx, host.key, owner)
        )
    except OwnershipLost as e:
        logger.warning("%s: %s; leaving that host alone", key, e.message)
        return
    except ProvisionerError as e:
        if retry + 1 < ctx.settings.power_off_attempts:
            raise kopf.TemporaryError(
                f"deprovisioning {host.key.name}: {e.reason}: {e.message}", delay=10
            ) from None
        ctx.events.warn(
            body,
            "DeprovisioningDeferred",
            f"{host.key.name}: {e.reason}; the host stays out of the pool until it powers off",
        )
        ctx.wakers.wake(Kind.HOST, host.key)
        return
    ctx.state.power_events[host.key] = PowerEvent("off", "Deprovisioning")
    consumer = ConsumerRef(kind="BareMetalMachine", name=owner.name, namespace=owner.namespace, uid=owner.uid)
    quarantine = quarantine_for(outcome.problem, outcome.generation, spec.cleaning)
    await claims.release(ctx, host.key, consumer, quarantine)
    wake_after_release(ctx, host.key)
    if quarantine:
        ctx.events.warn(
            body,
            "HostQuarantined",
            f"{host.key.name} could not be cleaned ({quarantine.reason}): out of the pool",
        )
    else:
        ctx.events.info(body, "Deprovisioned", f"{host.key.name}: {', '.join(outcome.notes)}; released")
    logger.info("%s: %s: %s", key, host.key.name, ", ".join(outcome.notes))


def quarantine_for(problem: tuple[str, str] | None, generation: int, cleaning: str) -> Quarantine | None:
    if problem is None:
        return None
    return Quarantine(problem[0], problem[1], generation, now(), cleaning)


def wake_after_release(ctx: Context, host: ObjKey) -> None:
    ctx.wakers.wake(Kind.HOST, host)
    ctx.wakers.wake_all(KIND, ctx.state.waiting_for_host)
    ctx.wakers.wake_all(Kind.TEMPLATE)


# ====================================================================================== kopf handlers


@kopf.daemon(
    api.GROUP, api.VERSION, api.MACHINES, id="provision", cancellation_backoff=1.0, cancellation_timeout=10.0
)
async def machine_daemon(
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
        # Read the object fresh: kopf's live body can lag behind our own last write, and a pass built on it
        # would redo finished steps or write stale status back.
        fresh = await ctx.kube.get(api.GROUP, api.VERSION, api.MACHINES, key.namespace, key.name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return LONG
        return await MachineReconciler(ctx, fresh, host_inventory, logger).reconcile()

    try:
        await run_daemon(ctx, KIND, key, stopped, logger, one_pass)
    finally:
        ctx.state.forget_machine(key)
        ctx.wakers.forget_followed(Followed.CAPI_MACHINE, key)


@kopf.on.event(api.GROUP, api.VERSION, api.MACHINES, id="machine-changed")
def machine_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    changed = ctx.wakers.wake_on_change(KIND, body)
    host = ObjKey.parse((body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION))
    provisioned = bool((body.get("spec") or {}).get("providerID"))
    flipped = ctx.state.machine_provisioned.get(key) != provisioned
    ctx.state.machine_provisioned[key] = provisioned
    if host and (changed or flipped):
        # The host's provisioningState follows its machine's progress.
        ctx.wakers.wake(Kind.HOST, host)


@kopf.on.event(api.CAPI_GROUP, api.CAPI_VERSION, "machines", id="capi-machine-changed")
def capi_machine_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Wake the BareMetalMachine when something it reads from its Machine changes. Not on every Machine
    update: CAPI mirrors our conditions into the Machine, and waking on that would feed our own writes back
    to us."""
    spec, meta = body.get("spec") or {}, body["metadata"]
    ref = spec.get("infrastructureRef") or {}
    if ref.get("kind") != "BareMetalMachine" or not ref.get("name"):
        return
    key = ObjKey(meta["namespace"], ref["name"])
    relevant = (
        (spec.get("bootstrap") or {}).get("dataSecretName"),
        spec.get("failureDomain"),
        spec.get("clusterName"),
        api.PAUSED_ANNOTATION in (meta.get("annotations") or {}),
        meta.get("deletionTimestamp"),
    )
    if not memo.ctx.wakers.seen_before(Followed.CAPI_MACHINE, key, relevant):
        memo.ctx.wakers.wake(KIND, key)


@kopf.on.event(api.CAPI_GROUP, api.CAPI_VERSION, "clusters", id="capi-cluster-changed")
def capi_cluster_changed(
    body: kopf.Body, memo: kopf.Memo, type: str | None, machine_inventory: kopf.Index, **_: Any
) -> None:
    """Pause, infrastructure readiness and the endpoint are all we read from a Cluster (see above)."""
    spec, meta = body.get("spec") or {}, body["metadata"]
    key = ObjKey(meta["namespace"], meta["name"])
    if type == "DELETED":
        memo.ctx.wakers.forget_followed(Followed.CAPI_CLUSTER, key)
    relevant = (
        spec.get("paused"),
        api.PAUSED_ANNOTATION in (meta.get("annotations") or {}),
        ((body.get("status") or {}).get("initialization") or {}).get("infrastructureProvisioned"),
        spec.get("controlPlaneEndpoint"),
        type == "DELETED",
    )
    if type != "DELETED" and memo.ctx.wakers.seen_before(Followed.CAPI_CLUSTER, key, relevant):
        return
    keys = [
        r.key
        for r in records(machine_inventory)
        if r.key.namespace == key.namespace and r.cluster == key.name
    ]
    memo.ctx.wakers.wake_all(KIND, keys)
    # BareMetalClusters follow their Cluster's pause and endpoint; there are few, so wake the namespace's.
    memo.ctx.wakers.wake_namespace(Kind.CLUSTER, key.namespace)
    # Hosts whose machine is missing wait while their Cluster is paused (clusterctl move): look again.
    memo.ctx.wakers.wake_namespace(Kind.HOST, key.namespace)


@kopf.on.delete(api.GROUP, api.VERSION, api.MACHINES, id="deprovision")
async def machine_deleted(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, host_inventory: kopf.Index, retry: int, **_: Any
) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    if DELETE_FOR_MOVE in (body["metadata"].get("annotations") or {}):
        logger.info("%s deleted by clusterctl move: the host keeps running for the target cluster", key)
        return
    machine_name = owner_machine_name(body)
    cluster = None
    if machine_name:
        capi_m = await ctx.kube.get(api.CAPI_GROUP, api.CAPI_VERSION, "machines", key.namespace, machine_name)
        if capi_m:
            cluster = await ctx.kube.get(
                api.CAPI_GROUP, api.CAPI_VERSION, "clusters", key.namespace, capi_m["spec"].get("clusterName")
            )
    if is_paused(body, cluster):
        raise kopf.TemporaryError("paused: deprovisioning waits until the cluster is unpaused", delay=15)
    await deprovision_machine(ctx, body, host_inventory, logger, retry)
