#!/usr/bin/env bash
# Debian packages the lab needs: ipmitool/freeipmi (independent IPMI clients that prove the virtual BMCs
# speak real IPMI) and OpenSSH's sshd (one real sshd per powered-on lab host). No-op when present.
set -euo pipefail
need=()
command -v ipmitool >/dev/null || need+=(ipmitool)
command -v ipmi-power >/dev/null || need+=(freeipmi-tools)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[install-system-deps] installing ${need[*]}" >&2
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
# policy-rc.d keeps the package from starting a system sshd: the lab runs its own per host.
$SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
  { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
$SUDO rm -f /usr/sbin/policy-rc.d
