"""The optional proxy-DHCP mode: the dnsmasq it generates is one dnsmasq accepts, its TFTP root has what
PXE ROMs and iPXE fetch, and a real PXE client (QEMU's iPXE ROM) on a lab network whose own DHCP server
knows nothing about network boot gets its address from that server and the chain script from the proxy."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.procs import _die_with_parent

from capi_provider.bootserver.dhcp import DnsmasqProxy, ProxyDhcp, prepare_tftp_root, proxy_config


def test_dnsmasq_accepts_the_generated_config(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(proxy_config(ProxyDhcp("10.20.0.0/16", tmp_path / "tftp", "eth7")))
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "syntax check OK" in out.stderr, out.stderr


def test_tftp_root_has_ipxe_and_the_chain_script(tmp_path: Path) -> None:
    prepare_tftp_root(tmp_path, "http://boot.example:8080/")
    assert (tmp_path / "undionly.kpxe").stat().st_size > 10_000
    assert (tmp_path / "ipxe.efi").stat().st_size > 10_000
    assert (tmp_path / "boot.ipxe").read_text() == (
        "#!ipxe\nchain --autofree http://boot.example:8080/ipxe/${netX/mac:hexhyp}\n"
    )


# -- a real PXE client (QEMU's iPXE ROM) on a lab network with a rack DHCP server and our proxy ---------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pxe_lan() -> Iterator[str]:
    """Three lab network namespaces: <p>R (the rack's DHCP server, 10.99.0.1), <p>B (our proxy, 10.99.0.2)
    and <p>L (a bridge, and the tap of the PXE client). Nothing is connected to the host's network."""
    p = f"capbm{uuid.uuid4().hex[:6]}"
    try:
        for n in "RBL":
            _ip("netns", "add", p + n)
        _ip("-n", p + "L", "link", "add", "br0", "type", "bridge")
        _ip("-n", p + "L", "link", "set", "br0", "up")
        for side, addr in (("R", "10.99.0.1/24"), ("B", "10.99.0.2/24")):
            _ip("link", "add", f"{p}{side}0", "netns", p + side, "type", "veth", "peer", "name", f"{side}1",
                "netns", p + "L")  # fmt: skip
            _ip("-n", p + side, "addr", "add", addr, "dev", f"{p}{side}0")
            _ip("-n", p + side, "link", "set", f"{p}{side}0", "up")
            _ip("-n", p + "L", "link", "set", f"{side}1", "master", "br0")
            _ip("-n", p + "L", "link", "set", f"{side}1", "up")
        _ip("-n", p + "L", "tuntap", "add", "tap0", "mode", "tap")
        _ip("-n", p + "L", "link", "set", "tap0", "master", "br0")
        _ip("-n", p + "L", "link", "set", "tap0", "up")
        yield p
    finally:
        for n in "RBL":
            subprocess.run(["ip", "netns", "del", p + n], capture_output=True, check=False)


def test_a_pxe_client_gets_its_address_from_the_rack_and_the_chain_script_from_the_proxy(
    pxe_lan: str,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="capbm-proxy-"))
    work.chmod(0o755)  # dnsmasq serves TFTP as nobody
    rack_log = work / "rack.log"
    rack = subprocess.Popen(
        ["ip", "netns", "exec", pxe_lan + "R", "dnsmasq", "--no-daemon", "--port=0",
         f"--interface={pxe_lan}R0", "--bind-interfaces",
         "--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h",
         f"--dhcp-leasefile={work / 'leases'}", "--log-dhcp", "--log-facility=-", "--pid-file="],
        stdout=subprocess.DEVNULL, stderr=rack_log.open("wb"), preexec_fn=_die_with_parent,
    )  # fmt: skip
    proxy = DnsmasqProxy(
        ProxyDhcp("10.99.0.0/24", work / "tftp", interface=f"{pxe_lan}B0"),
        "http://10.99.0.2:8080",
        work,
        # setpriv: the proxy dies with this process even if the test is killed
        wrapper=("setpriv", "--pdeathsig", "KILL", "ip", "netns", "exec", pxe_lan + "B"),
    )
    mac = "52:54:00:99:00:07"
    vm: subprocess.Popen[bytes] | None = None

    loop = asyncio.new_event_loop()  # one loop for the child process's whole life
    loop.run_until_complete(proxy.start())
    try:
        vm = subprocess.Popen(
            ["ip", "netns", "exec", pxe_lan + "L", "qemu-system-x86_64", "-machine", "pc,accel=tcg",
             "-m", "64", "-nodefaults", "-no-user-config", "-display", "none",
             "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "boot.ipxe" not in proxy.log.read_text(errors="replace"):
            assert vm.poll() is None and rack.poll() is None
            time.sleep(1)
        rack_text, proxy_text = rack_log.read_text(errors="replace"), proxy.log.read_text(errors="replace")
        # The rack's server leased the address; our proxy leased nothing and pointed iPXE at the chain script.
        assert re.search(rf"DHCPACK\({pxe_lan}R0\) 10\.99\.0\.1\d\d {mac}", rack_text), rack_text
        assert "DHCPACK" not in proxy_text
        assert re.search(r"sent \S+/tftp/boot\.ipxe to 10\.99\.0\.1\d\d", proxy_text), proxy_text
        assert "chain --autofree http://10.99.0.2:8080/ipxe/" in (work / "tftp" / "boot.ipxe").read_text()
    finally:
        if vm is not None:
            vm.kill()
            vm.wait()
        rack.terminate()
        rack.wait(10)
        try:
            loop.run_until_complete(proxy.stop())
        finally:
            loop.close()
            shutil.rmtree(work, ignore_errors=True)
