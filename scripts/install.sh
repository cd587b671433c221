#!/usr/bin/env bash
# Installs the connector the way ThreatQ's Labs connectors are laid out, without a package manager (air-gapped
# ThreatQ v5 hosts, the v6 custom-connectors container):
#   ThreatQ v5 (on the host):     sudo ./install.sh
#   ThreatQ v6 (custom-connectors container, or any other root):
#                                 ./install.sh --root /path/to/container/rootfs
#   Remove it again:              sudo ./install.sh --uninstall [--root DIR]
#                                 (keeps /etc/tq_labs, /var/log/tq_labs and the cron file)
# The binary: --binary FILE, else the one beside this script (the release tarball), else the static build of
# this repository (target/package/, made by scripts/package --binary-only when missing).
# Then run the first-run setup:   tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3
set -euo pipefail

BIN=tq-conn-devo-ioc-exporter
root=""
binary=""
uninstall=false
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
    --uninstall) uninstall=true; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# /usr/local: this is the administrator's install, beside (never over) what the .deb or RPM put in /usr.
prefix="$root/usr/local"
installed=(
  "$prefix/bin/$BIN"
  "$prefix/share/man/man1/$BIN.1"
  "$prefix/share/bash-completion/completions/$BIN"
  "$prefix/share/zsh/site-functions/_$BIN"
  "$prefix/share/fish/vendor_completions.d/$BIN.fish"
)

if $uninstall; then
  for file in "${installed[@]}"; do
    if [ -e "$file" ]; then rm -f "$file" && echo "removed $file"; fi
  done
  echo "kept $root/etc/tq_labs/ (configuration, state, secrets), $root/var/log/tq_labs/ and any" \
       "$root/etc/cron.d/$BIN*: delete them by hand to remove everything"
  exit 0
fi

here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "$binary" ]; then
  if [ -x "$here/$BIN" ]; then
    binary="$here/$BIN"
  else
    repo="$(cd "$here/.." && pwd)"
    binary="$repo/target/package/$BIN"
    [ -x "$binary" ] || "$repo/scripts/package" --binary-only
  fi
fi

# The seed connector's directories: configuration (holds the state and, on headless hosts, the 0600 secrets
# file) and logs. Existing ones are left as they are.
[ -d "$root/etc/tq_labs" ] || install -d -m 0700 "$root/etc/tq_labs"
[ -d "$root/var/log/tq_labs" ] || install -d -m 0755 "$root/var/log/tq_labs"
for dir in "${installed[@]}"; do install -d -m 0755 "$(dirname "$dir")"; done
install -m 0755 "$binary" "${installed[0]}"
# The man page and completions come from the binary itself, so they match its --help.
"$binary" man > "${installed[1]}"
"$binary" completions bash > "${installed[2]}"
"$binary" completions zsh > "${installed[3]}"
"$binary" completions fish > "${installed[4]}"
chmod 0644 "${installed[@]:1}"
for file in "${installed[@]}"; do echo "installed $file"; done
if [ -z "$root" ] && [ -e "/usr/bin/$BIN" ]; then
  echo "note: /usr/bin/$BIN (from the .deb or RPM) is also installed; /usr/local/bin comes first in PATH"
fi
echo "next: $BIN -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3"
