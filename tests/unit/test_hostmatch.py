from __future__ import annotations

from fractions import Fraction

import pytest

from capi_provider.api.types import (
    DiskRequirement,
    HardwareRequirements,
    HostSelector,
    LabelSelectorRequirement,
)
from capi_provider.decisions.hostmatch import (
    HostFacts,
    MachineRequest,
    best_fit,
    explain_no_match,
    selector_matches,
)
from capi_provider.decisions.quantity import format_bytes, parse_quantity

GiB = 2**30


def host(name: str, cores: int, mem_gib: int, labels: dict | None = None, **kw) -> HostFacts:
    return HostFacts(
        name=name,
        labels=labels or {},
        cpu_cores=cores,
        memory_bytes=Fraction(mem_gib * GiB),
        architecture=kw.pop("arch", "amd64"),
        **kw,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Gi", 64 * GiB),
        ("1.5T", 1_500_000_000_000),
        ("500m", Fraction(1, 2)),
        ("2", 2),
        ("1e3", 1000),
        ("0.5Ki", 512),
        (".5", Fraction(1, 2)),
        (7, 7),
    ],
)
def test_parse_quantity(text: str | int, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["64GB", "", "Gi", "1..2", "-", "12 Gi"])
def test_parse_quantity_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)


def test_format_bytes_uses_the_largest_exact_unit() -> None:
    assert format_bytes(64 * GiB) == "64Gi"
    assert format_bytes(1536 * 2**20) == "1536Mi"
    assert format_bytes(1000) == "1000"


def test_best_fit_prefers_the_smallest_host_that_satisfies_the_request() -> None:
    hosts = [host("big", 64, 512), host("small", 16, 64), host("tiny", 4, 16)]
    req = MachineRequest(requirements=HardwareRequirements(minCPUCores=8))
    assert [h.name for h in best_fit(req, hosts)] == ["small", "big"]


def test_best_fit_breaks_cpu_ties_on_memory_then_name() -> None:
    hosts = [host("b", 16, 128), host("a", 16, 128), host("c", 16, 64)]
    assert [h.name for h in best_fit(MachineRequest(), hosts)] == ["c", "a", "b"]


def test_warm_hosts_are_taken_first_because_they_skip_the_boot() -> None:
    hosts = [host("cold-small", 8, 32), host("warm-bigger", 16, 64, warm=True)]
    assert best_fit(MachineRequest(), hosts)[0].name == "warm-bigger"


def test_hosts_in_use_or_unhealthy_are_never_chosen() -> None:
    hosts = [host("used", 8, 32, free=False), host("free", 32, 128)]
    assert [h.name for h in best_fit(MachineRequest(), hosts)] == ["free"]


def test_memory_architecture_and_disk_requirements() -> None:
    hosts = [
        host("arm", 32, 256, arch="arm64", disks=(("NVMe", Fraction(2000 * GiB)),)),
        host("hdd", 32, 256, disks=(("HDD", Fraction(4000 * GiB)),)),
        host("nvme-small-mem", 32, 16, disks=(("NVMe", Fraction(2000 * GiB)),)),
        host("ok", 32, 256, disks=(("SSD", Fraction(100 * GiB)), ("NVMe", Fraction(1000 * GiB)))),
    ]
    req = MachineRequest(
        requirements=HardwareRequirements(
            minMemory="64Gi", architecture="amd64", disk=DiskRequirement(type="NVMe", minSize="500Gi")
        )
    )
    assert [h.name for h in best_fit(req, hosts)] == ["ok"]


def test_label_selector_semantics() -> None:
    labels = {"rack": "r1", "zone": "a", "gpu": "yes"}

    def sel(**kw) -> HostSelector:
        return HostSelector(**kw)

    def expr(key: str, op: str, *values: str) -> LabelSelectorRequirement:
        return LabelSelectorRequirement(key=key, operator=op, values=list(values) or None)

    assert selector_matches(None, labels)
    assert selector_matches(sel(matchLabels={"rack": "r1"}), labels)
    assert not selector_matches(sel(matchLabels={"rack": "r2"}), labels)
    assert selector_matches(sel(matchExpressions=[expr("zone", "In", "a", "b")]), labels)
    assert not selector_matches(sel(matchExpressions=[expr("zone", "NotIn", "a")]), labels)
    assert selector_matches(sel(matchExpressions=[expr("missing", "NotIn", "a")]), labels)
    assert selector_matches(sel(matchExpressions=[expr("gpu", "Exists")]), labels)
    assert not selector_matches(sel(matchExpressions=[expr("gpu", "DoesNotExist")]), labels)
    # All terms must hold.
    assert not selector_matches(
        sel(matchLabels={"rack": "r1"}, matchExpressions=[expr("zone", "In", "b")]), labels
    )


def test_failure_domain_is_honoured_strictly() -> None:
    fd = "infrastructure.cluster.x-k8s.io/failure-domain"
    hosts = [host("a1", 8, 32, {fd: "rack-a"}), host("b1", 8, 32, {fd: "rack-b"}), host("none", 8, 32)]
    assert [h.name for h in best_fit(MachineRequest(failure_domain="rack-b"), hosts)] == ["b1"]
    assert best_fit(MachineRequest(failure_domain="rack-c"), hosts) == []


def test_explain_no_match_says_why() -> None:
    hosts = [host("small", 4, 16), host("tiny", 2, 8), host("used", 64, 256, free=False)]
    req = MachineRequest(requirements=HardwareRequirements(minCPUCores=8))
    assert explain_no_match(req, hosts) == "none of 2 free hosts qualify: 2 lack 8 CPU cores"
    assert explain_no_match(req, []) == "no BareMetalHosts exist in this namespace"
    assert explain_no_match(req, [hosts[2]]) == "all 1 hosts are in use or not available"
