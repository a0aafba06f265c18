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
#   pop3                  open-loop POP3 logins at RATE/s, plain then TLS
#                         (targets with a POP3 listener)
#   lmtp                  LMTP deliveries, 4 connections, 3 recipients per
#                         transaction, 10 KB messages, nothing-lost check
#                         (targets with an LMTP listener; mailpin's report
#                         also has the direct baseline)
#   failover              logins at RATE/s over RATE/2 users (each logs in
#                         every 0.5 s), backend sim2 killed at 4 s of 12
# A peer is started right before each run (scripts in this directory) and
# stopped after it; HAProxy's health checks then see the backends at once.
#
# Usage: [TARGETS="mailpin haproxy nginx dovecot-director"] [FIND=0] [STEPS="pop3 lmtp"]
#        [OUT=DIR] [MAILPIN_LOADTEST=BIN] run.sh [SESSIONS] [RATE]
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
source "$DIR/common.sh"
SESSIONS=${1:-2000}
RATE=${2:-300}
FIND=${FIND:-1}
STEPS=${STEPS:-"idle-plain idle-tls logins logins-find relay pop3 lmtp failover"}
OUT=${OUT:-$WORK/results}
TARGETS=${TARGETS:-"mailpin haproxy nginx dovecot-director"}
LT=${MAILPIN_LOADTEST:-${CARGO_TARGET_DIR:-$DIR/../../target}/release/mailpin-loadtest}
if [ ! -x "$LT" ]; then
    echo "no $LT: cargo build --release -p mailpin-loadtest (or set MAILPIN_LOADTEST)" >&2
    exit 1
fi
mkdir -p "$OUT"
HOSTS=$(IFS=,; echo "${BACKEND_HOSTS[*]}")
BACK=(--backend-hosts "$HOSTS" --backend-port "$BACKEND_PORT"
    --backend-pop3-port "$BACKEND_POP3_PORT" --backend-lmtp-port "$BACKEND_LMTP_PORT")
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

# every TARGET [SCRIPT IMAP IMAPS POP3 POP3S LMTP]: each scenario; the
# addresses point the harness at the running peer ("-": it has no such
# listener, the scenario is skipped), and are absent for mailpin (the
# harness starts a fresh director for each run).
every() {
    local target=$1; shift
    local step
    for step in $STEPS; do
        if [ "$step" = logins-find ] && [ "$FIND" = 0 ]; then continue; fi
        if [ $# -gt 0 ]; then
            if [ "$step" = pop3 ] && [ "$4" = - ]; then continue; fi
            if [ "$step" = lmtp ] && [ "$6" = - ]; then continue; fi
        fi
        local opts=()
        if [ $# -gt 0 ]; then
            "$DIR/$1" start
            RUNNING=$1
            opts=(--target "$2" --target-tls "$3" --target-pid "$("$DIR/$1" pid)")
            if [ "$4" != - ]; then opts+=(--target-pop3 "$4" --target-pop3-tls "$5"); fi
            if [ "$6" != - ]; then opts+=(--target-lmtp "$6"); fi
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
        pop3)
            scenario "$target" "$step" logins --protocol pop3 --rate "$RATE" --duration 5 \
                --mode both "${opts[@]}"
            ;;
        lmtp)
            local direct=()
            if [ $# -gt 0 ]; then direct=(--no-direct); fi
            scenario "$target" "$step" lmtp --conns 4 --recipients 3 --size 10000 --duration 5 \
                "${direct[@]}" "${opts[@]}"
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
if wants haproxy; then
    every haproxy haproxy.sh 127.0.0.1:22143 127.0.0.1:22993 \
        127.0.0.1:22110 127.0.0.1:22995 127.0.0.1:22024
fi
if wants nginx; then
    every nginx nginx.sh 127.0.0.1:23143 127.0.0.1:23993 127.0.0.1:23110 127.0.0.1:23995 -
fi
if wants dovecot-director; then
    every dovecot-director dovecot-director.sh 127.0.0.1:24143 127.0.0.1:24993 \
        127.0.0.1:24110 127.0.0.1:24995 127.0.0.1:24024
fi
python3 "$DIR/table.py" "$OUT" | tee "$OUT/table.md"
echo "reports in $OUT"
