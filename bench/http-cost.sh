#!/usr/bin/env bash
# bench/http-cost.sh - what watching ferryd over HTTP costs the publish path.
#
#   bench/http-cost.sh
#
# Each round runs pipelined publish (`ferry bench pub`, window 1000, N
# messages of SIZE bytes, one connection) twice on fresh brokers of the same
# build, in alternating order: once plain ("off"), once with `--http` and a
# watcher that every second scrapes /metrics and polls the four JSON
# endpoints the dashboard reads ("on"; plain HTTP/1.0 over bash's /dev/tcp,
# no curl needed). Prints the median msg/s of each, the ratio on/off of the
# medians, and the per-round ratios.
#
# Environment: BUILD (build), ROUNDS (7), N (300000), SIZE (100), SYNC
# (full), WAIT_IDLE (1, as in bench/lib.sh), BENCH_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-7}
N=${N:-300000}
SIZE=${SIZE:-100}
SYNC=${SYNC:-full}
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# watch PORT: what an open dashboard and a 1 s Prometheus scrape do.
watch_http() {
    local port=$1 path
    while :; do
        for path in /metrics /api/v1/broker /api/v1/topics /api/v1/groups /api/v1/connections; do
            if exec 3<>"/dev/tcp/127.0.0.1/$port"; then
                printf 'GET %s HTTP/1.0\r\n\r\n' "$path" >&3
                cat <&3 >/dev/null || true
                exec 3<&-
            fi
        done
        sleep 1
    done
}

one() {
    local side=$1 round=$2 out port watcher=""
    wait_idle
    if [[ $side == on ]]; then
        port=$(free_port)
        start_broker "$SYNC" --http "127.0.0.1:$port"
        watch_http "$port" &
        watcher=$!
    else
        start_broker "$SYNC"
    fi
    out=$("${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$N" --size "$SIZE" --window 1000 \
        --sync "$SYNC" --topic "http-cost-$round" --json) || {
        broker_log_tail
        die "pub failed ($side)"
    }
    if [[ -n $watcher ]]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
    fi
    echo "$side $round $(field "$out" msgs_per_s)" >>"$RESULTS"
    stop_broker
    log "round $round, $side: $(tail -n 1 "$RESULTS" | awk '{ print $3 }') msg/s"
}

for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order="off on"; else order="on off"; fi
    for side in $order; do one "$side" "$round"; done
done

val() { awk -v s="$1" -v r="${2:-}" '$1 == s && (r == "" || $2 == r) { print $3 }' "$RESULTS"; }
off=$(val off | median)
on=$(val on | median)
per=""
for round in $(seq 1 "$ROUNDS"); do
    per="$per $(awk -v a="$(val on "$round")" -v b="$(val off "$round")" 'BEGIN { printf "%.3f", a / b }')"
done
echo
echo "Publish W=1000, ${SIZE}-byte messages, ferryd --sync $SYNC, $ROUNDS rounds; $(nproc) cores."
echo
echo "| HTTP | msg/s (median) |"
echo "| --- | ---: |"
echo "| off | $(thousands "$off") |"
echo "| on, /metrics + 4 API calls every second | $(thousands "$on") |"
echo
echo "on/off of the medians: $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }'); per round:$per"
