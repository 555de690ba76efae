#!/usr/bin/env bash
# How fast are ferry dump and ferry restore, against the floor of the machine (and CRIU)?
#
#   sudo ./scripts/bench.sh              # tiny (2 MiB), 64 MiB, 1 GiB and 4 GiB; 3 runs each
#   sudo ./scripts/bench.sh 16 256       # other sizes (MiB); RUNS=5 for more runs
#   sudo ./scripts/bench.sh --quick      # CI: tiny and 16 MiB, 3 runs (well under 30 s)
#   sudo CRIU=/path/to/criu ./scripts/bench.sh   # also CRIU's dump and restore, same processes
#   sudo FERRY=/path/to/other/ferry ./scripts/bench.sh   # another ferry binary (before/after)
#   DUMP_ARGS=--compress ...             # extra arguments for ferry dump
#
# For each size, a process fills that much anonymous memory with random (incompressible, never
# zero) bytes and sleeps in pause(). Each run then measures, with wall-clock time (taken by a
# small wrapper, `maxrss`, from its fork of the command to the command's exit: the command's
# exec, work and exit, not the shell's own fork, which costs ~1.3 ms in this VM):
#   dump     `ferry dump -t PID -D DIR`: freeze, write the image, kill the process; "frozen" is
#            ferry's own figure (freeze to committed image);
#   dump -R  before that, `ferry dump -R` of the same process (it keeps running): the tree runs
#            again once a copy-on-write snapshot of its memory is taken, and the pages are written
#            from the snapshot; "-R frozen" is ferry's figure (freeze to running again, plus the
#            moment it is frozen again to reap the snapshot);
#   restore  `ferry restore -D DIR -d`: verify the image, recreate the process, return once it
#            runs (the restored process is then asked to checksum its memory, which must match);
#   pre-copy, post-copy
#            `ferry migrate --pre-copy` / `--post-copy` of another such process (started with
#            `ferry run --pidns`, so that its copy can be restored on the same machine under new
#            pids) to a `ferry serve` on 127.0.0.1: the downtime ferry reports (freeze to the
#            tree running at the destination), then the moved process checksums its memory
#            (post-copy: while the rest of it streams in);
#   RSS      ferry's own peak resident set (getrusage of the ferry process, its peak over the
#            dump or the restore);
#   floor    in a separate small C program, in the same run: one write() of the same number of
#            bytes from memory into a new file on the same tmpfs, and one read() of it back into
#            fresh (untouched) memory. That is the least any dump or restore of that much memory
#            to that file system must do;
#   criu     with CRIU=/path/to/criu: `criu dump -t PID -D DIR` and `criu restore -d -D DIR` of
#            an identical process, checked the same way.
# The three are interleaved within each run (their order rotates from run to run) so that the
# noise of a shared machine hits them alike; the table shows medians and ratios.
# The image directory is on tmpfs (/dev/shm, or a tmpfs mounted for the occasion), so the disk is
# not measured. Prints the medians as a markdown table on stdout; progress goes to stderr.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
FERRY=${FERRY:-$TARGET_DIR/release/ferry}
RUNS=${RUNS:-3}
QUICK=
if [ "${1:-}" = --quick ]; then
    QUICK=1
    shift
