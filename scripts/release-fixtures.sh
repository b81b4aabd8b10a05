#!/usr/bin/env bash
# Writes fixtures/<TAG>/ from the code of release TAG, for the format tests of every later
# release (docs/compatibility.md):
#   data/node-N/   the data directories of a three-node cluster that ran the operator flow
#                  (cluster/tests/release_fixtures.rs), with snapshots and a log tail
#   wire/<kind>/   one encoding of every message and record kind, as the release's seed
#                  corpus writes them (fuzz/examples/seed_corpus.rs)
#   wire/api/      every operator request and answer variant (transport/examples/api_frames.rs)
#
#   scripts/release-fixtures.sh v0.1.0
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?usage: scripts/release-fixtures.sh TAG}
root=$PWD
out="$root/fixtures/$tag"
work=$(mktemp -d)
cleanup() { git -C "$root" worktree remove --force "$work/src" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
git worktree add --detach "$work/src" "$tag" >/dev/null

rm -rf "$out"
mkdir -p "$out/wire"
cd "$work/src"
# The release's own binaries, in its own target directory (a shared one would be rebuilt
# back and forth between the two trees).
QVDC_FIXTURES_OUT="$out" cargo test --quiet -p qvdc-cluster --test release_fixtures -- \
  --ignored --exact write_release_fixtures
cargo run --quiet --manifest-path fuzz/Cargo.toml --example seed_corpus >/dev/null
cp -r fuzz/corpus/. "$out/wire/"
# Every operator request and answer variant; the generator names only what v0.1.0 has, so
# today's copy builds in any release's tree and encodes with that release's code.
cp "$root/transport/examples/api_frames.rs" transport/examples/api_frames.rs 2>/dev/null ||
  { mkdir -p transport/examples && cp "$root/transport/examples/api_frames.rs" transport/examples/; }
cargo run --quiet -p qvdc-transport --example api_frames -- "$out/wire/api" >/dev/null
echo "release-fixtures: wrote $out from $(git rev-parse --short HEAD) ($tag)"
