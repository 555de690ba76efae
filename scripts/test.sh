#!/usr/bin/env bash
# Every test, one command (as root: the tests checkpoint and restore real processes):
#
#   sudo ./scripts/test.sh               # setup (installs what is missing), then all the tests
#   sudo ./scripts/test.sh -- NAME       # extra arguments go to `cargo test` (a filter ...)
#
# 1. scripts/setup.sh: the Debian packages the tests need (nginx, nftables, postgresql ...);
# 2. cargo test --release --workspace --no-fail-fast: unit tests of every crate, then the
#    integration tests (crates/ferry/tests); --no-fail-fast so that a red integration test does
#    not hide the results of the crates after it;
# 3. ./scripts/bench.sh --quick (about 30 s): the benchmark harness in its small mode, so that it
#    never rots; it also checks every restored process's memory (skipped with a filter).
# Exits non-zero if any step failed. This is what .ci/run runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ "$(id -u)" -ne 0 ]; then
    echo "test: ferry's integration tests checkpoint real processes and must run as root: run  sudo $0 $*" >&2
    exit 1
fi

./scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi

if [ "${1:-}" = -- ]; then
    shift
    exec cargo test --release --workspace --no-fail-fast -- "$@"
fi

rc=0
cargo test --release --workspace --no-fail-fast || rc=$?
./scripts/bench.sh --quick || rc=$?
if [ $rc -ne 0 ]; then echo "test: FAILED (see above)" >&2; fi
exit $rc
