"""Names every part of the provider agrees on: API group/version, kinds, finalizers, labels, annotations."""

GROUP = "infrastructure.cluster.x-k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# The CAPI contract this provider implements; the CRD label `cluster.x-k8s.io/v1beta2: v1alpha1` says so.
CONTRACT = "v1beta2"

CAPI_GROUP = "cluster.x-k8s.io"
CAPI_VERSION = "v1beta2"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"

HOSTS = "baremetalhosts"
MACHINES = "baremetalmachines"
CLUSTERS = "baremetalclusters"
MACHINE_TEMPLATES = "baremetalmachinetemplates"
CLUSTER_TEMPLATES = "baremetalclustertemplates"

# kopf keeps one finalizer per operator (on machines and hosts); named like CAPT's, after the group.
FINALIZER = f"{GROUP}/baremetal"
# Where kopf keeps handler progress and its diff base: annotations, because CAPI-style strict status
# schemas would prune anything kopf wrote into status.
KOPF_ANNOTATION_PREFIX = f"baremetal.{GROUP}"

# CAPI labels and annotations we read.
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
MANAGED_BY_ANNOTATION = "cluster.x-k8s.io/managed-by"

# Host labels an operator sets for topology; the failure-domain one is what Machine.spec.failureDomain
# matches.
FAILURE_DOMAIN_LABEL = f"{GROUP}/failure-domain"

# Set on a BareMetalMachine once it holds a host: `<namespace>/<host name>` (survives clusterctl move,
# which copies no status).
HOST_ANNOTATION = f"{GROUP}/baremetalhost"
# Changing its value on a BareMetalMachine stopped by a failure retrying cannot fix (BootstrapFailed,
# SeedTemplateInvalid, ...) asks the controller to try again, e.g. after fixing a ConfigMap it does not watch.
RETRY_ANNOTATION = f"{GROUP}/retry"
# Pauses one host's controller (e.g. while an operator works on the box).
HOST_PAUSED_ANNOTATION = f"{GROUP}/paused"
# Set by the provider on a host it could not clean (or that presented a foreign host key): the host stays out
# of the pool until a later cleaning succeeds or an operator removes the annotation (docs/security.md).
QUARANTINE_ANNOTATION = f"{GROUP}/quarantined"

PROVIDER_ID_SCHEME = "baremetal"
