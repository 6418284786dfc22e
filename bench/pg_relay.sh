#!/usr/bin/env bash
# bench/pg_relay.sh - the Postgres outbox relay (issue 11): three figures.
#
#   1. drain: N outbox rows of SIZE bytes inserted by psql in one
#      transaction, then `ferry relay --pg --drain`: rows per second from
#      its first claim to its last DELETE (every row claimed, published,
#      acked by a `ferryd --sync SYNC` after its fsync, and deleted). The
#      broker's count is checked against N, and the outbox must be empty.
#      Median of REPS runs.
#   2. commit-to-effect: bench/pg_latency commits RATE single-row
#      transactions per second for SECS seconds, a running `ferry relay --pg`
#      forwards them, and a consumer applies each through the Postgres inbox
#      (claim + effect row, one transaction): the time from the producer's
#      COMMIT issued to the consumer's COMMIT returned, p50/p90/p99/max.
#   3. idle load: the statements the relay's own session sends while it has
#      nothing to do, over IDLE seconds: the server logs every statement
#      for that window (log_statement = all, with the session's
#      application_name in each line), and the lines of 'ferry relay' are
#      counted. Not pg_stat_database's transaction counters: those also
#      count autovacuum cleaning up after the latency run, and are flushed
#      lazily.
#
# A private cluster: initdb in a scratch directory under /tmp (as the user ferry-pg
# when run as root; script/bootstrap creates it), a unix socket there and a
# free 127.0.0.1 port, stopped at the end by its PID.
#
# Environment: BUILD FERRYD FERRY (as bench/run.sh), N (100000), SIZE (100),
# BATCH (1000), SYNC (full), REPS (3), RATE (1000), SECS (10), IDLE (10),
# BENCH_DIR, WAIT_IDLE (as bench/relay.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-100000}
SIZE=${SIZE:-100}
BATCH=${BATCH:-1000}
SYNC=${SYNC:-full}
REPS=${REPS:-3}
RATE=${RATE:-1000}
SECS=${SECS:-10}
IDLE=${IDLE:-10}

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

[[ $(basename "$FERRY") == ferry ]] || die "needs the ferry CLI (ferry relay), not $FERRY"
LATENCY=$BUILD/bench/pg_latency
[[ -x $LATENCY ]] || die "no $LATENCY (build with libpq-dev installed)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x $PGBIN/postgres ]] || die "no PostgreSQL server (run script/bootstrap)"
command -v psql >/dev/null || die "no psql (apt-get install postgresql-client)"

# Under /tmp, not BENCH_DIR: the server's user must reach it, and the
# socket path must stay short.
PGDIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-pgbench.XXXXXX")
chmod 755 "$PGDIR"
AS=()
if [[ $(id -u) == 0 ]]; then
    id ferry-pg >/dev/null 2>&1 || die "no user ferry-pg to run PostgreSQL as (run script/bootstrap)"
    chown ferry-pg: "$PGDIR"
    AS=(setpriv --reuid=ferry-pg --regid=ferry-pg --clear-groups --)
fi
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PG_PID=
stop_pg() {
    if [[ -n $PG_PID ]]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        wait "$PG_PID" 2>/dev/null || true
        PG_PID=
    fi
}
RELAY_PID=
trap 'kill -TERM $RELAY_PID 2>/dev/null || true; stop_pg; rm -rf -- "$PGDIR"; cleanup' EXIT

"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U ferry -A trust -E UTF8 --locale=C --no-sync \
    >"$PGDIR/initdb.log" 2>&1 || { cat "$PGDIR/initdb.log" >&2; die "initdb failed"; }
"${AS[@]}" "$PGBIN/postgres" -D "$PGDIR/data" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$PGDIR" -c shared_buffers=256MB -c max_wal_size=4GB \
    >"$PGDIR/postgres.log" 2>&1 &
PG_PID=$!
CONNINFO="host=$PGDIR port=$PGPORT user=ferry dbname=postgres"
URL="postgresql://ferry@127.0.0.1:$PGPORT/postgres"
for _ in $(seq 1 300); do
    psql "$CONNINFO" -qAtc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
