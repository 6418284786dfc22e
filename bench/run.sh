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
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$REPO/build}
FERRYD=${FERRYD:-$BUILD/broker/ferryd}
REPS=${REPS:-3}
N1=${N1:-5000}
N1000=${N1000:-200000}
SIZE=${SIZE:-100}
SYNCS=${SYNCS:-full normal}
FRESH=${FRESH:-run}
RAW_INDEX=${RAW_INDEX:-unique}
BENCH_DIR=${BENCH_DIR:-$REPO}

if [[ -z ${FERRY:-} ]]; then
    if [[ -x $BUILD/client/cli/ferry ]]; then
        FERRY=$BUILD/client/cli/ferry
    else
        FERRY=$BUILD/bench/ferry-bench
    fi
fi
if [[ $(basename "$FERRY") == ferry-bench ]]; then
    BENCH=("$FERRY")
else
    BENCH=("$FERRY" bench)
fi

die() {
    echo "run.sh: $*" >&2
    exit 1
}
log() { echo "run.sh: $*" >&2; }

[[ -x $FERRYD ]] || die "no broker at $FERRYD (build it, or set FERRYD)"
[[ -x $FERRY ]] || die "no ferry CLI or ferry-bench at $FERRY (build it, or set FERRY)"
[[ $FRESH == run || $FRESH == mode ]] || die "FRESH must be run or mode"
[[ $RAW_INDEX == unique || $RAW_INDEX == none ]] || die "RAW_INDEX must be unique or none"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"

BROKER_PID=
BROKER_TMP=
BROKER_ADDR=
WORK=$(mktemp -d "$BENCH_DIR/bench-run.XXXXXX")
RESULTS=$WORK/results
: >"$RESULTS"

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        # ferryd finishes its commit in flight and exits; give it 10 s.
        local i
        for ((i = 0; i < 200; i++)); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$BROKER_PID" 2>/dev/null; then
            log "ferryd (pid $BROKER_PID) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$BROKER_PID" 2>/dev/null || true
        fi
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
    if [[ -n $BROKER_TMP ]]; then
        rm -rf -- "$BROKER_TMP"
        BROKER_TMP=
    fi
}

cleanup() {
    stop_broker
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_broker SYNC: a ferryd on a fresh data dir and an ephemeral port;
# sets BROKER_PID and BROKER_ADDR.
start_broker() {
    local sync=$1
    BROKER_TMP=$(mktemp -d "$WORK/broker.XXXXXX")
    "$FERRYD" --listen 127.0.0.1:0 --data "$BROKER_TMP/data" --sync "$sync" \
        --ready-file "$BROKER_TMP/ready" 2>"$BROKER_TMP/ferryd.log" &
    BROKER_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        # Complete once the line "HOST:PORT\n" is there.
        if [[ -s $BROKER_TMP/ready && $(tail -c 1 "$BROKER_TMP/ready" | wc -l) -eq 1 ]]; then
            BROKER_ADDR=$(head -n 1 "$BROKER_TMP/ready")
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            cat "$BROKER_TMP/ferryd.log" >&2 || true
            die "ferryd exited before it was ready"
        fi
        sleep 0.05
    done
    cat "$BROKER_TMP/ferryd.log" >&2 || true
    die "ferryd was not ready after 10 s"
}

# field JSON NAME: a number (or true/false/null) from the bench's flat JSON.
field() {
    sed -n 's/.*"'"$2"'":\([^,}]*\).*/\1/p' <<<"$1"
}

# median: of the numbers on stdin (mean of the middle two for an even count).
median() {
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# Formatting: thousands separators, and µs shown as µs or ms.
thousands() { awk -v v="$1" 'BEGIN {
    s = sprintf("%.0f", v); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'; }
dur() { awk -v v="$1" 'BEGIN {
    if (v < 1000) printf "%.0f µs\n", v; else printf "%.2f ms\n", v / 1000 }'; }

# run_one SYNC W N REP: one bench run; appends "SYNC W JSON" to $RESULTS.
run_one() {
    local sync=$1 w=$2 n=$3 rep=$4 out
    if [[ $FRESH == run ]]; then
        start_broker "$sync"
    fi
    log "sync $sync, W=$w, N=$n, run $rep/$REPS against $BROKER_ADDR"
    if ! out=$("${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$n" --size "$SIZE" \
        --window "$w" --sync "$sync" --topic "bench-$sync-w$w-$rep" --raw-dir "$WORK" \
        --raw-index "$RAW_INDEX" --json); then
        if [[ -n $BROKER_TMP ]]; then
            tail -n 20 "$BROKER_TMP/ferryd.log" >&2 || true
        fi
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
    awk -v s="$sync" -v p="$p50" -v f="$fs" -v r="$rtt" 'BEGIN {
        t = 1.2 * (f + r)
        printf "sync %s, W=1: p50 %.0f µs <= 1.2 x (fdatasync p50 %.0f µs + rtt p50 %.0f µs) = %.0f µs: %s\n",
            s, p, f, r, t, (p <= t ? "ok" : "MISSED") }'
done
