"""The provider's API, v1alpha1 (CAPI contract v1beta2). One source of truth: the CRDs in config/crd are
generated from these classes (`make generate`), and the controllers parse objects into them.

Descriptions are what `kubectl explain` shows an operator, so they say what a field is for and its format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from capi_provider.api.schema import Cel, FreeForm, Quantity, Timestamp, api_field, api_type
from capi_provider.bmc.address import BMC_ADDRESS_PATTERN

Architecture = Literal["amd64", "arm64", "s390x", "ppc64le"]
DiskType = Literal["HDD", "SSD", "NVMe"]
ConditionStatus = Literal["True", "False", "Unknown"]

MAC_PATTERN = r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"
# A kernel block device name, or a stable udev path: never anything a shell or a path could escape from.
DISK_NAME_PATTERN = r"^([a-z][a-z0-9]*|/dev/disk/by-(id|path)/[A-Za-z0-9:._+-]+)$"
# RFC 1123 subdomain: what a Kubernetes object name can be.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SSH_KEY_TYPES = "ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521"
SSH_PUBLIC_KEY_PATTERN = rf"^({_SSH_KEY_TYPES}) [A-Za-z0-9+/]+=*( .*)?$"

_POSITIVE_QUANTITY = Cel(
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
    "must be a positive quantity such as 64Gi or 960G",
)


_SCHEME_OK = (
    "(!self.contains('://') || self.startsWith('ipmi://') || self.startsWith('redfish://') || "
    "self.startsWith('redfish+https://'))"
)
_REDFISH_PATH_OK = "(!self.startsWith('redfish') || self.matches('/redfish/v1/Systems/[^/]+/?$'))"
# CEL rather than an OpenAPI pattern: each mistake gets one message an operator can act on instead of a
# page-long regular expression. The last rule is the complete grammar (the one the Python parser uses); it
# only speaks when the specific rules above it are satisfied, so each mistake is reported once.
_BMC_ADDRESS_RULES = (
    Cel(
        _SCHEME_OK,
        "unsupported BMC scheme: use ipmi://, redfish:// or redfish+https:// (a bare host[:port] means "
        "IPMI; plain-HTTP Redfish is not supported: the BMC password would cross the network in clear)",
    ),
    Cel(
        "!self.contains('@')",
        "credentials do not belong in the BMC address: put them in the Secret named by credentialsName",
    ),
    Cel(_REDFISH_PATH_OK, "a Redfish BMC address must end in /redfish/v1/Systems/<id>"),
    Cel(
        f"!({_SCHEME_OK} && !self.contains('@') && {_REDFISH_PATH_OK}) || "
        f"self.matches(r'{BMC_ADDRESS_PATTERN}')",
        "malformed BMC address: the host must be a DNS name, an IPv4 address or an [IPv6] address in "
        "brackets, and the port 1-65535",
    ),
)
_MAC = (Cel(f"self.matches('{MAC_PATTERN}')", "must be a MAC address such as 0c:c4:7a:12:34:56"),)


# ============================================================================================== common


@dataclass(kw_only=True)
class Condition:
    """A metav1.Condition: the state of one aspect of the object (CAPI v1beta2 conditions)."""

    type: str = api_field("Condition type in CamelCase, e.g. Ready.", max_length=316)
    status: ConditionStatus = api_field("True, False or Unknown.")
    reason: str = api_field("Machine-readable reason in CamelCase.", max_length=1024)
    message: str = api_field("Human-readable details; empty when there is nothing to add.", max_length=32768)
    lastTransitionTime: Timestamp = api_field("When status last changed.")
    observedGeneration: int | None = api_field(
        "The .metadata.generation this condition was computed from.", default=None, minimum=0
    )


@dataclass(kw_only=True)
class ObjectMeta:
    """Labels and annotations copied onto the objects created from a template."""

    labels: dict[str, str] | None = api_field("Labels to set.", default=None)
    annotations: dict[str, str] | None = api_field("Annotations to set.", default=None)


@dataclass(kw_only=True)
class LocalObjectRef:
    """A reference to an object in the same namespace."""

    name: str = api_field("Name of the object.", min_length=1, max_length=253)


# ======================================================================================= BareMetalHost


@dataclass(kw_only=True)
class BMCDetails:
    """Where the host's baseboard management controller (BMC) is and how to log in to it."""

    address: str = api_field(
        "BMC URL. `ipmi://host[:port]` (port 623 by default; a bare `host[:port]` also means IPMI), or "
        "`redfish://host[:port]/redfish/v1/Systems/<id>` (HTTPS; also written `redfish+https://`). "
        "Credentials never go in the URL.",
        max_length=512,
        cel=_BMC_ADDRESS_RULES,
    )
    credentialsName: str = api_field(
        "Name of a Secret in the host's namespace with keys `username` and `password`, bound to this host "
        "by an ownerReference (the provider sends a password only to the hosts its Secret is bound to). "
        "Read when needed and again whenever the BMC rejects it, so a rotated password is picked up "
        "without a restart.",
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
    )
    caBundleName: str | None = api_field(
        "Redfish only: a ConfigMap in the host's namespace whose key `ca.crt` holds the PEM CA certificates "
        "the BMC's TLS certificate must chain to (the controller's --redfish-ca-bundle otherwise, else the "
        "system trust store).",
        default=None,
        max_length=253,
        pattern=NAME_PATTERN,
    )
    disableCertificateVerification: bool = api_field(
        "Redfish only: accept the BMC's TLS certificate without verifying it. Anyone on the path to the BMC "
        "can then read the BMC password: prefer caBundleName.",
        default=False,
    )


