#!/usr/bin/env bash
# Install nginx for the benchmark (Debian/Ubuntu): nginx-light when the distribution has it, else nginx.
# Non-interactive; uses sudo only when not root. The benchmark starts its own nginx on 127.0.0.1 with a
# generated config, so the distribution's service is kept from starting during the install (it would
# listen on port 80 on every interface); this script does not enable or start it either.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "nginx is already installed: $(command -v nginx || echo /usr/sbin/nginx)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nginx.sh: apt-get not found; install nginx with your package manager" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-nginx.sh: run as root, or install sudo" >&2
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
if ! "${APT[@]}" install --no-install-recommends nginx-light; then
    echo "install-nginx.sh: nginx-light is not available, installing nginx" >&2
    "${APT[@]}" install --no-install-recommends nginx
fi

if command -v nginx >/dev/null 2>&1; then
    nginx -v
elif [ -x /usr/sbin/nginx ]; then
    /usr/sbin/nginx -v
else
    echo "install-nginx.sh: nginx was installed but is not on PATH nor in /usr/sbin" >&2
    exit 1
fi
