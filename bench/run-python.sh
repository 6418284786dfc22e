#!/usr/bin/env bash
# bench/run-python.sh - the Python binding against the C client, in one run:
# pipelined publish (N messages, window 1000), consume + pipelined ack, and
# one-at-a-time publish latency (--sync full), each on a fresh ferryd,
# REPS times, medians. Prints a Markdown table and the ratios.
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
    start_broker full
    v=$("$FERRY" bench pub --server "$BROKER_ADDR" --messages "$NSYNC" --size "$SIZE" --window 1 --no-raw --json)
    record c_p50 "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["p50_us"]))' <<<"$v")"
    stop_broker
    start_broker full
    v=$("$PY" "$REPO/bench/python_bench.py" "$BROKER_ADDR" sync "$NSYNC" "$SIZE")
    record py_p50 "$(awk '/sync_p50_us/ {print $2}' <<<"$v")"
    stop_broker
done

cp=$(median "${vals[c_pub]}"); pp=$(median "${vals[py_pub]}")
cc=$(median "${vals[c_consume]}"); pc=$(median "${vals[py_consume]}")
c50=$(median "${vals[c_p50]}"); p50=$(median "${vals[py_p50]}")
echo "| workload ($SIZE B, --sync full, median of $REPS) | C (libferry) | Python | Python / C |"
echo "| --- | ---: | ---: | ---: |"
awk -v c="$cp" -v p="$pp" 'BEGIN {printf "| pipelined publish, msg/s | %d | %d | %.2f |\n", c, p, p / c}'
awk -v c="$cc" -v p="$pc" 'BEGIN {printf "| consume + ack, msg/s | %d | %d | %.2f |\n", c, p, p / c}'
awk -v c="$c50" -v p="$p50" 'BEGIN {printf "| sync publish p50, us | %d | %d | +%d us |\n", c, p, p - c}'
