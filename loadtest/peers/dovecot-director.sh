#!/usr/bin/env bash
# Dovecot director 2.3 (Debian's package), a ring of one on loopback, in
# front of the simulated backends 127.0.0.11-13 (the director tells
# backends apart by address: start the harness with --backend-hosts).
# A static passdb with proxy=y nopassword=y sends every login on and lets
# the backend check the password. Listeners:
#   IMAP 127.0.0.1:24143 plain, 127.0.0.1:24993 implicit TLS,
#   POP3 127.0.0.1:24110 (24995 TLS), LMTP 127.0.0.1:24024 (lmtp_proxy = yes),
#   director ring 127.0.0.1:24009.
# The backends' POP3 and LMTP ports are BACKEND_POP3_PORT and
# BACKEND_LMTP_PORT of common.sh on the same addresses.
# Login processes run in high-performance mode (service_count = 0) so one
# instance holds thousands of proxied sessions.
# Usage: dovecot-director.sh start|stop|pid
source "$(dirname "$0")/common.sh"

DOVE=$WORK/dovecot-director
CONF=$DOVE/dovecot.conf
PIDFILE=$DOVE/run/master.pid

# The master's pid, if it runs.
master_pid() {
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        cat "$PIDFILE"
    fi
}

write_config() {
    local dh=""
    if [ -f /usr/share/dovecot/dh.pem ]; then dh="ssl_dh = </usr/share/dovecot/dh.pem"; fi
    # The backend port depends on the protocol of the login (%s).
    local port="%{if;%s;eq;lmtp;$BACKEND_LMTP_PORT;%{if;%s;eq;pop3;$BACKEND_POP3_PORT;$BACKEND_PORT}}"
    cat > "$CONF" <<CONF
# Written by loadtest/peers/dovecot-director.sh: Dovecot director 2.3,
# a ring of one, in front of the load test's simulated backends.
instance_name = mailpin-peer-director
base_dir = $DOVE/run
state_dir = $DOVE/state
log_path = $DOVE/dovecot.log
# Errors only, like the other targets (no line per login).
info_log_path = /dev/null
protocols = imap pop3 lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
# The container's hard fd limit is 20000.
default_client_limit = 20000
default_vsz_limit = 2G

ssl = yes
ssl_cert = <$WORK/cert.pem
ssl_key = <$WORK/key.pem
$dh
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8
# Login proxies stay quiet about each session (the log is not the
# bottleneck being measured).
login_log_format_elements = user=<%u> rip=%r
verbose_proctitle = no

director_servers = 127.0.0.1:24009
director_mail_servers = ${BACKEND_HOSTS[*]}
director_user_expire = 15 min
lmtp_proxy = yes

passdb {
  driver = static
  args = proxy=y nopassword=y port=$port
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$DOVE/home/%u allow_all_users=yes
}

service director {
  unix_listener login/director {
    mode = 0666
  }
  fifo_listener login/proxy-notify {
    mode = 0666
  }
  unix_listener director-userdb {
    mode = 0600
  }
  inet_listener {
    address = 127.0.0.1
    port = 24009
  }
}
# High-performance login processes: each holds many proxied sessions
# (client and backend side), one per core.
service imap-login {
  executable = imap-login director
  inet_listener imap {
    address = 127.0.0.1
    port = 24143
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = 24993
    ssl = yes
  }
  service_count = 0
  client_limit = 9900
  process_min_avail = 2
  process_limit = 4
}
service pop3-login {
  executable = pop3-login director
  inet_listener pop3 {
    address = 127.0.0.1
    port = 24110
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = 24995
    ssl = yes
  }
  service_count = 0
  client_limit = 9900
  process_min_avail = 1
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 24024
  }
  unix_listener lmtp {
    mode = 0600
  }
  client_limit = 100
  service_count = 0
  process_limit = 100
}
protocol lmtp {
  auth_socket_path = director-userdb
}
# Every login asks auth and anvil: they must take all login processes'
# connections.
service anvil {
  client_limit = 20000
}
service auth {
  client_limit = 20000
}
CONF
}

case ${1:-start} in
start)
    need dovecot dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
    peer_cert
    if [ -n "$(master_pid)" ]; then
        echo "dovecot-director already runs (pid $(master_pid))" >&2
        exit 1
    fi
    mkdir -p "$DOVE/run" "$DOVE/state" "$DOVE/home"
    write_config
    : > "$DOVE/dovecot.log"
    dovecot -c "$CONF"
    # Up when the master wrote its pid and the IMAP listener accepts.
    for _ in $(seq 100); do
        if [ -n "$(master_pid)" ] && (exec 3<>/dev/tcp/127.0.0.1/24143) 2>/dev/null; then
            exit 0
        fi
        sleep 0.1
    done
    echo "dovecot-director did not come up; see $DOVE/dovecot.log" >&2
    exit 1
    ;;
stop)
    pid=$(master_pid)
    if [ -n "$pid" ]; then
        kill "$pid"
        # The master stops its children before it exits.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "dovecot-director (pid $pid) did not stop" >&2
            exit 1
        fi
    fi
    rm -f "$PIDFILE"
    ;;
pid)
    pid=$(master_pid)
    [ -n "$pid" ] || { echo "dovecot-director does not run" >&2; exit 1; }
    echo "$pid"
    ;;
*)
    echo "usage: $0 start|stop|pid" >&2
    exit 2
    ;;
esac
