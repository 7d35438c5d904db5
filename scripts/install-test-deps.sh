#!/usr/bin/env bash
# Real components the test suite uses: dnsmasq (a DNS server on a loopback port) for the discovery
# tests. Installs Debian's dnsmasq-base (the binary only: no system service listening on port 53) when
# it is missing and we may install; otherwise says so, and those tests are skipped (CI requires them).
set -euo pipefail
if command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
else
    echo "note: dnsmasq is not installed and cannot be installed here; the DNS discovery tests will be skipped" >&2
fi
