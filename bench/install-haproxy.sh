#!/usr/bin/env bash
# Install HAProxy for the benchmark's proxy comparison (Debian/Ubuntu). Non-interactive; uses sudo only
# when not root. The benchmark starts its own haproxy on 127.0.0.1 with a generated config, so the
# distribution's service is kept from starting during the install (Debian's default haproxy.cfg has no
# frontend, but a service is not ours to run); this script does not enable or start it either.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    echo "haproxy is already installed: $(command -v haproxy || echo /usr/sbin/haproxy)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-haproxy.sh: apt-get not found; install haproxy with your package manager" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-haproxy.sh: run as root, or install sudo" >&2
    exit 1
fi

APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# Debian's policy-rc.d hook: exit status 101 tells the package scripts not to start services now.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    added_policy=1
fi
cleanup() {
    if [ "$added_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

"${APT[@]}" update
"${APT[@]}" install --no-install-recommends haproxy

if command -v haproxy >/dev/null 2>&1; then
    haproxy -v | head -n 1
elif [ -x /usr/sbin/haproxy ]; then
    /usr/sbin/haproxy -v | head -n 1
else
    echo "install-haproxy.sh: haproxy was installed but is not on PATH nor in /usr/sbin" >&2
    exit 1
fi
