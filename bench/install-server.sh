#!/usr/bin/env bash
# Install a server the benchmark runs (Debian/Ubuntu): install-server.sh COMMAND PACKAGE [FALLBACK]
# e.g. "install-server.sh nginx nginx-light nginx" or "install-server.sh haproxy haproxy".
# Non-interactive; uses sudo only when not root. The benchmark starts its own servers on 127.0.0.1 with
# generated configs, so the distribution's service is kept from starting during the install (nginx's
# would listen on port 80 on every interface); this script does not enable or start it either.
set -euo pipefail
COMMAND=$1
PACKAGE=$2
FALLBACK=${3:-}

if command -v "$COMMAND" >/dev/null 2>&1 || [ -x "/usr/sbin/$COMMAND" ]; then
    echo "$COMMAND is already installed: $(command -v "$COMMAND" || echo "/usr/sbin/$COMMAND")"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-server.sh: apt-get not found; install $COMMAND with your package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-server.sh: run as root, or install sudo" >&2
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
if ! "${APT[@]}" install --no-install-recommends "$PACKAGE"; then
    if [ -z "$FALLBACK" ]; then
        exit 1
    fi
    echo "install-server.sh: $PACKAGE is not available, installing $FALLBACK" >&2
    "${APT[@]}" install --no-install-recommends "$FALLBACK"
fi
if ! command -v "$COMMAND" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$COMMAND" ]; then
    echo "install-server.sh: $PACKAGE was installed but $COMMAND is not on PATH nor in /usr/sbin" >&2
    exit 1
fi
echo "$COMMAND installed"