@dataclass(kw_only=True)
class SSHAccess:
    """How the provider reaches the host's operating system once it has booted."""

    address: str = api_field(
        "IP address or DNS name of the host's management interface.", min_length=1, max_length=253
    )
    port: int = api_field("SSH port.", default=22, minimum=1, maximum=65535)
    user: str = api_field(
        "Login user; bootstrap commands run through `sudo -n` unless it is root.",
        default="root",
        min_length=1,
        max_length=64,
    )
    privateKeySecretName: str = api_field(
        "Secret in the host's namespace whose `ssh-privatekey` key holds the private key "
        "(type kubernetes.io/ssh-auth).",
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
    )
    hostKey: str = api_field(
        "The host's SSH public host key, as in known_hosts without the host name, e.g. "
        "`ssh-ed25519 AAAAC3...`. The provider refuses to talk to a host presenting any other key.",
        max_length=16384,
        pattern=SSH_PUBLIC_KEY_PATTERN,
    )


@dataclass(kw_only=True)
class Disk:
    """A disk in the host."""

    name: str = api_field(
        "How the OS finds the disk: a stable path under /dev/disk/by-id/ or /dev/disk/by-path/ (preferred), "
        "or a kernel name such as sda or nvme0n1 (kernel names can change between boots: give `wwn` or "
        "`serial` with them).",
        min_length=1,
        max_length=255,
        cel=(
            Cel(
                f"self.matches('{DISK_NAME_PATTERN}')",
                "must be a kernel disk name such as sda or nvme0n1, or a /dev/disk/by-id/... or "
                "/dev/disk/by-path/... path",
            ),
        ),
    )
    wwn: str | None = api_field(
        "The disk's World Wide Name (as in /dev/disk/by-id/wwn-<wwn>, e.g. 0x5000c500a1b2c3d4): when set, "
        "the disk is addressed by it.",
        default=None,
        max_length=64,
        pattern=r"^[0-9A-Za-z.:_-]+$",
    )
    serial: str | None = api_field(
        "The disk's serial number: when set, a wipe first checks that the device reports it, and refuses "
        "otherwise.",
        default=None,
        max_length=128,
        pattern=r"^[0-9A-Za-z.:_-]+$",
    )
    type: DiskType = api_field("HDD, SSD or NVMe.")
    size: Quantity = api_field("Capacity, e.g. 960Gi or 4T.", cel=(_POSITIVE_QUANTITY,))


