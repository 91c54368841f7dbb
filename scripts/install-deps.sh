#!/usr/bin/env bash
# Installs what the test suites need on Debian 12, idempotently (a second run changes
# nothing and makes no network access when everything is present).
#
#   bash scripts/install-deps.sh        (as root)
#
# - Debian packages: the servers and clients of scripts/test-servers.sh, the network
#   tools for the namespace tests, strace; linux-perf and shellcheck are optional.
# - Installed servers are never left running as system services: they are kept from
#   starting during the install and stopped/disabled afterwards, with or without systemd
#   (the tests start their own instances on random ports).
# - CPython's `test` package for the interpreter scripts/test-cpython.sh will use.
# - Rust: only checked (rustfmt and clippy must come with the toolchain; nothing outside
#   the package registries is reachable from CI).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel install) instead of failing.
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)

REQUIRED=(redis-server redis-tools wrk haproxy curl iproute2 ethtool strace procps coreutils gcc)
OPTIONAL=(linux-perf shellcheck)
SERVICES=(redis-server nginx haproxy)

APT_UPDATED=0

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

apt_update_once() {
    if ((APT_UPDATED == 0)); then
        info "apt-get update"
        apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
        APT_UPDATED=1
    fi
}

# A policy-rc.d that denies every start while we install, so the packages' postinst
# scripts cannot launch redis/nginx/haproxy on their default ports. An existing policy
# (containers often have one) is kept as it is.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
deny_service_starts() {
    if [[ ! -e "$POLICY" ]]; then
        printf '#!/bin/sh\n# temporary, from ringshim scripts/install-deps.sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        OWN_POLICY=1
    fi
}
restore_policy() {
    if ((OWN_POLICY == 1)); then
        rm -f "$POLICY"
        OWN_POLICY=0
    fi
}
trap restore_policy EXIT

apt_install() {
    ((${#@} > 0)) || return 0
    apt_update_once
    deny_service_starts
    info "apt-get install $*"
    apt-get install "${APT_OPTS[@]}" "$@"
}

# Stops and disables the Debian units of the servers if anything started them: with
# systemd through systemctl, without it through the init script (which stops by the pid
# file). Never by process name: another nginx/redis on the machine is not ours to kill.
quiesce_services() {
    local svc
    for svc in "${SERVICES[@]}"; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
            if systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
                if systemctl is-active --quiet "$svc" || systemctl is-enabled --quiet "$svc" 2>/dev/null; then
                    info "systemctl disable --now $svc"
                    systemctl disable --now "$svc" >/dev/null 2>&1 || warn "could not stop/disable $svc"
                fi
            fi
        elif [[ -x "/etc/init.d/$svc" ]]; then
            # Only if its pid file names a live process: the init script's stop is a no-op
            # otherwise, and some print alarming messages.
            local pidf
            for pidf in "/run/$svc.pid" "/run/redis/$svc.pid" "/var/run/$svc.pid"; do
                if [[ -s "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
                    info "/etc/init.d/$svc stop"
                    "/etc/init.d/$svc" stop >/dev/null 2>&1 || warn "could not stop $svc"
                    break
                fi
            done
            # sysv links: keep it from starting at the next boot.
            if command -v update-rc.d >/dev/null; then
                update-rc.d "$svc" disable >/dev/null 2>&1 || true
            fi
        fi
    done
}

# The interpreter test-cpython.sh will run: $PYTHON, else python3 on PATH, resolved to
# the real executable (the pyenv shim is a script).
python_exe() {
    "${PYTHON:-python3}" -c 'import sys; print(sys.executable)'
}

main() {
    [[ "$(id -u)" == 0 ]] || die "run as root (apt-get install)"
    command -v apt-get >/dev/null || die "apt-get not found: this script knows Debian only"

    section "Debian packages"
    local -a missing=() p
    for p in "${REQUIRED[@]}"; do
        installed "$p" || missing+=("$p")
    done
    # nginx: nginx-light is enough (static files, proxy, upstream keepalive); accept any
    # installed flavour.
    if ! command -v nginx >/dev/null && ! installed nginx-light && ! installed nginx; then
        apt_update_once
        if apt-cache show nginx-light >/dev/null 2>&1; then missing+=(nginx-light); else missing+=(nginx); fi
    fi
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    else
        info "required packages present"
    fi
    local -a opt=()
    for p in "${OPTIONAL[@]}"; do
        installed "$p" || opt+=("$p")
    done
    if ((${#opt[@]} > 0)); then
        # Optional: perf for the benchmarks, shellcheck for linting these scripts.
        apt_install "${opt[@]}" || warn "optional packages not installed: ${opt[*]}"
    fi
    restore_policy
    quiesce_services

    section "CPython test package"
    local py ver
    py="$(python_exe)" || die "no python3 found (set PYTHON=/path/to/python3)"
    if "$py" -c 'import test.test_socket, test.libregrtest' 2>/dev/null; then
        info "$py has the test package"
    else
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        if [[ "$py" == /usr/bin/python3* ]]; then
            apt_install "libpython$ver-testsuite"
            "$py" -c 'import test.test_socket' || die "$py still lacks test.test_socket"
        else
            die "$py ($ver) lacks CPython's test package and is not Debian's python; use an interpreter built with its tests, e.g. PYTHON=/usr/bin/python3 after 'apt-get install libpython3.11-testsuite'"
        fi
    fi

    section "Rust toolchain"
    require_cmd cargo rustc
    cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing from the toolchain (rustup component add rustfmt)"
    cargo clippy --version >/dev/null 2>&1 || die "clippy missing from the toolchain (rustup component add clippy)"
    info "$(cargo --version), $(cargo clippy --version)"

    section "Kernel features the tests use"
    if ip netns list >/dev/null 2>&1; then
        info "network namespaces: available"
    else
        warn "ip netns unavailable (namespace tests will fail under CI=true)"
    fi
    info "io_uring_disabled = $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'n/a (not restricted)')"
    log "install-deps: done"
}

main "$@"
