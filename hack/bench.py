"""`make bench`: the provider's speed and memory targets, measured in one run against the real lab, printed as
figures and ratios (never asserted: a loaded machine changes seconds, not the shape of the result).

  scale     kubectl scale 0→1 vs 0→N with real CAPI + kubeadm join: target tN/t1 ≤ 1.25
  autoscaler  pending pod → pod Running with the real cluster-autoscaler in the loop, cold vs warm pool, at
            --scan-interval 10 s and 1 s (and 10 s with --frequent-loops-enabled); the breakdown: autoscaler
            decision, CAPI, our steps, join, scheduling; then idle → host back in the pool. Target: with a
            warm pool the provider's own share is below the scan interval
  faults    healthy hosts provisioned alone vs beside a slow (10 s/reply) and a dead BMC: target ≈ 1.0
  inventory controller RSS with 200 hosts registered (target < 150 MiB), and its API requests while idle
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml
from lab import workload
from lab.autoscaler import AutoscalerOptions, ClusterAutoscaler
from lab.cluster import LabOptions
from lab.hostlab import HostProfile
from lab.lab import PROVIDER_USER, Lab, LabConfig
from lab.procs import http_ok
from lab.tools import versions

VERSION = versions()["KUBERNETES_VERSION"]


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get(lab: Lab, *args: str) -> Any:
    return json.loads(lab.cluster.kubectl("get", *args, "-o", "json").stdout)


def wait(what: str, fn: Any, timeout: float = 600, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(what)


def apply(lab: Lab, docs: list[dict[str, Any]]) -> None:
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def running(lab: Lab, ns: str, md: str) -> int:
    items = get(lab, "machines", "-n", ns, "-l", f"cluster.x-k8s.io/deployment-name={md}")["items"]
    return sum(
        1 for m in items if (m.get("status") or {}).get("phase") == "Running" and m["status"].get("nodeRef")
    )


def machines(lab: Lab, ns: str, md: str) -> int:
    return len(get(lab, "machines", "-n", ns, "-l", f"cluster.x-k8s.io/deployment-name={md}")["items"])


def scale_and_time(lab: Lab, ns: str, md: str, n: int) -> float:
    start = time.monotonic()
    lab.cluster.kubectl("scale", "machinedeployment", md, "-n", ns, f"--replicas={n}")
    wait(f"{n} {md} machines Running", lambda: running(lab, ns, md) == n)
    return time.monotonic() - start


def scale_to_zero(lab: Lab, ns: str, md: str) -> None:
    lab.cluster.kubectl("scale", "machinedeployment", md, "-n", ns, "--replicas=0")
    wait(f"{md} at 0", lambda: machines(lab, ns, md) == 0)
    wait(
        "hosts released",
        lambda: all(
            not h["spec"].get("consumerRef") or h["spec"]["consumerRef"]["name"].startswith("cp")
            for h in get(lab, "baremetalhosts", "-n", ns)["items"]
        ),
    )


def step_seconds(lab: Lab, ns: str, prefix: str = "") -> dict[str, float]:
    """Mean duration of each provisioning step over the namespace's machines named `prefix`*."""
    from datetime import datetime

    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for b in get(lab, "baremetalmachines", "-n", ns)["items"]:
        if not b["metadata"]["name"].startswith(prefix):
            continue
        for s in (b.get("status") or {}).get("steps") or []:
            if s.get("finishedAt"):
                t0 = datetime.fromisoformat(s["startedAt"].replace("Z", "+00:00"))
                t1 = datetime.fromisoformat(s["finishedAt"].replace("Z", "+00:00"))
                sums[s["name"]] += (t1 - t0).total_seconds()
                counts[s["name"]] += 1
    return {k: sums[k] / counts[k] for k in sums}


def setup_cluster(lab: Lab, ns: str) -> None:
    """A workload cluster whose first control-plane machine runs kubeadm init on a lab host."""
    lab.hosts.add_host("cp-0", HostProfile(labels={"role": "cp"}), namespace=ns)
    docs = [workload.ca_secret("c1", ns, lab.cluster.ca_pem, lab.cluster.ca_key_pem)]
    docs += workload.cluster("c1", ns, lab.cluster.server)
    docs += workload.control_plane_machine(
        "cp-0", ns, "c1", VERSION, {"hostSelector": {"matchLabels": {"role": "cp"}}}
    )
    apply(lab, docs)
    wait(
        "control plane Running",
        lambda: (get(lab, "machine", "cp-0", "-n", ns).get("status") or {}).get("nodeRef"),
    )


