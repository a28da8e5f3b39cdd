#!/usr/bin/env bash
# Debian packages the lab needs: ipmitool/freeipmi (independent IPMI clients that prove the virtual BMCs
# speak real IPMI) and OpenSSH's sshd (one real sshd per powered-on lab host); for image provisioning:
# QEMU with the iPXE NIC ROMs (firmware-booting lab VMs), iPXE binaries and dnsmasq (the boot server's
# optional proxy-DHCP/TFTP mode), and the tools the ramdisk and small-OS builds run on image files
# (sfdisk, mkfs.vfat, mtools, syslinux: all work on plain files, no loop device or mount). No-op when present.
set -euo pipefail
need=()
command -v ipmitool >/dev/null || need+=(ipmitool)
command -v ipmi-power >/dev/null || need+=(freeipmi-tools)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v busybox >/dev/null || need+=(busybox-static) # the lab VMs' guestfwd runs `busybox nc`
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || need+=(ipxe-qemu)
[ -e /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v sfdisk >/dev/null || [ -x /usr/sbin/sfdisk ] || [ -x /sbin/sfdisk ] || need+=(fdisk)
command -v mkfs.vfat >/dev/null || [ -x /usr/sbin/mkfs.vfat ] || [ -x /sbin/mkfs.vfat ] || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v syslinux >/dev/null || need+=(syslinux)
[ -e /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[install-system-deps] installing ${need[*]}" >&2
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
# policy-rc.d keeps the package from starting a system sshd: the lab runs its own per host.
$SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
  { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
$SUDO rm -f /usr/sbin/policy-rc.d
