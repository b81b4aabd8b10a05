#!/bin/bash
# lab.sh - a lab of several real KVM hypervisors on one machine, each one a set of
# mount+net+pid namespaces running its own libvirtd (see lab-host.sh).
#
#   lab.sh up N LABDIR        start hosts 1..N (bridge qvlab0 10.77.0.1/24, host I = 10.77.0.(10+I))
#   lab.sh start I LABDIR     boot host I again (after power-off), with a fresh libvirtd
#   lab.sh exec I CMD...      run CMD inside host I (stdio inherited)
#   lab.sh spawn I LOG CMD... run CMD inside host I in the background, output to LOG; prints its PID
#   lab.sh virsh I ARGS...    virsh -c qemu:///system ARGS... inside host I
#   lab.sh power-off I        pull host I's plug (SIGKILL to its PID 1) and wait until it is gone
#   lab.sh isolate I          cut host I off from the control plane 10.77.0.1 (both ways)
#   lab.sh heal I             undo isolate
#   lab.sh down LABDIR        power off every host, delete qvlab0 and all qvl-* links
#
# Commands other than up/start/down find the lab through $LABDIR if set, else through the
# file ${TMPDIR:-/tmp}/qvdc-lab.dir written by the last 'up'. docs/lab.md tells how qvdc
# runs on it (scripts/ha-lab.sh does all of it).
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
HOST_SCRIPT=$HERE/lab-host.sh
STATE_FILE=${TMPDIR:-/tmp}/qvdc-lab.dir
BRIDGE=qvlab0
NET_PREFIX=10.77.0
CONTROL_IP=$NET_PREFIX.1
READY_TIMEOUT=${LAB_READY_TIMEOUT:-30}