@dataclass(kw_only=True)
class NIC:
    """A network interface in the host."""

    name: str = api_field("Interface name, e.g. eno1.", min_length=1, max_length=64)
    mac: str = api_field("MAC address, e.g. 0c:c4:7a:12:34:56.", max_length=17, cel=_MAC)
    speedGbps: int | None = api_field("Link speed in Gbit/s.", default=None, minimum=0)
    ip: str | None = api_field(
        "Static IPv4/IPv6 address with prefix length (e.g. 10.0.0.11/24) written into the host's "
        "network-config; DHCP when unset.",
        default=None,
        max_length=64,
    )
    gateway: str | None = api_field(
        "Default gateway for this interface, if any.", default=None, max_length=64
    )


@dataclass(kw_only=True)
class Hardware:
    """What the operator knows about the machine; host matching and scale-from-zero capacity use it."""

    cpuCores: int = api_field("Physical CPU cores.", minimum=1, maximum=4096)
    memory: Quantity = api_field("Installed memory, e.g. 256Gi.", cel=(_POSITIVE_QUANTITY,))
    architecture: Architecture = api_field("CPU architecture.", default="amd64")
    disks: list[Disk] | None = api_field(
        "Disks; the first is the one the operating system is installed on (never wiped, and what nodes "
        "report as ephemeral-storage).",
        default=None,
        max_items=64,
        list_type="atomic",
    )
    nics: list[NIC] | None = api_field("Network interfaces.", default=None, max_items=64, list_type="atomic")
    extendedResources: dict[str, Quantity] | None = api_field(
        "Extended resources a node on this host offers (through its device plugins), e.g. "
        "`nvidia.com/gpu: 2`: published in BareMetalMachineTemplate capacity for scale from zero.",
        default=None,
    )


@dataclass(kw_only=True)
class ConsumerRef:
    """The BareMetalMachine that holds this host. Set and cleared by the provider, never by hand."""

    kind: str = api_field("Kind of the consumer (BareMetalMachine).", min_length=1, max_length=63)
    name: str = api_field("Name of the consumer.", min_length=1, max_length=253)
    namespace: str = api_field("Namespace of the consumer.", min_length=1, max_length=63)
    uid: str | None = api_field("UID of the consumer when it claimed the host.", default=None, max_length=64)
    cleaning: Literal["none", "metadata"] | None = api_field(
        "The consumer's cleaning mode, kept here so that a host whose machine is gone (its deletion went on "
        "while the BMC was dead) is still cleaned the way that machine asked.",
        default=None,
    )
    cluster: str | None = api_field(
        "The consumer's Cluster: while it is paused (clusterctl move) a host whose machine is missing is "
        "left alone.",
        default=None,
        max_length=253,
    )


@dataclass(kw_only=True)
class BareMetalHostSpec:
    """Desired state of a bare-metal server registered with the provider."""

    bmc: BMCDetails = api_field("Baseboard management controller access.")
    ssh: SSHAccess = api_field("SSH access to the installed operating system.")
    hardware: Hardware = api_field("Hardware profile used for matching.")
    bootMACAddress: str | None = api_field(
        "MAC address of the NIC the host boots from. Recorded for inventory: this provider boots hosts from "
        "their installed disk.",
        default=None,
        max_length=17,
        cel=_MAC,
    )
    online: bool = api_field(
        "Power state wanted while the host is not in use: true keeps it on, false keeps it off.",
        default=False,
    )
    consumerRef: ConsumerRef | None = api_field(
        "The BareMetalMachine using this host; empty while the host is free.", default=None
    )


HostState = Literal[
    "registering", "available", "provisioning", "provisioned", "deprovisioning", "quarantined", "error"
]
PowerStateName = Literal["on", "off", "unknown"]


