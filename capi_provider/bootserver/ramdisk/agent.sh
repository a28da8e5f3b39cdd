#!/bin/sh
# The deploy agent: runs in the ramdisk, talks only to the boot server that booted it, with the one-time
# token the boot server put into this boot's initramfs (/etc/capbm/token). Protocol (all plain text,
# key=value lines, token in an Authorization header, never on a command line of the boot server's side):
#   POST /v1/agent/hello                  this agent is up
#   GET  /v1/agent/next                   long poll: job=wait | inspect | provision | clean, and its fields
#   POST /v1/agent/report                 job_id=, event=step|inspected|provisioned|cleaned|failed, fields
#   GET  /v1/agent/image/<job_id>         the image of a provision job (checksum-verified by the server)
#   GET  /v1/agent/seed/<job_id>/<file>   the NoCloud seed files of a provision job
# Disks are chosen by the boot server from this agent's inventory (root device hints); the job names the
# disk by its by-path and serial, and the agent resolves that to a kernel name here and now: a kernel name
# is never carried between boots or trusted from the job.
# Never printed: the token and the seed contents.
set -u
URL=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^capbm.url=//p' | tail -n 1)
TOKEN=$(cat /etc/capbm/token 2>/dev/null)
CD_SECTORS=65536 # the cidata config drive partition: 32 MiB at the end of the root disk
umask 077
mkdir -p /tmp/capbm
cd /tmp/capbm || exit 1

log() { echo "capbm-agent: $*" >/dev/console; }
now() { cut -d' ' -f1 /proc/uptime; }
oneline() { printf '%s' "$*" | tr '\n\r\t' '   ' | cut -c1-400; }
val() { [ -r "$1" ] && tr -d '\0\r' <"$1" 2>/dev/null | tr '\n' ' ' | sed 's/^ *//; s/ *$//'; }

# busybox 1.35's wget crashes with -T: bounded with the timeout applet instead.
api() { # api PATH [POSTFILE]: body on stdout, non-zero on any failure
  if [ $# -gt 1 ]; then
    timeout 60 wget -q -O - --header "Authorization: Bearer $TOKEN" --header "Content-Type: text/plain" \
      --post-file "$2" "$URL$1"
  else
    timeout 60 wget -q -O - --header "Authorization: Bearer $TOKEN" "$URL$1"
  fi
}

send() { # send FILE: a report, retried; reports are idempotent on the server side
  n=0
  while [ $n -lt 10 ]; do
    api /v1/agent/report "$1" >/dev/null && return 0
    n=$((n + 1))
    sleep 2
  done
  log "could not deliver a report"
  return 1
}

step() { # step JOB_ID STEP STATE [key=value ...]
  f=step.$$
  { echo "job_id=$1"; echo "event=step"; echo "step=$2"; echo "state=$3"; echo "uptime=$(now)"
    shift 3; for kv in "$@"; do oneline "$kv"; echo; done; } >"$f"
  send "$f"
}

fail() { # fail JOB_ID STEP REASON MESSAGE
  log "job failed at $2: $3: $4"
  f=fail.$$
  { echo "job_id=$1"; echo "event=failed"; echo "step=$2"; echo "reason=$3"
    echo "message=$(oneline "$4")"; echo "uptime=$(now)"; } >"$f"
  send "$f"
}

job() { sed -n "s/^$1=//p" job | head -n 1; }

# -- inventory ------------------------------------------------------------------------------------------

disks() {
  for b in /sys/block/*; do
    d=${b##*/}
    case $d in loop* | ram* | zram* | sr* | fd* | dm-* | md* | nbd*) continue ;; esac
    [ -e "$b/device" ] || continue
    echo "$d"
  done
}

pci_of() { echo "$1" | tr '/' '\n' | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | tail -n 1; }

by_path() { # the udev-style /dev/disk/by-path name of a disk (no udev in the ramdisk: computed from sysfs)
  p=$(readlink -f "/sys/block/$1/device")
  pci=$(pci_of "$p")
  [ -n "$pci" ] || return 0
  case $1 in
    nvme*) echo "pci-$pci-nvme-$(cat "/sys/block/$1/nsid" 2>/dev/null || echo 1)"; return 0 ;;
    vd*) echo "pci-$pci"; return 0 ;;
  esac
  ata=$(echo "$p" | tr '/' '\n' | grep -E '^ata[0-9]+$' | head -n 1)
  if [ -n "$ata" ]; then echo "pci-$pci-ata-${ata#ata}"; return 0; fi
  hctl=${p##*/}
  if echo "$hctl" | grep -qE '^[0-9]+:[0-9]+:[0-9]+:[0-9]+$'; then
    pcidir=$(echo "$p" | sed "s#\(.*/$pci\)/.*#\1#")
    base=$(find "$pcidir" -maxdepth 3 -type d -name 'host[0-9]*' | sed 's#.*/host##' | sort -n | head -n 1)
    echo "pci-$pci-scsi-$((${hctl%%:*} - ${base:-0})):${hctl#*:}"
  else
    echo "pci-$pci"
  fi
}