die() { echo "lab.sh: error: $*" >&2; exit 1; }
note() { echo "lab.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

check_host_num() {
    [[ ${1:-} =~ ^[1-9][0-9]{0,2}$ ]] && [ "$1" -le 243 ] || die "bad host number '${1:-}' (expected 1..243)"
}

labdir() {
    if [ -n "${LABDIR:-}" ]; then
        echo "$LABDIR"
    elif [ -s "$STATE_FILE" ]; then
        cat "$STATE_FILE"
    else
        die "no lab: run 'lab.sh up N LABDIR' first (or set LABDIR)"
    fi
}

# True if $1 is PID 1 of a pid namespace below ours (its NSpid line is "NSpid: <pid> 1").
is_ns_init() {
    [ -r "/proc/$1/status" ] && awk '/^NSpid:/ { found = 1; exit !(NF == 3 && $3 == 1) } END { if (!found) exit 1 }' "/proc/$1/status" 2>/dev/null
}

# PID (root namespace view) of host I's PID 1; dies if the host is not running.
host_pid() {
    local i=$1 hd pid ns
    hd=$(labdir)/host-$i
    [ -s "$hd/pid" ] || die "host $i is not up (no $hd/pid)"
    pid=$(cat "$hd/pid")
    ns=$(cat "$hd/pidns" 2>/dev/null || true)
    if ! is_ns_init "$pid" || [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" != "$ns" ]; then
        die "host $i is not running (PID $pid from $hd/pid is gone)"
    fi
    echo "$pid"
}

# Count processes (any namespace) whose pid namespace is $1 (e.g. "pid:[4026532301]").
count_in_pidns() {
    # One ls for all processes; zombies and vanished processes just produce errors.
    { ls -l /proc/[0-9]*/ns/pid 2>/dev/null || true; } | grep -cF -- "-> $1" || true
}

bridge_up() {
    if ! ip link show dev "$BRIDGE" >/dev/null 2>&1; then
        ip link add name "$BRIDGE" type bridge
    fi
    ip addr replace "$CONTROL_IP/24" dev "$BRIDGE"
    ip link set dev "$BRIDGE" up
}

# Walk down from the pid of the backgrounded setsid/unshare to the namespace's PID 1.
find_ns_init() {
    local p=$1 c depth tries
    for depth in 1 2 3; do
        is_ns_init "$p" && { echo "$p"; return 0; }
        c=
        for tries in $(seq 100); do
            c=$(pgrep -P "$p" | head -n 1 || true)
            [ -n "$c" ] && break
            kill -0 "$p" 2>/dev/null || return 1
            sleep 0.05
        done
        [ -n "$c" ] || return 1
        p=$c
    done
    is_ns_init "$p" && { echo "$p"; return 0; }
    return 1
}

fail_host() {
    local i=$1 hd=$2 msg=$3
    {
        echo "lab.sh: error: host $i: $msg"
        echo "---- last lines of $hd/ns.log ----"
        tail -n 25 "$hd/ns.log" 2>/dev/null || echo "(no ns.log)"
        if [ -s "$hd/log/libvirtd.log" ]; then
            echo "---- last lines of $hd/log/libvirtd.log ----"
            tail -n 10 "$hd/log/libvirtd.log"
        fi
    } >&2
    exit 1
}

start_host() {
    local i=$1 ld=$2 hd upid pid ip t0
    hd=$ld/host-$i
    if [ -s "$hd/pid" ] && is_ns_init "$(cat "$hd/pid")" \
       && [ "$(readlink "/proc/$(cat "$hd/pid")/ns/pid" 2>/dev/null)" = "$(cat "$hd/pidns" 2>/dev/null)" ]; then
        note "host $i already running (PID $(cat "$hd/pid")), skipped"
        return 0
    fi
    mkdir -p "$hd"
    rm -f "$hd/ready" "$hd/pid" "$hd/pidns"
    t0=$SECONDS

    setsid unshare --mount --net --pid --fork --mount-proc "$HOST_SCRIPT" "$i" "$ld" \
        >"$hd/ns.log" 2>&1 </dev/null &
    upid=$!
    pid=$(find_ns_init "$upid") || fail_host "$i" "$hd" "could not find the namespace's PID 1 (unshare PID $upid): lab-host.sh probably failed at once"
    echo "$pid" > "$hd/pid"
    readlink "/proc/$pid/ns/pid" > "$hd/pidns"

    # veth: qvl-I on the bridge, eth0 = 10.77.0.(10+I) inside.
    ip="$NET_PREFIX.$((10 + i))"
    ip link del "qvl-$i" 2>/dev/null || true
    ip link add "qvl-$i" type veth peer name "qvp-$i"
    ip link set "qvp-$i" netns "$pid"
    ip link set "qvl-$i" master "$BRIDGE"
    ip link set "qvl-$i" up
    nsenter -t "$pid" -n ip link set "qvp-$i" name eth0
    nsenter -t "$pid" -n ip addr add "$ip/24" dev eth0
    nsenter -t "$pid" -n ip link set eth0 up
    nsenter -t "$pid" -n ip route replace default via "$CONTROL_IP"

    local deadline=$((SECONDS + READY_TIMEOUT))
    until [ -e "$hd/ready" ]; do
        is_ns_init "$pid" || fail_host "$i" "$hd" "lab-host.sh exited during startup"
        [ "$SECONDS" -lt "$deadline" ] || fail_host "$i" "$hd" "not ready after ${READY_TIMEOUT}s"
        sleep 0.2
    done
    note "host $i up: PID $pid, $ip, ready in $((SECONDS - t0))s"
}

cmd_up() {
    [ $# -eq 2 ] || usage
    local n=$1 ld i
    [[ $n =~ ^[1-9][0-9]{0,2}$ ]] && [ "$n" -le 243 ] || die "bad host count '$n' (1..243)"
    need_root
    [ -x "$HOST_SCRIPT" ] || die "$HOST_SCRIPT missing or not executable"
    ld=$(realpath -m -- "$2")
    mkdir -p "$ld/shared/.lockspace"
    echo "$ld" > "$STATE_FILE"
    bridge_up
    for i in $(seq 1 "$n"); do
        start_host "$i" "$ld"
    done
}

cmd_start() {
    [ $# -eq 2 ] || usage
    check_host_num "$1"
    need_root
    local ld
    ld=$(realpath -m -- "$2")
    echo "$ld" > "$STATE_FILE"
    bridge_up
    start_host "$1" "$ld"
}

cmd_exec() {
    [ $# -ge 2 ] || usage
    check_host_num "$1"
    local pid
    pid=$(host_pid "$1"); shift
    exec nsenter -t "$pid" -m -n -p --wd="$PWD" -- "$@"
}

cmd_spawn() {
    [ $# -ge 3 ] || usage
    check_host_num "$1"
    local pid log np c=
    pid=$(host_pid "$1"); log=$2; shift 2
    setsid nohup nsenter -t "$pid" -m -n -p --wd="$PWD" -- "$@" >"$log" 2>&1 </dev/null &
    np=$!
    # nsenter forks CMD into the pid namespace: report CMD's PID, not nsenter's.
    for _ in $(seq 100); do
        c=$(pgrep -P "$np" | head -n 1 || true)
        [ -n "$c" ] && break
        kill -0 "$np" 2>/dev/null || break
        sleep 0.02
    done
    echo "${c:-$np}"
}

cmd_virsh() {
    [ $# -ge 1 ] || usage
    local i=$1; shift
    cmd_exec "$i" virsh -c qemu:///system "$@"
}

power_off_host() {
    local i=$1 ld=$2 hd pid ns deadline left
    hd=$ld/host-$i
    pid=$(cat "$hd/pid" 2>/dev/null || true)
    ns=$(cat "$hd/pidns" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -n "$ns" ] && is_ns_init "$pid" \
       && [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$ns" ]; then
        kill -9 "$pid"
        deadline=$((SECONDS + 30))
        while left=$(count_in_pidns "$ns"); [ "$left" -gt 0 ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "host $i: $left process(es) of $ns still alive 30s after SIGKILL"
            sleep 0.1
        done
        note "host $i powered off (PID $pid, $ns: no process left)"
    else
        note "host $i was not running"
    fi
    rm -f "$hd/ready" "$hd/pid" "$hd/pidns"
    if ip link show dev "qvl-$i" >/dev/null 2>&1; then
        ip link del "qvl-$i" 2>/dev/null || true
    fi
}

cmd_power_off() {
    [ $# -eq 1 ] || usage
    check_host_num "$1"
    need_root
    power_off_host "$1" "$(labdir)"
}

cmd_isolate() {
    [ $# -eq 1 ] || usage
    check_host_num "$1"
    local pid
    pid=$(host_pid "$1")
    # Drop everything to and from the control plane; other lab hosts still pass.
    nsenter -t "$pid" -n nft -f - <<EOF
table inet qvlab
delete table inet qvlab
table inet qvlab {
    chain input {
        type filter hook input priority -10; policy accept;
        ip saddr $CONTROL_IP drop
    }
    chain output {
        type filter hook output priority -10; policy accept;
        ip daddr $CONTROL_IP drop
    }
}
EOF
    note "host $1 isolated from $CONTROL_IP"
}

cmd_heal() {
    [ $# -eq 1 ] || usage
    check_host_num "$1"
    local pid
    pid=$(host_pid "$1")
    if nsenter -t "$pid" -n nft list table inet qvlab >/dev/null 2>&1; then
        nsenter -t "$pid" -n nft delete table inet qvlab
        note "host $1 healed"
    else
        note "host $1 was not isolated"
    fi
}

cmd_down() {
    [ $# -eq 1 ] || usage
    need_root
    local ld hd i link
    ld=$(realpath -m -- "$1")
    for hd in "$ld"/host-*; do
        [ -d "$hd" ] || continue
        i=${hd##*/host-}
        [[ $i =~ ^[0-9]+$ ]] || continue
        power_off_host "$i" "$ld"
    done
    for link in $(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep '^qvl-' || true); do
        ip link del "$link" 2>/dev/null || true
    done
    if ip link show dev "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
    fi
    if [ -s "$STATE_FILE" ] && [ "$(cat "$STATE_FILE")" = "$ld" ]; then
        rm -f "$STATE_FILE"
    fi
    note "lab $ld is down"
}

[ $# -ge 1 ] || usage
sub=$1; shift
case $sub in
    up)        cmd_up "$@" ;;
    start)     cmd_start "$@" ;;
    exec)      cmd_exec "$@" ;;
    spawn)     cmd_spawn "$@" ;;
    virsh)     cmd_virsh "$@" ;;
    power-off) cmd_power_off "$@" ;;
    isolate)   cmd_isolate "$@" ;;
    heal)      cmd_heal "$@" ;;
    down)      cmd_down "$@" ;;
    -h|--help|help) usage ;;
    *) die "unknown subcommand '$sub' (try: lab.sh help)" ;;
esac
