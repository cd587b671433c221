#!/usr/bin/env bash
# Installs the connector the way ThreatQ's Labs connectors are laid out:
#   ThreatQ v5 (on the host):     sudo scripts/install.sh
#   ThreatQ v6 (custom-connectors container, or any other root):
#                                 scripts/install.sh --root /path/to/container/rootfs
# Then run the first-run setup:   tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3
set -euo pipefail

root=""
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$binary" ]; then
  binary="$here/target/release/tq-conn-devo-ioc-exporter"
  if [ ! -x "$binary" ]; then
    (cd "$here" && cargo build --release --locked)
  fi
fi

# The seed connector's directories: configuration (holds the state and, on headless hosts, the 0600 secrets
# file) and logs.
install -d -m 0755 "$root/usr/local/bin"
install -d -m 0700 "$root/etc/tq_labs"
install -d -m 0755 "$root/var/log/tq_labs"
install -m 0755 "$binary" "$root/usr/local/bin/tq-conn-devo-ioc-exporter"
echo "installed $root/usr/local/bin/tq-conn-devo-ioc-exporter"
echo "next: tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3"
