#!/usr/bin/env bash
# Debian tools the VM lab (tests/vm, `make test-vm`) needs: QEMU to boot the
# machines, mmdebstrap to build the base disk, genisoimage for NoCloud seeds
# and socat for guestfwd.
# Installed only when missing, like scripts/test-deps.sh.
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v genisoimage >/dev/null 2>&1 || need+=(genisoimage)
# socat carries a guest's connections to a host service (QEMU guestfwd cmd:).
command -v socat >/dev/null 2>&1 || need+=(socat)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "vm-deps: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
        exit 1
    fi
    echo "vm-deps: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
