"""`make bench-imaging`: per-step times of image provisioning in the network-boot lab, measured in one run
and printed (never asserted): power on → iPXE script → agent up → inspected, image write and its
throughput, read-back verify, config drive, power cycle → small OS → seed consumed, and cleaning.

One QEMU machine (TCG unless KVM works here), the provider's boot server, the provider's IPMI driver
against the lab's virtual BMC. With --workdir the lab is kept and the results also go to
<workdir>/bench-imaging.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from lab.netboot import NetbootLab
from lab.smallos.build import ensure as build_smallos

from capi_provider.bmc.address import parse_bmc_address
from capi_provider.bmc.base import BmcCredentials, BootDevice, PowerState, open_driver
from capi_provider.bootserver import (
    AgentUp,
    Clean,
    Cleaned,
    ImageSpec,
    Inspect,
    Inspected,
    Provision,
    Provisioned,
    RootDeviceHints,
    ScriptFetched,
    Seed,
    parse_checksum,
)


def say(msg: str) -> None:
    print(f"[bench-imaging {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary directory, removed)")
    p.add_argument("--timeout", type=float, default=600)
    cfg = p.parse_args()
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="capbm-bench-imaging-"))
    workdir.mkdir(parents=True, exist_ok=True)
    smallos = build_smallos()
    lab = NetbootLab(workdir)
    out: dict[str, float | str] = {"accelerator": lab.accel}
    try:
        m = lab.add_machine("bench-0")
        drv = open_driver(
            parse_bmc_address(m.bmc.address),
            BmcCredentials(m.username, m.password),
            verify_tls=False,
            timeout=30,
        )
        server, t = lab.server, cfg.timeout

        say("power on (pxe) -> inspection")
        ticket = lab.call(server.expect(m.mac, Inspect()))
        drv.set_boot_device(BootDevice.PXE)
        t0 = time.monotonic()
        drv.set_power(PowerState.ON)
        fetched = lab.call(server.wait_for(ticket, ScriptFetched, t))
        up = lab.call(server.wait_for(ticket, AgentUp, t))
        inspected = lab.call(server.wait_for(ticket, Inspected, t))
        out["power on -> iPXE script (s)"] = fetched.at - t0
        out["power on -> agent up (s)"] = up.at - t0
        out["inspect (s)"] = inspected.seconds

        say("provision the small OS")
        iid = f"i-{uuid.uuid4().hex[:8]}"
        seed = Seed({"meta-data": f"instance-id: {iid}\n".encode()})
        os_disk = next(d for d in m.vm.spec.disks if d.name == "os")
        job = Provision(
            ImageSpec(smallos.image.as_uri(), parse_checksum("sha256:" + smallos.sha256)),
            RootDeviceHints(serial_number=os_disk.serial),
            seed,
        )
        t1 = time.monotonic()
        ticket = lab.call(server.submit(m.mac, job))
        done = lab.call(server.wait_for(ticket, Provisioned, t))
        out["provision job, submit -> provisioned (s)"] = done.at - t1
        out["image (MiB)"] = done.bytes / (1 << 20)
        out["image write (s)"] = done.write_seconds
        out["image write throughput (MB/s)"] = (
            done.bytes / 1e6 / done.write_seconds if done.write_seconds else 0
        )
        out["read-back verify (s)"] = done.verify_seconds
        out["config drive (s)"] = done.configdrive_seconds

        say("boot from disk until the seed is consumed")
        drv.set_boot_device(BootDevice.DISK)
        mark = len(m.vm.console())
        t2 = time.monotonic()
        drv.power_cycle()
        booted = None
        deadline = t2 + t
        while time.monotonic() < deadline:
            text = m.vm.console()[mark:]
            if booted is None and "CAPBM-SMALLOS booted" in text:
                booted = time.monotonic()
            if f"CAPBM-SEED instance-id={iid}" in text:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError("the small OS did not report the seed")
        out["power cycle -> first boot of the image (s)"] = (booted or time.monotonic()) - t2
        out["power cycle -> seed consumed (s)"] = time.monotonic() - t2

        say("network boot again and clean (metadata)")
        ticket = lab.call(server.expect(m.mac, Clean("metadata")))
        drv.set_boot_device(BootDevice.PXE)
        t3 = time.monotonic()
        drv.power_cycle()
        cleaned = lab.call(server.wait_for(ticket, Cleaned, t))
        out["power cycle -> disks cleaned, metadata (s)"] = cleaned.at - t3
        out["clean metadata in the agent (s)"] = cleaned.seconds
        drv.set_power(PowerState.OFF)
    finally:
        lab.stop()
    width = max(len(k) for k in out)
    print("\nimage provisioning in the lab (one run):")
    for k, v in out.items():
        print(f"  {k:<{width}}  {v:.2f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    if cfg.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        (workdir / "bench-imaging.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
