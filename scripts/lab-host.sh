#!/bin/bash
# lab-host.sh - PID 1 of one lab "hypervisor" (its own libvirtd, virtlogd, virtlockd).
#
# Started by lab.sh as:
#   unshare --mount --net --pid --fork --mount-proc /tmp/lab/lab-host.sh I LABDIR
#
# It never exits once the host is ready (it ends in a 'sleep infinity' + 'wait' loop that reaps
# orphans): it is PID 1 of the pid namespace, and killing it is this host's power loss (the
# kernel kills every process of the namespace, QEMU included).
# If setting up fails it exits non-zero, which tears the namespace down; the reason is in
# LABDIR/host-I/ns.log (this script's stdout/stderr).
set -euo pipefail

usage() { echo "usage: unshare --mount --net --pid --fork --mount-proc $0 I LABDIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
I=$1
LABDIR=$2
[[ $I =~ ^[1-9][0-9]{0,2}$ ]] && [ "$I" -le 243 ] || { echo "lab-host: bad host number '$I' (1..243)" >&2; exit 2; }
[[ $LABDIR == /* ]] || { echo "lab-host: LABDIR must be an absolute path, got '$LABDIR'" >&2; exit 2; }

log() { echo "lab-host[$I] $(date +%H:%M:%S.%3N) $*"; }
die() { log "ERROR: $*"; exit 1; }

[ "$$" -eq 1 ] || die "must be PID 1 of a new pid namespace (run it under 'unshare --pid --fork ...'), I am PID $$"
[ "$(id -u)" -eq 0 ] || die "must run as root"
id libvirt-qemu >/dev/null 2>&1 || die "user libvirt-qemu is missing (libvirtd refuses to start without it)"
for b in virtlogd virtlockd libvirtd virsh ip mount; do
    command -v "$b" >/dev/null || die "$b not found in PATH"
done

HD=$LABDIR/host-$I
# Where each lab host sees its own agent data directory (bind-mounted from $HD/qhost).
LAB_AGENT_DIR=/var/lib/qvdc-lab-host
SHARED=$LABDIR/shared
LOCKSPACE=$SHARED/.lockspace
HOST_UUID=$(printf '00000000-0000-4000-8000-%012d' "$I")
START_TIMEOUT=${LAB_HOST_START_TIMEOUT:-120}

log "starting (LABDIR=$LABDIR, host_uuid=$HOST_UUID)"

# --- mounts: private to this namespace ---------------------------------------------------
mount --make-rprivate /
# Own /run: virtlogd/virtlockd/libvirtd keep pidfiles and sockets there.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/libvirt /run/lock /run/user
chmod 1777 /run/lock

mkdir -p "$HD/lib" "$HD/log" "$HD/cache" "$HD/etc" "$LOCKSPACE"

# Per-host copy of /etc/libvirt, made once. Drop whatever the system libvirtd defines, so this
# host starts empty and autostarts nothing: domains, networks, storage pools, secrets, filters.
if [ ! -e "$HD/.etc-populated" ]; then
    cp -a /etc/libvirt/. "$HD/etc/"
    rm -rf "$HD/etc/qemu/"*.xml "$HD/etc/qemu/autostart" "$HD/etc/qemu/networks" \
           "$HD/etc/storage" "$HD/etc/secrets/"* "$HD/etc/nwfilter/"* \
           "$HD/etc/lxc" "$HD/etc/libxl" "$HD/etc/ch"
    touch "$HD/.etc-populated"
    log "populated $HD/etc from /etc/libvirt"
fi

mkdir -p /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt
mount --bind "$HD/lib"   /var/lib/libvirt
mount --bind "$HD/log"   /var/log/libvirt
mount --bind "$HD/cache" /var/cache/libvirt
mount --bind "$HD/etc"   /etc/libvirt
# The host agent's data directory, at the same path on every lab host (like a fleet with one
# --data-dir): pools are mounted below it, and a migrated domain keeps its disks' paths.
mkdir -p "$HD/qhost" "$LAB_AGENT_DIR"
mount --bind "$HD/qhost" "$LAB_AGENT_DIR"

# --- configuration (rewritten at every boot, so it is always what this script says) -------
cat > /etc/libvirt/libvirtd.conf <<EOF
# Written by lab-host.sh for lab host $I.
host_uuid = "$HOST_UUID"
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF

touch /etc/libvirt/qemu.conf
sed -i -E '/^[[:space:]]*(user|group|lock_manager|cgroup_controllers)[[:space:]]*=/d; /^# lab-host\.sh:/d' \
    /etc/libvirt/qemu.conf
cat >> /etc/libvirt/qemu.conf <<'EOF'
# lab-host.sh: QEMU as root (/dev/kvm is 0600), libvirt's lock manager on every disk, and no
# cgroups: the cgroup tree is shared by all namespaces and the system libvirtd, and two lab hosts
# would otherwise create (and on cleanup kill) the same machine/qemu-ID-NAME groups.
user = "root"
group = "root"
lock_manager = "lockd"
cgroup_controllers = [ ]
EOF

cat > /etc/libvirt/qemu-lockd.conf <<EOF
# Written by lab-host.sh: one lockspace shared by every lab host.
auto_disk_leases = 1
file_lockspace_dir = "$LOCKSPACE"
EOF

# --- network and daemons ------------------------------------------------------------------
ip link set lo up

virtlogd -d   || die "virtlogd failed to start"
virtlockd -d  || die "virtlockd failed to start"
libvirtd -d --listen || die "libvirtd failed to start (see $HD/log/libvirtd.log)"

deadline=$((SECONDS + START_TIMEOUT))
until timeout 20 virsh -c qemu:///system version >/dev/null 2>&1; do
    if ! pgrep -x libvirtd >/dev/null; then
        tail -n 20 /var/log/libvirt/libvirtd.log 2>/dev/null || true
        die "libvirtd exited during startup"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "libvirtd did not answer within ${START_TIMEOUT}s"
    sleep 0.5
done

touch "$HD/ready"
log "ready: $(virsh -c qemu:///system version 2>&1 | grep -i 'running hypervisor' || true)"

# Never exit (see top of file), and reap orphans. libvirt daemonizes QEMU, so every QEMU is
# reparented to PID 1; with a bare 'exec sleep infinity' a QEMU that exits stays a zombie,
# and libvirt (which polls kill(pid, 0)) then waits ~80 s and fails with "Failed to terminate
# process N with SIGKILL: Device or resource busy". bash's 'wait' reaps every child, known or not.
while :; do
    sleep infinity &
    wait $! || true
done
