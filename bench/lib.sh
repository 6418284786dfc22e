# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# bench/lib.sh - shared by bench/run.sh and bench/run-consume.sh; sourced,
# not run. Expects `set -euo pipefail` and, before sourcing, REPO (the
# repository). Provides:
#
#   BUILD FERRYD FERRY BENCH   the binaries (environment overrides kept)
#   WORK RESULTS               a scratch directory under BENCH_DIR and a
#                              results file in it, removed on exit (trap)
#   die, log                   messages to stderr (die exits 1)
#   start_broker SYNC          a ferryd on a fresh data directory and an
#                              ephemeral loopback port: BROKER_PID, BROKER_ADDR
#   stop_broker                SIGTERM (SIGKILL after 10 s), data removed
#   broker_log_tail            the last lines of the broker's log, to stderr
#   wait_idle                  with WAIT_IDLE=1 (the default), waits up to
#                              IDLE_TIMEOUT s (600) until the CPUs were at
#                              least 90% idle for 2 s, so that runs on a
#                              shared machine do not measure others' work
#   field JSON NAME            a number (or true/false/null) from the bench's
#                              flat JSON
#   median                     of the numbers on stdin
#   thousands N, dur US        formatting: 1,234,567 and µs / ms

BUILD=${BUILD:-$REPO/build}
FERRYD=${FERRYD:-$BUILD/broker/ferryd}
BENCH_DIR=${BENCH_DIR:-$REPO}

if [[ -z ${FERRY:-} ]]; then
    if [[ -x $BUILD/client/cli/ferry ]]; then
        FERRY=$BUILD/client/cli/ferry
    else
        FERRY=$BUILD/bench/ferry-bench
    fi
fi
if [[ $(basename "$FERRY") == ferry-bench ]]; then
    BENCH=("$FERRY")
else
    BENCH=("$FERRY" bench)
fi

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}
log() { echo "$(basename "$0"): $*" >&2; }

[[ -x $FERRYD ]] || die "no broker at $FERRYD (build it, or set FERRYD)"
[[ -x $FERRY ]] || die "no ferry CLI or ferry-bench at $FERRY (build it, or set FERRY)"

BROKER_PID=
BROKER_TMP=
BROKER_ADDR=
WORK=$(mktemp -d "$BENCH_DIR/bench-run.XXXXXX")
RESULTS=$WORK/results
: >"$RESULTS"

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        # ferryd finishes its commit in flight and exits; give it 10 s.
        local i
        for ((i = 0; i < 200; i++)); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$BROKER_PID" 2>/dev/null; then
            log "ferryd (pid $BROKER_PID) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$BROKER_PID" 2>/dev/null || true
        fi
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
    if [[ -n $BROKER_TMP ]]; then
        rm -rf -- "$BROKER_TMP"
        BROKER_TMP=
    fi
}

cleanup() {
    stop_broker
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_broker SYNC [ARG...]: a ferryd on a fresh data dir and an ephemeral
# port, with any further ferryd arguments; sets BROKER_PID and BROKER_ADDR. Its stdout goes to the log too, so that a
# caller capturing this shell's output never waits for the broker.
start_broker() {
    local sync=$1
    BROKER_TMP=$(mktemp -d "$WORK/broker.XXXXXX")
    "$FERRYD" --listen 127.0.0.1:0 --data "$BROKER_TMP/data" --sync "$sync" \
        --ready-file "$BROKER_TMP/ready" "${@:2}" >>"$BROKER_TMP/ferryd.log" 2>&1 &
    BROKER_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        # Complete once the line "HOST:PORT\n" is there.
        if [[ -s $BROKER_TMP/ready && $(tail -c 1 "$BROKER_TMP/ready" | wc -l) -eq 1 ]]; then
            BROKER_ADDR=$(head -n 1 "$BROKER_TMP/ready")
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            cat "$BROKER_TMP/ferryd.log" >&2 || true
            die "ferryd exited before it was ready"
        fi
        sleep 0.05
    done
    cat "$BROKER_TMP/ferryd.log" >&2 || true
    die "ferryd was not ready after 10 s"
}

broker_log_tail() {
    if [[ -n $BROKER_TMP ]]; then
        tail -n 20 "$BROKER_TMP/ferryd.log" >&2 || true
    fi
}

# cpu_busy_pct SECONDS: how busy the CPUs were over that many seconds.
cpu_busy_pct() {
    local a b
    a=$(head -n 1 /proc/stat)
    sleep "$1"
    b=$(head -n 1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x); split(b, y); total = 0
        for (i = 2; i <= n; i++) total += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f\n", (total > 0 ? 100 * (total - idle) / total : 0) }'
}

wait_idle() {
    [[ ${WAIT_IDLE:-1} == 1 ]] || return 0
    local start=$SECONDS busy said=0
    while :; do
        busy=$(cpu_busy_pct 2)
        ((busy <= 10)) && return 0
        if ((SECONDS - start >= ${IDLE_TIMEOUT:-600})); then
            log "the CPUs are still ${busy}% busy after ${IDLE_TIMEOUT:-600} s; measuring anyway"
            return 0
        fi
        if ((!said)); then
            log "waiting for the machine to go idle (CPUs ${busy}% busy; WAIT_IDLE=0 skips this)"
            said=1
        fi
    done
}

# field JSON NAME: a number (or true/false/null) from the bench's flat JSON.
field() {
    sed -n 's/.*"'"$2"'":\([^,}]*\).*/\1/p' <<<"$1"
}

# median: of the numbers on stdin (mean of the middle two for an even count).
median() {
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# Formatting: thousands separators, and µs shown as µs or ms.
thousands() { awk -v v="$1" 'BEGIN {
    s = sprintf("%.0f", v); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'; }
dur() { awk -v v="$1" 'BEGIN {
    if (v < 1000) printf "%.0f µs\n", v; else printf "%.2f ms\n", v / 1000 }'; }