serial_of() {
  b=/sys/block/$1
  for f in "$b/serial" "$b/device/serial"; do
    [ -r "$f" ] && { val "$f"; return 0; }
  done
  if [ -r "$b/device/vpd_pg80" ]; then # SCSI unit serial number page: 4-byte header, then the serial
    dd if="$b/device/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\0\r\n' | sed 's/^ *//; s/ *$//'
  fi
}

wwn_of() { # the NAA world wide name as udev writes it (0x...), from the kernel's SCSI/NVMe wwid
  w=$(val "/sys/block/$1/device/wwid" 2>/dev/null)
  [ -n "$w" ] || w=$(val "/sys/block/$1/wwid" 2>/dev/null)
  case $w in naa.*) echo "0x${w#naa.}" ;; *) echo "" ;; esac
}

wwid_of() {
  w=$(val "/sys/block/$1/device/wwid" 2>/dev/null)
  [ -n "$w" ] || w=$(val "/sys/block/$1/wwid" 2>/dev/null)
  echo "$w"
}

dmi_memory_mib() { # sum of the SMBIOS type-17 memory devices (physical memory, unlike MemTotal)
  total=0
  for e in /sys/firmware/dmi/entries/17-*; do
    [ -r "$e/raw" ] || continue
    sz=$(od -An -tu2 -j12 -N2 "$e/raw" | tr -d ' ')
    case $sz in
      "" | 0 | 65535) continue ;;
      32767) sz=$(od -An -tu4 -j28 -N4 "$e/raw" | tr -d ' ') ;;
      *) [ $((sz & 32768)) -ne 0 ] && sz=$(((sz & 32767) / 1024)) ;;
    esac
    total=$((total + sz))
  done
  echo "$total"
}

inventory() {
  echo "system.vendor=$(val /sys/class/dmi/id/sys_vendor)"
  echo "system.product=$(val /sys/class/dmi/id/product_name)"
  echo "system.serial=$(val /sys/class/dmi/id/product_serial)"
  echo "system.uuid=$(val /sys/class/dmi/id/product_uuid)"
  echo "cpu.arch=$(uname -m)"
  echo "cpu.count=$(grep -c '^processor' /proc/cpuinfo)"
  echo "cpu.model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "memory.total_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
  echo "memory.physical_mib=$(dmi_memory_mib)"
  i=0
  for d in $(disks); do
    b=/sys/block/$d
    echo "disk.$i.name=$d"
    echo "disk.$i.size_bytes=$(($(cat "$b/size") * 512))"
    echo "disk.$i.rotational=$(val "$b/queue/rotational")"
    echo "disk.$i.removable=$(val "$b/removable")"
    echo "disk.$i.model=$(val "$b/device/model")"
    echo "disk.$i.vendor=$(val "$b/device/vendor")"
    echo "disk.$i.serial=$(serial_of "$d")"
    echo "disk.$i.wwn=$(wwn_of "$d")"
    echo "disk.$i.wwid=$(wwid_of "$d")"
    echo "disk.$i.by_path=$(by_path "$d")"
    i=$((i + 1))
  done
  i=0
  for n in /sys/class/net/*; do
    name=${n##*/}
    [ -e "$n/device" ] || continue # loopback, bridges, tunnels: not hardware
    echo "nic.$i.name=$name"
    echo "nic.$i.mac=$(val "$n/address")"
    echo "nic.$i.speed_mbps=$(cat "$n/speed" 2>/dev/null || echo -1)"
    echo "nic.$i.link=$(cat "$n/carrier" 2>/dev/null || echo 0)"
    echo "nic.$i.driver=$(basename "$(readlink "$n/device/driver")" 2>/dev/null)"
    echo "nic.$i.pci=$(pci_of "$(readlink -f "$n/device")")"
    i=$((i + 1))
  done
}

do_inspect() {
  id=$(job job_id)
  step "$id" inspect started
  t0=$(now)
  { echo "job_id=$id"; echo "event=inspected"; echo "next=poweroff"; inventory
    echo "seconds=$(awk "BEGIN{print $(now) - $t0}")"; } >inventory.txt
  send inventory.txt && log "inventory reported"
}

# -- provisioning --------------------------------------------------------------------------------------

