"""BareMetalHost inventory against the real apiserver and the provider process: registration, power as the
BMC reports it, credential failures and recovery, dead BMCs, Redfish, and validation of bad objects."""

from __future__ import annotations

import base64
import time

import pytest
import yaml
from lab.lab import Lab

from tests.helpers import condition, eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = pytest.mark.cluster


def _host(lab: Lab, ns: str, name: str) -> dict:
    return get_json(lab.cluster, "baremetalhost", name, "-n", ns)


def test_registered_hosts_become_available_with_the_power_the_bmc_reports(lab: Lab, namespace: str) -> None:
    ns = namespace
    machines = [lab.hosts.add_host(f"r{i}", namespace=ns, online=(i == 4), register=False) for i in range(5)]
    # r1 and r2 were left running by someone: free hosts with online: false must end up off.
    for m in machines[1:3]:
        m.host.power_on()
        assert ipmitool_power(m) == "on"
    lab.hosts.register_many(machines[:4])
    lab.hosts.register_many(machines[4:], online=True)
    lab.wait_hosts_available_in(ns, 5)

    def settled() -> dict | None:
        hosts = hosts_by_name(lab.cluster, ns)
        ok = all(h["status"].get("powerState") == ("on" if n == "r4" else "off") for n, h in hosts.items())
        return hosts if ok else None

    hosts = eventually("power states settled (r4 has online: true)", settled, timeout=60)
    for m in machines:
        h = hosts[m.name]
        assert h["status"]["provisioningState"] == "available"
        assert condition(h, "Ready")["status"] == "True"
        assert condition(h, "BMCReachable")["status"] == "True"
        assert condition(h, "CredentialsValid")["status"] == "True"
        # An independent IPMI client agrees with what the CRD says.
        assert ipmitool_power(m) == h["status"]["powerState"]
    assert hosts["r4"]["status"]["lastPowerOperation"]["action"] == "on"
    for name in ("r1", "r2"):
        assert hosts[name]["status"]["lastPowerOperation"] | {"time": None} == {
            "action": "off",
            "reason": "OnlineSpec",
            "time": None,
        }
    # `kubectl get` shows an operator what matters.
    table = lab.cluster.kubectl("get", "baremetalhosts", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "POWER", "CONSUMER", "BMC", "AGE"]
    assert table[1].split()[:3] == ["r0", "available", "off"]


def test_host_power_follows_online_while_free(lab: Lab, namespace: str) -> None:
    ns = namespace
    m = lab.hosts.add_host("o0", namespace=ns)
    lab.wait_hosts_available_in(ns, 1)
    lab.cluster.kubectl(
        "patch", "baremetalhost", "o0", "-n", ns, "--type=merge", "-p", '{"spec":{"online":true}}'
    )
    eventually("powered on", lambda: _host(lab, ns, "o0")["status"].get("powerState") == "on", timeout=30)
    assert ipmitool_power(m) == "on"
    # Someone powers it off behind our back: the controller notices on its next poll and restores it.
    m.host.power_off()
    assert ipmitool_power(m) == "off"
    eventually("powered on again", lambda: ipmitool_power(m) == "on", timeout=60)


def test_wrong_password_is_reported_without_leaking_and_a_fixed_secret_recovers(
    lab: Lab, namespace: str
) -> None:
    ns = namespace
    m = lab.hosts.add_host("cred", namespace=ns, register=False)
    wrong = "Wr0ng-S3cret-do-not-log"
    lab.hosts.apply(lab.hosts.host_object(m))
    lab.hosts.apply(lab.hosts.credentials_secret(m, password=wrong))

    def rejected() -> dict | None:
        h = _host(lab, ns, "cred")
        c = condition(h, "CredentialsValid")
        # (CredentialsSecretMissing first, possibly: the Secret is created after the host it is bound to.)
        return h if c and c["status"] == "False" and c["reason"] == "CredentialsRejected" else None

    h = eventually("CredentialsValid=False", rejected, timeout=60)
    c = condition(h, "CredentialsValid")
    assert c["reason"] == "CredentialsRejected"
    assert "rejected" in c["message"].lower()
    assert h["status"]["provisioningState"] == "error"
    assert h["status"]["lastError"]["type"] == "CredentialsRejected"
    assert condition(h, "BMCReachable")["status"] == "True"  # the BMC answered: it is the password

    # Fix the Secret: the controller picks it up by itself (no restart).
    lab.hosts.apply(lab.hosts.credentials_secret(m))
    eventually(
        "recovered",
        lambda: _host(lab, ns, "cred")["status"].get("provisioningState") == "available",
        timeout=60,
    )
    h = _host(lab, ns, "cred")
    assert condition(h, "CredentialsValid")["status"] == "True"
    assert "lastError" not in h["status"] or not h["status"]["lastError"]

    # The wrong password (and the right one) appear nowhere an operator or attacker could read them.
    for secret in (wrong, m.bmc_password, base64.b64encode(wrong.encode()).decode()):
        assert secret not in lab.procs["provider"].log_path.read_text()
        assert secret not in lab.cluster.kubectl("get", "events", "-n", ns, "-o", "yaml").stdout
        assert secret not in yaml.safe_dump(h["status"])


