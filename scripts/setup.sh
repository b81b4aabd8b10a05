#!/usr/bin/env bash
# Installs what qvdc needs from the system and is missing, and starts libvirt's daemons when
# this machine has no init system to start them. Safe to run again: it only installs what is
# absent and only starts what is not running. Needs root (or sudo) only when something is
# missing.
#
#   scripts/setup.sh            everything: build deps, mount tools, libvirt + QEMU/KVM
#   QVDC_NO_LIBVIRTD=1 ...      install, but do not start libvirtd (the test driver needs none)
set -euo pipefail

say() { echo "setup: $*"; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

command -v cargo >/dev/null 2>&1 || { say "cargo not found; install Rust (rustup) first" >&2; exit 1; }

# Debian packages, by what needs them:
#   build:    pkg-config libvirt-dev (the virt crate links libvirt)
#   tools:    procps (pgrep, below), openssl (tests read issued keys with it), xz-utils (the
#             advisory database snapshot scripts/deny.sh unpacks), python3 (the JSON checks of
#             scripts/operations-check.sh)
#   mounts:   mount (mount/umount), e2fsprogs/xfsprogs (block pools), fuse3 (hung-mount test)
#   VMs:      libvirt-daemon + QEMU driver + qemu-system-x86 (KVM), libvirt-clients (virsh),
#             qemu-utils (qemu-img for qcow2 volumes)
#   networks: iproute2 (bridges, VLANs, namespaces), nftables (partition tests)
#   browser:  chromium + chromium-driver (the dashboard's test drives a real headless browser)
packages=(pkg-config libvirt-dev procps openssl xz-utils python3 mount e2fsprogs xfsprogs fuse3 libvirt-daemon
  libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients qemu-utils iproute2 nftables
  chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  # Installing the libvirt set can remove a newer qemu-utils (qemu-img); put it back.
  command -v qemu-img >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-utils >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

[ "${QVDC_NO_LIBVIRTD:-0}" = 1 ] && exit 0

# libvirtd for qemu:///system. With systemd the packages start it; without (containers, CI)
# it needs a user, a QEMU that runs as root (to open /dev/kvm), virtlogd, then libvirtd.
if virsh -c qemu:///system version >/dev/null 2>&1; then
  exit 0
fi
getent passwd libvirt-qemu >/dev/null ||
  $sudo useradd --system --user-group --no-create-home -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
conf=/etc/libvirt/qemu.conf
for key in user group; do
  if ! grep -Eqs "^${key} = \"root\"" "$conf"; then
    echo "${key} = \"root\"" | $sudo tee -a "$conf" >/dev/null
  fi
done
$sudo mkdir -p /var/log/libvirt /var/run/libvirt
pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; $sudo virtlogd -d; }
pgrep -x libvirtd >/dev/null || { say "starting libvirtd"; $sudo libvirtd -d; }
# The first start probes QEMU's capabilities (about 8 s).
for _ in $(seq 1 120); do
  virsh -c qemu:///system version >/dev/null 2>&1 && { say "libvirtd is up"; exit 0; }
  sleep 0.5
done
say "libvirtd did not answer within 60 s; see /var/log/libvirt/libvirtd.log" >&2
exit 1
