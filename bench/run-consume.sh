#!/usr/bin/env bash
# bench/run-consume.sh - produce the consumer-benchmark tables for the README.
#
# For each sync mode in SYNCS (default: full only, the mode the targets are
# set for) it runs, REPS times each:
#   - `ferry bench consume` with 1 and with 4 consumers (NC messages);
#   - `ferry bench e2e` at RATE messages/s for SECONDS seconds;
#   - `ferry bench backlog` with BACKLOG waiting and M messages per phase
#     (each run is itself the median of ROUNDS interleaved rounds);
# and prints the median of each figure as Markdown tables, then the target
# lines. Every run gets its own ferryd on a fresh data directory, as in
# run.sh, so no run inherits another's rows, groups or WAL.
#
# Everything the runs write lives in one directory made under BENCH_DIR
# (default: the repository) and is removed on exit, whatever the reason; a
# broker still running then is stopped with SIGTERM.
#
# Environment:
#   BUILD, FERRYD, FERRY, BENCH_DIR   as for run.sh
#   REPS     runs per configuration (default 3; the median is reported)
#   SYNCS    sync modes (default "full")
#   NC       messages per consume run (default 200000)
#   SIZE     payload bytes (default 100)
#   WINDOW   subscription window and publish window (default 1000)
#   RATE     e2e messages/s (default 10000)
#   SECONDS_E2E  e2e measured seconds (default 10)
#   BACKLOG  messages waiting in the backlog phase (default 1000000)
#   M        messages per backlog phase (default 200000)
#   ROUNDS   rounds per backlog run (default 3)
#   ONLY     a subset of "consume e2e backlog" (default: all three)
#   WAIT_IDLE  1 (default): before each run, wait until the CPUs are idle
#            (others' builds and tests on a shared machine skew every
#            figure here, the latency tail most); 0: do not wait
#   IDLE_TIMEOUT  longest wait for that, in seconds (default 600)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${REPS:-3}
SYNCS=${SYNCS:-full}
NC=${NC:-200000}
SIZE=${SIZE:-100}
WINDOW=${WINDOW:-1000}
RATE=${RATE:-10000}
SECONDS_E2E=${SECONDS_E2E:-10}
BACKLOG=${BACKLOG:-1000000}
M=${M:-200000}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-consume e2e backlog}

