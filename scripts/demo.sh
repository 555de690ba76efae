#!/usr/bin/env bash
# ferry in one minute: checkpoint a running counter, kill it, bring it back with the same PID,
# and watch it carry on counting from where it stopped.
#
#   sudo ./scripts/demo.sh        (or ./scripts/demo.sh as root; works from any directory)
#
# Needs: root (ptrace of any process, clone3 with a chosen PID), cargo (to build ferry if it is
# not built yet), a C compiler (cc/gcc) for the tiny counter; scripts/setup.sh installs whatever
# else the demo and the tests need (only what is missing). Everything it creates lives in one
# temporary directory that is removed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
FERRY=$TARGET_DIR/release/ferry

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
indent() { sed 's/^/   /'; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "ferry needs root here (ptrace of any process, clone3 with a chosen PID): run  sudo $0"
fi

# --- set-up: the Debian packages ferry's demo and tests need (only those missing) -------------
SETUP_NO_CARGO=1 "$ROOT/scripts/setup.sh" || die "scripts/setup.sh failed (see above)"

# --- build ------------------------------------------------------------------------------------
find_cargo() {
    if command -v cargo >/dev/null 2>&1; then command -v cargo; return; fi
    local h
    for h in "$HOME" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)"}; do
        if [ -n "$h" ] && [ -x "$h/.cargo/bin/cargo" ]; then echo "$h/.cargo/bin/cargo"; return; fi
    done
}
CARGO=$(find_cargo || true)
if [ -n "$CARGO" ]; then
    echo "building ferry (release; nothing to do if it is up to date) ..."
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ "$(stat -c %U "$ROOT")" = "$SUDO_USER" ]; then
        # Build as the user who owns the tree, so target/ does not end up owned by root.
        sudo -u "$SUDO_USER" env PATH="$(dirname "$CARGO"):$PATH" "$CARGO" build --release -p ferry --quiet \
            --manifest-path "$ROOT/Cargo.toml"
    else
        "$CARGO" build --release -p ferry --quiet --manifest-path "$ROOT/Cargo.toml"
    fi
elif [ -x "$FERRY" ]; then
    echo "cargo not found; using the existing $FERRY"
else
    die "cargo not found and $FERRY is not built: install Rust (https://rustup.rs) and run again"
fi
[ -x "$FERRY" ] || die "$FERRY was not built"

CC=$(command -v cc || command -v gcc || true)
if [ -z "$CC" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "no C compiler found; installing gcc (needed for the demo's counter) ..."
        apt-get install -y -qq gcc >/dev/null || die "could not install gcc"
        CC=$(command -v cc || command -v gcc) || die "gcc did not install a compiler"
    else
        die "a C compiler (cc or gcc) is needed to build the demo's counter"
    fi
fi

# --- the counter --------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/ferry-demo.XXXXXX)
IMG=$WORK/image
LOG=$WORK/counter.log
PIDFILE=$WORK/restored.pid
PID=

cleanup() {
    local rc=$?
    if [ -n "$PID" ] && [ -r "/proc/$PID/exe" ] && [ "$(readlink "/proc/$PID/exe")" = "$WORK/counter" ]; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/counter.c" <<'EOF'
/* Prints "counter PID: N", N = 0, 1, 2 ..., every 0.2 s. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	char line[64];
	for (unsigned long n = 0;; n++) {
		int len = snprintf(line, sizeof line, "counter %d: %lu\n", (int)getpid(), n);
		if (write(1, line, len) != len)
			return 1;
		struct timespec ts = { 0, 200 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
EOF
"$CC" -O2 -o "$WORK/counter" "$WORK/counter.c" || die "cannot compile the counter"

# Start it like a daemon: its own session, stdin from /dev/null, stdout and stderr to the log,
# no other file descriptors (ferry refuses fds it cannot restore, e.g. a pipe to this shell).
start_counter() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$LOG" "$WORK/counter" "$WORK" <<'EOF'
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen([sys.argv[2]], cwd=sys.argv[3], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
print(p.pid)
EOF
    else
        (
            cd "$WORK"
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}
                if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
            done
            exec setsid "$WORK/counter" </dev/null >>"$LOG" 2>&1
        ) &
        echo $!
    fi
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.1 s until COMMAND succeeds.
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    die "timed out after ${secs}s waiting for $what"
}
lines() { wc -l <"$LOG"; }
has_lines() { [ -f "$LOG" ] && [ "$(lines)" -ge "$1" ]; }
gone() { [ ! -e "/proc/$1" ]; }
last_number() { tail -n 1 "$LOG" | sed -n 's/^counter [0-9]*: \([0-9]*\)$/\1/p'; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

PID=$(start_counter)
say "a counter is running as pid $PID, printing a number every 0.2 s to $LOG"
wait_for 10 "the counter's first lines" has_lines 5
tail -n 5 "$LOG" | indent

say "ferry dump -t $PID -D $IMG        (freezes it, writes the image, kills it)"
t=$(date +%s%N)
if ! "$FERRY" -v dump -t "$PID" -D "$IMG" 2>&1 | indent; then die "ferry dump failed (see above)"; fi
echo "   ferry dump took $(ms_since "$t") ms"
LAST=$(last_number)
[ -n "$LAST" ] || die "cannot read the last number from $LOG"
printf '   last line before the dump: %s\n' "$(tail -n 1 "$LOG")"

# The old process must be gone (and reaped by its parent, which may be slow) before its PID
# can be given back.
echo "   waiting for pid $PID to disappear from /proc ..."
wait_for 30 "pid $PID to be reaped" gone "$PID"
sleep 0.5
n=$(lines)
echo "   pid $PID is gone, and the log is still at line $n (nothing is running)"

say "ferry inspect $IMG   (first lines)"
"$FERRY" inspect "$IMG" | head -n 12 | indent
echo "   ... ($("$FERRY" inspect "$IMG" | wc -l) lines; --json prints everything)"

say "ferry restore -D $IMG -d --pidfile $PIDFILE"
t=$(date +%s%N)
if ! "$FERRY" -v restore -D "$IMG" -d --pidfile "$PIDFILE" 2>&1 | indent; then die "ferry restore failed (see above)"; fi
echo "   ferry restore took $(ms_since "$t") ms"
NEWPID=$(cat "$PIDFILE")
[ "$NEWPID" = "$PID" ] || die "restored pid $NEWPID, expected $PID"
echo "   restored as pid $NEWPID: $(ps -o stat=,cmd= -p "$NEWPID" 2>/dev/null | sed 's/^ *//' || true)"
[ -e "/proc/$NEWPID" ] || die "the restored process is not running"

say "the log carries on from where it stopped"
wait_for 10 "the restored counter to print" has_lines $((n + 5))
sed -n "$((n - 2)),$((n + 5))p" "$LOG" | awk -v n=3 '{ printf "   %s%s\n", $0, (NR == n ? "    <- last line before the dump" : (NR == n + 1 ? "    <- first line of the restored process" : "")) }'
FIRST=$(sed -n "$((n + 1))p" "$LOG" | sed -n 's/^counter [0-9]*: \([0-9]*\)$/\1/p')
if [ "$FIRST" = "$((LAST + 1))" ]; then
    echo "   $LAST -> $FIRST: same pid, same counter, no restart from 0"
else
    die "expected the restored counter to print $((LAST + 1)) first, but it printed '$FIRST'"
fi

say "done: killing pid $PID and removing $WORK"
kill -KILL "$PID"
PID=