resolve_disk() { # resolve_disk BY_PATH SERIAL: the kernel name of the one disk with both, now
  found=""
  for d in $(disks); do
    [ "$(by_path "$d")" = "$1" ] || continue
    [ -z "$2" ] || [ "$(serial_of "$d")" = "$2" ] || continue
    found="$found $d"
  done
  set -- $found
  [ $# -eq 1 ] && echo "$1"
}

zap_head_and_tail() { # make a disk unbootable and unrecognisable: zero its first and last MiB
  dev=/dev/$1
  secs=$(cat "/sys/block/$1/size")
  dd if=/dev/zero of="$dev" bs=1M count=1 conv=fsync 2>/dev/null
  [ "$secs" -gt 4096 ] && dd if=/dev/zero of="$dev" bs=512 seek=$((secs - 2048)) count=2048 conv=fsync 2>/dev/null
  blockdev --rereadpt "$dev" 2>/dev/null
  return 0
}

config_drive() { # config_drive JOB_ID DISK IMAGE_BYTES: a cidata partition at the end of DISK with the seed
  id=$1 d=$2 image_bytes=$3 dev=/dev/$2
  label=$(sfdisk --dump "$dev" 2>/dev/null | sed -n 's/^label: //p')
  case $label in
    gpt) sfdisk --relocate gpt-bak-std "$dev" >/dev/null 2>&1 || { echo "cannot move the GPT backup header to the end of the disk"; return 1; }
      reserve=34 ;;
    dos) reserve=0 ;;
    *) echo "the image has no partition table (MBR or GPT) to add the config drive partition to"; return 1 ;;
  esac
  total=$(cat "/sys/block/$d/size")
  start=$((((total - reserve - CD_SECTORS) / 2048) * 2048))
  if [ $((start * 512)) -lt "$image_bytes" ]; then
    echo "the disk has no room after the image for the 32 MiB config drive"
    return 1
  fi
  out=$(echo "start=$start, size=$CD_SECTORS, type=L" | sfdisk --append --no-reread --no-tell-kernel -q "$dev" 2>&1) || {
    echo "sfdisk could not add the config drive partition: $out"; return 1; }
  blockdev --rereadpt "$dev" || { echo "the kernel did not re-read the partition table"; return 1; }
  part=""
  i=0
  while [ -z "$part" ] && [ $i -lt 50 ]; do
    for p in /sys/block/"$d"/"$d"*; do
      [ "$(cat "$p/start" 2>/dev/null)" = "$start" ] && part=${p##*/}
    done
    [ -n "$part" ] && [ -b "/dev/$part" ] || { part=""; sleep 0.1; i=$((i + 1)); }
  done
  [ -n "$part" ] || { echo "the config drive partition did not appear"; return 1; }
  rm -rf seed && mkdir seed
  for f in $(job seed_files); do
    api "/v1/agent/seed/$id/$f" >"seed/$f" || { echo "could not fetch seed file $f"; rm -rf seed; return 1; }
  done
  out=$(mkfs.fat -n CIDATA "/dev/$part" 2>&1) || { echo "mkfs.fat failed: $out"; rm -rf seed; return 1; }
  mount -t vfat "/dev/$part" /mnt || { echo "cannot mount the config drive"; rm -rf seed; return 1; }
  cp seed/* /mnt/ && sync
  ok=$?
  umount /mnt
  rm -rf seed
  [ $ok -eq 0 ] || { echo "cannot write the seed onto the config drive"; return 1; }
  got=$(blkid -p -s LABEL -o value "/dev/$part")
  [ "$got" = CIDATA ] || { echo "the config drive has label '$got', not CIDATA"; return 1; }
  echo "partition=$part"
}

do_provision() {
  id=$(job job_id)
  size=$(job image_size)
  algo=$(job checksum_algo)
  want=$(job checksum)
  d=$(resolve_disk "$(job disk_by_path)" "$(job disk_serial)")
  if [ -z "$d" ]; then
    fail "$id" resolve RootDeviceNotFound "no disk (or more than one) has by-path $(job disk_by_path) and the inspected serial"
    return
  fi
  case $algo in sha256 | sha512) ;; *) fail "$id" write UnsupportedChecksum "checksum algorithm $algo"; return ;; esac
  step "$id" write started "disk=$d"
  set -o pipefail
  t0=$(now)
  if ! wget -q -O - --header "Authorization: Bearer $TOKEN" "$URL/v1/agent/image/$id" |
    dd of="/dev/$d" bs=1M iflag=fullblock conv=fsync 2>dd.err; then
    zap_head_and_tail "$d"
    fail "$id" write ImageWriteFailed "streaming the image onto the disk failed: $(tail -n 1 dd.err)"
    return
  fi
  set +o pipefail
  t1=$(now)
  step "$id" write done "seconds=$(awk "BEGIN{print $t1 - $t0}")" "bytes=$size"
  step "$id" verify started
  sync
  blockdev --flushbufs "/dev/$d"
  echo 3 >/proc/sys/vm/drop_caches
  got=$(head -c "$size" "/dev/$d" | "${algo}sum" | cut -d' ' -f1)
  t2=$(now)
  if [ "$got" != "$want" ]; then
    # What landed on the disk is not the image: leave no partition table or boot sector behind.
    zap_head_and_tail "$d"
    fail "$id" verify WrittenImageChecksumMismatch "the bytes read back from the disk do not match the image's $algo checksum; the disk's first and last MiB were zeroed"
    return
  fi
  step "$id" verify done "seconds=$(awk "BEGIN{print $t2 - $t1}")"
  step "$id" configdrive started
  if ! out=$(config_drive "$id" "$d" "$size"); then
    zap_head_and_tail "$d"
    fail "$id" configdrive ConfigDriveFailed "$out; the disk's first and last MiB were zeroed"
    return
  fi
  t3=$(now)
  step "$id" configdrive done "seconds=$(awk "BEGIN{print $t3 - $t2}")"
  { echo "job_id=$id"; echo "event=provisioned"; echo "next=reboot"; echo "disk=$d"
    echo "by_path=$(by_path "$d")"; echo "serial=$(serial_of "$d")"; echo "bytes=$size"
    echo "write_seconds=$(awk "BEGIN{print $t1 - $t0}")"; echo "verify_seconds=$(awk "BEGIN{print $t2 - $t1}")"
    echo "configdrive_seconds=$(awk "BEGIN{print $t3 - $t2}")"; echo "$out"; } >provisioned.txt
  send provisioned.txt && log "image written, verified and seeded on $d"
}

# -- cleaning ------------------------------------------------------------------------------------------

wipe_metadata() { # partition signatures, then the disk's own (MBR/GPT incl. backup), then head and tail
  d=$1
  for p in /sys/block/"$d"/"$d"*; do
    [ -e "$p/partition" ] || continue
    pn=${p##*/}
    secs=$(cat "$p/size")
    n=2048
    [ "$secs" -lt 2048 ] && n=$secs
    dd if=/dev/zero of="/dev/$pn" bs=512 count="$n" conv=fsync 2>/dev/null
    [ "$secs" -gt 2048 ] && dd if=/dev/zero of="/dev/$pn" bs=512 seek=$((secs - 2048)) count=2048 conv=fsync 2>/dev/null
  done
  wipefs -a -f "/dev/$d" >/dev/null 2>&1
  zap_head_and_tail "$d"
}

