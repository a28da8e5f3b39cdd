"""`python -m capi_provider`: run every controller (the container's entrypoint)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import sys

import kopf

from capi_provider.config import Settings


def _fewer_malloc_arenas() -> None:
    """glibc gives each busy thread its own malloc arena; with a thread per in-flight BMC/SSH call that grows
    resident memory for no gain. Two arenas are plenty for a controller that spends its time waiting."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


def main(argv: list[str] | None = None) -> int:
    _fewer_malloc_arenas()
    settings = Settings.from_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # pyghmi and paramiko are chatty at INFO; their useful failures reach us as exceptions.
    for noisy in ("paramiko", "pyghmi", "kubernetes.client.rest", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it too
    import capi_provider.controller  # noqa: F401  (registers the handlers)

    peering = os.environ.get("CAPBM_PEERING") or None
    # Highest priority wins; random by default so that two replicas never tie (a tie pauses both).
    priority = int(os.environ.get("CAPBM_PEERING_PRIORITY") or random.randint(1, 2**31 - 1))
    kopf.run(
        clusterwide=settings.namespace is None,
        namespaces=[settings.namespace] if settings.namespace else (),
        # Leader election through kopf peering when configured (the manifests do): replicas pause while a
        # higher-priority peer is alive. Random priorities keep two replicas from tying (a tie pauses both).
        standalone=peering is None,
        peering_name=peering,
        priority=priority if peering else None,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
