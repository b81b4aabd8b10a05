#!/usr/bin/env bash
# Installs qvdc on this machine (docs/operations.md): the binaries in /usr/local/bin, systemd
# units, /etc/qvdc with example configuration, the state directories, and the docs.
#
#   scripts/install.sh --role server     a control-plane node: qvdc, qvctl, qvdc.service,
#                                        user qvdc, /var/lib/qvdc
#   scripts/install.sh --role host       a host: qhost, qvctl, qhost.service, /var/lib/qhost
#                                        (and libvirt + QEMU through scripts/setup.sh)
#   scripts/install.sh --role all        both (the default)
#
# Options:
#   --bin-dir DIR   install the binaries found in DIR instead of building release binaries
#                   (default: $QVDC_INSTALL_BIN_DIR when set)
#   --root DIR      install under DIR instead of / (packaging); creates no user and does not
#                   talk to systemd
#
# Safe to run again, e.g. to upgrade: binaries and units are replaced, configuration in
# /etc/qvdc is never overwritten, data in /var/lib is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

role=all
bin_dir="${QVDC_INSTALL_BIN_DIR:-}"
root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$role" in
  server|host|all) ;;
  *) echo "install: --role must be server, host or all, not $role" >&2; exit 2 ;;
esac
say() { echo "install: $*"; }
server() { [ "$role" = server ] || [ "$role" = all ]; }
host() { [ "$role" = host ] || [ "$role" = all ]; }

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install: run as root (sudo), or pass --root DIR to stage the files" >&2
  exit 1
fi

if [ -z "$bin_dir" ]; then
  # Hosts need libvirt and QEMU; a server only needs what building needs.
  if host; then ./scripts/setup.sh; else QVDC_NO_LIBVIRTD=1 ./scripts/setup.sh; fi
  say "building release binaries (about 10 minutes on 2 cores)"
  cargo build --release --quiet -p qvdc-cluster -p qvdc-host --bins
  bin_dir=target/release
fi
binaries=(qvctl)
server && binaries+=(qvdc)
host && binaries+=(qhost)
for bin in "${binaries[@]}"; do
  [ -x "$bin_dir/$bin" ] || { echo "install: $bin_dir/$bin is missing" >&2; exit 1; }
done

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" \
  "$root/usr/local/share/doc/qvdc" "$root/var/lib"
install -d -m 0755 "$root/etc/qvdc"
for bin in "${binaries[@]}"; do
  install -m 0755 "$bin_dir/$bin" "$root/usr/local/bin/$bin"
done
install -m 0644 docs/operations.md docs/compatibility.md CHANGELOG.md "$root/usr/local/share/doc/qvdc/"

if server; then
  install -m 0644 packaging/systemd/qvdc.service "$root/etc/systemd/system/qvdc.service"
  install -m 0644 packaging/qvdc.toml.example "$root/etc/qvdc/qvdc.toml.example"
  if [ -z "$root" ] && ! getent passwd qvdc >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/qvdc \
      --shell /usr/sbin/nologin qvdc
    say "created user qvdc"
  fi
  install -d -m 0700 "$root/var/lib/qvdc"
  [ -n "$root" ] || chown qvdc:qvdc /var/lib/qvdc
fi
if host; then
  install -m 0644 packaging/systemd/qhost.service "$root/etc/systemd/system/qhost.service"
  install -m 0644 packaging/qhost.env.example "$root/etc/qvdc/qhost.env.example"
  install -d -m 0700 "$root/var/lib/qhost"
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
say "installed ${binaries[*]} ($("$root/usr/local/bin/qvctl" --version)) for role $role"
server && say "next: certificates in /etc/qvdc, /etc/qvdc/qvdc.toml (see qvdc.toml.example), then systemctl enable --now qvdc"
host && say "next: certificates in /etc/qvdc, /etc/qvdc/qhost.env (see qhost.env.example), then systemctl enable --now qhost"
exit 0
