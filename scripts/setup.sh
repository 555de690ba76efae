#!/usr/bin/env bash
# Installs what ferry's demo and tests need on a Debian (12) machine, only what is missing:
#
#   sudo ./scripts/setup.sh          (idempotent: a second run installs nothing and takes ~1 s)
#
# The machine must already have git, a Rust toolchain (cargo) and a C compiler; the rest comes
# from Debian's packages with apt-get. Called by scripts/demo.sh and scripts/test.sh (and so by
# .ci/run); `SETUP_CHECK=1 ./scripts/setup.sh` only lists what is missing (exit 1 if anything).
set -euo pipefail

# What each package is for:
#   gcc libc6-dev   the C workloads of the tests and the demo's counter (cc crate)
#   python3         python workloads and test clients
#   procps          kill(1), ps(1)
#   iproute2        ip(8): network namespaces and veth pairs of the migration tests
#   util-linux      nsenter, setsid, setpriv, ipcrm
#   sqlite3         the sqlite3 mid-transaction test
#   nginx           the nginx tests (single process, master and workers)
#   nftables        nft(8): the network lock of --tcp-established (ferry itself runs it)
#   postgresql-15   the PostgreSQL tests (initdb, postgres, psql)
#   redis-server redis-tools   the redis tests of apps:: (redis-server; redis-cli, redis-check-rdb)
#   coreutils       mkfifo, mktemp ...
#   runc podman     the container tests (ferry as the criu of runc and Podman); podman brings
#                   conmon; Debian's crun has no CRIU support, the tests use --runtime runc
#   netavark        Podman's network backend the bridge scenarios define their networks for
#                   (without it Podman 4.3 falls back to CNI: "network not found")
#   iptables        what netavark 1.4 sets bridges and published ports up with (only recommended
#                   by its package: without it `podman run --network BRIDGE` fails with
#                   "netavark: No such file or directory")
#   busybox-static  the containers' root filesystems (built locally: no registry needed)
#   tar             podman import of those root filesystems
#   time            /usr/bin/time -f %M: ferry's peak memory in the big tmpfs test
PACKAGES=(gcc libc6-dev python3 procps iproute2 util-linux sqlite3 nginx nftables postgresql-15 redis-server redis-tools coreutils runc podman netavark iptables busybox-static tar time)

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: not a Debian-like system (no dpkg/apt-get); install by hand: ${PACKAGES[*]}" >&2
    exit 1
fi

MISSING=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || MISSING+=("$p")
done

if [ -n "${SETUP_CHECK:-}" ]; then
    if [ ${#MISSING[@]} -eq 0 ]; then echo "setup: everything is installed"; exit 0; fi
    echo "setup: missing: ${MISSING[*]}"
    exit 1
fi

if [ ${#MISSING[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${MISSING[*]}; run  sudo $0" >&2
        exit 1
    fi
    echo "setup: installing ${MISSING[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    # Packages with a service (nginx, postgresql) must not start it: the tests start their own
    # instances. policy-rc.d is the Debian way to say so; ours is removed again afterwards.
    POLICY=/usr/sbin/policy-rc.d
    OWN_POLICY=
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        OWN_POLICY=1
    fi
    cleanup() { if [ -n "$OWN_POLICY" ]; then rm -f "$POLICY"; fi; }
    trap cleanup EXIT
    # (other apt-get runs may hold the lock for a while: wait for it rather than fail)
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
    for p in "${MISSING[@]}"; do
        installed "$p" || { echo "setup: $p did not install" >&2; exit 1; }
    done
fi

# The Rust toolchain: rustup's (~/.cargo/bin) if present, else Debian's cargo (SETUP_NO_CARGO=1:
# the caller finds cargo itself, e.g. the demo under sudo, where it is the invoking user's).
if [ -n "${SETUP_NO_CARGO:-}" ]; then
    echo "setup: ready"
    exit 0
fi
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: cargo not found: install Rust (https://rustup.rs) or run  sudo $0" >&2
        exit 1
    fi
    echo "setup: no cargo found; installing Debian's cargo and rustc ..."
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq cargo rustc >/dev/null
fi
echo "setup: ready ($(cargo --version))"
