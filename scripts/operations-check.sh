#!/usr/bin/env bash
# Follows docs/operations.md's install walkthrough, running its `walkthrough` blocks exactly
# as written: certificates on the "operator's machine", three control-plane nodes and two
# hosts, each a machine of its own (a private mount namespace with its own /etc/qvdc,
# /usr/local, /var/lib/qvdc, /var/lib/qhost, /etc/systemd/system and /srv/qvdc), on loopback.
# Then checks that the result is a working cluster. Needs root.
#
# What differs from real machines, and why:
#   * addresses are 127.0.0.1 with free ports instead of 10.0.0.x:7100;
#   * install.sh installs the binaries this checkout already built (QVDC_INSTALL_BIN_DIR)
#     instead of building release binaries (another 10 minutes);
#   * `systemctl enable --now UNIT` is a stand-in (no systemd here) that runs the installed
#     unit's ExecStartPre and ExecStart as its User, with its EnvironmentFile.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" -eq 0 ] || { echo "operations-check: needs root (mount namespaces, useradd)" >&2; exit 1; }
for bin in qvdc qvctl qhost; do
  [ -x target/debug/$bin ] || { echo "operations-check: build first (cargo build --workspace --bins)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/qvdc-operations.XXXXXX)
pids="$work/pids"
: > "$pids"
# Mount points each machine's private directories are bound onto; those made here go again.
made=()
for dir in /etc/qvdc /etc/systemd/system /usr/local /var/lib/qvdc /var/lib/qhost /srv/qvdc; do
  [ -d "$dir" ] || { mkdir -p "$dir"; made+=("$dir"); }
done
# The walkthrough creates the system user qvdc as install.sh does; it goes again if it was not
# here before.
had_user=$(getent passwd qvdc >/dev/null && echo yes || echo no)
cleanup() {
  local status=$?
  # Each machine is a PID namespace: killing its unshare kills everything that ran in it.
  while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$pids"
  while read -r pid; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done < "$pids"
  [ "$had_user" = yes ] || userdel qvdc 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for log in "$work"/logs/*.log; do echo "--- $log"; tail -n 20 "$log"; done
  fi
  rm -rf "$work"
  for dir in "${made[@]}"; do rmdir "$dir" 2>/dev/null || true; done
  exit "$status"
}
trap cleanup EXIT

# The doc's walkthrough blocks, by name: the ```sh block after `<!-- walkthrough: NAME -->`.
mkdir -p "$work/blocks" "$work/logs" "$work/shim"
awk -v out="$work/blocks" '
  /^<!-- walkthrough: [a-z]+ -->$/ { name = $3; next }
  name != "" && /^```sh$/ { file = out "/" name ".sh"; inside = 1; next }
  inside && /^```$/ { inside = 0; name = ""; next }
  inside { print >> file }
' docs/operations.md
for block in operator server host check; do
  [ -s "$work/blocks/$block.sh" ] || { echo "operations-check: no '$block' walkthrough in docs/operations.md" >&2; exit 1; }
done

cat > "$work/shim/systemctl" <<'SHIM'
#!/usr/bin/env bash
# Stands in for systemd: `systemctl enable --now UNIT` runs the unit as systemd would;
# `daemon-reload` has nothing to do.
set -euo pipefail
[ "${1:-}" = daemon-reload ] && exit 0
[ "${1:-}" = enable ] && [ "${2:-}" = --now ] || { echo "systemctl stand-in: only 'enable --now UNIT' and 'daemon-reload'" >&2; exit 1; }
unit=/etc/systemd/system/$3.service
field() { sed -n "s/^$1=//p" "$unit"; }
user=$(field User)
state=$(field StateDirectory)
envfile=$(field EnvironmentFile)
if [ -n "$state" ]; then install -d -m 0700 -o "$user" "/var/lib/$state"; fi
if [ -n "$envfile" ]; then set -a; . "$envfile"; set +a; fi
# setpriv changes user and then execs the command, as systemd's User= does.
as_user=(setpriv --reuid="$user" --regid="$user" --init-groups --)
pre=$(field ExecStartPre)
if [ -n "$pre" ]; then "${as_user[@]}" $pre > /dev/null; fi
nohup "${as_user[@]}" $(field ExecStart) >> "$QVDC_CHECK_LOGS/$3-$QVDC_CHECK_MACHINE.log" 2>&1 &
SHIM
chmod +x "$work/shim/systemctl"

port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
addrs=()
for n in 1 2 3; do addrs+=("127.0.0.1:$(port)"); done
export CERTS=$work/operator/certs
export CLUSTER_MEMBERS="1=${addrs[0]},2=${addrs[1]},3=${addrs[2]}"
export CLUSTER_ADDRS="${addrs[0]},${addrs[1]},${addrs[2]}"
export QVDC_INSTALL_BIN_DIR=$repo/target/debug QVDC_CHECK_LOGS=$work/logs

# The operator's machine: qvctl staged as the doc says, then the certificates.
./scripts/install.sh --role all --root "$work/operator/stage" > /dev/null
(PATH=$work/operator/stage/usr/local/bin:$PATH bash -euo pipefail "$work/blocks/operator.sh") > /dev/null

# One machine: private mount and PID namespaces in which the block runs and its daemons live
# on (the namespace's first process then waits, so that killing its unshare stops them all).
machine() {
  local name=$1 block=$2 exports=$3
  local root=$work/machines/$name
  local done=$work/machines/$name.done
  QVDC_CHECK_MACHINE=$name unshare --mount --propagation private --pid --fork --kill-child \
    bash -euo pipefail -c '
    for dir in etc/qvdc etc/systemd/system usr/local var/lib/qvdc var/lib/qhost srv/qvdc; do
      mkdir -p "'"$root"'/$dir"
      mount --bind "'"$root"'/$dir" "/$dir"
    done
    export PATH='"$work"'/shim:/usr/local/bin:$PATH
    # The block sets these itself; the doc says to change them per machine.
    sed -i "s/^export NODE_ID=1 NODE_ADDR=.*/'"$exports"'/; s/^export HOST_ID=host-1$/'"$exports"'/" '"$block"'
    ( . '"$block"' ) && touch '"$done"' || touch '"$done"'.failed
    exec sleep infinity
  ' > "$work/logs/$name-install.log" 2>&1 &
  echo $! >> "$pids"
  disown $!  # killed on purpose at the end: no "Killed" notice
  while [ ! -e "$done" ] && [ ! -e "$done.failed" ]; do sleep 0.1; done
  if [ -e "$done.failed" ]; then cat "$work/logs/$name-install.log"; return 1; fi
}
for n in 1 2 3; do
  cp "$work/blocks/server.sh" "$work/blocks/server-$n.sh"
  machine "node-$n" "$work/blocks/server-$n.sh" "export NODE_ID=$n NODE_ADDR=${addrs[$((n - 1))]}"
done
for h in host-1 host-2; do
  cp "$work/blocks/host.sh" "$work/blocks/$h.sh"
  machine "$h" "$work/blocks/$h.sh" "export HOST_ID=$h"
done

# Back on the operator's machine. The doc tells the reader to wait for a leader and for the
# hosts to register: so does this, for up to a minute, before the doc's checks.
export PATH=$work/operator/stage/usr/local/bin:$PATH
export QVDC_CLUSTER=$CLUSTER_ADDRS QVDC_CA_CERT=$CERTS/ca.crt QVDC_CERT=$CERTS/admin.crt QVDC_KEY=$CERTS/admin.key
ready() {
  qvctl host list -o json 2>/dev/null | python3 -c '
import json, sys
hosts = json.load(sys.stdin)
sys.exit(0 if sorted(h["host_id"] for h in hosts if h["liveness"] == "Ready") == ["host-1", "host-2"] else 1)'
}
for _ in $(seq 1 120); do ready && break; sleep 0.5; done
bash -euo pipefail "$work/blocks/check.sh" > "$work/logs/check.log" 2>&1 || { cat "$work/logs/check.log"; exit 1; }
status=$(qvctl cluster status -o json)
python3 - "$status" <<'PY'
import json, sys
status = json.loads(sys.argv[1])
assert len(status["members"]) == 3 and status["leader"] is not None, status
PY
hosts=$(qvctl host list -o json)
pool=$(qvctl pool show shared -o json)
python3 - "$hosts" "$pool" <<'PY'
import json, sys
hosts, pool = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ready = sorted(h["host_id"] for h in hosts if h["liveness"] == "Ready")
assert ready == ["host-1", "host-2"], hosts
healthy = sorted(h["host_id"] for h in pool["hosts"] if h["health"] == "HEALTHY")
assert healthy == ["host-1", "host-2"], pool
PY
grep -q "checksum OK" "$work/logs/check.log"
echo "operations-check: docs/operations.md's walkthrough gives a working cluster:" \
  "3 nodes (leader $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["leader"])' "$status")), 2 hosts Ready, pool shared healthy on both, a backup that checks out"