def add_pool(lab: Lab, ns: str, md: str, role: str, hosts: int, **md_kw: Any) -> None:
    for i in range(hosts):
        lab.hosts.add_host(f"{role}-{i}", HostProfile(labels={"role": role}), namespace=ns)
    lab.wait_hosts_available_in(ns, len([m for m in lab.hosts.machines.values() if m.namespace == ns]) - 1)
    apply(
        lab,
        workload.machine_deployment(
            md,
            ns,
            "c1",
            VERSION,
            replicas=0,
            machine_spec={"hostSelector": {"matchLabels": {"role": role}}},
            **md_kw,
        ),
    )


# ---------------------------------------------------------------------------------------------- phases


def phase_scale(lab: Lab, n: int, out: dict[str, Any]) -> None:
    ns = "bench-scale"
    setup_cluster(lab, ns)
    add_pool(lab, ns, "workers", "worker", n)
    say("scale 0→1 ...")
    t1 = scale_and_time(lab, ns, "workers", 1)
    scale_to_zero(lab, ns, "workers")
    say(f"scale 0→{n} ...")
    tn = scale_and_time(lab, ns, "workers", n)
    out["scale"] = {"n": n, "t1": t1, "tn": tn, "ratio": tn / t1, "steps": step_seconds(lab, ns)}
    scale_to_zero(lab, ns, "workers")


# The pool label the bench's pods select on: set by the kubelet at registration (kubeletExtraArgs), so a pod
# can be scheduled as soon as its node is Ready, and declared to the autoscaler for scale from zero.
POOL_LABEL = "bench.capi-provider-baremetal.io/pool"


def add_autoscaled_pool(lab: Lab, ns: str, pool: str, hosts: int, warm_pool: int) -> None:
    for i in range(hosts):
        lab.hosts.add_host(f"{pool}-{i}", HostProfile(labels={"role": pool}), namespace=ns)
    docs = workload.machine_deployment(
        pool,
        ns,
        "c1",
        VERSION,
        replicas=0,
        machine_spec={"hostSelector": {"matchLabels": {"role": pool}}},
        warm_pool=warm_pool,
        annotations={
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "1",
            "capacity.cluster-autoscaler.kubernetes.io/labels": f"{POOL_LABEL}={pool}",
        },
    )
    kct = next(d for d in docs if d["kind"] == "KubeadmConfigTemplate")
    reg = kct["spec"]["template"]["spec"]["joinConfiguration"]["nodeRegistration"]
    reg["kubeletExtraArgs"] = [
        *reg["kubeletExtraArgs"],
        {"name": "node-labels", "value": f"{POOL_LABEL}={pool}"},
    ]
    apply(lab, docs)