@dataclass(kw_only=True)
class HostError:
    """The last failure seen on the host."""

    type: str = api_field(
        "Category, e.g. CredentialsRejected, BMCUnreachable, HostKeyMismatch.", max_length=64
    )
    message: str = api_field("What went wrong, in words an operator can act on.", max_length=4096)
    time: Timestamp = api_field("When it happened.")


@dataclass(kw_only=True)
class PowerOperation:
    """The last power change the provider made through the BMC."""

    action: Literal["on", "off", "cycle"] = api_field("What was done.")
    time: Timestamp = api_field("When it was done.")
    reason: str | None = api_field("Why, e.g. Provisioning, Deprovisioning, OnlineSpec.", default=None)


@dataclass(kw_only=True)
class BareMetalHostStatus:
    """Observed state of the host (rebuilt from spec and the hardware after a restart or clusterctl move)."""

    provisioningState: HostState | None = api_field(
        "registering (BMC not yet verified), available (free), provisioning, provisioned, deprovisioning "
        "(being returned to the pool), quarantined (could not be cleaned, or presented a foreign host key: "
        "out of the pool, see the Ready condition), or error (see lastError and conditions).",
        default=None,
    )
    powerState: PowerStateName | None = api_field("Power as last read from the BMC.", default=None)
    lastError: HostError | None = api_field(
        "The last failure; cleared when the host is healthy again.", default=None
    )
    errorCount: int | None = api_field("Consecutive failed BMC operations.", default=None, minimum=0)
    lastPowerOperation: PowerOperation | None = api_field("The last power change made.", default=None)
    lastPolled: Timestamp | None = api_field(
        "When a successful BMC read last changed this status (reads that change nothing are not written, "
        "so an idle inventory costs no API writes).",
        default=None,
    )
    credentialsVersion: str | None = api_field(
        "resourceVersion of the credentials Secret last accepted by the BMC.", default=None, max_length=64
    )
    warm: bool | None = api_field(
        "True while the free host is kept booted and SSH-verified for a warm pool.", default=None
    )
    conditions: list[Condition] | None = api_field(
        "Ready, BMCReachable, CredentialsValid.",
        default=None,
        max_items=32,
        list_type="map",
        list_map_keys=("type",),
    )


# ==================================================================================== BareMetalMachine


