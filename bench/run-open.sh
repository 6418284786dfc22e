#!/usr/bin/env bash
# bench/run-open.sh - how long ferryd takes to open a data folder holding
# many consumer groups with many acks above their floors (issue 10, item 7).
#
# It makes one data folder: ferryd creates the schema, then the sqlite3
# shell adds one topic, NGROUPS groups on it (floor 1) and, for each, NACKS
# rows of group_acks (sequences 2, 4, 6, ...: acked out of order, so that
# none is below the floor and every one is loaded at start). Then it starts
# ferryd on it REPS times and prints the median time from exec until the
# ready file is written (the broker listens only after loading every group).
# The folder is made once and reused by every run (and by every broker
# given in FERRYD, so that two builds can be compared on the same data).
#
# Environment:
#   BUILD    meson build directory (default: <repo>/build)
#   FERRYD   one or more brokers, space-separated (default: $BUILD/broker/ferryd);
#            runs alternate between them
#   NGROUPS   groups (default 100)
#   NACKS     acks above the floor per group (default 100000)
#   REPS     runs per broker (default 3; the median is reported)
#   BENCH_DIR  where the data folder goes (default: the repository)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$REPO/build}
FERRYD=${FERRYD:-$BUILD/broker/ferryd}
NGROUPS=${NGROUPS:-100}
NACKS=${NACKS:-100000}
REPS=${REPS:-3}
BENCH_DIR=${BENCH_DIR:-$REPO}

die() {
    echo "run-open.sh: $*" >&2
    exit 1
}
[[ $NGROUPS =~ ^[1-9][0-9]*$ ]] || die "NGROUPS must be a positive integer"
[[ $NACKS =~ ^[1-9][0-9]*$ ]] || die "NACKS must be a positive integer"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"
command -v sqlite3 >/dev/null || die "needs the sqlite3 shell"
read -r -a BROKERS <<<"$FERRYD"
for f in "${BROKERS[@]}"; do
    [[ -x $f ]] || die "no broker at $f (build it, or set FERRYD)"
done

WORK=$(mktemp -d "$BENCH_DIR/bench-open.XXXXXX")
PID=
MS=
cleanup() {
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start BROKER: starts it on the folder; sets PID and MS (the ms until it
# was ready).
start() {
    local t0 t1 i
    rm -f "$WORK/ready"
    t0=$(date +%s%N)
    "$1" --listen 127.0.0.1:0 --data "$WORK/data" --ready-file "$WORK/ready" \
        --disk-reserve-mb 0 >>"$WORK/ferryd.log" 2>&1 &
    PID=$!
    for ((i = 0; i < 60000; i++)); do
        if [[ -s $WORK/ready && $(tail -c 1 "$WORK/ready" | wc -l) -eq 1 ]]; then
            t1=$(date +%s%N)
            MS=$(((t1 - t0) / 1000000))
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/ferryd.log" >&2; die "ferryd exited"; }
        sleep 0.01
    done
    die "ferryd was not ready after 10 minutes"
}
stop() {
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
}

start "${BROKERS[0]}"
stop
echo "run-open.sh: filling $WORK/data with $NGROUPS groups x $NACKS acks" >&2
sqlite3 "$WORK/data/ferry.db" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
INSERT INTO topics (id, name, created_ms) VALUES (1, 'bench.open', 0);
WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < $NGROUPS)
INSERT INTO groups (id, topic, name, created_ms, ack_floor, ack_wait_ms, max_deliveries)
    SELECT i, 'bench.open', 'g' || i, 0, 1, 30000, 5 FROM g;
WITH RECURSIVE a(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM a WHERE k < $NACKS)
INSERT INTO group_acks (group_id, seq) SELECT groups.id, 2 * a.k FROM groups, a;
COMMIT;
SQL

declare -A times
for ((r = 0; r < REPS; r++)); do
    for f in "${BROKERS[@]}"; do
        start "$f"
        stop
        times[$f]+="$MS "
        echo "run-open.sh: $f: $MS ms" >&2
    done
done
printf '%s groups x %s acks above the floor, median of %s opens:\n' "$NGROUPS" "$NACKS" "$REPS"
for f in "${BROKERS[@]}"; do
    # shellcheck disable=SC2086
    med=$(printf '%s\n' ${times[$f]} | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
    printf '  %s  %s ms\n' "$f" "$med"
done
