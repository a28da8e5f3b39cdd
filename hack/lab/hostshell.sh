#!/bin/sh
# The shell of a simulated lab host: sshd runs every session through this (ForceCommand, see host.py).
#
#   hostshell.sh <host root> <python> <pythonpath> <stand-ins bin dir> <private path>...
#
# Several lab hosts share one machine, so each session gets its own mount and UTS namespace in which the
# host's private directories (<host root>/<path>) are bind-mounted over the given paths (host.py's
# HOST_PATHS: the ones provisioning touches).
# /dev is replaced too: disks are image files under <host root>/dev, so a "wipe" over SSH can never reach
# a real disk of the machine running the lab. Then $SSH_ORIGINAL_COMMAND runs with bash (or an interactive
# bash without one); stdin/stdout/stderr and the exit code pass straight through (everything is exec'd).
set -eu

if [ "${1:-}" != "--in-namespace" ]; then
	exec unshare --mount --uts --propagation private -- /bin/sh "$0" --in-namespace "$@"
fi
shift
root=$1 python=$2 pythonpath=$3 bindir=$4
shift 4

for d in "$@"; do
	mkdir -p "$root$d" "$d"
	mount --bind "$root$d" "$d"
done
[ -e "$root/etc/hostname" ] || echo lab-host >"$root/etc/hostname"
mount --bind "$root/etc/hostname" /etc/hostname

# /dev: the host's disk images plus the character devices a shell needs.
dev=$root/dev
mkdir -p "$dev/pts" "$dev/shm"
for n in null zero full random urandom tty ptmx; do
	[ -e "$dev/$n" ] || : >"$dev/$n"
	mount --bind "/dev/$n" "$dev/$n"
done
mount --bind /dev/pts "$dev/pts"
mount --bind /dev/shm "$dev/shm"
ln -sfn /proc/self/fd "$dev/fd"
ln -sfn /proc/self/fd/0 "$dev/stdin"
ln -sfn /proc/self/fd/1 "$dev/stdout"
ln -sfn /proc/self/fd/2 "$dev/stderr"
mount --rbind "$dev" /dev

hostname "$(head -n 1 /etc/hostname)"
export PATH="$bindir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PYTHONPATH="$pythonpath" LAB_PYTHON="$python"
# Every process of this host inherits the tag, so power off also finds the ones that daemonized.
export LAB_HOST_ROOT="$root"
if [ -n "${SSH_ORIGINAL_COMMAND:-}" ]; then
	exec bash -c "$SSH_ORIGINAL_COMMAND"
fi
exec bash
