#!/usr/bin/env bash
# run.sh - the order -> inventory story in one command.
#
# Starts ferryd on a fresh temporary folder, the inventory and e-mail
# services (consumer groups "inventory" and "email"), the outbox relay
# (`ferry relay` as a sidecar, or --relay thread: inside the order service)
# and the order service, which places --orders orders at --rate per second.
# Then it waits until every order has its effects, stops everything, and
# prints what each service did and whether every order's effect happened
# exactly once (orders_check). Exit status 0 when it did.
#
#   examples/orders/run.sh                      2,000 orders at 200/s
#   examples/orders/run.sh --orders 60000 --rate 1000 --latency
#                                               the commit-to-effect benchmark
#
# The programs are taken from the meson build folder: --build DIR, or
# $FERRY_BUILD, or ./build of the repository.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${FERRY_BUILD:-$root/build}
orders=2000
rate=200
relay=sidecar
latency=0
latency_from=1
keep=0
sync=full

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --orders N          orders to place (default $orders)
  --rate R            orders per second (default $rate)
  --relay MODE        sidecar (default: \`ferry relay --db orders.db\`) or
                      thread (the library relay inside order_service)
  --latency           also print commit-to-effect latency percentiles
  --latency-from K    skip orders below K in the latency (warm-up)
  --sync full|normal  synchronous setting of the consumers' databases (default
                      full: an acked effect survives a power loss); the order
                      database is always normal (the relay syncs before it
                      publishes)
  --build DIR         the meson build folder (default \$FERRY_BUILD or ./build)
  --keep              keep the temporary folder (databases, logs)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
    --orders | --rate | --relay | --latency-from | --sync | --build)
        if [ $# -lt 2 ]; then
            echo "run.sh: $1 needs a value (--help)" >&2
            exit 2
        fi ;;
    esac
    case $1 in
    --orders) orders=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --relay) relay=$2; shift 2 ;;
    --latency) latency=1; shift ;;
    --latency-from) latency_from=$2; shift 2 ;;
    --sync) sync=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
case $relay in sidecar | thread) ;; *) echo "run.sh: --relay is sidecar or thread" >&2; exit 2 ;; esac

bin=$build/examples/orders
ferryd=$build/broker/ferryd
ferry=$build/client/cli/ferry
for exe in "$ferryd" "$ferry" "$bin/order_service" "$bin/inventory_service" \
    "$bin/email_service" "$bin/orders_check"; do
    if [ ! -x "$exe" ]; then
        echo "run.sh: $exe is missing: build first (meson setup build && ninja -C build)" >&2
        exit 1
    fi
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-orders-XXXXXX")
pids=()
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*"; }

# 1. The broker, on a free port.
"$ferryd" --listen 127.0.0.1:0 --data "$dir/ferry-data" --ready-file "$dir/ready" \
    >"$dir/ferryd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 500); do [ -s "$dir/ready" ] && break; sleep 0.02; done
if [ ! -s "$dir/ready" ]; then
    echo "run.sh: ferryd did not start:" >&2
    cat "$dir/ferryd.log" >&2
    exit 1
fi
addr=$(head -n1 "$dir/ready")
say "ferryd listening on $addr (data in $dir/ferry-data)"

# 2. The consumers.
common=(--server "$addr" --sync "$sync")
"$bin/inventory_service" --db "$dir/inventory.db" "${common[@]}" >"$dir/inventory.log" 2>&1 &
pids+=($!)
"$bin/email_service" --db "$dir/email.db" "${common[@]}" >"$dir/email.log" 2>&1 &
pids+=($!)
say "inventory_service (group inventory) and email_service (group email) started"

# 3. The relay and the order service.
order_args=(--db "$dir/orders.db" --count "$orders" --rate "$rate" --sync normal)
if [ "$relay" = sidecar ]; then
    "$ferry" relay --db "$dir/orders.db" --install >/dev/null
    "$ferry" relay --db "$dir/orders.db" --server "$addr" >"$dir/relay.log" 2>&1 &
    pids+=($!)
    say "relay: ferry relay --db orders.db (sidecar)"
else
    order_args+=(--relay "$addr")
    say "relay: a thread of order_service"
fi
say "order_service: placing $orders orders at $rate/s"
start=$(date +%s.%N)
if ! "$bin/order_service" "${order_args[@]}" >"$dir/orders.log" 2>&1; then
    echo "run.sh: order_service failed:" >&2
    cat "$dir/orders.log" >&2
    exit 1
fi

# 4. Every order's effects, then a stop that lets each service log its
#    summary.
say "all orders placed; waiting for their effects"
"$bin/orders_check" --orders "$dir/orders.db" --inventory "$dir/inventory.db" \
    --email "$dir/email.db" --wait-ms 120000 >/dev/null || {
    echo "run.sh: the effects did not all arrive; logs in $dir" >&2
    keep=1
    exit 1
}
end=$(date +%s.%N)
for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
pids=("${pids[0]}")
say "done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s; what each service said last:"
for log in orders relay inventory email; do
    [ -f "$dir/$log.log" ] && grep -E 'stopping|stopped|relay:' "$dir/$log.log" | tail -n 2 | sed 's/^/   /'
done
echo
check_args=(--orders "$dir/orders.db" --inventory "$dir/inventory.db" --email "$dir/email.db")
[ "$latency" = 1 ] && check_args+=(--latency --latency-from "$latency_from")
"$bin/orders_check" "${check_args[@]}"
