#!/usr/bin/env bash
# bench/compare.sh - two builds of Ferry, measured in the same session,
# alternating, for "nothing got slower" claims.
#
#   OLD=/tmp/build-main NEW=build bench/compare.sh
#
# Each round runs, against each build in turn (the order alternates from
# round to round, so that a drift of the machine does not favour one side),
# on a fresh ferryd --sync SYNC of that build:
#   - pipelined publish: `ferry bench pub` W=1000, N messages;
#   - consume + ack: `ferry bench consume`, 4 consumers, NC messages.
# Then it prints, per figure, the median msg/s of each build and the
# ratio NEW/OLD of the medians, and the per-round ratios (1.00 = the same;
# these 2-core machines move 5-15% between runs, so look at the median).
#
# Environment: OLD, NEW (meson build folders, required), ROUNDS (5),
# N (200000), NC (200000), SIZE (100), SYNC (full), WAIT_IDLE (1, as in
# bench/lib.sh), BENCH_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${OLD:?set OLD to the meson build folder of the old tree}"
: "${NEW:?set NEW to the meson build folder of the new tree}"
ROUNDS=${ROUNDS:-5}
N=${N:-200000}
NC=${NC:-200000}
SIZE=${SIZE:-100}
SYNC=${SYNC:-full}

BUILD=$NEW
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

# use BUILD: point lib.sh's binaries at one build.
use() {
    FERRYD=$1/broker/ferryd
    FERRY=$1/client/cli/ferry
    BENCH=("$FERRY" bench)
    [[ -x $FERRYD && -x $FERRY ]] || die "no ferryd or ferry CLI in $1"
}

# one SIDE ROUND: both figures for one build; appends "SIDE FIGURE ROUND VALUE".
one() {
    local side=$1 round=$2 out
    wait_idle
    start_broker "$SYNC"
    out=$("${BENCH[@]}" pub --server "$BROKER_ADDR" --messages "$N" --size "$SIZE" --window 1000 \
        --sync "$SYNC" --topic "cmp-pub-$round" --json) || {
        broker_log_tail
        die "pub failed ($side)"
    }
    echo "$side pub $round $(field "$out" msgs_per_s)" >>"$RESULTS"
    stop_broker
    wait_idle
    start_broker "$SYNC"
    out=$("${BENCH[@]}" consume --server "$BROKER_ADDR" --messages "$NC" --size "$SIZE" \
        --consumers 4 --window 1000 --json) || {
        broker_log_tail
        die "consume failed ($side)"
    }
    echo "$side consume $round $(field "$out" msgs_per_s)" >>"$RESULTS"
    stop_broker
    log "round $round, $side: $(tail -n 2 "$RESULTS" | awk '{ printf "%s %s msg/s  ", $2, $4 }')"
}

for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order="old new"; else order="new old"; fi
    for side in $order; do
        if [[ $side == old ]]; then use "$OLD"; else use "$NEW"; fi
        one "$side" "$round"
    done
done

val() { awk -v s="$1" -v f="$2" -v r="${3:-}" '$1 == s && $2 == f && (r == "" || $3 == r) { print $4 }' "$RESULTS"; }
echo
echo "Paired comparison, $ROUNDS rounds, ferryd --sync $SYNC, ${SIZE}-byte messages;"
echo "OLD=$OLD NEW=$NEW; $(nproc) cores, $(uname -sr)."
echo
echo "| figure | OLD msg/s (median) | NEW msg/s (median) | NEW/OLD | per round |"
echo "| --- | ---: | ---: | ---: | --- |"
for fig in pub consume; do
    o=$(val old "$fig" | median)
    n=$(val new "$fig" | median)
    per=$(for r in $(seq 1 "$ROUNDS"); do
        awk -v a="$(val old "$fig" "$r")" -v b="$(val new "$fig" "$r")" 'BEGIN { printf "%.2f ", b / a }'
    done)
    label=$([[ $fig == pub ]] && echo "publish W=1000" || echo "consume+ack, 4 consumers")
    printf '| %s | %s | %s | %.3f | %s|\n' "$label" "$(thousands "$o")" "$(thousands "$n")" \
        "$(awk -v a="$o" -v b="$n" 'BEGIN { print b / a }')" "$per"
done
