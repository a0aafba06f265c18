#!/usr/bin/env bash
# Runs the same scenarios against mailpin and each installed peer, over the
# same simulated backends (127.0.0.11-13:21143), writing one JSON report per
# scenario and target into $OUT (default /tmp/mailpin-peers/results).
# Usage: [TARGETS="mailpin haproxy nginx"] run.sh [SESSIONS] [LOGIN_RATE]
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
source "$DIR/common.sh"
SESSIONS=${1:-2000}
RATE=${2:-300}
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
LT=${MAILPIN_LOADTEST:-$DIR/../../target/release/mailpin-loadtest}
TARGETS=${TARGETS:-"mailpin haproxy nginx"}
HOSTS=$(IFS=,; echo "${BACKEND_HOSTS[*]}")
BACK=(--backend-hosts "$HOSTS" --backend-port "$BACKEND_PORT")

# scenarios NAME [target options...]: idle plain + TLS, logins plain + TLS.
scenarios() {
    local name=$1; shift
    "$LT" idle --sessions "$SESSIONS" --mode plain "${BACK[@]}" --target-name "$name" "$@" \
        --json "$OUT/$name-idle-plain.json"
    "$LT" idle --sessions "$SESSIONS" --mode tls "${BACK[@]}" --target-name "$name" "$@" \
        --json "$OUT/$name-idle-tls.json"
    "$LT" logins --rate "$RATE" --duration 5 "${BACK[@]}" --target-name "$name" "$@" \
        --json "$OUT/$name-logins.json"
    "$LT" relay --duration 4 --no-direct "${BACK[@]}" --target-name "$name" "$@" \
        --json "$OUT/$name-relay.json"
}

wants() { [[ " $TARGETS " == *" $1 "* ]]; }

if wants mailpin; then scenarios mailpin; fi

# A peer must be restarted for each idle run so its RSS baseline is fresh.
peer() {
    local name=$1 script=$2 plain=$3 tls=$4
    for mode in plain tls; do
        "$DIR/$script" start
        sleep 0.5
        "$LT" idle --sessions "$SESSIONS" --mode "$mode" "${BACK[@]}" --target-name "$name" \
            --target "$plain" --target-tls "$tls" --target-pid "$("$DIR/$script" pid)" \
            --json "$OUT/$name-idle-$mode.json"
        "$DIR/$script" stop
        sleep 0.5
    done
    "$DIR/$script" start
    sleep 0.5
    local pid
    pid=$("$DIR/$script" pid)
    "$LT" logins --rate "$RATE" --duration 5 "${BACK[@]}" --target-name "$name" \
        --target "$plain" --target-tls "$tls" --target-pid "$pid" --json "$OUT/$name-logins.json"
    "$LT" relay --duration 4 --no-direct "${BACK[@]}" --target-name "$name" \
        --target "$plain" --target-tls "$tls" --target-pid "$pid" --json "$OUT/$name-relay.json"
    "$DIR/$script" stop
}

if wants haproxy; then peer haproxy haproxy.sh 127.0.0.1:22143 127.0.0.1:22993; fi
if wants nginx; then peer nginx nginx.sh 127.0.0.1:23143 127.0.0.1:23993; fi
echo "reports in $OUT"
