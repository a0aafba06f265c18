#!/usr/bin/env bash
# nginx mail proxy (Debian's nginx + libnginx-mod-mail) in front of the
# simulated backends, routing by user through auth_http.py (hash of the
# user): plain IMAP on 127.0.0.1:23143, implicit TLS on 127.0.0.1:23993;
# POP3 on 23110 and 23995 (TLS). nginx's mail module has no LMTP.
# Usage: nginx.sh start|stop|pid
source "$(dirname "$0")/common.sh"
DIR=$(cd "$(dirname "$0")" && pwd)

case ${1:-start} in
start)
    need nginx nginx-light libnginx-mod-mail
    peer_cert
    targets=()
    for h in "${BACKEND_HOSTS[@]}"; do targets+=("$h:$BACKEND_PORT"); done
    python3 "$DIR/auth_http.py" 23080 "$BACKEND_POP3_PORT" "${targets[@]}" &
    echo $! > "$WORK/auth_http.pid"
    wait_port 23080
    mkdir -p "$WORK/nginx"
    cat > "$WORK/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log error;
events { worker_connections 19000; }
mail {
    auth_http 127.0.0.1:23080/auth;
    proxy_pass_error_message on;
    imap_auth login plain;
    pop3_auth plain;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    # nginx 1.22 offers TLS 1.2 at most by default; the other targets speak 1.3.
    ssl_protocols TLSv1.2 TLSv1.3;
    server { listen 127.0.0.1:23143; protocol imap; }
    server { listen 127.0.0.1:23993 ssl; protocol imap; }
    server { listen 127.0.0.1:23110; protocol pop3; }
    server { listen 127.0.0.1:23995 ssl; protocol pop3; }
}
CONF
    nginx -c "$WORK/nginx.conf" -p "$WORK/nginx"
    wait_port 23143
    ;;
stop)
    stop_pidfile "$WORK/nginx.pid"
    stop_pidfile "$WORK/auth_http.pid"
    ;;
pid) head -1 "$WORK/nginx.pid" ;;
esac
