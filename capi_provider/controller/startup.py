"""Operator-wide kopf settings and the shared Context, set once at startup."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf

from capi_provider import api
from capi_provider.config import Settings
from capi_provider.controller.context import Context
from capi_provider.controller.credentials import CredentialStore
from capi_provider.controller.events import KopfEvents
from capi_provider.k8s import Kube, load_api_client
from capi_provider.provisioner.sshpush import SshPushProvisioner
from capi_provider.runner import BlockingRunner


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    config: Settings = memo.settings
    settings.persistence.finalizer = api.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.KOPF_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.KOPF_ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Events only from explicit kopf.info/warn calls: they are written for operators, log lines are not.
    settings.posting.loggers = False
    # Retry API errors soon rather than on kopf's long default schedule; failures are logged each time.
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60)
    settings.watching.inactivity_timeout = 120
    # One ClusterKopfPeering (what the manifests ship) decides the leader even with --namespace.
    settings.peering.clusterwide = True
    kube = Kube(load_api_client(config.kubeconfig), threads=config.api_threads)
    credentials = CredentialStore(kube)
    per_tenant = config.per_namespace_operations
    provisioner = SshPushProvisioner(
        config,
        credentials,
        bmc=BlockingRunner(max_workers=config.bmc_threads, per_tenant=per_tenant),
        ssh=BlockingRunner(max_workers=config.bmc_threads, per_tenant=per_tenant),
    )
    memo.ctx = Context(
        settings=config, kube=kube, provisioner=provisioner, credentials=credentials, events=KopfEvents()
    )
    logger.info("capi-provider-baremetal started (namespace: %s)", config.namespace or "all")


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount. Elsewhere: the kubeconfig (--kubeconfig / KUBECONFIG, read now, not at
    import time as the client library's default handler does)."""
    config: Settings = memo.settings
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not config.kubeconfig:
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    ctx: Context | None = getattr(memo, "ctx", None)
    if ctx is not None:
        ctx.kube.close()


@kopf.on.probe(id="sampledAt")
def sampled_at(**_: Any) -> float:
    """When the probes were run (kopf caches their results for up to 10 s): tells a reader how fresh the
    apiCalls counts are."""
    return time.time()


@kopf.on.probe(id="apiCalls")
def api_calls(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Requests this controller made (besides kopf's watches): the idle benchmark reads it."""
    ctx: Context | None = getattr(memo, "ctx", None)
    return dict(ctx.kube.calls) if ctx else {}
