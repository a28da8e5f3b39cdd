"""The optional proxy-DHCP mode: the dnsmasq it generates is one dnsmasq accepts, and its TFTP root has
what PXE ROMs and iPXE fetch."""

from __future__ import annotations

import subprocess
from pathlib import Path

from capi_provider.bootserver.dhcp import ProxyDhcp, prepare_tftp_root, proxy_config


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
