"""BMC access: address parsing, the blocking drivers (IPMI, Redfish) and the async runner for the controller.

Importing this package does not import pyghmi; the drivers load it on first use.
"""

from capi_provider.bmc.address import BMC_ADDRESS_PATTERN, BmcAddress, parse_bmc_address
from capi_provider.bmc.base import (
    BmcCredentials,
    BmcDriver,
    BmcError,
    BmcErrorReason,
    BootDevice,
    PowerState,
    open_driver,
)

__all__ = [
    "BMC_ADDRESS_PATTERN",
    "BmcAddress",
    "BmcCredentials",
    "BmcDriver",
    "BmcError",
    "BmcErrorReason",
    "BootDevice",
    "PowerState",
    "open_driver",
    "parse_bmc_address",
]
