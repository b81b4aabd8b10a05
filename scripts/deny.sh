#!/usr/bin/env bash
# Checks the dependency tree against deny.toml: security and unmaintained advisories, licences,
# banned crates and sources. Uses the live RustSec database when GitHub is reachable and the
# committed snapshot (third_party/) when it is not, and says which one it used.
set -euo pipefail
cd "$(dirname "$0")/.."

# The commit date of the snapshot in third_party/ (see third_party/README.md).
SNAPSHOT_DATE="2026-08-21T08:28:40+02:00"
# The cargo-deny release deny.toml is written for.
DENY_VERSION=0.20.2
# cargo-deny keeps the database for deny.toml's db-urls[0] under this name inside db-path.
db=target/advisory-dbs/advisory-db-3157b0e258782691

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  echo "deny: installing cargo-deny $DENY_VERSION (about 3 minutes on 2 cores)"
  cargo install --quiet --locked --no-default-features cargo-deny --version "$DENY_VERSION"
fi

# A snapshot unpacked by an earlier offline run is no clone of GitHub's: start afresh, so
# that a machine that can reach GitHub always checks against the live database.
rm -rf "$db"
if [ "${QVDC_DENY_OFFLINE:-0}" != 1 ] && timeout 60 cargo deny fetch db >/dev/null 2>&1; then
  echo "deny: advisory database fetched from github.com/rustsec/advisory-db"
  exec cargo deny check
fi

rm -rf "$db"
mkdir -p "$db"
tar -xJf third_party/rustsec-advisory-db.tar.xz -C "$db"
# cargo-deny reads the database's age from its git HEAD: give the snapshot its real date.
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE="$SNAPSHOT_DATE" GIT_COMMITTER_DATE="$SNAPSHOT_DATE" \
  git -C "$db" -c user.name=qvdc -c user.email=qvdc@localhost -c commit.gpgsign=false \
  commit -q -m "RustSec advisory database snapshot"
# cargo-deny judges the database's age by the later of its HEAD commit and the files git
# just wrote: date those too, so that a stale snapshot is reported as stale.
touch -d "$SNAPSHOT_DATE" "$db/.git/HEAD" "$db/.git/FETCH_HEAD" 2>/dev/null ||
  { : > "$db/.git/FETCH_HEAD"; touch -d "$SNAPSHOT_DATE" "$db/.git/HEAD" "$db/.git/FETCH_HEAD"; }
age_days=$(( ($(date +%s) - $(date -d "$SNAPSHOT_DATE" +%s)) / 86400 ))
echo "deny: github.com unreachable; checking advisories against the committed snapshot of" \
  "$SNAPSHOT_DATE ($age_days days old; third_party/README.md says how to refresh it)"
exec cargo deny --offline check
