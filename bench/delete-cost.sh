#!/usr/bin/env bash
# bench/delete-cost.sh - what deleting a large topic costs everyone else.
#
#   bench/delete-cost.sh
#
# Each round starts a fresh broker with --http, fills topic `doomed` with
# FILL messages of SIZE bytes (`ferry bench pub --keep`), then measures
# publish-ack latency of a second topic with one message in flight at a
# time (`ferry bench pub --window 1`, N messages) twice: "quiet" (nothing
# else going on), then "purging" (right after `ferry topics delete doomed`,
# while the broker frees its rows). Also reports how long the delete
# command took and how long the purge ran (ferry_deleted_topics_purging on
# /metrics back to 0, polled every 20 ms beside the probe). Prints the
# medians over the rounds.
#
# Environment: BUILD (build), ROUNDS (5), FILL (1000000), SIZE (100),
# N (3000), SYNC (full), WAIT_IDLE (1, as in bench/lib.sh), BENCH_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
FILL=${FILL:-1000000}
SIZE=${SIZE:-100}
N=${N:-3000}
SYNC=${SYNC:-full}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# metric PORT NAME: the value of an unlabelled metric on /metrics.
metric() {
    local port=$1 name=$2
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
    awk -v n="$name" '$1 == n { print $2 }' <&3
    exec 3<&-
}

now_ms() { date +%s%3N; }

latency() {
    local side=$1 round=$2 out
    out=$("${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$N" --size "$SIZE" --window 1 \
        --sync "$SYNC" --topic "probe-$side" --json) || {
        broker_log_tail
        die "probe pub failed ($side)"
    }
    echo "$side $round $(field "$out" p50_us) $(field "$out" p99_us) $(field "$out" max_us)" \
        >>"$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
    wait_idle
    port=$(free_port)
    start_broker "$SYNC" --http "127.0.0.1:$port"
    "${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$FILL" --size "$SIZE" --window 1000 \
        --sync "$SYNC" --topic doomed --keep --json >/dev/null || die "fill failed"
    latency quiet "$round"
    t0=$(now_ms)
    "$FERRY" --server "$BROKER_ADDR" topics delete doomed >/dev/null || die "delete failed"
    t1=$(now_ms)
    # When the purge ends, watched beside the probe.
    (
        while [[ $(metric "$port" ferry_deleted_topics_purging) != 0 ]]; do sleep 0.02; done
        now_ms >"$WORK/purged_at"
        metric "$port" ferry_purged_messages_total >"$WORK/purged_rows"
    ) &
    watcher=$!
    latency purging "$round"
    probe_end=$(now_ms)
    wait "$watcher"
    t2=$(cat "$WORK/purged_at")
    purged=$(cat "$WORK/purged_rows")
    ((t2 >= probe_end)) || log "round $round: the purge ended before the probe did"

    echo "times $round $((t1 - t0)) $((t2 - t1)) $purged" >>"$RESULTS"
    stop_broker
    log "round $round: delete $((t1 - t0)) ms, purge $((t2 - t1)) ms ($purged rows)"
done

col() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$RESULTS" | median; }
echo
echo "Deleting a topic of $(thousands "$FILL") x ${SIZE}-byte messages, ferryd --sync $SYNC,"
echo "$ROUNDS rounds (medians); $(nproc) cores. Probe: publish W=1, $(thousands "$N") messages."
echo
echo "| probe | ack p50 | ack p99 | ack max |"
echo "| --- | ---: | ---: | ---: |"
for side in quiet purging; do
    echo "| $side | $(dur "$(col "$side" 3)") | $(dur "$(col "$side" 4)") | $(dur "$(col "$side" 5)") |"
done
echo
echo "ferry topics delete returned after $(col times 3) ms (median); the purge ran" \
    "$(col times 4) ms for $(thousands "$(col times 5)") rows."
