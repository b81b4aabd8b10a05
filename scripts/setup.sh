#!/usr/bin/env bash
# Installs what qvdc needs from the system and is missing. Safe to run again: it only
# installs what is absent. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
command -v mount  >/dev/null 2>&1 || missing+=(mount)
command -v umount >/dev/null 2>&1 || missing+=(mount)
command -v cargo  >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
