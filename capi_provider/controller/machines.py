"""BareMetalMachine: from CAPI creating it to a Running node, and back to a free host on deletion.

One kopf daemon per BareMetalMachine runs `MachineReconciler.reconcile` whenever something it depends on
changes (its own object, its CAPI Machine or Cluster, a host freeing up) or its requeue time passes. The
decisions live in capi_provider/decisions/machine.py and hostmatch.py; the BMC/SSH work in hostops.py.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from capi_provider import api
from capi_provider.api.schema import from_obj
from capi_provider.api.types import BareMetalMachineSpec
from capi_provider.bootstrap.render import HostInput, NicInput, SeedInputs, SeedTemplateError, render_seed
from capi_provider.controller import hostops
from capi_provider.controller.context import Context, ObjKey, run_daemon
from capi_provider.controller.hostio import HostAccessError, drop_ssh
from capi_provider.controller.inventory import HostRecord, one, records
from capi_provider.decisions import machine as m
from capi_provider.decisions.conditions import READY, set_condition, status_changed
from capi_provider.decisions.hostmatch import MachineRequest, best_fit, explain_no_match
from capi_provider.k8s import Conflict

KIND = "machine"
BLOCK_MOVE = "clusterctl.cluster.x-k8s.io/block-move"
DELETE_FOR_MOVE = "clusterctl.cluster.x-k8s.io/delete-for-move"
LONG = 600.0  # requeue when only an event can change anything (events wake us much sooner)


def owner_machine_name(body: Any) -> str | None:
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Machine" and ref.get("apiVersion", "").startswith(api.CAPI_GROUP + "/"):
            return str(ref["name"])
    return None


def is_paused(body: Any, cluster: dict[str, Any] | None) -> bool:
    if api.PAUSED_ANNOTATION in (body["metadata"].get("annotations") or {}):
        return True
    return bool(cluster and (cluster.get("spec") or {}).get("paused"))


def claimed_host(body: Any, host_inventory: kopf.Index) -> HostRecord | None:
    """The host this machine holds: by the annotation we set, else by a consumerRef pointing at us (a crash
    between claiming the host and annotating the machine leaves exactly that)."""
    key = ObjKey.of(body)
    annotated = (body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION)
    if annotated and "/" in annotated:
        ns, name = annotated.split("/", 1)
        return one(host_inventory, ObjKey(ns, name))
    for rec in records(host_inventory):
        if rec.consumer == key:
            return rec
    return None


class MachineReconciler:
    def __init__(self, ctx: Context, body: Any, host_inventory: kopf.Index, logger: logging.Logger) -> None:
        self.ctx = ctx
        self.body = body
        self.key = ObjKey.of(body)
        self.hosts = host_inventory
        self.log = logger
        self.spec = from_obj(BareMetalMachineSpec, body.get("spec"))
        self.status: dict[str, Any] = copy.deepcopy(dict(body.get("status") or {}))
        self._written_status = copy.deepcopy(self.status)
        self.generation = body["metadata"].get("generation")

    # ------------------------------------------------------------------ status plumbing
    async def flush(self) -> None:
        """Write status if it changed in a way an operator could see."""
        if not status_changed(self._written_status, self.status):
            return
        await self._patch({"status": self.status}, status=True)
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

    async def _patch(self, body: dict[str, Any], *, status: bool = False) -> None:
        await self.ctx.kube.patch(
            api.GROUP, api.VERSION, api.MACHINES, self.key.namespace, self.key.name, body, status=status
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

        host = claimed_host(self.body, self.hosts)
        if host is None:
            if (self.body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION):
                self.conditions(
                    claimed=(False, m.HOST_DELETED, "the BareMetalHost serving this machine is gone")
                )
                return LONG
            host = await self.claim(machine)
            if host is None:
                return LONG
        return await self.provision(host, machine, cluster_name)

    # ------------------------------------------------------------------ claiming
    async def claim(self, machine: dict[str, Any]) -> HostRecord | None:
        request = MachineRequest(
            selector=self.spec.hostSelector,
            requirements=self.spec.requirements,
            failure_domain=(machine.get("spec") or {}).get("failureDomain") or None,
        )
        pending = self.ctx.pending_claims
        candidates = [rec for rec in records(self.hosts) if rec.key.namespace == self.key.namespace]
        facts = [rec.facts(claimed_locally=rec.key in pending) for rec in candidates]
        by_name = {rec.key.name: rec for rec in candidates}
        for choice in best_fit(request, facts):
            rec = by_name[choice.name]
            if await self._try_claim(rec):
                self.ctx.waiting_for_host.discard(self.key)
                return rec
        self.ctx.waiting_for_host.add(self.key)
        why = explain_no_match(request, facts)
        previous = next((c for c in self.status.get("conditions") or [] if c["type"] == m.HOST_CLAIMED), None)
        if not previous or previous.get("message") != why:
            kopf.warn(self.body, reason=m.WAITING_FOR_HOST, message=why)
        self.conditions(claimed=(False, m.WAITING_FOR_HOST, why))
        return None

    async def _try_claim(self, rec: HostRecord) -> bool:
        """Take the host only if it is exactly as we saw it (resourceVersion test): two machines, or two
        replicas, can never both win."""
        ref = {
            "kind": "BareMetalMachine",
            "name": self.key.name,
            "namespace": self.key.namespace,
            "uid": self.body["metadata"]["uid"],
            "cleaning": self.spec.cleaning,
        }
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rec.resource_version},
            {"op": "add", "path": "/spec/consumerRef", "value": ref},
        ]
        try:
            await self.ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, rec.key.namespace, rec.key.name, ops)
        except Conflict:
            self.log.info("host %s changed under us; trying the next best", rec.key)
            return False
        self.ctx.pending_claims[rec.key] = self.key
        await self.annotate({api.HOST_ANNOTATION: str(rec.key)})
        self.status["host"] = {"name": rec.key.name}
        kopf.info(self.body, reason="HostClaimed", message=f"claimed BareMetalHost {rec.key.name}")
        self.ctx.wakers.wake("host", rec.key)
        self.ctx.wakers.wake_all("template")
        return True

    # ------------------------------------------------------------------ provisioning
    async def provision(self, host: HostRecord, machine: dict[str, Any], cluster_name: str) -> float:
        self.status["host"] = {"name": host.key.name}
        claimed = (True, "HostClaimed", f"BareMetalHost {host.key.name}")
        data_secret = ((machine.get("spec") or {}).get("bootstrap") or {}).get("dataSecretName")
        blocked = self.ctx.blocked.get(self.key)
        if blocked and blocked[2] == host.generation and not self.spec.providerID:
            self.conditions(claimed=claimed, provisioned=(False, blocked[0], blocked[1]))
            return LONG
        self.ctx.blocked.pop(self.key, None)
        while True:
            facts = m.Facts(
                steps_done=m.steps_done(self.status.get("steps")),
                bootstrap_data_ready=bool(data_secret),
                provider_id_set=bool(self.spec.providerID),
            )
            step = m.next_step(facts)
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
            if step == "Finalize":
                await self.finalize(host, machine)
                return LONG
            self.conditions(claimed=claimed, provisioned=(False, step, f"{step} on {host.key.name}"))
            if not (self.body["metadata"].get("annotations") or {}).get(BLOCK_MOVE):
                # clusterctl move must wait: a half-provisioned host cannot be handed to another controller.
                await self.annotate({BLOCK_MOVE: "true"})
            self.status["steps"] = m.start_step(self.status.get("steps"), step)
            await self.flush()
            try:
                note = await self.run_step(step, host, machine, cluster_name, data_secret)
            except HostAccessError as e:
                return self.step_failed(step, host, e.reason, e.message)
            except hostops.BootstrapFailed as e:
                return self.block(step, host, m.BOOTSTRAP_FAILED, str(e))
            except SeedTemplateError as e:
                self.conditions(claimed=claimed, provisioned=(False, "SeedTemplateInvalid", str(e)))
                self.status["steps"] = m.start_step(self.status.get("steps"), step, f"failed: {e}")
                return LONG
            self.status["steps"] = m.finish_step(self.status.get("steps"), step, note)
            self.ctx.step_failures.pop(self.key, None)
            self.log.info("%s: %s on %s: %s", self.key, step, host.key.name, note)

    def block(self, step: str, host: HostRecord, reason: str, message: str) -> float:
        """Stop at a failure that retrying cannot fix; visible in conditions, steps and an event. Provisioning
        resumes when the host's spec changes (e.g. the operator corrects the pinned host key)."""
        drop_ssh(self.ctx, host.key)
        claimed = (True, "HostClaimed", f"BareMetalHost {host.key.name}")
        self.ctx.blocked[self.key] = (reason, message, host.generation, host.key)
        self.status["steps"] = m.start_step(self.status.get("steps"), step, f"failed: {reason}")
        kopf.warn(self.body, reason=reason, message=message)
        self.conditions(claimed=claimed, provisioned=(False, reason, message))
        return LONG

    def step_failed(self, step: str, host: HostRecord, reason: str, message: str) -> float:
        drop_ssh(self.ctx, host.key)
        claimed = (True, "HostClaimed", f"BareMetalHost {host.key.name}")
        if reason == "HostKeyMismatch":
            # A different machine (or an attacker) answers at that address: never send it anything.
            return self.block(step, host, reason, message)
        attempt = self.ctx.step_failures.get(self.key, 0) + 1
        self.ctx.step_failures[self.key] = attempt
        # Exponential backoff per machine: a BMC or network that stays down is not retried in a tight loop.
        delay = min(300.0, 15.0 * 2 ** (attempt - 1))
        self.conditions(
            claimed=claimed,
            provisioned=(False, reason, f"{step}: {message} (attempt {attempt}, next in {delay:.0f}s)"),
        )
        self.log.warning("%s: %s failed (attempt %d): %s: %s", self.key, step, attempt, reason, message)
        return delay

    async def run_step(
        self, step: str, host: HostRecord, machine: dict[str, Any], cluster_name: str, data_secret: str | None
    ) -> str:
        ctx, spec = self.ctx, host.spec
        if step == "PowerOn":
            note = await hostops.power_on_for_provisioning(ctx, host.key, spec, keep_running=host.warm)
            ctx.power_events[host.key] = {"action": "on", "reason": "Provisioning"}
            ctx.wakers.wake("host", host.key)
            return note
        if step == "WaitForSSH":
            await hostops.wait_for_ssh(ctx, host.key, spec, ctx.settings.boot_timeout)
            return f"SSH up, host key {spec.ssh.hostKey.split()[0]} verified"
        if step == "DeliverSeed":
            files = await self.render_seed(host, machine, cluster_name, data_secret or "")
            await hostops.deliver_seed(ctx, host.key, spec, files)
            return f"wrote {', '.join(sorted(files))} to {hostops.SEED_DIR}"
        if step == "Bootstrap":
            return await hostops.run_bootstrap(ctx, host.key, spec)
        raise AssertionError(step)

    async def render_seed(
        self, host: HostRecord, machine: dict[str, Any], cluster_name: str, data_secret: str
    ) -> dict[str, bytes]:
        secret = await self.ctx.kube.get_secret(self.key.namespace, data_secret)
        if secret is None or "value" not in secret.data:
            raise HostAccessError("BootstrapDataMissing", f"bootstrap Secret {data_secret} has no `value`")
        fmt = secret.data.get("format", b"cloud-config").decode()
        if fmt != "cloud-config":
            raise HostAccessError(
                "UnsupportedBootstrapFormat", f"bootstrap format {fmt!r}: only cloud-config is supported"
            )
        overrides = None
        if self.spec.seedTemplatesRef:
            overrides = await self.ctx.kube.get_configmap(self.key.namespace, self.spec.seedTemplatesRef.name)
            if overrides is None:
                raise HostAccessError(
                    "SeedTemplatesMissing", f"ConfigMap {self.spec.seedTemplatesRef.name} does not exist"
                )
        hw = host.spec.hardware
        inputs = SeedInputs(
            bootstrap_data=secret.data["value"].decode(),
            instance_id=self.body["metadata"]["uid"],
            hostname=self.key.name,
            provider_id=m.provider_id(self.key.namespace, host.key.name, self.body["metadata"]["uid"]),
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
        return render_seed(inputs, overrides)

    async def finalize(self, host: HostRecord, machine: dict[str, Any]) -> None:
        """Contract fields last, so CAPI only sees a provisioned machine once the host really is one."""
        drop_ssh(self.ctx, host.key)
        uid = self.body["metadata"]["uid"]
        pid = self.spec.providerID or m.provider_id(self.key.namespace, host.key.name, uid)
        if not self.spec.providerID:
            await self._patch({"spec": {"providerID": pid}, "metadata": {"annotations": {BLOCK_MOVE: None}}})
            self.spec.providerID = pid
            kopf.info(self.body, reason="Provisioned", message=f"{host.key.name} provisioned as {pid}")
        self.status["initialization"] = {"provisioned": True}
        self.status["addresses"] = m.machine_addresses(
            self.key.name, host.spec.ssh.address, [n.ip for n in host.spec.hardware.nics or [] if n.ip]
        )
        fd = host.labels.get(api.FAILURE_DOMAIN_LABEL)
        if fd:
            self.status["failureDomain"] = fd
        self.conditions(
            claimed=(True, "HostClaimed", f"BareMetalHost {host.key.name}"),
            provisioned=(True, "Provisioned", ""),
        )
        self.ctx.wakers.wake("host", host.key)


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
        ctx.blocked.pop(key, None)
        ctx.waiting_for_host.discard(key)
        ctx.step_failures.pop(key, None)


@kopf.on.event(api.GROUP, api.VERSION, api.MACHINES, id="machine-changed")
def machine_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    changed = ctx.wakers.wake_on_change(KIND, body)
    host = (body["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION)
    provisioned = bool(((body.get("status") or {}).get("initialization") or {}).get("provisioned"))
    flipped = ctx.machine_provisioned.get(key) != provisioned
    ctx.machine_provisioned[key] = provisioned
    if host and "/" in host and (changed or flipped):
        # The host's provisioningState follows its machine's progress.
        ctx.wakers.wake("host", ObjKey(*host.split("/", 1)))


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
    if not memo.ctx.wakers.seen_before("capi-machine", key, relevant):
        memo.ctx.wakers.wake(KIND, key)


@kopf.on.event(api.CAPI_GROUP, api.CAPI_VERSION, "clusters", id="capi-cluster-changed")
def capi_cluster_changed(body: kopf.Body, memo: kopf.Memo, machine_inventory: kopf.Index, **_: Any) -> None:
    """Pause, infrastructure readiness and the endpoint are all we read from a Cluster (see above)."""
    spec, meta = body.get("spec") or {}, body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    relevant = (
        spec.get("paused"),
        api.PAUSED_ANNOTATION in (meta.get("annotations") or {}),
        ((body.get("status") or {}).get("initialization") or {}).get("infrastructureProvisioned"),
        spec.get("controlPlaneEndpoint"),
    )
    if memo.ctx.wakers.seen_before("capi-cluster", ObjKey(ns, name), relevant):
        return
    keys = [r.key for r in records(machine_inventory) if r.key.namespace == ns and r.cluster == name]
    memo.ctx.wakers.wake_all(KIND, keys)
    # BareMetalClusters follow their Cluster's pause and endpoint; there are few, so wake the namespace's.
    memo.ctx.wakers.wake_namespace("cluster", ns)


@kopf.on.delete(api.GROUP, api.VERSION, api.MACHINES, id="deprovision")
async def machine_deleted(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, host_inventory: kopf.Index, retry: int, **_: Any
) -> None:
    ctx: Context = memo.ctx
    key = ObjKey.of(body)
    meta_ann = body["metadata"].get("annotations") or {}
    if DELETE_FOR_MOVE in meta_ann:
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
    host = claimed_host(body, host_inventory)
    if host is None or host.consumer != key:
        logger.info("%s holds no host (or its host is gone); nothing to deprovision", key)
        return
    spec = from_obj(BareMetalMachineSpec, body.get("spec"))
    if retry == 0:
        status = dict(body.get("status") or {})
        status["phase"] = "Deprovisioning"
        status["conditions"] = set_condition(
            status.get("conditions"),
            READY,
            False,
            m.DELETING,
            f"deprovisioning BareMetalHost {host.key.name}",
            None,
        )
        await ctx.kube.patch(
            api.GROUP,
            api.VERSION,
            api.MACHINES,
            key.namespace,
            key.name,
            {"status": {"phase": status["phase"], "conditions": status["conditions"]}},
            status=True,
        )
    try:
        notes = await hostops.deprovision(ctx, host.key, host.spec, spec.cleaning)
    except HostAccessError as e:
        if retry + 1 < ctx.settings.deprovision_power_attempts:
            raise kopf.TemporaryError(
                f"deprovisioning {host.key.name}: {e.reason}: {e.message}", delay=10
            ) from None
        # The Machine must not hang on a dead BMC: the host stays claimed (out of the pool, visibly
        # deprovisioning) and the host controller keeps trying until it is really off, then frees it.
        kopf.warn(
            body,
            reason="DeprovisioningDeferred",
            message=f"{host.key.name}: {e.reason}; the host stays out of the pool until it powers off",
        )
        ctx.wakers.wake("host", host.key)
        return
    ctx.power_events[host.key] = {"action": "off", "reason": "Deprovisioning"}
    await release_host(ctx, host.key, key)
    kopf.info(body, reason="Deprovisioned", message=f"{host.key.name}: {', '.join(notes)}; released")


async def release_host(ctx: Context, host: ObjKey, consumer: ObjKey) -> None:
    """Clear the claim, but only if it is still ours (test op): never free a host someone else now holds."""
    ops = [
        {"op": "test", "path": "/spec/consumerRef/name", "value": consumer.name},
        {"op": "test", "path": "/spec/consumerRef/namespace", "value": consumer.namespace},
        {"op": "remove", "path": "/spec/consumerRef"},
    ]
    try:
        await ctx.kube.patch(api.GROUP, api.VERSION, api.HOSTS, host.namespace, host.name, ops)
    except Conflict:
        logging.getLogger(__name__).warning("host %s no longer held by %s; not releasing", host, consumer)
    ctx.pending_claims.pop(host, None)
    ctx.wakers.wake("host", host)
    ctx.wakers.wake_all(KIND)
    ctx.wakers.wake_all("template")