psql "$CONNINFO" -qAtc 'SELECT 1' >/dev/null || { cat "$PGDIR/postgres.log" >&2; die "postgres did not start"; }
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') at $URL (fsync on, synchronous_commit on)"

q() { psql "$CONNINFO" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# 1. drain
rates=()
for rep in $(seq 1 "$REPS"); do
    wait_idle
    start_broker "$SYNC"
    schema=bench$rep
    "$FERRY" relay --pg "$URL" --schema "$schema" --install >/dev/null
    q "INSERT INTO $schema.outbox (topic, payload)
       SELECT 'pg-relay-bench', decode(repeat('ab', $SIZE), 'hex') FROM generate_series(1, $N)" >/dev/null
    q "VACUUM ANALYZE $schema.outbox" >/dev/null
    log "run $rep/$REPS: $(thousands "$N") rows of $SIZE B, batch $BATCH, ferryd --sync $SYNC"
    if ! "$FERRY" relay --pg "$URL" --schema "$schema" --server "$BROKER_ADDR" --batch "$BATCH" \
        --drain 2>"$WORK/relay.log"; then
        cat "$WORK/relay.log" >&2
        die "ferry relay --pg failed"
    fi
    line=$(grep 'drained: relayed' "$WORK/relay.log" || true)
    rate=$(sed -n 's/.*(\([0-9]*\) msg\/s).*/\1/p' <<<"$line")
    [[ -n $rate ]] || { cat "$WORK/relay.log" >&2; die "no drained line in the relay's log"; }
    count=$("$FERRY" topics --server "$BROKER_ADDR" | awk '$1 == "pg-relay-bench" { print $2 }')
    [[ $count == "$N" ]] || die "the broker holds ${count:-no} messages, not $N"
    left=$(q "SELECT count(*) FROM $schema.outbox")
    [[ $left == 0 ]] || die "$left rows left in the outbox"
    log "  relay $(thousands "$rate") msg/s"
    rates+=("$rate")
    stop_broker
done
drain=$(printf '%s\n' "${rates[@]}" | median)

# 2. commit-to-effect, and 3. the idle load, with one running relay
wait_idle
start_broker "$SYNC"
"$FERRY" relay --pg "$URL" --schema lat --install >/dev/null
"$FERRY" relay --pg "$URL" --schema lat --server "$BROKER_ADDR" 2>"$WORK/relay-lat.log" &
RELAY_PID=$!
sleep 1
log "commit-to-effect: $RATE tx/s for $SECS s"
lat=$("$LATENCY" "$CONNINFO" lat "$BROKER_ADDR" "$RATE" $((RATE * SECS)))
log "  $lat"
sleep 1
q "ALTER SYSTEM SET log_statement = 'all'" >/dev/null
q "ALTER SYSTEM SET log_line_prefix = '%m [%a] '" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 1
mark=$(wc -l <"$PGDIR/postgres.log")
sleep "$IDLE"
idle_stmts=$(tail -n +"$((mark + 1))" "$PGDIR/postgres.log" | grep -c '\[ferry relay\] LOG:  statement:' || true)
q "ALTER SYSTEM RESET log_statement" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
idle_rate=$(awk -v n="$idle_stmts" -v s="$IDLE" 'BEGIN { printf "%.2f\n", n / s }')
log "  idle relay: $idle_stmts statements in $IDLE s"
kill -TERM "$RELAY_PID"
wait "$RELAY_PID" || true
RELAY_PID=

f() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$lat"; }
ms() { awk -v u="$1" 'BEGIN { printf "%.1f ms", u / 1000 }'; }
echo "| figure | value |"
echo "| --- | --- |"
echo "| drain of $(thousands "$N") rows of $SIZE B to durable acks (batch $BATCH, ferryd --sync $SYNC), median of $REPS | $(thousands "$drain") msg/s |"
echo "| commit-to-effect at $(f rate) tx/s (relay + Postgres inbox), p50 / p90 / p99 / max | $(ms "$(f p50_us)") / $(ms "$(f p90_us)") / $(ms "$(f p99_us)") / $(ms "$(f max_us)") |"
echo "| statements/s the idle relay sends to Postgres (over $IDLE s; one re-scan every 10 s) | $idle_rate ($idle_stmts in $IDLE s) |"
