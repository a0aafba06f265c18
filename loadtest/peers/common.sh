#!/usr/bin/env bash
# Shared settings of the peer scripts: where the simulated backends listen
# (the harness binds them with --backend-hosts/--backend-port), each peer's
# ports, the work directory and a throw-away certificate.
set -euo pipefail

BACKEND_HOSTS=(127.0.0.11 127.0.0.12 127.0.0.13)
BACKEND_PORT=21143
# Where the simulated backends' POP3 and LMTP servers are expected, on the
# same addresses (the harness cannot place them there yet: see README).
BACKEND_POP3_PORT=21110
BACKEND_LMTP_PORT=21024
WORK=${PEERS_WORK:-/tmp/mailpin-peers}
mkdir -p "$WORK"

# A self-signed ECDSA P-256 certificate, like mailpin's dev certificate.
peer_cert() {
    if [ ! -f "$WORK/cert.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 7 \
            -subj "/CN=localhost" >/dev/null 2>&1
        cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/bundle.pem"
    fi
}

# apt-get install the named packages when a command is missing.
need() {
    local cmd=$1; shift
    if ! command -v "$cmd" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

# Stops the processes whose pids are in file $1 (one a line), if they run,
# and waits (up to 10 s) until they are gone.
stop_pidfile() {
    if [ -f "$1" ]; then
        local pids pid
        mapfile -t pids < "$1"
        for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        done
        rm -f "$1"
    fi
}

# Waits (up to 10 s) until something accepts on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}
