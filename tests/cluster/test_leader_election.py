"""Two replicas of the controller: kopf peering keeps exactly one active, and the other takes over when the
active one goes away (as during a rolling restart of the Deployment)."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request

import pytest
from lab.lab import Lab
from lab.procs import Proc, free_port, http_ok, wait_until
from lab.tools import REPO_DIR

from tests.helpers import eventually, get_json

pytestmark = pytest.mark.cluster

PAUSED = re.compile(r"Pausing operations in favour of")
RESUMED = re.compile(r"Resuming operations after the pause")


def test_only_one_replica_is_active_and_the_other_takes_over(lab: Lab, namespace: str) -> None:
    lab_replica = lab.procs["provider"]  # runs with peering priority 100
    mark = len(lab_replica.log_path.read_text())
    port = free_port()
    newer = Proc(
        "provider-2",
        [
            sys.executable,
            "-m",
            "capi_provider",
            f"--kubeconfig={lab.provider_kubeconfig('provider-2')}",
            f"--health-port={port}",
        ],
        lab.logs,
        env={
            "PYTHONPATH": str(REPO_DIR),
            "PYTHONUNBUFFERED": "1",
            "CAPBM_PEERING": "capi-provider-baremetal",
            "CAPBM_PEERING_PRIORITY": "200",
            "CAPBM_POLL_INTERVAL": "10",
        },
    ).start()
    try:
        wait_until("second replica healthy", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, [newer])
        # The higher priority replica takes over; the lab's replica pauses: never both active.
        eventually(
            "the lab's replica pausing",
            lambda: PAUSED.search(lab_replica.log_path.read_text()[mark:]),
            timeout=90,
        )
        eventually("the new replica active", lambda: RESUMED.search(newer.log_path.read_text()), timeout=90)
        paused_before = _api_calls(lab.provider_health_port, after=time.time())
        active_before = _api_calls(port, after=time.time())
        lab.hosts.add_host("le0", namespace=namespace)
        eventually(
            "host registered by the active replica",
            lambda: _state(lab, namespace, "le0") == "available",
            timeout=90,
        )
        registered = time.time()
        # Exclusivity, from the replicas' own request counters sampled after the registration: the new
        # host's status was written by the active replica, and the paused one made no API request at all.
        status_writes = "patch baremetalhosts/status"
        active_after = _api_calls(port, after=registered)
        assert active_after.get(status_writes, 0) > active_before.get(status_writes, 0)
        assert _api_calls(lab.provider_health_port, after=registered) == paused_before

        # The active replica stops (SIGTERM, as in a rolling restart): the paused one resumes and works.
        mark = len(lab_replica.log_path.read_text())
        newer.stop()
        eventually(
            "the lab's replica resumed",
            lambda: RESUMED.search(lab_replica.log_path.read_text()[mark:]),
            timeout=120,
        )
        lab.hosts.add_host("le1", namespace=namespace)
        eventually(
            "host registered after failover", lambda: _state(lab, namespace, "le1") == "available", timeout=90
        )
    finally:
        newer.stop()
        time.sleep(1)


def _api_calls(port: int, after: float) -> dict[str, int]:
    """The replica's count of API requests per verb and resource (its liveness endpoint's apiCalls probe),
    from a sample taken after `after` (kopf caches probe results for a few seconds)."""

    def sample() -> dict | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            probes = json.load(r)
        return probes if probes.get("sampledAt", 0) > after else None

    return dict(eventually("a fresh probe sample", sample, timeout=30)["apiCalls"] or {})


def _state(lab: Lab, ns: str, name: str) -> str | None:
    return (get_json(lab.cluster, "baremetalhost", name, "-n", ns).get("status") or {}).get(
        "provisioningState"
    )
