"""The boot server: network boot (iPXE), the deploy ramdisk and its agent, images, and agent reports.

The image-provisioning backend of the controller drives it through `BootServer` (server.py); the pure
decisions it relies on live in their own modules: root device hints (hints.py), checksums (checksum.py),
tokens (tokens.py), report parsing (inventory.py), iPXE scripts (ipxe.py), proxy-DHCP config (dhcp.py).
"""

from capi_provider.bootserver.checksum import Checksum, parse_checksum
from capi_provider.bootserver.model import (
    AgentUp,
    Clean,
    Cleaned,
    Disk,
    Event,
    Failed,
    Hardware,
    ImageSpec,
    Inspect,
    Inspected,
    Nic,
    Provision,
    Provisioned,
    RootDeviceHints,
    ScriptFetched,
    Seed,
    StepReport,
)
from capi_provider.bootserver.server import (
    AgentFailed,
    AgentTimeout,
    BootServer,
    BootServerConfig,
    NoAgent,
    Ticket,
)

__all__ = [
    "AgentFailed",
    "AgentTimeout",
    "AgentUp",
    "BootServer",
    "BootServerConfig",
    "Checksum",
    "Clean",
    "Cleaned",
    "Disk",
    "Event",
    "Failed",
    "Hardware",
    "ImageSpec",
    "Inspect",
    "Inspected",
    "Nic",
    "NoAgent",
    "Provision",
    "Provisioned",
    "RootDeviceHints",
    "ScriptFetched",
    "Seed",
    "StepReport",
    "Ticket",
    "parse_checksum",
]
