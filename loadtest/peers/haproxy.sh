#!/usr/bin/env bash
# HAProxy (Debian's package) as an IMAP TCP balancer, leastconn, in front of
# the simulated backends: plain on 127.0.0.1:22143, TLS terminated on
# 127.0.0.1:22993; POP3 on 22110 and 22995 (TLS), LMTP on 22024, by the
# same rule. It cannot see the user, so sessions of one user may land
# on several backends: the harness counts those as invariant violations.
# Health checks as a deployment would have them (TCP connect every 500 ms,
# down after 2 failures: mailpin's defaults), and a refused connection is
# retried once on another server.
# Usage: haproxy.sh start|stop|pid
source "$(dirname "$0")/common.sh"

case ${1:-start} in
start)
    need haproxy haproxy
    peer_cert
    {
        echo "global"
        echo "    maxconn 9900"
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 2s"
        echo "    timeout client 1h"
        echo "    timeout server 1h"
        echo "    retries 1"
        echo "    option redispatch"
        # One backend section per protocol, the same servers on its port.
        for proto in imap:$BACKEND_PORT pop3:$BACKEND_POP3_PORT lmtp:$BACKEND_LMTP_PORT; do
            echo "backend ${proto%%:*}"
            echo "    balance leastconn"
            i=1
            for h in "${BACKEND_HOSTS[@]}"; do
                echo "    server sim$i $h:${proto##*:} check inter 500ms fall 2 rise 2"
                i=$((i + 1))
            done
        done
        echo "frontend plain"
        echo "    bind 127.0.0.1:22143"
        echo "    default_backend imap"
        echo "frontend tls"
        echo "    bind 127.0.0.1:22993 ssl crt $WORK/bundle.pem"
        echo "    default_backend imap"
        echo "frontend pop3"
        echo "    bind 127.0.0.1:22110"
        echo "    default_backend pop3"
        echo "frontend pop3s"
        echo "    bind 127.0.0.1:22995 ssl crt $WORK/bundle.pem"
        echo "    default_backend pop3"
        echo "frontend lmtp"
        echo "    bind 127.0.0.1:22024"
        echo "    default_backend lmtp"
    } > "$WORK/haproxy.cfg"
    haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"
    wait_port 22143
    ;;
stop) stop_pidfile "$WORK/haproxy.pid" ;;
pid) head -1 "$WORK/haproxy.pid" ;;
esac
