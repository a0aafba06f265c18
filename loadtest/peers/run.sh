#!/usr/bin/env bash
# Runs the same scenarios against mailpin and each peer, over the same
# simulated backends (127.0.0.11-13:21143), writing one JSON report (and the
# printed summary, .txt) per target and scenario into $OUT, then the
# markdown table of table.py into $OUT/table.md.
#
# Scenarios, for each target:
#   idle-plain, idle-tls  SESSIONS idle sessions (4 per user), each in a
#                         fresh target process (RSS baseline)
#   logins                open-loop logins at RATE/s, plain then TLS
#   logins-find           the highest rate with p99 <= 50 ms, plain and TLS
#                         (skipped with FIND=0)
#   relay                 1 MiB FETCH bodies over 4 connections, plain and TLS
#                         (mailpin's report also has the direct baseline)
#   failover              logins at RATE/s over RATE/2 users (each logs in
#                         every 0.5 s), backend sim2 killed at 4 s of 12
# A peer is started right before each run (scripts in this directory) and
# stopped after it; HAProxy's health checks then see the backends at once.
#
# Usage: [TARGETS="mailpin haproxy nginx dovecot-director"] [FIND=0]
#        [OUT=DIR] [MAILPIN_LOADTEST=BIN] run.sh [SESSIONS] [RATE]
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
source "$DIR/common.sh"
SESSIONS=${1:-2000}
RATE=${2:-300}
FIND=${FIND:-1}
OUT=${OUT:-$WORK/results}
TARGETS=${TARGETS:-"mailpin haproxy nginx dovecot-director"}
LT=${MAILPIN_LOADTEST:-${CARGO_TARGET_DIR:-$DIR/../../target}/release/mailpin-loadtest}
if [ ! -x "$LT" ]; then
    echo "no $LT: cargo build --release -p mailpin-loadtest (or set MAILPIN_LOADTEST)" >&2
    exit 1
fi
mkdir -p "$OUT"
HOSTS=$(IFS=,; echo "${BACKEND_HOSTS[*]}")
BACK=(--backend-hosts "$HOSTS" --backend-port "$BACKEND_PORT")
FAILOVER_USERS=$(( RATE / 2 > 1 ? RATE / 2 : 1 ))

# The peer script that runs now, stopped on any exit.
RUNNING=""
cleanup() {
    if [ -n "$RUNNING" ]; then "$DIR/$RUNNING" stop || true; fi
}
trap cleanup EXIT

# scenario TARGET NAME [loadtest arguments...]: one run, its JSON and text.
scenario() {
    local target=$1 name=$2; shift 2
    echo "--- $target $name"
    "$LT" "$@" "${BACK[@]}" --target-name "$target" --json "$OUT/$target-$name.json" \
        | tee "$OUT/$target-$name.txt"
}

# every TARGET [target options...]: each scenario; the options point the
# harness at a running peer, and are empty for mailpin (the harness starts
# a fresh director for each run).
every() {
    local target=$1; shift
    local step
    for step in idle-plain idle-tls logins logins-find relay failover; do
        if [ "$step" = logins-find ] && [ "$FIND" = 0 ]; then continue; fi
        local opts=()
        if [ $# -gt 0 ]; then
            "$DIR/$1" start
            RUNNING=$1
            opts=(--target "$2" --target-tls "$3" --target-pid "$("$DIR/$1" pid)")
        fi
        case $step in
        idle-plain) scenario "$target" "$step" idle --sessions "$SESSIONS" --mode plain "${opts[@]}" ;;
        idle-tls) scenario "$target" "$step" idle --sessions "$SESSIONS" --mode tls "${opts[@]}" ;;
        logins) scenario "$target" "$step" logins --rate "$RATE" --duration 5 "${opts[@]}" ;;
        logins-find)
            scenario "$target" "$step" logins --find --rate "$RATE" --duration 3 \
                --p99-ms 50 "${opts[@]}"
            ;;
        relay)
            local direct=()
            if [ $# -gt 0 ]; then direct=(--no-direct); fi
            scenario "$target" "$step" relay --duration 4 "${direct[@]}" "${opts[@]}"
            ;;
        failover)
            scenario "$target" "$step" failover --rate "$RATE" --duration 12 --kill-at 4 \
                --users "$FAILOVER_USERS" "${opts[@]}"
            ;;
        esac
        if [ $# -gt 0 ]; then
            "$DIR/$1" stop
            RUNNING=""
        fi
    done
}

wants() { [[ " $TARGETS " == *" $1 "* ]]; }

if wants mailpin; then every mailpin; fi
if wants haproxy; then every haproxy haproxy.sh 127.0.0.1:22143 127.0.0.1:22993; fi
if wants nginx; then every nginx nginx.sh 127.0.0.1:23143 127.0.0.1:23993; fi
if wants dovecot-director; then
    every dovecot-director dovecot-director.sh 127.0.0.1:24143 127.0.0.1:24993
fi
python3 "$DIR/table.py" "$OUT" | tee "$OUT/table.md"
echo "reports in $OUT"
