#!/usr/bin/env bash
# How fast are ferry dump and ferry restore, against the floor of the machine?
#
#   sudo ./scripts/bench.sh            # 64 MiB and 1024 MiB, 3 runs each
#   sudo ./scripts/bench.sh 16 256     # other sizes (MiB); RUNS=5 for more runs
#
# For each size, a process fills that much anonymous memory with random (incompressible, never
# zero) bytes and sleeps in pause(). Each run then measures, with wall-clock time:
#   dump     `ferry dump -t PID -D DIR`: freeze, write the image, kill the process;
#   restore  `ferry restore -D DIR -d`: verify the image, recreate the process, return once it
#            runs (the restored process is then asked to checksum its memory, which must match);
#   floor    in a separate small C program, in the same run: one write() of the same number of
#            bytes from memory into a new file on the same tmpfs, and one read() of it back into
#            fresh (untouched) memory. That is the least any dump or restore of that much memory
#            to that file system must do.
# The image directory is on tmpfs (/dev/shm, or a tmpfs mounted for the occasion), so the disk is
# not measured. Prints the medians as a markdown table on stdout; progress goes to stderr.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
FERRY=$TARGET_DIR/release/ferry
RUNS=${RUNS:-3}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(64 1024)

log() { printf '%s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "ferry needs root here (ptrace, clone3 with a chosen PID): run  sudo $0 $*"
for s in "${SIZES[@]}"; do [[ $s =~ ^[1-9][0-9]*$ ]] || die "sizes are whole MiB, not '$s'"; done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"

# --- build ------------------------------------------------------------------------------------
if command -v cargo >/dev/null 2>&1; then
    log "building ferry (release) ..."
    cargo build --release -p ferry --quiet --manifest-path "$ROOT/Cargo.toml"
elif [ ! -x "$FERRY" ]; then
    die "cargo not found and $FERRY is not built"
fi
[ -x "$FERRY" ] || die "$FERRY was not built"
CC=$(command -v cc || command -v gcc || true)
[ -n "$CC" ] || die "a C compiler (cc or gcc) is needed for the workload and the floor program"

# --- scratch space ------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
MOUNTED=
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    FAST=$(mktemp -d /dev/shm/ferry-bench.XXXXXX)
else
    FAST=$WORK/tmpfs
    mkdir "$FAST"
    mount -t tmpfs -o mode=0700 tmpfs "$FAST" || die "cannot mount a tmpfs at $FAST"
    MOUNTED=1
fi
[ "$(stat -f -c %T "$FAST")" = tmpfs ] || die "$FAST is not on tmpfs"
IMG=$FAST/image
PIDS=()

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do
        if [ -r "/proc/$p/exe" ] && [ "$(readlink "/proc/$p/exe")" = "$WORK/memhold" ]; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$IMG" "$FAST/floor.bin"
    if [ -n "$MOUNTED" ]; then umount "$FAST" || true; fi
    rm -rf "$FAST" "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

max=0
for s in "${SIZES[@]}"; do [ "$s" -gt "$max" ] && max=$s; done
avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
# Worst moment: the floor's buffer, its file on tmpfs and the fresh buffer it reads into.
[ "$avail" -gt $((max * 3 + 256)) ] || die "needs about $((max * 3 + 256)) MiB of free memory for $max MiB, have $avail MiB"

# --- the two C programs ---------------------------------------------------------------------------
cat >"$WORK/common.h" <<'EOF'
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

/* `mib` MiB of fresh anonymous memory, filled with xorshift64 output seeded from /dev/urandom. */
static uint64_t *random_memory(size_t mib)
{
	size_t len = mib << 20;
	uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	uint64_t s = 0;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, &s, sizeof s) != sizeof s)
		die("/dev/urandom");
	close(fd);
	s |= 1;
	for (size_t i = 0; i < len / 8; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = s;
	}
	return p;
}
EOF

cat >"$WORK/memhold.c" <<'EOF'
/* memhold MIB READY VERIFY: fill MIB MiB with random bytes, write their checksum to READY, then
 * sleep in pause(); on SIGUSR1 checksum the memory again and write it to VERIFY. */
#include "common.h"
#include <signal.h>

static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }

static uint64_t checksum(const uint64_t *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len / 8; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void put(const char *path, uint64_t v)
{
	char tmp[4096], line[32];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int n = snprintf(line, sizeof line, "%016llx\n", (unsigned long long)v);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, line, n) != n || close(fd) != 0 || rename(tmp, path) != 0)
		die(path);
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	size_t mib = strtoul(argv[1], NULL, 10);
	uint64_t *p = random_memory(mib);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	put(argv[2], checksum(p, mib << 20));
	for (;;) {
		pause();
		if (asked) {
			asked = 0;
			put(argv[3], checksum(p, mib << 20));
		}
	}
}
EOF

cat >"$WORK/floor.c" <<'EOF'
/* floor MIB PATH: time one write() of MIB MiB of random bytes from memory into a new file PATH,
 * then one read() of it back into fresh memory; prints "write_ms read_ms". */