fi
SIZES=("$@")
# "tiny" is a 2 MiB process: the fixed costs (freeze, injection, fork, commit) dominate.
if [ ${#SIZES[@]} -eq 0 ]; then
    if [ -n "$QUICK" ]; then SIZES=(tiny 16); else SIZES=(tiny 64 1024 4096); fi
fi

log() { printf '%s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "ferry needs root here (ptrace, clone3 with a chosen PID): run  sudo $0 $*"
for s in "${SIZES[@]}"; do [[ $s =~ ^([1-9][0-9]*|tiny)$ ]] || die "sizes are whole MiB or 'tiny', not '$s'"; done
[ -z "${CRIU:-}" ] || [ -x "$CRIU" ] || die "CRIU=$CRIU is not an executable"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"

# --- build ------------------------------------------------------------------------------------
if [ "$FERRY" != "$TARGET_DIR/release/ferry" ]; then
    [ -x "$FERRY" ] || die "FERRY=$FERRY is not an executable"
elif command -v cargo >/dev/null 2>&1; then
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
INITS=()
SERVE=

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do
        if [ -r "/proc/$p/exe" ] && [ "$(readlink "/proc/$p/exe")" = "$WORK/memhold" ]; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    for p in "${INITS[@]}"; do
        if [ -r "/proc/$p/cmdline" ] && grep -q __init "/proc/$p/cmdline"; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [ -n "$SERVE" ]; then kill "$SERVE" 2>/dev/null || true; fi
    for p in ${PYPID:-}; do
        if [ -r "/proc/$p/cmdline" ] && grep -q bigdict "/proc/$p/cmdline"; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$IMG" "$IMG.z" "$FAST/floor.bin"
    if [ -n "$MOUNTED" ]; then umount "$FAST" || true; fi
    rm -rf "$FAST" "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mib_of() { if [ "$1" = tiny ]; then echo 2; else echo "$1"; fi; }
max=0
for s in "${SIZES[@]}"; do [ "$(mib_of "$s")" -gt "$max" ] && max=$(mib_of "$s"); done
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
cat >"$WORK/maxrss.c" <<'EOF'
/* maxrss OUT CMD...: run CMD, write its peak resident set (KiB, getrusage via wait4) and its
 * wall time (ms, from the fork to its exit) to OUT, and exit with its status. */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	double t0 = now_ms();
	pid_t p = fork();
	if (p < 0)
		return 2;
	if (p == 0) {
		execvp(argv[2], argv + 2);
		_exit(127);
	}
	int st;
	struct rusage ru;
	if (wait4(p, &st, 0, &ru) != p)
		return 2;
	double ms = now_ms() - t0;
	FILE *f = fopen(argv[1], "w");
	if (!f)
		return 2;
	fprintf(f, "%ld %.1f\n", ru.ru_maxrss, ms);
	fclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
EOF
"$CC" -O2 -o "$WORK/memhold" "$WORK/memhold.c" || die "cannot compile memhold.c"
"$CC" -O2 -o "$WORK/maxrss" "$WORK/maxrss.c" || die "cannot compile maxrss.c"
"$CC" -O2 -o "$WORK/copybench" "$ROOT/scripts/copybench.c" || die "cannot compile scripts/copybench.c"
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
# One ferry (or CRIU) dump + restore of a fresh memhold of $2 MiB, checked; appends to the
# arrays of that tool.
run_tool() {
    local tool=$1 size=$2 ready=$WORK/ready verify=$WORK/verify pid t0 t1 out
    rm -f "$ready" "$verify" "$WORK/pidfile"
    rm -rf "$IMG"
    pid=$(start_memhold "$size" "$ready" "$verify")
    PIDS+=("$pid")
    wait_for $((60 + size / 8)) "memhold ($size MiB) to fill its memory" exists "$ready"
    if [ "$tool" = ferry ]; then
        # shellcheck disable=SC2086
        out=$("$WORK/maxrss" "$WORK/rss" "$FERRY" -v dump -R ${DUMP_ARGS:-} -t "$pid" -D "$IMG" 2>&1) ||
            die "ferry dump -R of pid $pid ($size MiB) failed: $out"
        f_rdump+=("$(cut -d' ' -f2 "$WORK/rss")")
        f_rfrozen+=("$(sed -n 's/.*(frozen \([0-9.]*\) ms).*/\1/p' <<<"$out" | tail -1)")
        rm -rf "$IMG"
        # shellcheck disable=SC2086
        out=$("$WORK/maxrss" "$WORK/rss" "$FERRY" -v dump ${DUMP_ARGS:-} -t "$pid" -D "$IMG" 2>&1) ||
            die "ferry dump of pid $pid ($size MiB) failed: $out"
        f_dump+=("$(cut -d' ' -f2 "$WORK/rss")")
        f_frozen+=("$(sed -n 's/.*(frozen \([0-9.]*\) ms).*/\1/p' <<<"$out" | tail -1)")
        f_drss+=("$(cut -d' ' -f1 "$WORK/rss")")
        f_size+=("$(find "$IMG" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')")
    else
        mkdir -p "$IMG"
        "$WORK/maxrss" "$WORK/rss" "$CRIU" dump -t "$pid" -D "$IMG" -o dump.log >/dev/null 2>&1 ||
            die "criu dump of pid $pid ($size MiB) failed: see $IMG/dump.log"
        c_dump+=("$(cut -d' ' -f2 "$WORK/rss")")
        c_size+=("$(find "$IMG" -type f -name '*.img' -printf '%s\n' | awk '{ s += $1 } END { print s }')")
    fi
    wait_for 60 "pid $pid to be reaped after the dump" gone "$pid"
    if [ "$tool" = ferry ]; then
        # (Not captured with $(...): the restored process gets ferry's stderr in place of the
        # one it had, and would hold the capture open.)
        "$WORK/maxrss" "$WORK/rss" "$FERRY" restore -D "$IMG" -d --pidfile "$WORK/pidfile" >"$WORK/out" 2>&1 ||
            die "ferry restore of pid $pid ($size MiB) failed: $(cat "$WORK/out")"
        f_restore+=("$(cut -d' ' -f2 "$WORK/rss")")
        f_rrss+=("$(cut -d' ' -f1 "$WORK/rss")")
    else
        "$WORK/maxrss" "$WORK/rss" "$CRIU" restore -d -D "$IMG" -o restore.log --pidfile "$WORK/pidfile" >/dev/null 2>&1 ||
            die "criu restore of pid $pid ($size MiB) failed: see $IMG/restore.log"
        c_restore+=("$(cut -d' ' -f2 "$WORK/rss")")
    fi
    [ "$(cat "$WORK/pidfile")" = "$pid" ] || die "$tool restored pid $(cat "$WORK/pidfile"), expected $pid"
    kill -USR1 "$pid"
    wait_for $((60 + size / 8)) "the restored memhold to checksum its memory" exists "$verify"
    [ "$(cat "$verify")" = "$(cat "$ready")" ] || die "pid $pid: memory differs after the $tool restore"
    kill -KILL "$pid"
    wait_for 60 "pid $pid to be reaped" gone "$pid"
    rm -rf "$IMG"
}

# One `ferry migrate --$1` of a fresh memhold of $2 MiB in a pid namespace of its own, to the
# `ferry serve` on 127.0.0.1:$PORT, checked; appends the downtime to m_pre or m_post.
run_migrate() {
    local mode=$1 size=$2 ready=$WORK/mready verify=$WORK/mverify init out new pid
    rm -f "$ready" "$verify" "$WORK/init.pid"
    python3 - "$FERRY" "$WORK" "$size" "$ready" "$verify" <<'EOF' || die "ferry run --pidns failed"
import subprocess, sys
ferry, work = sys.argv[1], sys.argv[2]
subprocess.run([ferry, "run", "--pidns", "-d", "--pidfile", work + "/init.pid", "--", work + "/memhold"] + sys.argv[3:],
               cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True, check=True)
EOF
    init=$(cat "$WORK/init.pid")
    INITS+=("$init")
    wait_for $((60 + size / 8)) "memhold ($size MiB, pid namespace of $init) to fill its memory" exists "$ready"
    out=$("$FERRY" -v migrate -t "$init" --to "127.0.0.1:$PORT" --auth "$WORK/keys" "--$mode" 2>&1) ||
        die "ferry migrate --$mode of pid $init ($size MiB) failed: $out"
    new=$(sed -n 's/.*(pid \([0-9]*\) there).*/\1/p' <<<"$out" | tail -1)
    [ -n "$new" ] || die "ferry migrate --$mode printed no destination pid: $out"
    INITS+=("$new")
    case $mode in
        pre-copy) m_pre+=("$(sed -n 's/.* downtime_ms=\([0-9]*\).*/\1/p' <<<"$out" | tail -1)") ;;
        post-copy) m_post+=("$(sed -n 's/.* downtime_ms=\([0-9]*\).*/\1/p' <<<"$out" | tail -1)") ;;
    esac
    wait_for 60 "the source ($init) to end after the migration" gone "$init"
    pid=$(awk '{ print $1 }' "/proc/$new/task/$new/children")
    kill -USR1 "$pid"
    wait_for $((60 + size / 8)) "the moved memhold to checksum its memory" exists "$verify"
    [ "$(cat "$verify")" = "$(cat "$ready")" ] || die "memory differs after ferry migrate --$mode"
    kill -KILL "$new"
    wait_for 60 "pid $new to be reaped" gone "$new"
}

run_floor() {
    local w r
    read -r w r < <("$WORK/floor" "$1" "$FAST/floor.bin") || die "floor program failed"
    fwrite+=("$w")
    fread+=("$r")
}

# The destination of the migrations: this machine, on loopback.
MIGRATE=
if command -v python3 >/dev/null 2>&1 && [ -z "${NO_MIGRATE:-}" ]; then
    "$FERRY" keygen "$WORK/keys" >/dev/null 2>&1 || die "ferry keygen failed"
    PORT=$((20000 + RANDOM % 20000))
    "$FERRY" serve --listen "127.0.0.1:$PORT" --auth "$WORK/keys" --staging "$FAST" >"$WORK/serve.log" 2>&1 &
    SERVE=$!
    MIGRATE=1
else
    log "note: no migrations (NO_MIGRATE set, or no python3 to start the workload with its fds closed)"
fi

ROWS=()
CROWS=()
for size in "${SIZES[@]}"; do
    mib=$(mib_of "$size")
    label="$size MiB"
    [ "$size" = tiny ] && label="tiny (2 MiB)"
    m_pre=() m_post=()
    f_dump=() f_frozen=() f_rdump=() f_rfrozen=() f_restore=() f_size=() f_drss=() f_rrss=() fwrite=() fread=() c_dump=() c_restore=() c_size=()
    steps=(ferry floor)
    [ -n "$MIGRATE" ] && steps+=(pre-copy post-copy)
    [ -n "${CRIU:-}" ] && steps+=(criu)
    for ((run = 1; run <= RUNS; run++)); do
        # Rotate the order from run to run: ferry floor criu, floor criu ferry, ...
        for ((k = 0; k < ${#steps[@]}; k++)); do
            step=${steps[$(((k + run - 1) % ${#steps[@]}))]}
            case $step in
                ferry) run_tool ferry "$mib" ;;
                criu) run_tool criu "$mib" ;;
                floor) run_floor "$mib" ;;
                pre-copy | post-copy) run_migrate "$step" "$mib" ;;
            esac
        done
        msg="$label run $run/$RUNS: ferry dump ${f_dump[-1]} ms (frozen ${f_frozen[-1]} ms, RSS ${f_drss[-1]} KiB), dump -R ${f_rdump[-1]} ms (frozen ${f_rfrozen[-1]} ms), restore ${f_restore[-1]} ms (RSS ${f_rrss[-1]} KiB); floor write ${fwrite[-1]} ms, read ${fread[-1]} ms"
        [ -n "$MIGRATE" ] && msg+="; migrate downtime pre-copy ${m_pre[-1]} ms, post-copy ${m_post[-1]} ms"
        [ -n "${CRIU:-}" ] && msg+="; criu dump ${c_dump[-1]} ms, restore ${c_restore[-1]} ms"
        log "$msg"
    done
    md=$(median "${f_dump[@]}") mr=$(median "${f_restore[@]}") mw=$(median "${fwrite[@]}") mrd=$(median "${fread[@]}")
    rss=$(awk -v a="$(median "${f_drss[@]}")" -v b="$(median "${f_rrss[@]}")" 'BEGIN { printf "%.0f / %.0f MiB", a / 1024, b / 1024 }')
    pre=- post=-
    if [ -n "$MIGRATE" ]; then pre="$(median "${m_pre[@]}") ms" post="$(median "${m_post[@]}") ms"; fi
    ROWS+=("| $label | $(mib "$(median "${f_size[@]}")") | $md ms | $(median "${f_frozen[@]}") ms | $(median "${f_rdump[@]}") ms | $(median "${f_rfrozen[@]}") ms | $pre | $post | $mw ms | $(ratio "$md" "$mw") | $mr ms | $mrd ms | $(ratio "$mr" "$mrd") | $rss |")
    if [ -n "${CRIU:-}" ]; then
        cd_=$(median "${c_dump[@]}") cr=$(median "${c_restore[@]}")
        CROWS+=("| $label | $(mib "$(median "${c_size[@]}")") | $cd_ ms | $(ratio "$md" "$cd_") | $cr ms | $(ratio "$mr" "$cr") |")
    fi
done

# --- the ways of copying pages, measured alone (scripts/copybench.c) -----------------------------
COPY_MIB=${COPY_MIB:-1024}
[ -n "$QUICK" ] && COPY_MIB=16
declare -A copies=()
for ((run = 1; run <= RUNS; run++)); do
    while read -r name ms; do copies[$name]+="$ms "; done < <("$WORK/copybench" "$COPY_MIB" "$FAST") ||
        die "copybench failed"
done

# --- compression on a realistic heap: python3 with a large dict ----------------------------------
# Dumped once plain with -R (it keeps running), then with --compress; the compressed image is
# restored and the interpreter checks every entry of its dict.
PY_ROW=
if command -v python3 >/dev/null 2>&1 && [ -z "${NO_PY:-}" ]; then
    entries=${PY_ENTRIES:-1000000}
    [ -n "$QUICK" ] && entries=${PY_ENTRIES:-200000}
    PYW=$WORK/py
    mkdir -p "$PYW"
    pid=$(python3 - "$ROOT/crates/ferry-workloads/py/bigdict.py" "$PYW" "$entries" <<'EOF'
import subprocess, sys
p = subprocess.Popen(["python3"] + sys.argv[1:], cwd=sys.argv[2], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                     start_new_session=True)
print(p.pid)
EOF
)
    PYPID=$pid
    wait_for 120 "python3 bigdict.py to build its dict" exists "$PYW/ready"
    rm -rf "$IMG" "$IMG.z"
    t0=$EPOCHREALTIME
    "$FERRY" dump -R -t "$pid" -D "$IMG" 2>"$WORK/out" || die "ferry dump -R of python3 failed: $(cat "$WORK/out")"
    t1=$EPOCHREALTIME
    "$FERRY" dump --compress -t "$pid" -D "$IMG.z" 2>"$WORK/out" || die "ferry dump --compress of python3 failed: $(cat "$WORK/out")"
    t2=$EPOCHREALTIME
    wait_for 60 "python3 ($pid) to be reaped after the dump" gone "$pid"
    plain=$(find "$IMG" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
    packed=$(find "$IMG.z" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
    t3=$EPOCHREALTIME
    "$FERRY" restore -D "$IMG.z" -d --pidfile "$WORK/pidfile" >"$WORK/out" 2>&1 || die "ferry restore of the compressed python3 image failed: $(cat "$WORK/out")"
    t4=$EPOCHREALTIME
    kill -USR2 "$pid"
    wait_for 120 "the restored python3 to check its dict" exists "$PYW/result"
    [ "$(cat "$PYW/result")" = PASS ] || die "python3 after restore from the compressed image: $(cat "$PYW/result")"
    wait_for 60 "python3 ($pid) to exit" gone "$pid"
    rm -rf "$IMG" "$IMG.z"
    PY_ROW="| python3, dict of $entries entries | $(mib "$plain") in $(elapsed_ms "$t0" "$t1") ms (-R) | $(mib "$packed") in $(elapsed_ms "$t1" "$t2") ms | $(awk -v a="$plain" -v b="$packed" 'BEGIN { printf "%.1f×", a / b }') | $(elapsed_ms "$t3" "$t4") ms, dict checked |"
    log "python3: plain $(mib "$plain"), compressed $(mib "$packed")"
fi

echo
echo "ferry $("$FERRY" --version | awk '{ print $2 }')${DUMP_ARGS:+ (dump $DUMP_ARGS)}, Linux $(uname -r), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average $LOAD at start${NOTE:-}, images on tmpfs ($FAST), median of $RUNS interleaved runs"
echo
echo "| memory | image size | dump | frozen | dump -R | -R frozen | pre-copy downtime | post-copy downtime | floor: write() | dump / floor | restore -d | floor: read() | restore / floor | ferry peak RSS (dump / restore) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ -n "${CRIU:-}" ]; then
    echo
    echo "CRIU ($("$CRIU" --version 2>/dev/null | head -1)), same processes, same runs:"
    echo
    echo "| memory | image size | criu dump | ferry / criu | criu restore -d | ferry / criu |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${CROWS[@]}"
fi
if [ -n "$PY_ROW" ]; then
    echo
    echo "| workload | plain image | --compress (zstd, level 3, all CPUs) | ratio | restore -d of the compressed image |"
    echo "|---|---|---|---|---|"
    echo "$PY_ROW"
fi
echo
echo "Copy primitives alone, $COPY_MIB MiB of random bytes held by another process, tmpfs file (scripts/copybench.c, median of $RUNS):"
echo
echo "| direction | way | time | vs floor |"
echo "|---|---|---|---|"
# shellcheck disable=SC2086
cw=$(median ${copies[dump:write]}) cr=$(median ${copies[restore:read]})
for k in dump:write dump:readv+write "dump:readv+write(16B-off)" dump:vmsplice+splice restore:read restore:mmap+writev; do
    # shellcheck disable=SC2086
    m=$(median ${copies[$k]})
    base=$cw
    [ "${k%%:*}" = restore ] && base=$cr
    echo "| ${k%%:*} | ${k#*:} | $m ms | $(ratio "$m" "$base") |"
done
