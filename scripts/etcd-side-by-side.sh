#!/usr/bin/env bash
# qvdc's control plane and etcd, side by side in one run on this machine.
#
#   scripts/etcd-side-by-side.sh [--rounds N] [--seconds S] [--clients "1 16 256"]
#
# etcd: three members of Debian's etcd-server (installed if missing) on loopback, fsync on,
# no TLS, driven by wrk through the JSON gateway (POST /v3/kv/put of one small key, one
# keep-alive connection per client, all sent to the leader). qvdc: three `qvdc server`
# processes, QUIC with mutual TLS, the `control_plane` bench's toggle workload (one pool per
# client, its host assigned and unassigned, each write committed and applied before the
# next). Each round runs etcd then qvdc at every client count; the rounds alternate which
# goes first. Prints writes/s, p50, p99 and the servers' CPU per write for both, and
# qvdc / etcd. Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=2
SECONDS_PER=5
CLIENTS="1 16 256"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECONDS_PER=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "etcd-side-by-side: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! command -v etcd >/dev/null || ! command -v wrk >/dev/null || ! command -v etcdctl >/dev/null; then
    echo "etcd-side-by-side: installing etcd-server, etcd-client and wrk from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client wrk >/dev/null
fi

WORK=$(mktemp -d /tmp/qvdc-etcd-side.XXXXXX)
ETCD_PIDS=()
cleanup() {
    for pid in "${ETCD_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Ports away from qvdc's defaults and etcd's own (2379/2380).
CLUSTER="e1=http://127.0.0.1:23811,e2=http://127.0.0.1:23812,e3=http://127.0.0.1:23813"
start_etcd() {
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$WORK/e$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2381$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2381$i" \
            --initial-cluster "$CLUSTER" --initial-cluster-state new \
            --log-level error >"$WORK/e$i.log" 2>&1 &
        ETCD_PIDS+=($!)
        disown $!
    done
    local endpoints=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
    for _ in $(seq 100); do
        if etcdctl --endpoints "$endpoints" endpoint status >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    # The leader's client URL: `endpoint status` prints "url, id, version, size, IS_LEADER, ...".
    LEADER=$(etcdctl --endpoints "$endpoints" endpoint status 2>/dev/null | awk -F', ' '$5 == "true" {print $1}')
    [ -n "$LEADER" ] || { echo "etcd-side-by-side: etcd elected no leader" >&2; exit 1; }
}

# User plus system CPU seconds of the etcd members.
etcd_cpu() {
    local ticks=0 pid
    for pid in "${ETCD_PIDS[@]}"; do
        ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$ticks $(getconf CLK_TCK)" | awk '{printf "%.3f", $1 / $2}'
}

cat >"$WORK/put.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- key "bench", value "toggle" (base64, as the gateway wants)
wrk.body = '{"key":"YmVuY2g=","value":"dG9nZ2xl"}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %.3f %.3f\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF

# One etcd measurement: "writes/s p50_ms p99_ms cpu_us_per_write".
etcd_run() {
    local clients=$1 threads=2
    [ "$clients" -ge 2 ] || threads=1
    local before after line
    before=$(etcd_cpu)
    line=$(wrk -t "$threads" -c "$clients" -d "${SECONDS_PER}s" -s "$WORK/put.lua" "$LEADER/v3/kv/put" | grep '^RESULT')
    after=$(etcd_cpu)
    echo "$line $before $after" | awk '{n=$2; s=$3; printf "%.0f %.2f %.2f %.0f\n", n/s, $4, $5, ($7-$6)*1e6/n}'
}

# One qvdc measurement per client count, from the bench's own lines.
qvdc_run() {
    QVDC_BENCH_SECONDS=$SECONDS_PER QVDC_BENCH_KILLS=0 QVDC_BENCH_WRITE=toggle \
        QVDC_BENCH_CLIENTS="$CLIENTS" \
        cargo bench -q -p qvdc-cluster --bench control_plane 2>/dev/null |
        awk '/clients:/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "clients:") { c = $(i-1); w = $(i+1) }
                if ($i == "p50") p50 = $(i+1)
                if ($i == "p99") p99 = $(i+1)
                if ($i == "CPU") cpu = $(i+1)
            }
            print c, w, p50, p99, cpu
        }'
}

echo "building the qvdc bench (release)" >&2
cargo bench -q -p qvdc-cluster --bench control_plane --no-run 2>/dev/null

declare -A E_W E_P50 E_P99 E_CPU Q_W Q_P50 Q_P99 Q_CPU
measure_etcd() {
    start_etcd
    for c in $CLIENTS; do
        read -r w p50 p99 cpu < <(etcd_run "$c")
        E_W[$r,$c]=$w; E_P50[$r,$c]=$p50; E_P99[$r,$c]=$p99; E_CPU[$r,$c]=$cpu
    done
    for pid in "${ETCD_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    ETCD_PIDS=()
    rm -rf "$WORK"/e?
}
measure_qvdc() {
    while read -r c w p50 p99 cpu; do
        Q_W[$r,$c]=$w; Q_P50[$r,$c]=$p50; Q_P99[$r,$c]=$p99; Q_CPU[$r,$c]=$cpu
    done < <(qvdc_run)
}

for r in $(seq "$ROUNDS"); do
    echo "round $r of $ROUNDS" >&2
    if [ $((r % 2)) -eq 1 ]; then measure_etcd; measure_qvdc; else measure_qvdc; measure_etcd; fi
done

echo "etcd $(etcd --version | awk '/etcd Version/ {print $3}') (wrk, JSON gateway, no TLS) vs qvdc (QUIC + mTLS), 3 members each, fsync on, ${SECONDS_PER} s per cell, $(nproc) cores"
printf "%7s %5s | %9s %8s %8s %7s | %9s %8s %8s %7s | %6s\n" clients round \
    "etcd w/s" p50_ms p99_ms "µs/w" "qvdc w/s" p50_ms p99_ms "µs/w" "ratio"
for c in $CLIENTS; do
    for r in $(seq "$ROUNDS"); do
        printf "%7s %5s | %9s %8s %8s %7s | %9s %8s %8s %7s | %6s\n" "$c" "$r" \
            "${E_W[$r,$c]}" "${E_P50[$r,$c]}" "${E_P99[$r,$c]}" "${E_CPU[$r,$c]}" \
            "${Q_W[$r,$c]:-?}" "${Q_P50[$r,$c]:-?}" "${Q_P99[$r,$c]:-?}" "${Q_CPU[$r,$c]:-?}" \
            "$(awk -v q="${Q_W[$r,$c]:-0}" -v e="${E_W[$r,$c]}" 'BEGIN {printf "%.2f", q / e}')"
    done
done