do_clean() {
  id=$(job job_id)
  mode=$(job mode)
  step "$id" clean started "mode=$mode"
  t0=$(now)
  { echo "job_id=$id"; echo "event=cleaned"; echo "next=poweroff"; echo "mode=$mode"; } >cleaned.txt
  i=0
  for d in $(disks); do
    [ "$(val "/sys/block/$d/ro")" = 1 ] && continue
    case $mode in
      metadata) wipe_metadata "$d" ;;
      full)
        if ! dd if=/dev/zero of="/dev/$d" bs=1M conv=fsync 2>dd.err && ! grep -q 'No space left' dd.err; then
          fail "$id" clean CleaningFailed "zeroing $(by_path "$d") failed: $(tail -n 1 dd.err)"
          return
        fi
        wipe_metadata "$d"
        ;;
      *) fail "$id" clean CleaningFailed "unknown cleaning mode $mode"; return ;;
    esac
    left=$(wipefs -n "/dev/$d" 2>/dev/null | tail -n +2 | wc -l)
    if [ "$left" -ne 0 ] || blkid -p "/dev/$d" >/dev/null 2>&1; then
      fail "$id" clean CleaningFailed "signatures remain on $(by_path "$d") after cleaning"
      return
    fi
    echo "disk.$i.by_path=$(by_path "$d")" >>cleaned.txt
    echo "disk.$i.serial=$(serial_of "$d")" >>cleaned.txt
    i=$((i + 1))
  done
  echo "seconds=$(awk "BEGIN{print $(now) - $t0}")" >>cleaned.txt
  send cleaned.txt && log "disks cleaned ($mode)"
}

# -- main loop -----------------------------------------------------------------------------------------

if [ -z "$URL" ] || [ -z "$TOKEN" ]; then
  log "booted without a boot server URL or token; nothing to do"
  exec sleep 2147483647
fi
{ echo "kernel=$(uname -r)"; echo "recipe=$(cat /etc/capbm/recipe 2>/dev/null)"; echo "uptime=$(now)"
  echo "iface=${CAPBM_IFACE:-}"; inventory; } >hello.txt
until api /v1/agent/hello hello.txt >/dev/null; do sleep 2; done
log "registered with the boot server"
while true; do
  if ! api /v1/agent/next >job.new; then
    sleep 3
    continue
  fi
  mv job.new job
  case $(job job) in
    inspect) do_inspect ;;
    provision) do_provision ;;
    clean) do_clean ;;
    wait | "") ;;
    *) log "unknown job $(job job)"; sleep 3 ;;
  esac
done
