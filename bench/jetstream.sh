#!/usr/bin/env bash
# bench/jetstream.sh - ferryd against NATS JetStream, in one run: the outbox
# relay's drain rate and the orders story's commit-to-effect latency.
#
#   bench/jetstream.sh
#   BUILD=/tmp/b ROUNDS=5 bench/jetstream.sh
#
# (a) Relay drain. Each round, for each sink (ferryd --sync full, ferryd
#     --sync normal, JetStream), on fresh data: a new application database
#     in WAL mode with the outbox installed (`ferry relay --install`), N
#     rows of SIZE random bytes inserted by the sqlite3 shell in one
#     transaction, a fresh broker (ferryd on a fresh data folder; or
#     `nats-server -js` on a fresh store folder and a free loopback port),
#     then `ferry relay --db DB --to ADDR --batch BATCH --drain`. The figure
#     is the relay's own ("drained: relayed N rows ... (R msg/s)": from its
#     first read to its last mark). After each drain the broker is checked
#     to hold exactly N messages (ferry topics; JetStream's /jsz monitoring
#     endpoint) and the outbox to have none waiting. Median of ROUNDS.
# (b) Commit-to-effect latency at a steady RATE orders/s: ORDERS orders
#     through examples/orders/run.sh --latency --latency-from WARM, with
#     --transport ferryd and --transport jetstream, LAT_ROUNDS times each
#     (alternating); the inventory consumer's p50 and p99, medians.
#
# Environment: BUILD (build), ROUNDS (3), N (50000), SIZE (100), BATCH
# (1000), ORDERS (20000), RATE (1000), WARM (1000), LAT_ROUNDS (ROUNDS),
# NATS_SERVER (/usr/sbin/nats-server), WAIT_IDLE (1, as in bench/lib.sh),
# BENCH_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
N=${N:-50000}
SIZE=${SIZE:-100}
BATCH=${BATCH:-1000}
ORDERS=${ORDERS:-20000}
RATE=${RATE:-1000}
WARM=${WARM:-1000}
LAT_ROUNDS=${LAT_ROUNDS:-$ROUNDS}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}

