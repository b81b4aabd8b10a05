#!/usr/bin/env bash
# Mutation testing of the safety-critical modules with cargo-mutants: each mutant (an
# operator flipped, a return value replaced, a call removed) is built, and the module's
# tests run against it; a mutant they do not fail is "missed". Installs cargo-mutants if it
# is missing. Mutants are applied in place, one at a time, and the tree is restored after
# each: do not edit the tree while it runs. docs/simulation.md ("Mutation score") has the
# scores and what the missed mutants are.
#
#   scripts/mutants.sh model   the state machine and its validation (raft/src/model)
#   scripts/mutants.sh store   the Raft log and state-machine storage (raft/src/store.rs)
#   scripts/mutants.sh lease   the leader lease (cluster/src/lease.rs)
#   scripts/mutants.sh fence   the host's fence (host/src/fence.rs)
#   scripts/mutants.sh cores   the pool and VM cores and the multi-step protocols
#                              (actors/src/core/{pool,vm,protocols,restarts,strays}.rs)
#   scripts/mutants.sh MODULE --sim
#                              the mutants the tests missed in MODULE's last run, against
#                              the simulation's scenario tests instead
#
# Results: mutants-out/MODULE[-sim]/mutants.out/{caught,missed,unviable,timeout}.txt
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "mutants: $*"; }

module="${1:-}"
pass="${2:-}"
exclude=()
# The model's one test of a state larger than a frame takes 25 s in a debug build and
# checks the digest and the store, not the rules: the mutants of the model skip it.
raft_tests=(-p qvdc-raft --lib -E 'not test(=model::tests::a_state_larger_than_a_frame_has_a_digest_and_is_stored)')
case "$module" in
  model)
    files=(raft/src/model/validate.rs raft/src/model/apply.rs raft/src/model/state.rs
      raft/src/model/records.rs raft/src/model/mod.rs)
    tests=("${raft_tests[@]}") ;;
  store)
    files=(raft/src/store.rs)
    tests=("${raft_tests[@]}")
    # Only the deliberate bug that panics on a pool's delete calls it (see cores below).
    exclude=(--exclude-re 'deletes_a_pool') ;;
  lease)
    files=(cluster/src/lease.rs)
    tests=(-p qvdc-cluster --lib) ;;
  fence)
    files=(host/src/fence.rs)
    tests=(-p qvdc-host --lib --test fencing) ;;
  cores)
    files=(actors/src/core/pool.rs actors/src/core/vm.rs actors/src/core/protocols.rs
      actors/src/core/restarts.rs actors/src/core/strays.rs)
    tests=(-p qvdc-actors --lib)
    # The deliberate bug's own code runs only with the `deliberate-bugs` feature, which
    # the unit tests leave off (past its guard it is dead code there):
    # simulation/tests/deliberate_bugs.rs is its oracle, not these tests.
    exclude=(--exclude-re 'VmCore::(start_on_spare_host|spare_host_due)') ;;
  *)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2 ;;
esac

if ! cargo mutants --version >/dev/null 2>&1; then
  say "installing cargo-mutants"
  cargo install --locked cargo-mutants --version 27.1.0
fi

mkdir -p mutants-out
file_args=()
for f in "${files[@]}"; do file_args+=(-f "$f"); done

if [ "$pass" = "--sim" ]; then
  missed="mutants-out/$module/mutants.out/missed.txt"
  [ -s "$missed" ] || { say "no missed mutants in $missed; run scripts/mutants.sh $module first"; exit 2; }
  # Exactly the missed mutants: their names, as regular expressions matching only themselves.
  names=$(sed -e 's/[][\\.^$*+?(){}|/]/\\&/g' "$missed" | paste -sd'|')
  say "$(wc -l <"$missed") missed mutants of $module against the simulation's scenario tests"
  cargo build --workspace --bins
  exec cargo mutants --in-place "${file_args[@]}" --re "^($names)\$" --test-tool nextest \
    --test-workspace=false --test-package qvdc-simulation --output "mutants-out/$module-sim" \
    -- -E 'not binary(deliberate_bugs)'
fi

say "$module: ${files[*]}"
exec cargo mutants --in-place "${file_args[@]}" "${exclude[@]}" --test-tool nextest \
  --output "mutants-out/$module" -- "${tests[@]}"
