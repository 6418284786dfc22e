#!/usr/bin/env bash
# run.sh - the order -> inventory story in one command.
#
# Starts ferryd on a fresh temporary folder (or, with --transport jetstream,
# a NATS JetStream server: nats-server -js), the inventory and e-mail
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
#   examples/orders/run.sh --pg                 the order and consumer services
#                                               on a private PostgreSQL
#   examples/orders/run.sh --transport jetstream
#                                               the same services over NATS
#                                               JetStream (docs/SCALING.md)
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
pg=0
transport=ferryd

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
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
  --pg                the services' tables, outbox and inboxes in PostgreSQL:
                      a private server (initdb in the temporary folder, as
                      the user ferry-pg when run as root; a unix socket there
                      and a free 127.0.0.1 port), \`ferry relay --pg URL
                      --schema orders\` as the relay; stopped at the end
  --transport T       ferryd (default) or jetstream: a private nats-server -js
                      (\$NATS_SERVER, else /usr/sbin/nats-server) on a free
                      127.0.0.1 port with its store in the temporary folder;
                      every service gets --server nats://127.0.0.1:PORT and the
                      relay --to nats://127.0.0.1:PORT, nothing else changes;
                      ferryd is not started (--pg needs ferryd)
  --build DIR         the meson build folder (default \$FERRY_BUILD or ./build)
  --keep              keep the temporary folder (databases, logs)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
    --orders | --rate | --relay | --latency-from | --sync | --build | --transport)
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
    --pg) pg=1; shift ;;
    --transport) transport=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
case $relay in sidecar | thread) ;; *) echo "run.sh: --relay is sidecar or thread" >&2; exit 2 ;; esac
case $transport in ferryd | jetstream) ;; *) echo "run.sh: --transport is ferryd or jetstream" >&2; exit 2 ;; esac
if [ "$pg" = 1 ] && [ "$transport" = jetstream ]; then
    echo "run.sh: --pg runs with --transport ferryd only: the PostgreSQL relay publishes atomic" \
        "batches, which JetStream does not have (docs/SCALING.md)" >&2
    exit 2
fi
if [ "$pg" = 1 ] && { [ "$relay" = thread ] || [ "$latency" = 1 ]; }; then
    echo "run.sh: --pg runs the sidecar relay, without --latency" >&2
    exit 2
fi

bin=$build/examples/orders
ferryd=$build/broker/ferryd
ferry=$build/client/cli/ferry
nats_server=${NATS_SERVER:-/usr/sbin/nats-server}
server_exe=$ferryd
[ "$transport" = jetstream ] && server_exe=$nats_server
for exe in "$server_exe" "$ferry" "$bin/order_service" "$bin/inventory_service" \
    "$bin/email_service" "$bin/orders_check"; do
    if [ ! -x "$exe" ]; then
        if [ "$exe" = "$nats_server" ]; then
            echo "run.sh: no nats-server at $exe (apt-get install nats-server, or set NATS_SERVER)" >&2
        else
            echo "run.sh: $exe is missing: build first (meson setup build && ninja -C build)" >&2
        fi
        exit 1
    fi
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-orders-XXXXXX")
pids=()
pg_pid=
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$pg_pid" ]; then
        kill -INT "$pg_pid" 2>/dev/null || true # fast shutdown
        wait "$pg_pid" 2>/dev/null || true
    fi
    if [ "$keep" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*"; }

# in_bg CMD...: runs CMD in the background and waits for it, so that a
# SIGINT or SIGTERM to this script is acted on at once (bash runs a trap
# only after a foreground command ends), its PID in pids for the cleanup.
in_bg() {
    "$@" &
    local p=$! rc=0
    pids+=("$p")
    wait "$p" || rc=$?
    unset 'pids[-1]' # reaped: its PID may be reused
    return "$rc"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 1. The broker, on a free port: ferryd, or a JetStream server.
if [ "$transport" = jetstream ]; then
    # A port taken between free_port and the server's bind fails the start
    # (the log says so); run again.
    natsport=$(free_port)
    mkdir "$dir/js"
    "$nats_server" -js -a 127.0.0.1 -p "$natsport" -sd "$dir/js" >"$dir/nats-server.log" 2>&1 &
    pids+=($!)
    up=0
    for _ in $(seq 1 500); do
        if ! kill -0 "${pids[0]}" 2>/dev/null; then break; fi
        # Accepting connections, and JetStream ready (the server logs it).
        if (exec 3<>"/dev/tcp/127.0.0.1/$natsport") 2>/dev/null &&
            grep -q 'Server is ready' "$dir/nats-server.log"; then
            up=1
            break
        fi
        sleep 0.02
    done
    if [ "$up" != 1 ]; then
        echo "run.sh: nats-server did not start:" >&2
        cat "$dir/nats-server.log" >&2
        exit 1
    fi
    addr=nats://127.0.0.1:$natsport
    say "nats-server $("$nats_server" --version | awk '{print $2}') with JetStream at $addr (store in $dir/js)"
else
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
fi

# 1b. --pg: a private PostgreSQL, the services' schemas in its database.
if [ "$pg" = 1 ]; then
    pgbin=${FERRY_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
    if [ ! -x "$pgbin/postgres" ]; then
        echo "run.sh: no PostgreSQL server under /usr/lib/postgresql/*/bin (run script/bootstrap)" >&2
        exit 1
    fi
    pgdir=$dir/pg
    mkdir "$pgdir"
    chmod 755 "$dir" "$pgdir"
    as=()
    if [ "$(id -u)" = 0 ]; then
        # The server refuses to run as root.
        if ! id ferry-pg >/dev/null 2>&1; then
            echo "run.sh: no user ferry-pg to run PostgreSQL as (run script/bootstrap)" >&2
            exit 1
        fi
        chown ferry-pg: "$pgdir"
        as=(setpriv --reuid=ferry-pg --regid=ferry-pg --clear-groups --)
    fi
    pgport=$(free_port)
    if ! "${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -U ferry -A trust -E UTF8 --locale=C \
        --no-sync >"$dir/initdb.log" 2>&1; then
        echo "run.sh: initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        exit 1
    fi
    "${as[@]}" "$pgbin/postgres" -D "$pgdir/data" -p "$pgport" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$pgdir" >"$pgdir/postgres.log" 2>&1 &
    pg_pid=$!
    conninfo="host=$pgdir port=$pgport user=ferry dbname=postgres"
    url="postgresql://ferry@127.0.0.1:$pgport/postgres"
    for _ in $(seq 1 300); do
        "$pgbin/pg_isready" -q -h "$pgdir" -p "$pgport" && break
        sleep 0.1
    done
    if ! "$pgbin/pg_isready" -q -h "$pgdir" -p "$pgport"; then
        echo "run.sh: postgres did not start:" >&2
        cat "$pgdir/postgres.log" >&2
        exit 1
    fi
    say "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') at $url (data in $pgdir)"
fi

# 2. The consumers.
common=(--server "$addr" --sync "$sync")
if [ "$pg" = 1 ]; then
    inv_store=(--pg "$conninfo")
    mail_store=(--pg "$conninfo")
    order_store=(--pg "$conninfo")
    check_store=(--pg "$conninfo")
else
    inv_store=(--db "$dir/inventory.db")
    mail_store=(--db "$dir/email.db")
    order_store=(--db "$dir/orders.db")
    check_store=(--orders "$dir/orders.db" --inventory "$dir/inventory.db" --email "$dir/email.db")
fi
"$bin/inventory_service" "${inv_store[@]}" "${common[@]}" >"$dir/inventory.log" 2>&1 &
pids+=($!)
"$bin/email_service" "${mail_store[@]}" "${common[@]}" >"$dir/email.log" 2>&1 &
pids+=($!)
say "inventory_service (group inventory) and email_service (group email) started"

# 3. The relay and the order service.
order_args=("${order_store[@]}" --count "$orders" --rate "$rate" --sync normal)
if [ "$pg" = 1 ]; then
    "$ferry" relay --pg "$url" --schema orders --install >/dev/null
    "$ferry" relay --pg "$url" --schema orders --server "$addr" >"$dir/relay.log" 2>&1 &
    pids+=($!)
    say "relay: ferry relay --pg $url --schema orders (sidecar)"
elif [ "$relay" = sidecar ]; then
    "$ferry" relay --db "$dir/orders.db" --install >/dev/null
    "$ferry" relay --db "$dir/orders.db" --to "$addr" >"$dir/relay.log" 2>&1 &
    pids+=($!)
    say "relay: ferry relay --db orders.db --to $addr (sidecar)"
else
    order_args+=(--relay "$addr")
    say "relay: a thread of order_service, to $addr"
fi
say "order_service: placing $orders orders at $rate/s"
start=$(date +%s.%N)
if ! in_bg "$bin/order_service" "${order_args[@]}" >"$dir/orders.log" 2>&1; then
    echo "run.sh: order_service failed:" >&2
    cat "$dir/orders.log" >&2
    exit 1
fi

# 4. Every order's effects, then a stop that lets each service log its
#    summary.
say "all orders placed; waiting for their effects"
in_bg "$bin/orders_check" "${check_store[@]}" --wait-ms 120000 >/dev/null || {
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
check_args=("${check_store[@]}")
[ "$latency" = 1 ] && check_args+=(--latency --latency-from "$latency_from")
"$bin/orders_check" "${check_args[@]}"
