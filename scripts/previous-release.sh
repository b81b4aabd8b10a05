#!/usr/bin/env bash
# Builds the binaries of the previous release (the newest in RELEASES, or $1) for the
# rolling-upgrade test, into target/releases/<tag>/. The release's tree is checked out in a
# worktree and built in this repository's target directory, so the dependencies both share
# are compiled once; only qvdc's own crates are built again (about 1.5 minutes on 2 cores).
# Run it before building this tree's binaries: the release's replace them in target/debug
# until the next build. Prints the directory.
#
#   scripts/previous-release.sh            the previous release
#   scripts/previous-release.sh v0.1.0     a given one
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The newest release in RELEASES (a clone may lack the tags; the commits are in history).
tag=${1:-$(awk '/^v/ { last = $1 } END { print last }' RELEASES)}
commit=$(awk -v tag="$tag" '$1 == tag { print $2 }' RELEASES)
commit=${commit:-$(git rev-parse --verify -q "$tag^{commit}" || true)}
if [ -z "$commit" ]; then
  echo "previous-release: $tag is neither in RELEASES nor a tag of this clone" >&2
  exit 1
fi
out="$root/target/releases/$tag"
if [ -x "$out/qvdc" ] && [ -x "$out/qhost" ] && [ "$(cat "$out/COMMIT" 2>/dev/null)" = "$commit" ]; then
  echo "$out"
  exit 0
fi
# Outside this checkout: cargo merges the .cargo/config.toml of every parent directory, and
# a release tree inside this one would build with this tree's flags twice, which changes
# every dependency's fingerprint and rebuilds them all.
scratch=$(mktemp -d)
work="$scratch/src-$tag"
cleanup() { git worktree remove --force "$work" 2>/dev/null || true; rm -rf "$scratch"; git worktree prune; }
trap cleanup EXIT
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "previous-release: commit $commit of $tag is not in this clone (a shallow clone?" \
    "fetch the history: git fetch --unshallow)" >&2
  exit 1
fi
git worktree add --detach "$work" "$commit" >/dev/null
# Built in this tree's target directory, so the dependencies both share are reused. Its
# binaries replace this tree's in target/debug until this tree is built again: they are
# copied out right after, and scripts/test.sh builds this tree next.
(cd "$work" && CARGO_TARGET_DIR="$root/target" cargo build --quiet \
  --workspace --bin qvdc --bin qhost) >&2
mkdir -p "$out"
for bin in qvdc qhost; do
  cp "$root/target/debug/$bin" "$out/$bin"
done
echo "$commit" > "$out/COMMIT"
echo "$out"