class Timeline:
    """When each milestone of one scale-up is first seen, in seconds after the pod is created. Watches, not
    polling: an event arrives within milliseconds of the write, and the bench adds no API load of its own."""

    def __init__(self, lab: Lab, ns: str, pool: str) -> None:
        from kubernetes import client

        self.api = lab.cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ns, self.pool = ns, pool
        self.t0 = time.monotonic()
        self.t: dict[str, float] = {}
        self.steps: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._established: list[threading.Event] = []
        self._threads: list[threading.Thread] = []

    def mark(self, name: str, at: float | None = None) -> None:
        self.t.setdefault(name, (at or time.monotonic()) - self.t0)

    def _watch(
        self,
        list_fn: Any,
        args: tuple[Any, ...],
        kw: dict[str, Any],
        seen: Any,
        established: threading.Event,
    ) -> None:
        from kubernetes import watch

        def call(*a: Any, **k: Any) -> Any:
            resp = list_fn(*a, **k)  # returns once the apiserver has accepted the watch
            established.set()
            return resp

        while not self._stop.is_set():
            try:
                for ev in watch.Watch().stream(call, *args, timeout_seconds=2, **kw):
                    obj = ev["object"]
                    seen(obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj))
                    if self._stop.is_set():
                        return
            except Exception as e:  # a dropped watch is re-established; the milestone is not lost
                logging.debug("watch ended: %s", e)

    def start(self) -> Timeline:
        ns, pool = self.ns, self.pool
        by_md = {"label_selector": f"cluster.x-k8s.io/deployment-name={pool}"}

        def pod(o: dict[str, Any]) -> None:
            st = o.get("status") or {}
            if any(
                c.get("type") == "PodScheduled" and c.get("status") == "False"
                for c in st.get("conditions") or []
            ):
                self.mark("unschedulable")
            if (o.get("spec") or {}).get("nodeName"):
                self.mark("scheduled")
            if st.get("phase") == "Running":
                self.mark("running")

        def md(o: dict[str, Any]) -> None:
            if (o.get("spec") or {}).get("replicas"):
                self.mark("scaled")

        def machine(o: dict[str, Any]) -> None:
            self.mark("machine")
            if ((o.get("spec") or {}).get("bootstrap") or {}).get("dataSecretName"):
                self.mark("bootstrap-data")

        def bmm(o: dict[str, Any]) -> None:
            self.mark("bmm")
            st = o.get("status") or {}
            if (st.get("host") or {}).get("name"):
                self.mark("claimed")
            if (st.get("initialization") or {}).get("provisioned"):
                self.mark("provisioned")
                self.steps = st.get("steps") or []

        def node(o: dict[str, Any]) -> None:
            self.mark("node")
            conds = (o.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                self.mark("node-ready")

        g = ("cluster.x-k8s.io", "v1beta2", ns)
        watches = [
            (self.core.list_namespaced_pod, (ns,), {"field_selector": f"metadata.name=wants-{pool}"}, pod),
            (
                self.custom.list_namespaced_custom_object,
                (*g, "machinedeployments"),
                {"field_selector": f"metadata.name={pool}"},
                md,
            ),
            (self.custom.list_namespaced_custom_object, (*g, "machines"), by_md, machine),
            (
                self.custom.list_namespaced_custom_object,
                ("infrastructure.cluster.x-k8s.io", "v1alpha1", ns, "baremetalmachines"),
                by_md,
                bmm,
            ),
            (self.core.list_node, (), {"label_selector": f"{POOL_LABEL}={pool}"}, node),
        ]
        for fn, args, kw, seen in watches:
            established = threading.Event()
            self._established.append(established)
            th = threading.Thread(target=self._watch, args=(fn, args, kw, seen, established), daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def wait_established(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for ev in self._established:
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("watches not established")

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(5)
        self.api.close()


def _step_durations(steps: list[dict[str, Any]]) -> dict[str, float]:
    from datetime import datetime

    def ts(v: str) -> float:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()

    return {s["name"]: ts(s["finishedAt"]) - ts(s["startedAt"]) for s in steps if s.get("finishedAt")}


def pool_ready(lab: Lab, ns: str, pool: str, warm: int) -> bool:
    st = get(lab, "baremetalmachinetemplate", pool, "-n", ns).get("status") or {}
    hosts = [
        h for h in get(lab, "baremetalhosts", "-n", ns)["items"] if h["metadata"]["name"].startswith(pool)
    ]
    return (
        machines(lab, ns, pool) == 0
        and (st.get("matchingHosts") or 0) >= 1
        and (st.get("warmHosts") or 0) == warm
        and all(not h["spec"].get("consumerRef") for h in hosts)
        and not get(lab, "nodes", "-l", f"{POOL_LABEL}={pool}")["items"]
    )


def one_scale_up(lab: Lab, ns: str, pool: str) -> dict[str, Any]:
    """Pending pod → pod Running with the autoscaler in the loop; then pod deleted → host back in the pool."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"wants-{pool}", "namespace": ns},
        "spec": {
            "nodeSelector": {POOL_LABEL: pool},
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
        },
    }
    tl = Timeline(lab, ns, pool).start()
    tl.wait_established()
    tl.t0 = time.monotonic()
    tl.core.create_namespaced_pod(ns, pod)
    try:
        wait("pod Running", lambda: "running" in tl.t, timeout=600, interval=0.1)
        wait("BareMetalMachine provisioned", lambda: "provisioned" in tl.t, timeout=600, interval=0.1)
    finally:
        tl.stop()
    t = dict(tl.t)
    steps = _step_durations(tl.steps)
    # Idle: the pod goes; the autoscaler removes the node after --scale-down-unneeded-time; the provider
    # resets, wipes and powers off the host and gives it back.
    t_delete = time.monotonic()
    lab.cluster.kubectl("delete", "pod", f"wants-{pool}", "-n", ns, "--wait=true")
    wait(
        "autoscaler scaled down",
        lambda: get(lab, "machinedeployment", pool, "-n", ns)["spec"].get("replicas") == 0,
    )
    t_scaled_down = time.monotonic() - t_delete
    wait(
        "host back in the pool",
        lambda: (
            machines(lab, ns, pool) == 0
            and all(
                not h["spec"].get("consumerRef")
                and (h.get("status") or {}).get("powerState") in ("off", "on")
                and (h.get("status") or {}).get("provisioningState") == "available"
                for h in get(lab, "baremetalhosts", "-n", ns)["items"]
                if h["metadata"]["name"].startswith(pool)
            )
        ),
        interval=0.2,
    )
    t_released = time.monotonic() - t_delete
    return {"t": t, "steps": steps, "scale_down": t_scaled_down, "released": t_released}


# The autoscaler's clients default to 5 requests/s (burst 10). Reading an empty group's infrastructure
# template costs it two uncached discovery requests each time (clusterapi provider, 1.34), and a loop reads
# it about twenty times, so by default a loop spends seconds in client-side throttling; "+qps" lifts that.
_QPS = ("--kube-client-qps=50", "--kube-client-burst=100")
# The bench's pod is a bare Pod (nothing could recreate it elsewhere), so while it runs the autoscaler marks
# its node unremovable and by default looks again only 5 minutes later, which would delay the scale-down
# measured after the pod is gone by up to 5 minutes.
_RECHECK = ("--unremovable-node-recheck-timeout=5s",)


def _options(interval: str, *extra: str) -> AutoscalerOptions:
    return AutoscalerOptions(
        scan_interval=interval, scale_down_unneeded_time="10s", verbosity=2, extra_args=(*_RECHECK, *extra)
    )


AUTOSCALER_CONFIGS = {
    "10s": _options("10s"),
    "1s": _options("1s"),
    "10s+qps": _options("10s", *_QPS),
    "1s+qps": _options("1s", *_QPS),
    "10s+qps+frequent-loops": _options("10s", *_QPS, "--frequent-loops-enabled=true"),
}


def phase_autoscaler(lab: Lab, configs: list[str], repeats: int, out: dict[str, Any]) -> None:
    ns = "bench-scale"
    pools = {"cold": 0, "warm": 1}
    for pool, warm in pools.items():
        add_autoscaled_pool(lab, ns, pool, 2, warm)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    out["autoscaler"] = results  # filled as runs finish, so an interrupted bench still reports them
    for name in configs:
        say(f"cluster-autoscaler --scan-interval {name} ...")
        with ClusterAutoscaler(lab, ns, "c1", AUTOSCALER_CONFIGS[name]):
            for r in range(repeats):
                for pool, warm in pools.items():
                    wait(f"{pool} pool ready", lambda p=pool, w=warm: pool_ready(lab, ns, p, w), timeout=300)
                    run = one_scale_up(lab, ns, pool)
                    results.setdefault(name, {}).setdefault(pool, []).append(run)
                    t = run["t"]
                    say(
                        f"  {name} {pool} #{r + 1}: scaled at {t.get('scaled', 0):.1f}s, "
                        f"Running at {t['running']:.1f}s; released {run['released']:.1f}s after the pod went"
                    )


def phase_faults(lab: Lab, out: dict[str, Any]) -> None:
    ns = "bench-faults"
    lab.hosts.ensure_namespace(ns)
    apply(lab, [*workload.cluster("c1", ns, lab.cluster.server), workload.bootstrap_data_secret("boot", ns)])
    for role in ("good", "bad"):
        for i in range(2):
            lab.hosts.add_host(f"{role}-{i}", HostProfile(labels={"pool": role}), namespace=ns)
        apply(
            lab,
            workload.machine_deployment(
                role,
                ns,
                "c1",
                VERSION,
                replicas=0,
                data_secret="boot",
                machine_spec={"hostSelector": {"matchLabels": {"pool": role}}},
            ),
        )
    lab.wait_hosts_available_in(ns, 4)

    def provisioned(pool: str) -> int:
        return sum(
            1
            for b in get(lab, "baremetalmachines", "-n", ns)["items"]
            if b["metadata"]["name"].startswith(pool)
            and ((b.get("status") or {}).get("initialization") or {}).get("provisioned")
        )

    say("healthy hosts alone ...")
    start = time.monotonic()
    lab.cluster.kubectl("scale", "machinedeployment", "good", "-n", ns, "--replicas=2")
    wait("good provisioned", lambda: provisioned("good") == 2)
    alone = time.monotonic() - start
    scale_to_zero(lab, ns, "good")

    lab.hosts.set_fault("bad-0", "slow", delay=10.0)
    lab.hosts.set_fault("bad-1", "no-answer")
    say("healthy hosts beside a slow (10 s/reply) and a dead BMC ...")
    start = time.monotonic()
    lab.cluster.kubectl("scale", "machinedeployment", "bad", "-n", ns, "--replicas=2")
    lab.cluster.kubectl("scale", "machinedeployment", "good", "-n", ns, "--replicas=2")
    wait("good provisioned", lambda: provisioned("good") == 2)
    beside = time.monotonic() - start
    out["faults"] = {"alone": alone, "beside": beside, "ratio": beside / alone}


def audit_requests(lab: Lab, since: float, until: float) -> Counter[str]:
    """Requests the provider's identity made in a time window, by verb and resource (from the audit log)."""
    from datetime import datetime

    counts: Counter[str] = Counter()
    log = lab.cluster.logs / "audit.log"
    for line in log.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("stage") != "ResponseComplete" and ev.get("stage") != "ResponseStarted":
            continue
        if (ev.get("user") or {}).get("username") != PROVIDER_USER:
            continue
        ts = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if since <= ts <= until and ev.get("stage") == "ResponseComplete":
            counts[f"{ev['verb']} {(ev.get('objectRef') or {}).get('resource', ev.get('requestURI'))}"] += 1
    return counts


def phase_inventory(lab: Lab, count: int, idle: float, out: dict[str, Any]) -> None:
    ns = "bench-inventory"
    say(f"registering {count} hosts ...")
    start = time.monotonic()
    machines_ = [lab.hosts.add_host(f"inv-{i:03d}", namespace=ns, register=False) for i in range(count)]
    lab.hosts.register_many(machines_)
    lab.wait_hosts_available_in(ns, count, timeout=900)
    registered = time.monotonic() - start
    say(f"{count} hosts available after {registered:.0f}s; letting the controller settle ...")
    time.sleep(30)
    proc = psutil.Process(lab.procs["provider"].pid)
    rss = proc.memory_info().rss / 2**20
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.time()
    say(f"idle window of {idle:.0f}s ...")
    time.sleep(idle)
    t1 = time.time()
    cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (t1 - t0) * 100
    rss_after = proc.memory_info().rss / 2**20
    time.sleep(2)  # the audit log is written in batches of 1 s
    reqs = audit_requests(lab, t0, t1)
    out["inventory"] = {
        "hosts": count,
        "registered_s": registered,
        "rss_mib": rss,
        "rss_after_idle_mib": rss_after,
        "idle_s": t1 - t0,
        "idle_requests": dict(reqs),
        "idle_cpu_pct": cpu,
    }


# ---------------------------------------------------------------------------------------------- report


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report_autoscaler(a: dict[str, Any]) -> None:
    print("pending pod → pod Running, real cluster-autoscaler 1.34.5 in the loop. Seconds after the pod was")
    print("created (means). A cold host boots; a warm-pool host is already up. '+qps': --kube-client-qps=50")
    print("--kube-client-burst=100. The provider's own share starts when it has the bootstrap data from CAPI")
    print("(or the BareMetalMachine, if later) and ends when the machine is provisioned (host joined).")
    for name, pools in a.items():
        interval = float(name.split("s")[0])
        for pool, runs in pools.items():

            def at(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return _mean([r["t"][key] for r in runs if key in r["t"]])

            def own(r: dict[str, Any]) -> float:
                t = r["t"]
                return float(t["provisioned"] - max(t["bootstrap-data"], t["bmm"]))

            steps: dict[str, list[float]] = {}
            for r in runs:
                for k, v in r["steps"].items():
                    steps.setdefault(k, []).append(v)
            share = _mean([own(r) for r in runs])
            print(
                f"  --scan-interval {name}, {pool} pool, {len(runs)} run(s): "
                f"pod Running at {at('running'):.1f}s"
            )
            print(
                f"    autoscaler  replicas 0→1 at {at('scaled'):.1f}s "
                f"(pod unschedulable at {at('unschedulable'):.1f}s)"
            )
            print(
                f"    CAPI        Machine + BareMetalMachine at {at('bmm'):.1f}s, bootstrap data at "
                f"{at('bootstrap-data'):.1f}s"
            )
            print(
                f"    provider    host claimed at {at('claimed'):.1f}s, "
                f"provisioned at {at('provisioned'):.1f}s; "
                f"own share {share:.1f}s"
            )
            print(
                "                steps "
                + ", ".join(f"{k} {_mean(v):.1f}" for k, v in steps.items())
                + " (whole-second stamps)"
            )
            print(f"    join        Node registered at {at('node'):.1f}s, Ready at {at('node-ready'):.1f}s")
            print(f"    scheduling  pod scheduled at {at('scheduled'):.1f}s, Running at {at('running'):.1f}s")
            if pool == "warm":
                verdict = "below" if share < interval else "NOT below"
                print(
                    f"    target      provider's own share {share:.1f}s "
                    f"vs scan interval {interval:g}s: {verdict}"
                )
            down = _mean([r["scale_down"] for r in runs])
            released = _mean([r["released"] for r in runs])
            print(
                f"    idle        pod deleted → replicas 0 in {down:.1f}s, "
                f"host back in the pool in {released:.1f}s"
            )


def report(cfg: argparse.Namespace, out: dict[str, Any]) -> None:
    print()
    print("=" * 78)
    print(
        f"capi-provider-baremetal benchmarks (lab boot delay {cfg.boot_delay:g}s ± {cfg.jitter:g}s, 2 cores)"
    )
    print("=" * 78)
    if s := out.get("scale"):
        print("scale-up, kubectl scale → all Machines Running (real CAPI, kubeadm join on lab hosts):")
        print(f"  0→1: {s['t1']:.1f}s   0→{s['n']}: {s['tn']:.1f}s   ratio {s['ratio']:.2f}  (target ≤ 1.25)")
        print("  mean step times: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["steps"].items()))
    if a := out.get("autoscaler"):
        report_autoscaler(a)
    if f := out.get("faults"):
        print("healthy hosts provisioned alone vs beside a slow (10 s/reply) and a dead BMC:")
        print(f"  alone {f['alone']:.1f}s   beside faults {f['beside']:.1f}s", end="")
        print(f"   ratio {f['ratio']:.2f}", end="")
        print("  (target ≈ 1)")
    if i := out.get("inventory"):
        total = sum(i["idle_requests"].values())
        print(f"inventory of {i['hosts']} hosts (registered in {i['registered_s']:.0f}s):")
        print(
            f"  controller RSS {i['rss_mib']:.0f} MiB (after idle {i['rss_after_idle_mib']:.0f} MiB; "
            f"target < 150 MiB)"
        )
        print(
            f"  idle {i['idle_s']:.0f}s: {total} API requests by the controller "
            f"({total / i['idle_s'] * 60:.1f}/min), CPU {i['idle_cpu_pct']:.1f}%"
        )
        for k, v in sorted(i["idle_requests"].items(), key=lambda kv: -kv[1]):
            print(f"    {v:5d}  {k}")
    print("=" * 78)


def main() -> int:
    p = argparse.ArgumentParser(prog="make bench")
    p.add_argument("--workdir", default=".bench")
    p.add_argument("--hosts", type=int, default=5, help="N for the 0→N scale-up")
    p.add_argument("--boot-delay", type=float, default=10.0)
    p.add_argument("--jitter", type=float, default=1.0)
    p.add_argument("--inventory", type=int, default=200)
    p.add_argument("--idle", type=float, default=60.0)
    p.add_argument("--phases", default="scale,autoscaler,faults,inventory")
    p.add_argument(
        "--autoscaler-configs",
        default=",".join(AUTOSCALER_CONFIGS),
        help=f"scan interval settings of the autoscaler phase (of {', '.join(AUTOSCALER_CONFIGS)})",
    )
    p.add_argument("--autoscaler-repeats", type=int, default=2, help="scale-ups per pool and setting")
    cfg = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(cfg.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    phases = cfg.phases.split(",")
    lab = Lab(
        LabConfig(
            workdir=workdir,
            hosts=0,
            boot_delay=cfg.boot_delay,
            boot_jitter=cfg.jitter,
            cluster=LabOptions(scheduler=True, audit_log=True),
        )
    )
    out: dict[str, Any] = {}
    say("starting the lab ...")
    lab.start()
    try:
        assert http_ok(f"http://127.0.0.1:{lab.provider_health_port}/healthz")
        if "scale" in phases:
            phase_scale(lab, cfg.hosts, out)
        if "autoscaler" in phases or "warm" in phases:  # "warm": this phase's former name
            if "scale" not in phases:
                setup_cluster(lab, "bench-scale")
            phase_autoscaler(lab, cfg.autoscaler_configs.split(","), cfg.autoscaler_repeats, out)
        if "faults" in phases:
            phase_faults(lab, out)
        if "inventory" in phases:
            phase_inventory(lab, cfg.inventory, cfg.idle, out)
    finally:
        lab.stop()
        (workdir / "results.json").write_text(json.dumps(out, indent=2))
        report(cfg, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
