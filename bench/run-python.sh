#!/usr/bin/env bash
# bench/run-python.sh - the Python binding against the C client, in one run:
# pipelined publish (N messages, window 1000), consume + pipelined ack, and
# one-at-a-time publish latency (--sync full), each on a fresh ferryd,
# REPS times, medians. Prints a Markdown table and the ratios.
#
# Both clients publish the same workload: SIZE-byte payloads and, one at a
# time, a 36-character UUID-like id per message (as `ferry bench pub`). The
# latency comparison is paired: per round one broker serves a C run, the
# Python run and a second C run; "paired" is the median over rounds of
# Python's p50 minus the mean of the two C p50s around it.
#
# Environment: BUILD (default build/), REPS (3), N (100000), NSYNC (3000),
# SIZE (100), WAIT_IDLE (1: wait for idle CPUs before each run).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${REPS:-3}
N=${N:-100000}
NSYNC=${NSYNC:-3000}
SIZE=${SIZE:-100}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
PY=${PY:-/usr/bin/python3}
export PYTHONPATH="$BUILD/python"

# c_sync_p50 TOPIC: the C client's one-at-a-time publish p50 (µs) on the
# running broker.
c_sync_p50() {
    "$FERRY" bench pub --server "$BROKER_ADDR" --messages "$NSYNC" --size "$SIZE" --window 1 \
        --no-raw --keep --topic "$1" --json |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["p50_us"]))'
}

declare -A vals
record() { vals[$1]+="$2 "; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for ((r = 1; r <= REPS; r++)); do
    wait_idle
    start_broker full
    v=$("$FERRY" bench pub --server "$BROKER_ADDR" --messages "$N" --size "$SIZE" --window 1000 --no-raw --json)
    record c_pub "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_s"]))' <<<"$v")"
    stop_broker
    start_broker full
    v=$("$PY" "$REPO/bench/python_bench.py" "$BROKER_ADDR" pub "$N" "$SIZE" 1000)
    record py_pub "$(awk '/pub_msgs_per_s/ {print $2}' <<<"$v")"
    stop_broker
    start_broker full
    v=$("$FERRY" bench consume --server "$BROKER_ADDR" --messages "$N" --size "$SIZE" --window 1000 --json)
    record c_consume "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_s"]))' <<<"$v")"
    stop_broker
    start_broker full
    v=$("$PY" "$REPO/bench/python_bench.py" "$BROKER_ADDR" consume "$N" "$SIZE" 1000)
    record py_consume "$(awk '/consume_msgs_per_s/ {print $2}' <<<"$v")"
    stop_broker
    # Sync latency is paired: C, Python, C again on one fresh broker, so that
    # the Python run is bracketed by the two C runs it is compared with (the
    # machine's load drifts more between brokers than within one).
    start_broker full
    ca=$(c_sync_p50 "c-sync-a-$r")
    pyv=$("$PY" "$REPO/bench/python_bench.py" "$BROKER_ADDR" sync "$NSYNC" "$SIZE")
    py=$(awk '/sync_p50_us/ {print $2}' <<<"$pyv")
    cb=$(c_sync_p50 "c-sync-b-$r")
    stop_broker
    c=$(((ca + cb) / 2))
    record c_p50 "$c"
    record py_p50 "$py"
    record d_p50 "$((py - c))"
    log "sync p50, round $r: C $ca us, Python $py us, C $cb us"
done

cp=$(median "${vals[c_pub]}"); pp=$(median "${vals[py_pub]}")
cc=$(median "${vals[c_consume]}"); pc=$(median "${vals[py_consume]}")
c50=$(median "${vals[c_p50]}"); p50=$(median "${vals[py_p50]}"); d50=$(median "${vals[d_p50]}")
echo "| workload ($SIZE B, --sync full, median of $REPS) | C (libferry) | Python | Python / C |"
echo "| --- | ---: | ---: | ---: |"
awk -v c="$cp" -v p="$pp" 'BEGIN {printf "| pipelined publish, msg/s | %d | %d | %.2f |\n", c, p, p / c}'
awk -v c="$cc" -v p="$pc" 'BEGIN {printf "| consume + ack, msg/s | %d | %d | %.2f |\n", c, p, p / c}'
awk -v c="$c50" -v p="$p50" -v d="$d50" 'BEGIN {printf "| sync publish p50, us | %d | %d | %+d us (paired: %+d us) |\n", c, p, p - c, d}'
echo
echo "sync p50 per round (C = mean of the two C runs around the Python one): C ${vals[c_p50]}| Python ${vals[py_p50]}| Python - C ${vals[d_p50]}"
