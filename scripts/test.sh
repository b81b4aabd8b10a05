#!/usr/bin/env bash
# Runs the whole test suite: unit tests, openraft's storage suite, the deterministic
# simulation and the real-process tests (three qvdc servers, three qhosts, real mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's wall time, printed at the end (and where it stopped, if one fails): the whole
# run must stay well under 30 minutes on 2 cores.
STAGES=()
stage_started=$SECONDS
stage_name=setup
stage() {
  STAGES+=("$(printf '%5d s  %s' $((SECONDS - stage_started)) "$stage_name")")
  stage_name=$1
  stage_started=$SECONDS
}
report() {
  local rc=$?
  stage done
  echo "test: stage times (total ${SECONDS} s, exit $rc):"
  printf 'test: %s\n' "${STAGES[@]}"
}
trap report EXIT

./scripts/setup.sh

stage deny
# The dependency policy (deny.toml): advisories, licences, sources, banned crates.
./scripts/deny.sh

if [ "$(id -u)" -eq 0 ]; then
  # Everything the real tests need is here: a test that cannot run must fail, not skip.
  export QVDC_REQUIRE_REAL=1
else
  echo "test: not root, so tests that mount filesystems will skip (run as root to include them)" >&2
fi

stage previous-release
# The previous release's qvdc and qhost, for the rolling-upgrade test (before this tree's
# build, which puts this tree's binaries back in target/debug).
QVDC_PREVIOUS_RELEASE=$(./scripts/previous-release.sh)
export QVDC_PREVIOUS_RELEASE

# The real-process tests start qhost, which lives in another crate: build every binary first.
stage build
cargo build --workspace --bins
stage nextest
cargo nextest run --workspace --no-fail-fast "$@"

# docs/operations.md's install walkthrough, run as written: three nodes and two hosts, each in
# a mount namespace of its own (needs root).
if [ "$(id -u)" -eq 0 ]; then
  stage operations-check
  ./scripts/operations-check.sh
  stage ha-lab
  # HA and moves on real KVM: lab hosts, each with its own namespaces and libvirtd
  # (docs/lab.md); a power loss, an agent killed, an isolated host, live migrations and a
  # maintenance; no VM may ever run twice. (The simulation's ha-flow and move-flow
  # scenarios run in the nextest suite above.)
  ./scripts/ha-lab.sh --runs 1 --migrations 3
fi

stage chaos
# The default simulation scenario (3 nodes, 10 hosts, every fault) over 200 seeds, on all
# cores; a failing seed prints the command that replays it.
cargo run --quiet -p qvdc-simulation --bin qvsim -- run --seeds 0..200
# The same with 100 hosts, over fewer seeds: registrations, heartbeats and host faults at a
# scale the 10-host world does not reach.
cargo run --quiet -p qvdc-simulation --bin qvsim -- run --seeds 0..10 --hosts 100

stage deliberate-bugs
# The checkers bite: each deliberate bug (a test-only feature) is caught within a few seeds.
cargo nextest run -p qvdc-simulation --features deliberate-bugs --test deliberate_bugs
# A leader that counts its own entry before its disk holds it (ADR 31).
cargo nextest run -p qvdc-raft --features deliberate-bugs --test leader_disk

stage fuzz
# Every decoder of peer and disk bytes under libFuzzer for a few seconds each, a smoke run
# that keeps the targets building and their seeds passing. Without AddressSanitizer and
# without optimisation here: both cost minutes of this run's build, and qvdc has no unsafe
# code of its own; the long runs, optimised and with the sanitizer, are in
# docs/security.md (scripts/fuzz.sh).
QVDC_FUZZ_SANITIZER="${QVDC_FUZZ_SANITIZER:-none}" QVDC_FUZZ_PROFILE="${QVDC_FUZZ_PROFILE:-dev}" \
  QVDC_FUZZ_SECONDS="${QVDC_FUZZ_SECONDS:-6}" ./scripts/fuzz.sh
