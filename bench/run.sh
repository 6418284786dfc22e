#!/usr/bin/env bash
# bench/run.sh - produce the publish-benchmark table for the README.
#
# For each sync mode (full, then normal) and each window (W=1 with N1
# messages, W=1000 with N1000 messages) it runs `ferry bench pub` REPS times
# against the ferryd meson built and prints, per configuration, the median of
# each figure as a Markdown table, followed by the W=1 latency-target lines.
#
# Every run gets a broker on a fresh data directory (FRESH=run, the default),
# because SQLite insert cost grows with the size of the random-id index: a
# broker that already holds the previous runs' rows would be compared with a
# raw-SQLite ceiling measured on an empty database. FRESH=mode keeps one
# broker per sync mode for all its runs instead.
#
# Everything the runs write (broker data directories, the bench's raw-SQLite
# scratch directories, the results) lives in one directory made under
# BENCH_DIR (default: the repository), i.e. on the disk the broker would use,
# and removed on exit, whatever the reason; a broker still running then is
# stopped with SIGTERM.
#
# Environment:
#   BUILD    meson build directory (default: <repo>/build)
#   FERRYD   the broker (default: $BUILD/broker/ferryd)
#   FERRY    the ferry CLI (default: $BUILD/client/cli/ferry, falling back to
#            $BUILD/bench/ferry-bench when there is no CLI)
#   REPS     runs per configuration (default 3; the median is reported)
#   N1       messages for W=1 runs (default 5000)
#   N1000    messages for W=1000 runs (default 200000)
#   SIZE     payload bytes (default 100)
#   SYNCS    sync modes to run (default "full normal")
#   FRESH    run | mode (see above; default run)
#   RAW_INDEX  unique | none: whether the raw-SQLite table's msg_id has a
#            UNIQUE index (default unique, the ceiling the issue defines)
#   BENCH_DIR  where data directories go (default: the repository)
#   WAIT_IDLE  1 (default): before each run, wait until the CPUs are idle
#            (see bench/lib.sh); 0: do not wait
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${REPS:-3}
N1=${N1:-5000}
N1000=${N1000:-200000}
SIZE=${SIZE:-100}
SYNCS=${SYNCS:-full normal}
FRESH=${FRESH:-run}
RAW_INDEX=${RAW_INDEX:-unique}

[[ $FRESH == run || $FRESH == mode ]] || { echo "run.sh: FRESH must be run or mode" >&2; exit 1; }
[[ $RAW_INDEX == unique || $RAW_INDEX == none ]] ||
    { echo "run.sh: RAW_INDEX must be unique or none" >&2; exit 1; }
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: REPS must be a positive integer" >&2; exit 1; }

# Binaries, the scratch directory, the broker's life cycle and the helpers
# field, median, thousands and dur.
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

# run_one SYNC W N REP: one bench run; appends "SYNC W JSON" to $RESULTS.
run_one() {
    local sync=$1 w=$2 n=$3 rep=$4 out
    wait_idle
    if [[ $FRESH == run ]]; then
        start_broker "$sync"
    fi
    log "sync $sync, W=$w, N=$n, run $rep/$REPS against $BROKER_ADDR"
    if ! out=$("${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$n" --size "$SIZE" \
        --window "$w" --sync "$sync" --topic "bench-$sync-w$w-$rep" --raw-dir "$WORK" \
        --raw-index "$RAW_INDEX" --json); then
        broker_log_tail
        die "bench failed (sync $sync, W=$w, run $rep): $out"
    fi
    echo "$sync $w $out" >>"$RESULTS"
    log "  $(thousands "$(field "$out" msgs_per_s)") msg/s, p50 $(dur "$(field "$out" p50_us)"), raw $(thousands "$(field "$out" raw_rows_per_s)") rows/s"
    if [[ $FRESH == run ]]; then
        stop_broker
    fi
}

for sync in $SYNCS; do
    if [[ $FRESH == mode ]]; then
        start_broker "$sync"
    fi
    for rep in $(seq 1 "$REPS"); do
        run_one "$sync" 1 "$N1" "$rep"
        run_one "$sync" 1000 "$N1000" "$rep"
    done
    if [[ $FRESH == mode ]]; then
        stop_broker
    fi
done

# med SYNC W FIELD: the median of FIELD over that configuration's runs.
med() {
    local sync=$1 w=$2 name=$3 line
    while read -r s ww line; do
        if [[ $s == "$sync" && $ww == "$w" ]]; then
            field "$line" "$name"
        fi
    done <"$RESULTS" | median
}

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "Publish benchmark: ${SIZE}-byte payloads, random UUID-like ids, one producer;"
echo "median of $REPS runs per row; $(nproc) cores (${cpu:-unknown CPU}), $(uname -sr);"
echo "raw SQLite: msg_id index $RAW_INDEX, 1000 rows/txn; SQLite $(head -n 1 "$RESULTS" | sed -n 's/.*"sqlite_version":"\([^"]*\)".*/\1/p'); W=1: $N1 messages, W=1000: $N1000 messages."
echo
echo "| sync | W | msgs/s | p50 | p99 | p999 | raw SQLite rows/s | broker/raw |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for sync in $SYNCS; do
    for w in 1 1000; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %.2f |\n' "$sync" "$w" \
            "$(thousands "$(med "$sync" "$w" msgs_per_s)")" \
            "$(dur "$(med "$sync" "$w" p50_us)")" \
            "$(dur "$(med "$sync" "$w" p99_us)")" \
            "$(dur "$(med "$sync" "$w" p999_us)")" \
            "$(thousands "$(med "$sync" "$w" raw_rows_per_s)")" \
            "$(med "$sync" "$w" ratio)"
    done
done
echo
for sync in $SYNCS; do
    p50=$(med "$sync" 1 p50_us)
    fs=$(med "$sync" 1 fdatasync_p50_us)
    rtt=$(med "$sync" 1 rtt_p50_us)
    fp=$(med "$sync" 1 fdatasync_page_p50_us)
    awk -v s="$sync" -v p="$p50" -v f="$fs" -v r="$rtt" -v g="$fp" 'BEGIN {
        t = 1.2 * (f + r)
        printf "sync %s, W=1: p50 %.0f µs <= 1.2 x (fdatasync p50 %.0f µs + rtt p50 %.0f µs) = %.0f µs: %s\n",
            s, p, f, r, t, (p <= t ? "ok" : "MISSED")
        t = 1.2 * (g + r)
        printf "sync %s, W=1: with a 4 KiB page appended per fdatasync (p50 %.0f µs): %.0f µs: %s\n",
            s, g, t, (p <= t ? "ok" : "MISSED") }'
done
