"""Tenants cannot take each other's servers, secrets or the controller (docs/security.md).

A tenant ServiceAccount with full rights in its own namespace A (our kinds, CAPI objects, Secrets,
ConfigMaps) and none elsewhere tries each attack against the real API server, real CAPI and the provider
running as its shipped ServiceAccount. Namespace B's running host must come through untouched: the same
claim, still powered on, and not one command on its BMC.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile, LabMachine
from lab.lab import Lab
from lab.tools import tool, versions

from capi_provider import api
from tests.e2e.test_deprovisioning import SIGNS_THE_DISK, _signatures
from tests.helpers import condition, eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

POLICY_SAYS = "is written by the capi-provider-baremetal controller only"


@dataclass
class Tenants:
    lab: Lab
    a: str  # the attacker's namespace
    b: str  # the victim's
    kubeconfig: Path  # the attacker's identity
    victim: LabMachine
    victim_actions: list[str]
    victim_claim: dict[str, Any]

    def as_tenant(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def apply_as_tenant(self, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.as_tenant("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def assert_victim_untouched(self) -> None:
        host = hosts_by_name(self.lab.cluster, self.b)[self.victim.name]
        assert host["spec"]["consumerRef"] == self.victim_claim
        assert ipmitool_power(self.victim) == "on"
        assert self.victim_bmc_actions() == self.victim_actions, "a command reached the victim's BMC"

    def victim_bmc_actions(self) -> list[str]:
        return list(self.lab.hosts.fleet[self.victim.name].actions)


def _tenant_role(ns: str) -> list[dict[str, Any]]:
    rules = [
        {
            "apiGroups": [api.GROUP],
            "resources": [
                "baremetalhosts",
                "baremetalmachines",
                "baremetalmachinetemplates",
                "baremetalclusters",
            ],
            "verbs": ["*"],
        },
        {
            "apiGroups": [api.CAPI_GROUP],
            "resources": ["clusters", "machinedeployments", "machines"],
            "verbs": ["*"],
        },
        {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["*"]},
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "tenant", "namespace": ns},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "tenant", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
        },
    ]


def _md(name: str, ns: str, replicas: int, data_secret: str, **kw: Any) -> list[dict[str, Any]]:
    return workload.machine_deployment(
        name, ns, "c1", versions()["KUBERNETES_VERSION"], replicas=replicas, data_secret=data_secret, **kw
    )


@pytest.fixture(scope="module")
def tenants(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    suffix = uuid.uuid4().hex[:6]
    a, b = f"tenant-a-{suffix}", f"tenant-b-{suffix}"
    for ns in (a, b):
        lab.cluster.kubectl("create", "namespace", ns)
    # B: a running, provisioned server.
    victim = lab.hosts.add_host(f"victim-{suffix}", HostProfile(labels={"pool": "b"}), namespace=b)
    lab.wait_hosts_available_in(b, 1)
    lab.cluster.apply_docs(
        [*workload.cluster("c1", b, lab.cluster.server), workload.bootstrap_data_secret("boot", b)]
    )
    lab.cluster.apply_docs(_md("vmd", b, 1, "boot"))
    eventually(
        "the victim's host provisioned",
        lambda: (
            hosts_by_name(lab.cluster, b)[victim.name]["status"].get("provisioningState") == "provisioned"
        ),
        timeout=180,
    )
    # A: the attacker, with an identity limited to A.
    lab.cluster.apply_docs(_tenant_role(a))
    token = lab.cluster.kubectl("create", "token", "tenant", "-n", a, "--duration=2h").stdout.strip()
    kubeconfig = lab.cluster.write_kubeconfig(
        tmp_path_factory.mktemp("tenant") / "kubeconfig", f"system:serviceaccount:{a}:tenant", token=token
    )
    t = Tenants(
        lab,
        a,
        b,
        kubeconfig,
        victim,
        list(lab.hosts.fleet[victim.name].actions),
        hosts_by_name(lab.cluster, b)[victim.name]["spec"]["consumerRef"],
    )
    cluster_docs = [*workload.cluster("c1", a, lab.cluster.server), workload.bootstrap_data_secret("boot", a)]
    assert t.apply_as_tenant(*cluster_docs).returncode == 0
    yield t
    t.assert_victim_untouched()


def _bmms(lab: Lab, ns: str) -> list[dict[str, Any]]:
    return get_json(lab.cluster, "baremetalmachines", "-n", ns)["items"]


def test_an_annotation_pointing_at_another_tenants_host_is_refused(tenants: Tenants) -> None:
    t = tenants
    for target in (f"{t.b}/{t.victim.name}", f"{t.a}/anything"):
        bmm = {
            "apiVersion": api.API_VERSION,
            "kind": "BareMetalMachine",
            "metadata": {"name": "grab", "namespace": t.a, "annotations": {api.HOST_ANNOTATION: target}},
            "spec": {},
        }
        res = t.apply_as_tenant(bmm)
        assert res.returncode != 0 and POLICY_SAYS in res.stderr, res.stderr
    assert _bmms(t.lab, t.a) == []
    t.assert_victim_untouched()


def test_the_annotation_smuggled_through_a_template_is_refused_when_capi_creates_the_machine(
    tenants: Tenants,
) -> None:
    t = tenants
    docs = _md("smuggle", t.a, 1, "boot")
    template = next(d for d in docs if d["kind"] == "BareMetalMachineTemplate")
    template["spec"]["template"]["metadata"] = {
        "annotations": {api.HOST_ANNOTATION: f"{t.b}/{t.victim.name}"}
    }
    assert t.apply_as_tenant(*docs).returncode == 0, "the template itself is the tenant's to write"

    def refused() -> str | None:
        """Where an operator sees it: CAPI v1.14 reports the failed clone in the MachineSet's (v1beta1)
        MachineSetReady condition, reason InfrastructureTemplateCloningFailed."""
        for s in get_json(t.lab.cluster, "machinesets", "-n", t.a)["items"]:
            old = (((s.get("status") or {}).get("deprecated") or {}).get("v1beta1") or {}).get(
                "conditions"
            ) or []
            for c in [*old, *((s.get("status") or {}).get("conditions") or [])]:
                if POLICY_SAYS in (c.get("message") or ""):
                    return str(c["message"])
        return None

    message = eventually("CAPI reporting the refused BareMetalMachine", refused, timeout=90)
    assert "capi-core may not set or change it" in message  # refused for CAPI's identity: only the provider
    assert _bmms(t.lab, t.a) == []
    t.as_tenant("delete", "machinedeployment", "smuggle", "-n", t.a, "--wait=false")
    t.assert_victim_untouched()


def test_claims_on_hosts_cannot_be_forged(tenants: Tenants) -> None:
    t = tenants
    own = t.lab.hosts.add_host(f"own-{t.a[-6:]}", HostProfile(labels={"pool": "forge"}), namespace=t.a)
    t.lab.wait_hosts_available_in(t.a, 1)
    victim_bmm = _bmms(t.lab, t.b)[0]["metadata"]
    forged = {
        "kind": "BareMetalMachine",
        "namespace": t.b,
        "name": victim_bmm["name"],
        "uid": victim_bmm["uid"],
    }
    # On a host of its own namespace: neither by patching nor by creating a host that carries a claim.
    res = t.as_tenant(
        "patch",
        "baremetalhost",
        own.name,
        "-n",
        t.a,
        "--type=merge",
        "-p",
        yaml.safe_dump({"spec": {"consumerRef": forged}}),
    )
    assert res.returncode != 0 and POLICY_SAYS in res.stderr, res.stderr
    planted = t.lab.hosts.host_object(own)
    planted["metadata"]["name"] = "planted"
    planted["spec"]["consumerRef"] = forged
    res = t.apply_as_tenant(planted)
    assert res.returncode != 0 and POLICY_SAYS in res.stderr, res.stderr
    # In the victim's namespace: no rights at all.
    res = t.as_tenant(
        "patch", "baremetalhost", t.victim.name, "-n", t.b, "--type=merge", "-p", '{"spec":{"online":false}}'
    )
    assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    assert not hosts_by_name(t.lab.cluster, t.a)[own.name]["spec"].get("consumerRef")
    t.assert_victim_untouched()


def test_a_kubeconfig_secret_is_never_delivered_as_bootstrap_data(tenants: Tenants) -> None:
    t = tenants
    host = t.lab.hosts.add_host(f"kc-{t.a[-6:]}", HostProfile(labels={"pool": "kc"}), namespace=t.a)
    t.lab.wait_hosts_available_in(t.a, 2)
    kubeconfig_text = (
        "apiVersion: v1\nkind: Config\nusers: [{name: admin, user: {token: sekrit-admin-token}}]\n"
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "c1-kubeconfig", "namespace": t.a, "labels": {api.CLUSTER_NAME_LABEL: "c1"}},
        "type": "cluster.x-k8s.io/secret",
        "stringData": {"value": kubeconfig_text},
    }
    assert (
        t.apply_as_tenant(secret, *_md("kc", t.a, 1, "c1-kubeconfig", machine_spec=_pool("kc"))).returncode
        == 0
    )

    def rejected() -> dict | None:
        for b in _bmms(t.lab, t.a):
            c = condition(b, "Provisioned")
            if b["metadata"]["name"].startswith("kc-") and c and c["reason"] == "BootstrapDataRejected":
                return b
        return None

    bmm = eventually("the machine refusing the Secret", rejected, timeout=120)
    assert "format" in condition(bmm, "Provisioned")["message"]
    assert not (Path(host.host.root) / "var/lib/cloud/seed/nocloud").exists(), "something was delivered"
    assert "sekrit-admin-token" not in yaml.safe_dump(bmm)
    t.as_tenant("delete", "machinedeployment", "kc", "-n", t.a, "--wait=false")
    t.assert_victim_untouched()


def _pool(name: str, **extra: Any) -> dict[str, Any]:
    return {"hostSelector": {"matchLabels": {"pool": name}}, **extra}


BOMBS = {
    "repeat": "#cloud-config\n{{ 'x' * 2**31 }}\n",
    # (jinja's ** is left-associative: 9**9**9 is (9**9)**9, a mere 78 digits)
    "power": "#cloud-config\n{{ 99 ** 99999999 }}\n",
    "loops": "#cloud-config\n{% for i in range(99999) %}{% for j in range(99999) %}xx{% endfor %}"
    "{% endfor %}\n",
}


def test_a_template_bomb_fails_its_machine_only(tenants: Tenants) -> None:
    t = tenants
    t.lab.hosts.add_host(f"bomb-{t.a[-6:]}", HostProfile(labels={"pool": "bomb"}), namespace=t.a)
    t.lab.wait_hosts_available_in(t.a, 3)
    for kind, template in BOMBS.items():
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"bomb-{kind}", "namespace": t.a},
            "data": {"user-data": template},
        }
        md = _md(
            f"bomb-{kind}",
            t.a,
            1,
            "boot",
            machine_spec=_pool("bomb", seedTemplatesRef={"name": f"bomb-{kind}"}),
        )
        assert t.apply_as_tenant(cm, *md).returncode == 0

        def failed(kind: str = kind) -> dict | None:
            for b in _bmms(t.lab, t.a):
                c = condition(b, "Provisioned")
                if (
                    b["metadata"]["name"].startswith(f"bomb-{kind}")
                    and c
                    and c["reason"] == "SeedTemplateInvalid"
                ):
                    return c
            return None

        c = eventually(f"the {kind} bomb contained", failed, timeout=120)
        assert c["message"].startswith(("seed template user-data", "seed template (operator templates)")), c
        t.as_tenant("delete", "machinedeployment", f"bomb-{kind}", "-n", t.a, "--wait=true", "--timeout=120s")
    # The controller kept serving everyone meanwhile: the victim's cluster still scales.
    extra = t.lab.hosts.add_host(f"victim2-{t.a[-6:]}", HostProfile(labels={"pool": "b"}), namespace=t.b)
    t.lab.wait_hosts_available_in(t.b, 1)
    t.lab.cluster.kubectl("scale", "machinedeployment", "vmd", "-n", t.b, "--replicas=2")
    eventually(
        "the victim scaled while the bombs went off",
        lambda: (
            hosts_by_name(t.lab.cluster, t.b)[extra.name]["status"].get("provisioningState") == "provisioned"
        ),
        timeout=180,
    )
    # Back to one: CAPI must remove the new machine, not the victim's (its default policy is random).
    # The Machine that owns the BareMetalMachine holding the extra host (CAPI may not have copied the
    # providerID to the Machine yet).
    extra_machine = next(
        ref["name"]
        for b in _bmms(t.lab, t.b)
        if (b["metadata"].get("annotations") or {}).get(api.HOST_ANNOTATION) == f"{t.b}/{extra.name}"
        for ref in b["metadata"].get("ownerReferences") or []
        if ref["kind"] == "Machine"
    )
    t.lab.cluster.kubectl(
        "annotate", "machine", extra_machine, "-n", t.b, "cluster.x-k8s.io/delete-machine=yes"
    )
    t.lab.cluster.kubectl("scale", "machinedeployment", "vmd", "-n", t.b, "--replicas=1")
    t.assert_victim_untouched()


def test_a_machine_recreated_under_a_dead_machines_name_does_not_inherit_its_dirty_host(
    tenants: Tenants,
) -> None:
    t, lab = tenants, tenants.lab
    host = lab.hosts.add_host(f"reuse-{t.a[-6:]}", HostProfile(labels={"pool": "reuse"}), namespace=t.a)
    lab.wait_hosts_available_in(t.a, 4)
    signing = workload.bootstrap_data_secret("signing", t.a, SIGNS_THE_DISK)
    assert t.apply_as_tenant(signing, *_machine("m1", t.a, "signing")).returncode == 0
    eventually(
        "m1 provisioned",
        lambda: (
            hosts_by_name(lab.cluster, t.a)[host.name]["status"].get("provisioningState") == "provisioned"
        ),
        timeout=180,
    )
    first_uid = hosts_by_name(lab.cluster, t.a)[host.name]["spec"]["consumerRef"]["uid"]
    assert _signatures(host) == "swap"

    # Its BMC dies, and the machine is deleted: the deletion goes on, the host stays claimed (dirty).
    lab.hosts.set_fault(host.name, "no-answer")
    t.as_tenant("delete", "machine", "m1", "-n", t.a, "--wait=true", "--timeout=180s")
    assert hosts_by_name(lab.cluster, t.a)[host.name]["spec"]["consumerRef"]["uid"] == first_uid

    # The tenant re-creates a machine under the same name: it gets nothing while the host awaits cleaning.
    assert t.apply_as_tenant(*_machine("m1", t.a, "boot")).returncode == 0

    def waiting() -> dict | None:
        b = next((b for b in _bmms(lab, t.a) if b["metadata"]["name"] == "m1"), None)
        c = condition(b, "HostClaimed") if b else None
        return b if c and c["reason"] == "WaitingForHost" else None

    eventually("the new m1 waiting for a host", waiting, timeout=60)
    assert hosts_by_name(lab.cluster, t.a)[host.name]["spec"]["consumerRef"]["uid"] == first_uid

    # The BMC returns: the host is cleaned first, and only then serves the new m1.
    lab.hosts.set_fault(host.name, "none")

    def new_m1_on_the_host() -> bool:
        h = hosts_by_name(lab.cluster, t.a)[host.name]
        ref = h["spec"].get("consumerRef") or {}
        return (
            ref.get("name") == "m1"
            and ref.get("uid") != first_uid
            and h["status"].get("provisioningState") == "provisioned"
        )

    eventually("the cleaned host serving the new m1", new_m1_on_the_host, timeout=240)
    # The new m1's bootstrap data writes no signature: the swap signature is gone because the host was wiped.
    assert _signatures(host) == ""
    t.as_tenant("delete", "machine", "m1", "-n", t.a, "--wait=false")
    t.assert_victim_untouched()


def _machine(name: str, ns: str, data_secret: str) -> list[dict[str, Any]]:
    """A CAPI Machine and its BareMetalMachine, named by the tenant (not generated by a MachineSet)."""
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": "BareMetalMachine",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"cleaning": "metadata", "hostSelector": {"matchLabels": {"pool": "reuse"}}},
        },
        {
            "apiVersion": f"{api.CAPI_GROUP}/{api.CAPI_VERSION}",
            "kind": "Machine",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterName": "c1",
                "version": versions()["KUBERNETES_VERSION"],
                "bootstrap": {"dataSecretName": data_secret},
                "infrastructureRef": {"apiGroup": api.GROUP, "kind": "BareMetalMachine", "name": name},
            },
        },
    ]