@dataclass(kw_only=True)
class LabelSelectorRequirement:
    """One label condition on hosts."""

    key: str = api_field("Host label key.", min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = api_field("How the key relates to values.")
    values: list[str] | None = api_field(
        "Values for In/NotIn; must be empty for Exists/DoesNotExist.", default=None, max_items=64
    )


@api_type(
    cel=(
        Cel(
            "!has(self.matchExpressions) || self.matchExpressions.all(e, "
            "(e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))",
            "In/NotIn need values; Exists/DoesNotExist take none",
        ),
    )
)
@dataclass(kw_only=True)
class HostSelector:
    """Which hosts, by label, may serve the machine (AND of all terms; an empty selector matches all)."""

    matchLabels: dict[str, str] | None = api_field(
        "Labels the host must carry with these values.", default=None
    )
    matchExpressions: list[LabelSelectorRequirement] | None = api_field(
        "Label conditions the host must meet.", default=None, max_items=32
    )


@dataclass(kw_only=True)
class DiskRequirement:
    """At least one disk of the host must meet this."""

    type: DiskType | None = api_field("Disk type wanted; any when unset.", default=None)
    minSize: Quantity | None = api_field("Smallest acceptable disk.", default=None, cel=(_POSITIVE_QUANTITY,))


@dataclass(kw_only=True)
class HardwareRequirements:
    """Minimum hardware for the machine; among hosts that qualify the one with least excess is chosen."""

    minCPUCores: int | None = api_field("Fewest CPU cores.", default=None, minimum=1)
    minMemory: Quantity | None = api_field(
        "Least memory, e.g. 32Gi.", default=None, cel=(_POSITIVE_QUANTITY,)
    )
    architecture: Architecture | None = api_field("Required CPU architecture.", default=None)
    disk: DiskRequirement | None = api_field("A disk the host must have.", default=None)


@dataclass(kw_only=True)
class BareMetalMachineSpec:
    """Desired state of a machine: which host may serve it and how to return the host afterwards."""

    providerID: str | None = api_field(
        "Set by the provider once provisioned: baremetal://<namespace>/<host>/<machine uid>. The kubelet "
        "registers with it, so CAPI can match the Node.",
        default=None,
        min_length=1,
        max_length=512,
    )
    hostSelector: HostSelector | None = api_field("Label selector over BareMetalHosts.", default=None)
    requirements: HardwareRequirements | None = api_field("Minimum hardware.", default=None)
    cleaning: Literal["none", "metadata"] = api_field(
        "What to erase when the host is released: `metadata` wipes partition tables and filesystem "
        "signatures of every data disk (wipefs; all disks but the first, which holds the operating system) "
        "so the next user starts clean; `none` keeps disk contents. Either way the node leaves its cluster "
        "(kubeadm reset) and the bootstrap seed, which holds a join token, is deleted.",
        default="metadata",
    )
    seedTemplatesRef: LocalObjectRef | None = api_field(
        "A ConfigMap with keys `user-data`, `meta-data` and/or `network-config` holding Jinja2 templates "
        "that replace the built-in NoCloud seed templates (see docs/seed-templates.md).",
        default=None,
    )


@dataclass(kw_only=True)
class MachineAddress:
    """An address of the machine (CAPI MachineAddress)."""

    type: Literal["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"] = api_field("Kind.")
    address: str = api_field("The address.", min_length=1, max_length=256)


@dataclass(kw_only=True)
class Initialization:
    """CAPI v1beta2 contract: provisioning is complete."""

    provisioned: bool | None = api_field("True once the infrastructure is ready.", default=None)


@dataclass(kw_only=True)
class ProvisioningStep:
    """One step of provisioning or deprovisioning, with timestamps (most recent run of each step)."""

    name: str = api_field("Step name, e.g. PowerOn, WaitForSSH, DeliverSeed, Bootstrap.", max_length=64)
    startedAt: Timestamp = api_field("When it started.")
    finishedAt: Timestamp | None = api_field("When it finished; empty while running.", default=None)
    message: str | None = api_field("Outcome or progress.", default=None, max_length=1024)


@dataclass(kw_only=True)
class HostRef:
    """The host serving the machine."""

    name: str = api_field("BareMetalHost name (same namespace).", max_length=253)


@dataclass(kw_only=True)
class BareMetalMachineStatus:
    """Observed state of the machine."""

    initialization: Initialization | None = api_field("Contract: provisioning done.", default=None)
    addresses: list[MachineAddress] | None = api_field("Addresses of the host.", default=None, max_items=32)
    failureDomain: str | None = api_field("Failure domain of the chosen host.", default=None, max_length=256)
    host: HostRef | None = api_field("The claimed host.", default=None)
    phase: str | None = api_field(
        "Short summary for kubectl: WaitingForHost, Provisioning, Provisioned, Deprovisioning, Failed.",
        default=None,
        max_length=64,
    )
    steps: list[ProvisioningStep] | None = api_field(
        "Provisioning steps with timestamps.", default=None, max_items=32
    )
    conditions: list[Condition] | None = api_field(
        "Ready (mirrored by CAPI into the Machine's InfrastructureReady), HostClaimed, Provisioned, Paused.",
        default=None,
        max_items=32,
        list_type="map",
        list_map_keys=("type",),
    )


# ================================================================================== templates, cluster


@dataclass(kw_only=True)
class BareMetalMachineTemplateResource:
    """What each BareMetalMachine created from the template gets."""

    metadata: ObjectMeta | None = api_field("Labels/annotations for the machines.", default=None)
    spec: BareMetalMachineSpec = api_field("Spec of the machines.")


@dataclass(kw_only=True)
class WarmPool:
    """Keep some matching free hosts booted so scale-ups skip the boot."""

    size: int = api_field(
        "How many free hosts matching this template to keep powered on, booted and SSH-verified. Other free "
        "hosts follow their spec.online.",
        default=0,
        minimum=0,
        maximum=1000,
    )


@dataclass(kw_only=True)
class BareMetalMachineTemplateSpec:
    """Template for the machines of a MachineDeployment or control plane."""

    template: BareMetalMachineTemplateResource = api_field("The machine template.")
    warmPool: WarmPool | None = api_field("Warm pool for this template's matching hosts.", default=None)


@dataclass(kw_only=True)
class NodeInfo:
    """What a node made from this template will report (scale-from-zero)."""

    architecture: Architecture | None = api_field("CPU architecture.", default=None)
    operatingSystem: str | None = api_field("Operating system (linux).", default=None, max_length=64)


@dataclass(kw_only=True)
class BareMetalMachineTemplateStatus:
    """Computed from free hosts that match the template (cluster-autoscaler reads capacity/nodeInfo)."""

    capacity: dict[str, Quantity] | None = api_field(
        "Resources of the host the best-fit choice would pick next: cpu, memory, ephemeral-storage, "
        "extended resources.",
        default=None,
    )
    nodeInfo: NodeInfo | None = api_field("Node info of that host.", default=None)
    matchingHosts: int | None = api_field("Free hosts matching the template now.", default=None, minimum=0)
    warmHosts: int | None = api_field("Matching free hosts kept warm now.", default=None, minimum=0)
    conditions: list[Condition] | None = api_field(
        "Conditions.", default=None, max_items=32, list_type="map", list_map_keys=("type",)
    )


@dataclass(kw_only=True)
class APIEndpoint:
    """Where the workload cluster's API server is reached."""

    host: str = api_field(
        "DNS name or IP (a kube-vip VIP in the default flavor).", min_length=1, max_length=512
    )
    port: int = api_field("Port.", minimum=1, maximum=65535)


@dataclass(kw_only=True)
class FailureDomain:
    """A failure domain hosts can be labelled with (`infrastructure.cluster.x-k8s.io/failure-domain`)."""

    name: str = api_field("Name; matches the host label value.", min_length=1, max_length=256)
    controlPlane: bool | None = api_field("Whether control-plane machines may go here.", default=None)
    attributes: dict[str, str] | None = api_field("Free-form attributes.", default=None)


@dataclass(kw_only=True)
class BareMetalClusterSpec:
    """Desired state of the cluster's bare-metal infrastructure."""

    controlPlaneEndpoint: APIEndpoint | None = api_field("The control plane endpoint.", default=None)
    failureDomains: list[FailureDomain] | None = api_field(
        "Failure domains offered to CAPI (copied to status).", default=None, max_items=100
    )


@dataclass(kw_only=True)
class BareMetalClusterStatus:
    """Observed state."""

    initialization: Initialization | None = api_field("Contract: infrastructure ready.", default=None)
    failureDomains: list[FailureDomain] | None = api_field("Failure domains.", default=None, max_items=100)
    conditions: list[Condition] | None = api_field(
        "Ready, Paused.", default=None, max_items=32, list_type="map", list_map_keys=("type",)
    )


@dataclass(kw_only=True)
class BareMetalClusterTemplateResource:
    """What clusters created from the template get."""

    metadata: ObjectMeta | None = api_field("Labels/annotations.", default=None)
    spec: BareMetalClusterSpec = api_field("Cluster spec.")


@dataclass(kw_only=True)
class BareMetalClusterTemplateSpec:
    """ClusterClass template for BareMetalCluster."""

    template: BareMetalClusterTemplateResource = api_field("The cluster template.")


__all__ = ["FreeForm"]
