#!/usr/bin/env bash
# HA on real KVM: a three-node control plane and lab hosts, each with its own network, mount
# and PID namespace and its own libvirtd (scripts/lab.sh), sharing one pool directory.
#
#   scripts/ha-lab.sh [--runs N] [--migrations M] [--hosts H] [--steps 1,2,3,4,5]
#
# 1. Power loss, N times: three HA VMs on one host, the host's namespace killed (QEMU with
#    it); prints the time from the kill to each VM running on another host, and p50/p99.
# 2. Agent kill -9 with its guests running: no second copy may start anywhere while the
#    first runs (every lab host's `virsh list` is read throughout); the agent comes back and
#    removes its copy; the VM runs at its new host.
# 3. Isolation (nftables in the host's namespace): the host stops its guest itself, the VM
#    runs elsewhere, nothing runs twice; after healing the host holds no stale domain.
# 4. Live migration, M times between two hosts (`qvctl vm migrate --wait`): the VM runs at
#    the other host, the first keeps no domain, nothing runs twice meanwhile; prints how long
#    the guest was paused (libvirt's downtime) for each.
# 5. Maintenance of a host running two VMs (`qvctl host maintenance enter --wait`): both run
#    elsewhere, moved live; the host runs nothing.
# Exits non-zero on any violation. Needs root and /dev/kvm. Only loopback and the lab's own
# namespaces are ever sent traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNS=10
HOSTS=4
MIGRATIONS=10
STEPS=1,2,3,4,5
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --migrations) MIGRATIONS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --hosts) HOSTS=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "ha-lab: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "ha-lab: needs root (namespaces, libvirtd, KVM)" >&2; exit 1; }
[ -c /dev/kvm ] || { echo "ha-lab: /dev/kvm is missing: real KVM is needed" >&2; exit 1; }

LAB=${QVDC_LAB_DIR:-/tmp/qvdc-ha-lab}
BIN=$ROOT/target/debug
LABSH=$ROOT/scripts/lab.sh
CP=10.77.0.1
PORTS=(7201 7202 7203)
CLUSTER=$(printf "$CP:%s," "${PORTS[@]}"); CLUSTER=${CLUSTER%,}

cargo build -q --bins
rm -rf "$LAB"; mkdir -p "$LAB"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    "$LABSH" down "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$LABSH" up "$HOSTS" "$LAB"

CERTS=$LAB/certs
"$BIN/qvctl" certs init --dir "$CERTS" >/dev/null
for i in 1 2 3; do "$BIN/qvctl" certs issue --dir "$CERTS" --role server --name "node-$i" >/dev/null; done
for i in $(seq 1 "$HOSTS"); do "$BIN/qvctl" certs issue --dir "$CERTS" --role host --name "host-$i" >/dev/null; done
"$BIN/qvctl" certs issue --dir "$CERTS" --role operator --name admin >/dev/null
export QVDC_CLUSTER=$CLUSTER QVDC_CA_CERT=$CERTS/ca.crt QVDC_CERT=$CERTS/admin.crt QVDC_KEY=$CERTS/admin.key
qvctl() { "$BIN/qvctl" "$@"; }

initial=""
for i in 1 2 3; do initial+="$i=$CP:${PORTS[$((i-1))]},"; done
for i in 1 2 3; do
    "$BIN/qvdc" server --node-id "$i" --listen "$CP:${PORTS[$((i-1))]}" --data-dir "$LAB/node-$i" \
        --initial-cluster "${initial%,}" --ca-cert "$CERTS/ca.crt" \
        --cert "$CERTS/node-$i.crt" --key "$CERTS/node-$i.key" \
        --vm-shutdown-timeout-ms 2000 >"$LAB/node-$i.log" 2>&1 &
    PIDS+=($!)
    disown $! # killed at the end; no job notice for it
done