for v in REPS NC WINDOW RATE SECONDS_E2E BACKLOG M ROUNDS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] ||
        { echo "run-consume.sh: $v must be a positive integer" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

want() { [[ " $ONLY " == *" $1 "* ]]; }

# run_one SYNC KEY REP ARGS...: one bench run on a fresh broker; appends
# "SYNC KEY JSON" to $RESULTS and returns the JSON in $OUT.
OUT=
run_one() {
    local sync=$1 key=$2 rep=$3
    shift 3
    wait_idle
    start_broker "$sync"
    log "sync $sync, $key, run $rep/$REPS against $BROKER_ADDR"
    if ! OUT=$("${BENCH[@]}" "$@" --server "$BROKER_ADDR" --json); then
        broker_log_tail
        die "bench failed (sync $sync, $key, run $rep): $OUT"
    fi
    stop_broker
    echo "$sync $key $OUT" >>"$RESULTS"
}

for sync in $SYNCS; do
    for rep in $(seq 1 "$REPS"); do
        if want consume; then
            for c in 1 4; do
                run_one "$sync" "consume-c$c" "$rep" consume --messages "$NC" --size "$SIZE" \
                    --consumers "$c" --window "$WINDOW"
                log "  $(thousands "$(field "$OUT" msgs_per_s)") msg/s," \
                    "$(field "$OUT" missing) missing, $(field "$OUT" duplicates) duplicates"
            done
        fi
        if want e2e; then
            run_one "$sync" e2e "$rep" e2e --rate "$RATE" --seconds "$SECONDS_E2E" \
                --size "$SIZE" --window "$WINDOW"
            log "  p50 $(dur "$(field "$OUT" p50_us)"), p99 $(dur "$(field "$OUT" p99_us)")," \
                "p999 $(dur "$(field "$OUT" p999_us)"), $(thousands "$(field "$OUT" achieved_rate)") msg/s"
        fi
        if want backlog; then
            run_one "$sync" backlog "$rep" backlog --backlog "$BACKLOG" --messages "$M" \
                --rounds "$ROUNDS" --size "$SIZE" --window "$WINDOW"
            log "  publish ratio $(field "$OUT" pub_ratio), consume+ack ratio" \
                "$(field "$OUT" consume_ratio)"
        fi
    done
done

# med SYNC KEY FIELD: the median of FIELD over that configuration's runs.
med() {
    local sync=$1 key=$2 name=$3 s k line
    while read -r s k line; do
        if [[ $s == "$sync" && $k == "$key" ]]; then
            field "$line" "$name"
        fi
    done <"$RESULTS" | median
}

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "Consumer benchmarks: ${SIZE}-byte payloads, window $WINDOW; median of $REPS runs per row,"
echo "each on a fresh ferryd; $(nproc) cores (${cpu:-unknown CPU}), $(uname -sr)."
if want consume; then
    echo
    echo "Consume + ack ($NC messages stored beforehand; one group; pipelined acks):"
    echo
    echo "| sync | consumers | msgs/s | MB/s |"
    echo "| --- | ---: | ---: | ---: |"
    for sync in $SYNCS; do
        for c in 1 4; do
            printf '| %s | %s | %s | %s |\n' "$sync" "$c" \
                "$(thousands "$(med "$sync" "consume-c$c" msgs_per_s)")" \
                "$(awk -v v="$(med "$sync" "consume-c$c" mb_per_s)" 'BEGIN { printf "%.1f", v }')"
        done
    done
fi
if want e2e; then
    echo
    echo "End-to-end latency, publish -> delivery ($RATE msg/s for $SECONDS_E2E s after 1 s of"
    echo "warm-up; one publisher, one caught-up consumer acking each message):"
    echo
    echo "| sync | rate | achieved | p50 | p99 | p999 | max |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for sync in $SYNCS; do
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$sync" "$(thousands "$RATE")" \
            "$(thousands "$(med "$sync" e2e achieved_rate)")" \
            "$(dur "$(med "$sync" e2e p50_us)")" "$(dur "$(med "$sync" e2e p99_us)")" \
            "$(dur "$(med "$sync" e2e p999_us)")" "$(dur "$(med "$sync" e2e max_us)")"
    done
fi
if want backlog; then
    echo
    echo "Backlog ($(thousands "$BACKLOG") messages waiting for a group that never consumes;"
    echo "$(thousands "$M") messages published, then consumed + acked, per phase; each run the"
    echo "median of $ROUNDS interleaved rounds):"
    echo
    echo "| sync | publish, empty | publish, backlog | ratio | consume+ack, empty | consume+ack, backlog | ratio |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for sync in $SYNCS; do
        printf '| %s | %s | %s | %.2f | %s | %s | %.2f |\n' "$sync" \
            "$(thousands "$(med "$sync" backlog pub_empty)")" \
            "$(thousands "$(med "$sync" backlog pub_backlog)")" \
            "$(med "$sync" backlog pub_ratio)" \
            "$(thousands "$(med "$sync" backlog consume_empty)")" \
            "$(thousands "$(med "$sync" backlog consume_backlog)")" \
            "$(med "$sync" backlog consume_ratio)"
    done
fi
echo
for sync in $SYNCS; do
    if want consume; then
        awk -v s="$sync" -v v="$(med "$sync" consume-c1 msgs_per_s)" 'BEGIN {
            printf "sync %s: consume+ack, 1 consumer: %.0f msg/s >= 150,000: %s\n",
                s, v, (v >= 150000 ? "ok" : "MISSED") }'
    fi
    if want e2e; then
        awk -v s="$sync" -v v="$(med "$sync" e2e p99_us)" -v r="$RATE" 'BEGIN {
            printf "sync %s: e2e p99 at %d msg/s: %.0f µs < 2000 µs: %s\n",
                s, r, v, (v < 2000 ? "ok" : "MISSED") }'
    fi
    if want backlog; then
        awk -v s="$sync" -v p="$(med "$sync" backlog pub_ratio)" \
            -v c="$(med "$sync" backlog consume_ratio)" 'BEGIN {
            printf "sync %s: backlog/empty: publish %.2f, consume+ack %.2f, each >= 0.90: %s\n",
                s, p, c, (p >= 0.9 && c >= 0.9 ? "ok" : "MISSED") }'
    fi
done
