#!/usr/bin/env bash
# bench/relay.sh - outbox relay throughput: from a backlog of N outbox rows
# to the broker's durable acks, in messages per second.
#
# For each run: a ferryd on a fresh data directory (--sync SYNC), an
# application database in WAL mode with the outbox installed (`ferry relay
# --install`), N rows of SIZE random bytes inserted by the sqlite3 shell in
# one transaction (as any other program would write them), then `ferry
# relay --drain`, which publishes the backlog in batches of BATCH rows,
# marks every row sent after the broker's ack, and exits once none is
# waiting. The figure is the relay's own: rows relayed (acked and marked)
# divided by the time from its first read to its last mark; the wall time
# of the whole `ferry relay` process (connect and open included) is shown
# beside it. The broker's message count is checked against N after each
# run. Prints the median of REPS runs.
#
# Environment: BUILD FERRYD FERRY (as bench/run.sh), N (default 100000),
# SIZE (100), BATCH (1000), SYNC (full), REPS (3), BENCH_DIR (where the
# scratch directory goes; default the repository), WAIT_IDLE (1: wait for
# an idle machine first).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-100000}
SIZE=${SIZE:-100}
BATCH=${BATCH:-1000}
SYNC=${SYNC:-full}
REPS=${REPS:-3}

[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "relay.sh: REPS must be a positive integer" >&2; exit 1; }
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "relay.sh: N must be a positive integer" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

command -v sqlite3 >/dev/null || die "the sqlite3 shell is needed to fill the outbox (apt-get install sqlite3)"
[[ $(basename "$FERRY") == ferry ]] || die "needs the ferry CLI (ferry relay), not $FERRY"

rates=()
walls=()
for rep in $(seq 1 "$REPS"); do
    wait_idle
    start_broker "$SYNC"
    db=$WORK/app-$rep.db
    sqlite3 "$db" "PRAGMA journal_mode = WAL;" >/dev/null
    "$FERRY" relay --db "$db" --install >/dev/null
    sqlite3 "$db" "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $N)
                   INSERT INTO ferry_outbox(topic, payload)
                   SELECT 'relay-bench', randomblob($SIZE) FROM c;"
    log "run $rep/$REPS: $(thousands "$N") rows of $SIZE B, batch $BATCH, ferryd --sync $SYNC at $BROKER_ADDR"
    t0=$(date +%s%N)
    if ! "$FERRY" relay --db "$db" --server "$BROKER_ADDR" --batch "$BATCH" --drain \
        2>"$WORK/relay.log"; then
        cat "$WORK/relay.log" >&2
        broker_log_tail
        die "ferry relay failed"
    fi
    t1=$(date +%s%N)
    line=$(grep 'drained: relayed' "$WORK/relay.log" || true)
    rate=$(sed -n 's/.*(\([0-9]*\) msg\/s).*/\1/p' <<<"$line")
    [[ -n $rate ]] || { cat "$WORK/relay.log" >&2; die "no drained line in the relay's log"; }
    count=$("$FERRY" topics --server "$BROKER_ADDR" | awk '$1 == "relay-bench" { print $2 }')
    [[ $count == "$N" ]] || die "the broker holds ${count:-no} messages in relay-bench, not $N"
    left=$(sqlite3 "$db" "SELECT count(*) FROM ferry_outbox WHERE sent_ms IS NULL")
    [[ $left == 0 ]] || die "$left rows left unsent"
    wall=$(awk -v a="$t0" -v b="$t1" -v n="$N" 'BEGIN { printf "%.0f\n", n / ((b - a) / 1e9) }')
    log "  relay $(thousands "$rate") msg/s (process wall time: $(thousands "$wall") msg/s)"
    rates+=("$rate")
    walls+=("$wall")
    stop_broker
    rm -f -- "$db" "$db-wal" "$db-shm" "$db.relay.lock"
done

rate=$(printf '%s\n' "${rates[@]}" | median)
wall=$(printf '%s\n' "${walls[@]}" | median)
echo "| relay backlog | rows | payload | batch | ferryd sync | msg/s (median of $REPS) | whole process |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| sqlite3-filled outbox → durable acks, rows marked sent | $(thousands "$N") | $SIZE B | $BATCH | $SYNC | $(thousands "$rate") | $(thousands "$wall") |"