# Each agent keeps its data in $LAB/host-I/qhost, which its host sees at one path for all
# (lab-host.sh), and takes live migrations at its libvirtd's TCP address.
start_agent() {
    local i=$1
    "$LABSH" spawn "$i" "$LAB/host-$i/qhost.log" "$BIN/qhost" --host-id "host-$i" \
        --cluster "$CLUSTER" --data-dir /var/lib/qvdc-lab-host --libvirt qemu:///system \
        --migration-uri "qemu+tcp://10.77.0.$((10 + i))/system" \
        --pool-source-allow "$LAB/shared" --ca-cert "$CERTS/ca.crt" \
        --cert "$CERTS/host-$i.crt" --key "$CERTS/host-$i.key" >"$LAB/host-$i/agent.pid"
}
for i in $(seq 1 "$HOSTS"); do start_agent "$i"; done

now_ms() { date +%s%3N; }
step() { [[ ",$STEPS," == *",$1,"* ]]; }
# Waits (up to $2 s) until the shell condition $1 holds.
wait_for() {
    local what=$1 limit=$2 start
    start=$(now_ms)
    until eval "$what" >/dev/null 2>&1; do
        if [ $(( $(now_ms) - start )) -gt $((limit * 1000)) ]; then
            echo "ha-lab: timed out after ${limit}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}
host_ready() { qvctl host list --output json | grep -q "\"host_id\": \"$1\"" && qvctl host show "$1" --output json | grep -qi '"liveness": "ready"'; }
for i in $(seq 1 "$HOSTS"); do wait_for "host_ready host-$i" 60; done
qvctl pool create shared --type dir --path "$LAB/shared" --hosts "$(seq -s, -f 'host-%g' 1 "$HOSTS")" >/dev/null
wait_for "qvctl pool show shared --output json | grep -qi '\"health\": \"healthy\"'" 60

# The running copies of VM $1 across every lab host that is up. The hosts are read one
# after another, so a guest that moves between two reads (a live migration's switch-over)
# could be seen at both: they are read twice, in opposite orders, and a copy counts only if
# both reads saw it. A guest that moves once is running at one host in only one of the two
# passes; two guests that run at once are seen in both.
copies() {
    local n=0 i
    local -A first=()
    for i in $(seq 1 "$HOSTS"); do
        [ -e "$LAB/host-$i/ready" ] || continue
        if "$LABSH" virsh "$i" domstate "$1" 2>/dev/null | grep -q running; then first[$i]=1; fi
    done
    for i in $(seq "$HOSTS" -1 1); do
        [ -n "${first[$i]:-}" ] || continue
        if "$LABSH" virsh "$i" domstate "$1" 2>/dev/null | grep -q running; then n=$((n + 1)); fi
    done
    echo "$n"
}
# Fails if any of the VMs runs on more than one host now.
check_once() {
    local vm c
    for vm in "$@"; do
        c=$(copies "$vm")
        if [ "$c" -gt 1 ]; then
            echo "ha-lab: VIOLATION: $vm runs on $c hosts at once" >&2
            for i in $(seq 1 "$HOSTS"); do "$LABSH" virsh "$i" list 2>/dev/null | sed "s/^/host-$i: /" >&2 || true; done
            exit 1
        fi
    done
}
vm_field() { qvctl vm show "$1" --output json | sed -n "s/.*\"$2\": \"\\([^\"]*\\)\".*/\\1/p" | head -1; }
running_on_other_host() { [ "$(vm_field "$1" power)" = running ] && [ "$(vm_field "$1" host)" != "$2" ]; }

make_vm() { # name host isolation
    qvctl volume create shared "$1.qcow2" --size 64M >/dev/null
    wait_for "qvctl volume list shared --output json | grep -A3 '\"$1.qcow2\"' | grep -q '\"ready\": true'" 60
    qvctl vm create "$1" --memory 64M --disk "shared/$1.qcow2" --host "$2" --start \
        --ha restart --isolation "$3" >/dev/null
    wait_for "[ \"\$(vm_field $1 power)\" = running ]" 60
}
remove_vm() { # the guests have no OS to shut down: destroyed after the 2 s shutdown timeout
    qvctl --timeout-ms 60000 vm delete "$1" >/dev/null
    qvctl volume delete shared "$1.qcow2" >/dev/null
}
restart_host() { # i: a new boot of the lab host, then its agent
    "$LABSH" start "$1" "$LAB"
    start_agent "$1"
    wait_for "host_ready host-$1" 60
}

if step 1; then
echo "== 1. power loss of a host running 3 HA VMs, $RUNS runs"
TIMES=()
for run in $(seq 1 "$RUNS"); do
    victim=$(( (run - 1) % HOSTS + 1 ))
    vms=(ha-$run-a ha-$run-b ha-$run-c)
    for vm in "${vms[@]}"; do make_vm "$vm" "host-$victim" power-off; done
    t0=$(now_ms)
    "$LABSH" power-off "$victim"
    pending=("${vms[@]}")
    while [ ${#pending[@]} -gt 0 ]; do
        check_once "${vms[@]}"
        still=()
        for vm in "${pending[@]}"; do
            if running_on_other_host "$vm" "host-$victim"; then
                took=$(( $(now_ms) - t0 ))
                TIMES+=("$took")
                echo "run $run: $vm running on $(vm_field "$vm" host) $took ms after host-$victim lost power"
            else
                still+=("$vm")
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        if [ $(( $(now_ms) - t0 )) -gt 60000 ]; then echo "ha-lab: ${pending[*]} not restarted within 60 s" >&2; exit 1; fi
        sleep 0.1
    done
    restart_host "$victim"
    wait_for "! \"$LABSH\" virsh $victim list --all --name | grep -q ha-$run-" 60
    for vm in "${vms[@]}"; do remove_vm "$vm"; done
done
sorted=$(printf '%s\n' "${TIMES[@]}" | sort -n)
count=${#TIMES[@]}
p50=$(echo "$sorted" | sed -n "$(( (count + 1) / 2 ))p")
p99=$(echo "$sorted" | sed -n "$(( (count * 99 + 99) / 100 ))p")
echo "power loss -> running elsewhere: $count restarts, min $(echo "$sorted" | head -1) ms, p50 $p50 ms, p99 $p99 ms, max $(echo "$sorted" | tail -1) ms"
fi
if step 2; then
echo "== 2. agent kill -9 with its guest running"
make_vm orphan host-1 power-off
kill -9 "$(cat "$LAB/host-1/agent.pid")"
t0=$(now_ms)
wait_for "h=\$(vm_field orphan host); [ -n \"\$h\" ] && [ \"\$h\" != host-1 ]" 60
moved=$(vm_field orphan host)
echo "orphan moved to $moved in the record after $(( $(now_ms) - t0 )) ms; its first guest still runs on host-1"
end=$(( $(now_ms) + 10000 ))
while [ "$(now_ms)" -lt "$end" ]; do check_once orphan; sleep 0.3; done
[ "$(copies orphan)" -eq 1 ] || { echo "ha-lab: the dead agent's guest should still be the only copy" >&2; exit 1; }
"$LABSH" virsh 1 domstate orphan | grep -q running || { echo "ha-lab: host-1's guest stopped without its agent" >&2; exit 1; }
start_agent 1
t1=$(now_ms)
until running_on_other_host orphan host-1 && ! "$LABSH" virsh 1 list --all --name | grep -qx orphan; do
    check_once orphan
    [ $(( $(now_ms) - t1 )) -lt 90000 ] || { echo "ha-lab: orphan did not settle on $moved" >&2; exit 1; }
    sleep 0.2
done
echo "agent back: host-1 removed its copy, orphan runs on $(vm_field orphan host) $(( $(now_ms) - t1 )) ms after the agent restarted"
remove_vm orphan
fi
if step 3; then
echo "== 3. isolation of a host"
make_vm island host-2 power-off
"$LABSH" isolate 2
t0=$(now_ms)
until running_on_other_host island host-2; do
    check_once island
    [ $(( $(now_ms) - t0 )) -lt 60000 ] || { echo "ha-lab: island not restarted within 60 s" >&2; exit 1; }
    sleep 0.2
done
echo "isolated host-2: island running on $(vm_field island host) after $(( $(now_ms) - t0 )) ms; host-2's copy: $("$LABSH" virsh 2 domstate island 2>&1 | head -1)"
"$LABSH" heal 2
wait_for "! \"$LABSH\" virsh 2 list --all --name | grep -qx island" 60
check_once island
echo "healed: host-2 holds no domain of island"
# Its agent may still be re-establishing its session (a lease renewed, liveness Ready).
wait_for "host_ready host-2" 60
remove_vm island
fi

# Runs "$@" (a qvctl that waits) in the background, checking every lab host's virsh for a
# second copy of VM $MOVING all the while; fails if the command does.
while_checking() {
    "$@" >"$LAB/moving.log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do check_once "${MOVING[@]}"; sleep 0.1; done
    wait "$pid" || { echo "ha-lab: $* failed:" >&2; cat "$LAB/moving.log" >&2; exit 1; }
    check_once "${MOVING[@]}"
}
# libvirt's record of the last migration of $2 on host $1: how long the guest was paused.
downtime_ms() { "$LABSH" virsh "$1" domjobinfo "$2" --completed 2>/dev/null | awk '/^Total downtime:/ { print $3 }'; }

if step 4; then
echo "== 4. live migration, $MIGRATIONS times between two lab hosts"
MOVING=(mover)
make_vm mover host-1 power-off
DOWN=()
for m in $(seq 1 "$MIGRATIONS"); do
    from=$(vm_field mover host)
    to=$([ "$from" = host-1 ] && echo host-2 || echo host-1)
    # A migration to a host the leader does not hear from is refused, rightly.
    wait_for "host_ready $to" 60
    t0=$(now_ms)
    while_checking qvctl vm migrate mover --to "$to" --wait --wait-timeout-ms 60000
    took=$(( $(now_ms) - t0 ))
    [ "$(vm_field mover host)" = "$to" ] && [ "$(vm_field mover power)" = running ] \
        || { echo "ha-lab: mover is $(vm_field mover power) on $(vm_field mover host), not running on $to" >&2; exit 1; }
    i_from=${from#host-}; i_to=${to#host-}
    ! "$LABSH" virsh "$i_from" list --all --name | grep -qx mover \
        || { echo "ha-lab: $from kept a domain of mover after migrating it" >&2; exit 1; }
    down=$(downtime_ms "$i_to" mover)
    DOWN+=("${down:-0}")
    echo "migration $m: mover $from -> $to live: qvctl answered after $took ms; guest paused ${down:-?} ms (libvirt)"
done
sorted=$(printf '%s\n' "${DOWN[@]}" | sort -n)
echo "live migration downtime over ${#DOWN[@]} migrations: min $(echo "$sorted" | head -1) ms, p50 $(echo "$sorted" | sed -n "$(( (${#DOWN[@]} + 1) / 2 ))p") ms, max $(echo "$sorted" | tail -1) ms"
remove_vm mover
fi
if step 5; then
echo "== 5. maintenance of a host running VMs"
MOVING=(busy-a busy-b)
make_vm busy-a host-3 power-off
make_vm busy-b host-3 power-off
t0=$(now_ms)
while_checking qvctl host maintenance enter host-3 --wait --wait-timeout-ms 90000
for vm in "${MOVING[@]}"; do
    running_on_other_host "$vm" host-3 || { echo "ha-lab: $vm is not running off host-3 after its evacuation" >&2; exit 1; }
    to=$(vm_field "$vm" host)
    echo "$vm: running on $to, guest paused $(downtime_ms "${to#host-}" "$vm") ms (libvirt)"
done
! "$LABSH" virsh 3 list --name | grep -q . || { echo "ha-lab: host-3 still runs guests in maintenance" >&2; exit 1; }
listed=$(qvctl host list)
grep -q "maintenance" <<<"$listed" || { echo "ha-lab: host list does not show the maintenance:" >&2; echo "$listed" >&2; exit 1; }
echo "maintenance: host-3 emptied in $(( $(now_ms) - t0 )) ms, every VM moved live"
qvctl host maintenance exit host-3 >/dev/null
for vm in "${MOVING[@]}"; do remove_vm "$vm"; done
fi
echo "ha-lab: all checks passed"
