#!/usr/bin/env bash
# Install submodel and everything its tests and defaults need, on a Debian machine with Python 3.11.
#   - Debian packages: calibration code (JDK sources, Boost and wxWidgets example programs) and
#     promtool (package prometheus), haproxy (deploy/haproxy.cfg; the replica test runs its own),
#     installed when missing and we are root (or have sudo). A policy-rc.d that refuses service
#     starts is in place during the install, so no system prometheus or haproxy is started.
#   - torch 2.13.0 FIRST: a bare `torch` requirement would pull a multi-GB CUDA build.
#   - the project itself, editable, with its dev tools.
set -euo pipefail
cd "$(dirname "$0")"

DEBS=(openjdk-17-source libboost-doc wx3.2-examples prometheus haproxy)
missing=()
for pkg in "${DEBS[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
        echo "install.sh: need root or sudo for Debian packages: ${missing[*]}" >&2; exit 1
    fi
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # Debian's switch: exit 101 = do not start services
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q torch==2.13.0
"$PYTHON" -m pip install -q -e ".[dev]"