#include "common.h"
#include <time.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	size_t mib = strtoul(argv[1], NULL, 10), len = mib << 20;
	const char *path = argv[2];
	char *src = (char *)random_memory(mib);
	unlink(path);

	double t0 = now_ms();
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die(path);
	for (size_t done = 0; done < len;) { /* one write() unless the kernel returns short */
		ssize_t n = write(fd, src + done, len - done);
		if (n <= 0)
			die("write");
		done += n;
	}
	if (close(fd) != 0)
		die("close");
	double t1 = now_ms();

	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		die("mmap");
	double t2 = now_ms();
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(path);
	for (size_t done = 0; done < len;) {
		ssize_t n = read(fd, dst + done, len - done);
		if (n <= 0)
			die("read");
		done += n;
	}
	close(fd);
	double t3 = now_ms();

	if (memcmp(src, dst, len) != 0) {
		fprintf(stderr, "floor: read back different bytes\n");
		return 1;
	}
	unlink(path);
	printf("%.3f %.3f\n", t1 - t0, t3 - t2);
	return 0;
}
EOF
"$CC" -O2 -o "$WORK/memhold" "$WORK/memhold.c" || die "cannot compile memhold.c"
"$CC" -O2 -o "$WORK/floor" "$WORK/floor.c" || die "cannot compile floor.c"

# --- helpers ---------------------------------------------------------------------------------------
# Start memhold in its own session with stdin/stdout on /dev/null and no other fds; print its PID.
start_memhold() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$WORK" "$@" <<'EOF'
import subprocess, sys
p = subprocess.Popen([sys.argv[1] + "/memhold"] + sys.argv[2:], cwd=sys.argv[1],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True,
                     start_new_session=True)
print(p.pid)
EOF
    else
        (
            cd "$WORK"
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}
                if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
            done
            exec setsid "$WORK/memhold" "$@" </dev/null >/dev/null
        ) &
        echo $!
    fi
}

# wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 20; i++)); do
        if "$@"; then return 0; fi
        sleep 0.05
    done
    die "timed out after ${secs}s waiting for $what"
}
gone() { [ ! -e "/proc/$1" ]; }
exists() { [ -s "$1" ]; }
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.1f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f×", a / b; else print "-" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# --- runs -----------------------------------------------------------------------------------------
# A VM whose balloon reports free pages to the host (virtio-balloon VIRTIO_BALLOON_F_REPORTING,
# feature bit 5) gives memory freed a few seconds ago back to the host; touching it again costs a
# host-side fault, which makes every first touch of fresh memory slow and its cost uneven.
for d in /sys/bus/virtio/devices/*; do
    if [ "$(cat "$d/device" 2>/dev/null)" = 0x0005 ] && [ "$(cut -c6 "$d/features" 2>/dev/null)" = 1 ]; then
        log "note: this VM's balloon reports free pages to the host: first touches of fresh memory (which ferry and the floor both make) are slow and uneven here"
        NOTE="; free page reporting on (fresh memory is slow and uneven to touch)"
    fi
done
LOAD=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "warning: load average is $LOAD on $(nproc) CPUs: other processes compete for the CPU and will slow both ferry and the floor"
fi
ROWS=()
for size in "${SIZES[@]}"; do
    dump=() restore=() fwrite=() fread=() isize=()
    for ((run = 1; run <= RUNS; run++)); do
        ready=$WORK/ready verify=$WORK/verify
        rm -f "$ready" "$verify" "$WORK/pidfile"
        rm -rf "$IMG"
        pid=$(start_memhold "$size" "$ready" "$verify")
        PIDS+=("$pid")
        wait_for $((60 + size / 8)) "memhold ($size MiB) to fill its memory" exists "$ready"

        t0=$EPOCHREALTIME
        "$FERRY" dump -t "$pid" -D "$IMG" || die "ferry dump of pid $pid ($size MiB) failed"
        t1=$EPOCHREALTIME
        dump+=("$(elapsed_ms "$t0" "$t1")")
        isize+=("$(find "$IMG" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')")

        wait_for 60 "pid $pid to be reaped after the dump" gone "$pid"

        t0=$EPOCHREALTIME
        "$FERRY" restore -D "$IMG" -d --pidfile "$WORK/pidfile" || die "ferry restore of pid $pid ($size MiB) failed"
        t1=$EPOCHREALTIME
        restore+=("$(elapsed_ms "$t0" "$t1")")
        [ "$(cat "$WORK/pidfile")" = "$pid" ] || die "restored pid $(cat "$WORK/pidfile"), expected $pid"

        kill -USR1 "$pid"
        wait_for $((60 + size / 8)) "the restored memhold to checksum its memory" exists "$verify"
        [ "$(cat "$verify")" = "$(cat "$ready")" ] || die "pid $pid: memory differs after restore"
        kill -KILL "$pid"
        wait_for 60 "pid $pid to be reaped" gone "$pid"
        rm -rf "$IMG"

        read -r w r < <("$WORK/floor" "$size" "$FAST/floor.bin") || die "floor program failed"
        fwrite+=("$w")
        fread+=("$r")
        log "$size MiB run $run/$RUNS: dump ${dump[-1]} ms (floor write $w ms), restore ${restore[-1]} ms (floor read $r ms), image $(mib "${isize[-1]}"), memory checked after restore"
    done
    md=$(median "${dump[@]}") mr=$(median "${restore[@]}") mw=$(median "${fwrite[@]}") mrd=$(median "${fread[@]}")
    ROWS+=("| $size MiB | $(mib "$(median "${isize[@]}")") | $md ms | $mw ms | $(ratio "$md" "$mw") | $mr ms | $mrd ms | $(ratio "$mr" "$mrd") |")
done

echo
echo "ferry $("$FERRY" --version | awk '{ print $2 }'), Linux $(uname -r), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average $LOAD at start${NOTE:-}, images on tmpfs ($FAST), median of $RUNS runs"
echo
echo "| memory | image size | dump (ferry) | floor: write() | dump / floor | restore -d (ferry) | floor: read() | restore / floor |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