def test_unreachable_bmc_backs_off_and_other_hosts_are_still_served(lab: Lab, namespace: str) -> None:
    ns = namespace
    dead = lab.hosts.add_host("dead", namespace=ns)
    alive = lab.hosts.add_host("alive", namespace=ns)
    lab.wait_hosts_available_in(ns, 2)
    lab.hosts.set_fault("dead", "no-answer")
    # Make the dead host's controller look now rather than at its next poll.
    lab.cluster.kubectl("annotate", "baremetalhost", "dead", "-n", ns, f"poke={time.time()}", "--overwrite")

    def unreachable() -> dict | None:
        c = condition(_host(lab, ns, "dead"), "BMCReachable")
        return c if c and c["status"] == "False" else None

    c = eventually("BMCReachable=False on the dead host", unreachable, timeout=90)
    assert c["reason"] in ("BMCUnreachable", "BMCTimeout")
    # Meanwhile the healthy host is served: it is powered on while the dead one still fails (the poll
    # schedule's backoff itself is unit-tested in test_reconcile_decisions.py).
    lab.cluster.kubectl(
        "patch", "baremetalhost", "alive", "-n", ns, "--type=merge", "-p", '{"spec":{"online":true}}'
    )
    eventually("healthy host powered on", lambda: ipmitool_power(alive) == "on", timeout=60)
    assert condition(_host(lab, ns, "dead"), "BMCReachable")["status"] == "False"
    # It recovers by itself once the BMC answers again.
    lab.hosts.set_fault("dead", "none")
    eventually(
        "dead host recovered",
        lambda: _host(lab, ns, "dead")["status"].get("provisioningState") == "available",
        timeout=120,
    )
    assert dead.host.is_powered_on() is False


def test_a_redfish_host_registers_and_follows_online(lab: Lab, namespace: str) -> None:
    ns = namespace
    m = lab.hosts.add_host("rf0", namespace=ns, protocol="redfish")
    assert m.bmc_address.startswith("redfish+https://127.0.0.1:")
    lab.wait_hosts_available_in(ns, 1)
    lab.cluster.kubectl(
        "patch", "baremetalhost", "rf0", "-n", ns, "--type=merge", "-p", '{"spec":{"online":true}}'
    )
    eventually("powered on over Redfish", lambda: m.host.is_powered_on(), timeout=60)
    eventually(
        "status says on", lambda: _host(lab, ns, "rf0")["status"].get("powerState") == "on", timeout=60
    )


_VALID = {
    "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
    "kind": "BareMetalHost",
    "metadata": {"name": "v"},
    "spec": {
        "bmc": {"address": "ipmi://10.0.0.5", "credentialsName": "v-bmc"},
        "ssh": {
            "address": "10.0.0.50",
            "privateKeySecretName": "k",
            "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        },
        "hardware": {
            "cpuCores": 8,
            "memory": "64Gi",
            "disks": [{"name": "sda", "type": "SSD", "size": "480Gi"}],
        },
        "bootMACAddress": "0c:c4:7a:12:34:56",
    },
}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("bmc", "address"), "ftp://10.0.0.5", "unsupported BMC scheme"),
        (("bmc", "address"), "ipmi://admin:pw@10.0.0.5", "credentials do not belong in the BMC address"),
        (
            ("bmc", "address"),
            "redfish://10.0.0.5/redfish/v1/Chassis/1",
            "must end in /redfish/v1/Systems/<id>",
        ),
        (("bmc", "address"), "ipmi://10.0.0.5:99999", "malformed BMC address"),
        (("bootMACAddress",), "0c:c4:7a:12:34", "must be a MAC address"),
        (("hardware", "memory"), "-64Gi", "must be a positive quantity"),
        (
            ("hardware", "disks"),
            [{"name": "sda", "type": "SSD", "size": "-1Ti"}],
            "must be a positive quantity",
        ),
        (
            ("hardware", "disks"),
            [{"name": "sda", "type": "Tape", "size": "1Ti"}],
            'Unsupported value: "Tape"',
        ),
        (("bmc", "credentialsName"), None, "spec.bmc.credentialsName: Required value"),
        (
            ("bmc", "address"),
            "redfish+http://10.0.0.5/redfish/v1/Systems/1",
            "plain-HTTP Redfish is not supported",
        ),
        (
            ("hardware", "disks"),
            [{"name": "../sda", "type": "SSD", "size": "1Ti"}],
            "must be a kernel disk name such as sda",
        ),
        (
            ("hardware", "disks"),
            [{"name": "/dev/sda; rm -rf /", "type": "SSD", "size": "1Ti"}],
            "must be a kernel disk name such as sda",
        ),
        (("ssh", "hostKey"), "not-a-key", "spec.ssh.hostKey"),
    ],
)
def test_malformed_hosts_are_rejected_by_the_apiserver(
    lab: Lab, namespace: str, path: tuple, value: object, message: str
) -> None:
    import copy

    obj = copy.deepcopy(_VALID)
    obj["metadata"]["namespace"] = namespace
    target = obj["spec"]
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    res = lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_the_valid_example_is_accepted(lab: Lab, namespace: str) -> None:
    import copy

    obj = copy.deepcopy(_VALID)
    obj["metadata"]["namespace"] = namespace
    res = lab.cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert res.returncode == 0, res.stderr


def test_kubectl_explain_describes_the_bmc(lab: Lab) -> None:
    out = lab.cluster.kubectl("explain", "baremetalhost.spec.bmc").stdout
    assert "baseboard management controller" in out.lower()
    assert "credentialsName" in out and "Secret" in out
