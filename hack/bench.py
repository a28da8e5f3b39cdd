"""`make bench`: the provider's speed and memory targets, measured in one run against the real lab, printed as
figures and ratios (never asserted: a loaded machine changes seconds, not the shape of the result).

  scale     kubectl scale 0→1 vs 0→N with real CAPI + kubeadm join: target tN/t1 ≤ 1.25
  warm      pending pod → pod scheduled, scale-up with and without a warm pool (boot delay stated)
  faults    healthy hosts provisioned alone vs beside a slow (10 s/reply) and a dead BMC: target ≈ 1.0
  inventory controller RSS with 200 hosts registered (target < 150 MiB), and its API requests while idle

The cluster-autoscaler cannot be built here (its module is not served by the Go proxy), so the warm phase
scales the MachineDeployment with kubectl where the autoscaler would; the latency measured is the same
path the autoscaler's scale-up takes from there (MachineSet → our provider → node Ready → scheduler).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml
from lab import workload
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


def pod_latency(lab: Lab, ns: str, md: str, pool: str) -> float:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"wants-{pool}", "namespace": ns},
        "spec": {
            "nodeSelector": {"node.cluster.x-k8s.io/pool": pool},
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    apply(lab, [pod])
    start = time.monotonic()
    # Where the cluster-autoscaler would react to the pending pod, we scale the node group ourselves.
    lab.cluster.kubectl("scale", "machinedeployment", md, "-n", ns, "--replicas=1")
    wait(
        "pod scheduled",
        lambda: (get(lab, "pod", f"wants-{pool}", "-n", ns).get("spec") or {}).get("nodeName"),
    )
    return time.monotonic() - start


def phase_warm(lab: Lab, out: dict[str, Any]) -> None:
    ns = "bench-scale"
    add_pool(lab, ns, "cold", "cold", 2, node_labels={"node.cluster.x-k8s.io/pool": "cold"})
    add_pool(lab, ns, "warm", "warm", 2, node_labels={"node.cluster.x-k8s.io/pool": "warm"}, warm_pool=1)
    wait(
        "warm pool ready",
        lambda: (
            (get(lab, "baremetalmachinetemplate", "warm", "-n", ns).get("status") or {}).get("warmHosts") == 1
        ),
        timeout=300,
    )
    say("pending pod → scheduled, cold pool ...")
    cold = pod_latency(lab, ns, "cold", "cold")
    say("pending pod → scheduled, warm pool ...")
    warm = pod_latency(lab, ns, "warm", "warm")
    out["warm"] = {
        "cold": cold,
        "warm": warm,
        "saved": cold - warm,
        "cold_steps": step_seconds(lab, ns, "cold"),
        "warm_steps": step_seconds(lab, ns, "warm"),
    }


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
    if w := out.get("warm"):
        print("scale-up latency, pending pod → pod scheduled (node group scaled as the autoscaler would):")
        for pool in ("cold", "warm"):
            print(f"  {pool} steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in w[f"{pool}_steps"].items()))
        print(
            f"  cold pool {w['cold']:.1f}s   warm pool {w['warm']:.1f}s   saved {w['saved']:.1f}s "
            f"(boot delay {cfg.boot_delay:g}s)"
        )
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
    p.add_argument("--phases", default="scale,warm,faults,inventory")
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
        if "warm" in phases:
            if "scale" not in phases:
                setup_cluster(lab, "bench-scale")
            phase_warm(lab, out)
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