for v in ROUNDS N SIZE BATCH ORDERS RATE WARM LAT_ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "jetstream.sh: $v must be a number" >&2; exit 1; }
done
((ROUNDS > 0 && N > 0)) || { echo "jetstream.sh: ROUNDS and N must be positive" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

command -v sqlite3 >/dev/null || die "the sqlite3 shell is needed to fill the outbox (apt-get install sqlite3)"
[[ $(basename "$FERRY") == ferry ]] || die "needs the ferry CLI (ferry relay), not $FERRY"
[[ -x $NATS_SERVER ]] || die "no nats-server at $NATS_SERVER (apt-get install nats-server, or set NATS_SERVER)"
[[ -x $BUILD/examples/orders/order_service ]] || die "no examples in $BUILD (build them)"

NATS_PID=
NATS_ADDR=
NATS_MON=
stop_nats() {
    if [[ -n $NATS_PID ]]; then
        kill -TERM "$NATS_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 200; i++)); do
            kill -0 "$NATS_PID" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$NATS_PID" 2>/dev/null; then
            log "nats-server (pid $NATS_PID) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$NATS_PID" 2>/dev/null || true
        fi
        wait "$NATS_PID" 2>/dev/null || true
        NATS_PID=
    fi
    rm -rf -- "$WORK/js"
}
trap 'stop_nats; cleanup' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nats: nats-server -js on a fresh store and free loopback ports (the
# client port and the monitoring port, for /jsz); NATS_PID, NATS_ADDR.
start_nats() {
    local port mon i
    port=$(free_port)
    mon=$(free_port)
    mkdir -p "$WORK/js"
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -m "$mon" -sd "$WORK/js" \
        >"$WORK/js/nats-server.log" 2>&1 &
    NATS_PID=$!
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$NATS_PID" 2>/dev/null; then
            cat "$WORK/js/nats-server.log" >&2 || true
            NATS_PID=
            die "nats-server exited before it was ready (a port taken meanwhile? run again)"
        fi
        if grep -q 'Server is ready' "$WORK/js/nats-server.log" &&
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            NATS_ADDR=nats://127.0.0.1:$port
            NATS_MON=$mon
            return 0
        fi
        sleep 0.05
    done
    cat "$WORK/js/nats-server.log" >&2 || true
    die "nats-server was not ready after 10 s"
}

# nats_messages: the messages JetStream holds (every stream; /jsz).
nats_messages() {
    exec 3<>"/dev/tcp/127.0.0.1/$NATS_MON"
    printf 'GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    sed -n 's/^ *"messages": *\([0-9]*\).*/\1/p' <&3 | head -n 1
    exec 3<&-
}

# drain SINK ROUND: one relay drain of a fresh outbox to a fresh SINK
# (full, normal: ferryd with that --sync; js: JetStream).
drain() {
    local sink=$1 round=$2 db addr line rate count left
    db=$WORK/app-$sink-$round.db
    sqlite3 "$db" "PRAGMA journal_mode = WAL;" >/dev/null
    "$FERRY" relay --db "$db" --install >/dev/null
    sqlite3 "$db" "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $N)
                   INSERT INTO ferry_outbox(topic, payload)
                   SELECT 'relay-bench', randomblob($SIZE) FROM c;"
    if [[ $sink == js ]]; then
        start_nats
        addr=$NATS_ADDR
    else
        start_broker "$sink"
        addr=$BROKER_ADDR
    fi
    if ! "$FERRY" relay --db "$db" --to "$addr" --batch "$BATCH" --drain 2>"$WORK/relay.log"; then
        cat "$WORK/relay.log" >&2
        [[ $sink == js ]] && tail -n 20 "$WORK/js/nats-server.log" >&2
        [[ $sink != js ]] && broker_log_tail
        die "ferry relay to $addr failed"
    fi
    line=$(grep 'drained: relayed' "$WORK/relay.log" || true)
    rate=$(sed -n 's/.*(\([0-9]*\) msg\/s).*/\1/p' <<<"$line")
    [[ -n $rate ]] || { cat "$WORK/relay.log" >&2; die "no drained line in the relay's log"; }
    if [[ $sink == js ]]; then
        count=$(nats_messages)
        stop_nats
    else
        count=$("$FERRY" topics --server "$addr" | awk '$1 == "relay-bench" { print $2 }')
        stop_broker
    fi
    [[ $count == "$N" ]] || die "$sink holds ${count:-no} messages, not $N"
    left=$(sqlite3 "$db" "SELECT count(*) FROM ferry_outbox WHERE sent_ms IS NULL")
    [[ $left == 0 ]] || die "$left rows left unsent ($sink)"
    rm -f -- "$db" "$db-wal" "$db-shm" "$db.relay.lock"
    log "round $round: relay to $sink: $(thousands "$rate") msg/s"
    echo "drain $sink $rate" >>"$RESULTS"
}

# story TRANSPORT ROUND: the orders story at RATE/s; inventory p50 and p99.
story() {
    local t=$1 round=$2 out p50 p99
    if ! out=$("$REPO/examples/orders/run.sh" --build "$BUILD" --transport "$t" \
        --orders "$ORDERS" --rate "$RATE" --latency --latency-from "$WARM" 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "examples/orders/run.sh --transport $t failed"
    fi
    grep -q '^RESULT: every order' <<<"$out" || { printf '%s\n' "$out" >&2; die "no exactly-once verdict ($t)"; }
    # "  inventory   p50    2.59 ms  p90 ...  p99   14.54 ms  max ..."
    p50=$(awk '$1 == "inventory" && $2 == "p50" { print $3; exit }' <<<"$out")
    p99=$(awk '$1 == "inventory" && $8 == "p99" { print $9; exit }' <<<"$out")
    [[ -n $p50 && -n $p99 ]] || { printf '%s\n' "$out" >&2; die "no latency line ($t)"; }
    log "round $round: orders story over $t: inventory p50 $p50 ms, p99 $p99 ms"
    echo "lat $t $p50 $p99" >>"$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
    wait_idle
    # Alternating the order, so that neither sink always runs first.
    if ((round % 2)); then sinks=(full normal js); else sinks=(js normal full); fi
    for sink in "${sinks[@]}"; do drain "$sink" "$round"; done
done
for round in $(seq 1 "$LAT_ROUNDS"); do
    wait_idle
    if ((round % 2)); then ts=(ferryd jetstream); else ts=(jetstream ferryd); fi
    for t in "${ts[@]}"; do story "$t" "$round"; done
done

col() { awk -v k="$1" -v s="$2" -v c="$3" '$1 == k && $2 == s { print $c }' "$RESULTS" | median; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f ms\n", v }'; }
natsv=$("$NATS_SERVER" --version | awk '{ print $2 }')
echo
echo "ferryd against NATS JetStream ($natsv, one node, default settings), one run, $(nproc) cores, $(date -u +%Y-%m-%d)."
echo
echo "Relay drain: $(thousands "$N") outbox rows of $SIZE B, batch $BATCH, \`ferry relay --drain\`, median of $ROUNDS:"
echo
echo "| sink | durable when acked | msg/s |"
echo "| --- | --- | ---: |"
echo "| ferryd --sync full | fsync before every ack | $(thousands "$(col drain full 3)") |"
echo "| ferryd --sync normal | written; fsync every 1 s | $(thousands "$(col drain normal 3)") |"
echo "| JetStream, 1 node | written; fsync every 2 min (sync_interval) | $(thousands "$(col drain js 3)") |"
if ((LAT_ROUNDS > 0)); then
    echo
    echo "Commit-to-effect (order's commit → inventory's committed effect), $(thousands "$ORDERS") orders at $(thousands "$RATE")/s, from order $WARM, median of $LAT_ROUNDS:"
    echo
    echo "| transport | p50 | p99 |"
    echo "| --- | ---: | ---: |"
    echo "| ferryd --sync full | $(ms "$(col lat ferryd 3)") | $(ms "$(col lat ferryd 4)") |"
    echo "| JetStream, 1 node | $(ms "$(col lat jetstream 3)") | $(ms "$(col lat jetstream 4)") |"
fi
