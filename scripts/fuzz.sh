#!/usr/bin/env bash
# Fuzz ferry's decoders: the image record decoder, a whole image directory as restore opens it,
# and the migration protocol as `ferry serve` reads it from a peer (fuzz/, docs/reliability.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60; CI runs it short, run it long locally)
#
# Installs cargo-fuzz if it is missing (`cargo install cargo-fuzz --locked`), builds ferry,
# dumps a few real processes (as root; otherwise only the committed seeds are used) and seeds
# each target's corpus from their image files, builds the targets with the address sanitizer,
# and runs each target for SECONDS_PER_TARGET. Exits non-zero on the first crash, leak,
# timeout or out-of-memory, printing the reproducer and the command that replays it.
#
# Environment: FUZZ_TARGETS (default "image_decode image_dir frame pages_zstd"), FUZZ_SANITIZER (address
# or none; default address), FUZZ_NO_DUMP=1 (skip the dumps), FUZZ_ARGS (more libFuzzer
# options), FUZZ_UPDATE_SEEDS=1 (add the fresh dumps' inputs to fuzz/seeds/: maintainers only).
#
# cargo-fuzz needs nightly compiler flags (-Z...): with only a stable toolchain, RUSTC_BOOTSTRAP=1
# lets stable rustc take them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
TARGETS=${FUZZ_TARGETS:-image_decode image_dir frame pages_zstd}
SANITIZER=${FUZZ_SANITIZER:-address}
FUZZ=$ROOT/fuzz
export RUSTC_BOOTSTRAP=1

die() { printf 'fuzz: %s\n' "$*" >&2; exit 1; }
say() { printf 'fuzz: %s\n' "$*" >&2; }
case $SECS in '' | *[!0-9]*) die "SECONDS_PER_TARGET must be a number of seconds, not '$SECS'" ;; esac

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
command -v cargo >/dev/null 2>&1 || die "cargo not found"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install cargo-fuzz --locked) ..."
    cargo install cargo-fuzz --locked --quiet
fi

TMP=$(mktemp -d /tmp/ferry-fuzz.XXXXXX)
LIVE=() # names of the processes started below that no dump has killed yet
cleanup() {
    local n
    for n in "${LIVE[@]}"; do
        if [ -f "$TMP/$n.pid" ]; then kill -9 "$(cat "$TMP/$n.pid")" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# --- seeds from real images -------------------------------------------------------------------
for t in $TARGETS; do mkdir -p "$FUZZ/corpus/$t"; done
if [ "${FUZZ_NO_DUMP:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
    say "building ferry (release) ..."
    # (the build `cargo test --release --workspace` makes, so that after the tests, as in CI,
    # there is nothing left to build)
    cargo build --release --workspace --tests --quiet --manifest-path "$ROOT/Cargo.toml"
    FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry
    [ -x "$FERRY" ] || die "$FERRY was not built"
    # A few real processes: a tiny one, python's heap (many mappings), a tree with a pipe, the
    # same python dumped with compressed pages.
    start() { # NAME COMMAND...
        local name=$1
        shift
        if "$FERRY" run -d --pidfile "$TMP/$name.pid" "$@" </dev/null >/dev/null 2>&1 && [ -s "$TMP/$name.pid" ]; then
            LIVE+=("$name")
        else
            say "warning: cannot start $name (seeding without it)"
            rm -f "$TMP/$name.pid"
        fi
    }
    start sleep sleep 600
    start python python3 -c 'import time; d = {i: str(i) * 3 for i in range(20000)}; time.sleep(600)'
    start tree sh -c 'sleep 600 | cat & sleep 600; wait'
    start pyz python3 -c 'import time; l = [bytes(100) for _ in range(5000)]; time.sleep(600)'
    sleep 1
    for name in sleep python tree pyz; do
        [ -f "$TMP/$name.pid" ] || continue
        extra=()
        [ $name = pyz ] && extra=(--compress)
        if ! "$FERRY" dump -t "$(cat "$TMP/$name.pid")" -D "$TMP/img-$name" "${extra[@]}" >"$TMP/dump-$name.log" 2>&1; then
            say "warning: dump of $name failed (seeding without it):"
            sed 's/^/    /' "$TMP/dump-$name.log" >&2
            continue
        fi
        rm -f "$TMP/$name.pid" # (the dump killed it: its pid is no longer ours)
        "$FERRY" inspect --json "$TMP/img-$name" >"$TMP/img-$name.json" 2>/dev/null || rm -f "$TMP/img-$name.json"
    done
    python3 "$ROOT/scripts/fuzz_seed.py" "$TMP" "$FUZZ/corpus"
    if [ "${FUZZ_UPDATE_SEEDS:-0}" = 1 ]; then
        python3 "$ROOT/scripts/fuzz_seed.py" "$TMP" "$FUZZ/seeds"
        say "fresh seeds added to fuzz/seeds: $(du -sh "$FUZZ/seeds" | cut -f1) (keep it under 2 MiB)"
    fi
else
    say "not root or FUZZ_NO_DUMP=1: no fresh dumps, only the committed seeds (fuzz/seeds/)"
fi

# --- build and run ----------------------------------------------------------------------------
cd "$FUZZ"
say "building the fuzz targets (sanitizer: $SANITIZER) ..."
# (-O: optimized; -a: with debug assertions and overflow checks, which find arithmetic that
# wraps in a release build)
for t in $TARGETS; do
    if ! cargo fuzz build -O -a -s "$SANITIZER" "$t" >"$TMP/build.log" 2>&1; then
        tail -40 "$TMP/build.log" >&2
        die "fuzz target $t did not build"
    fi
done

status=0
for t in $TARGETS; do
    mkdir -p "artifacts/$t"
    before=$(ls "artifacts/$t" | sort)
    say "running $t for ${SECS}s ..."
    # (image_dir and frame inputs are whole images and message streams: let them be large)
    max_len=1048576
    [ "$t" = image_decode ] && max_len=262144
    dict=()
    [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
    set +e
    # shellcheck disable=SC2086
    cargo fuzz run -O -a -s "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -max_len=$max_len -timeout=20 -rss_limit_mb=4096 -close_fd_mask=1 "${dict[@]}" \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"$TMP/$t.log" 2>&1
    rc=$?
    set -e
    # scratch directories the targets leave in /dev/shm (named after their pid)
    for d in /dev/shm/ferry-fuzz-*-[0-9]* /tmp/ferry-fuzz-*-[0-9]*; do
        if [ -d "$d" ] && ! kill -0 "${d##*-}" 2>/dev/null; then rm -rf "$d"; fi
    done
    grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb)|^Done [0-9]+ runs' "$TMP/$t.log" | sed "s/^/  $t: /" >&2 || true
    if [ $rc -ne 0 ]; then
        status=1
        new=$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | head -1)
        say "$t FAILED (exit $rc); the fuzzer's last words:"
        grep -v '^#[0-9]' "$TMP/$t.log" | tail -40 >&2
        if [ -n "$new" ]; then
            say "reproducer: fuzz/artifacts/$t/$new ($(stat -c %s "artifacts/$t/$new") bytes), base64:"
            base64 -w 100 "artifacts/$t/$new" | head -200 >&2
            say "replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s $SANITIZER $t artifacts/$t/$new"
        fi
    fi
done
exit $status
