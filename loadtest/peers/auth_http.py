#!/usr/bin/env python3
"""The auth_http service of the nginx mail proxy peer.

nginx asks it, for every login, where the user goes. It ranks the backends
by a hash of the lower-cased user name (rendezvous hashing, as mailpin
does), so every session of one user goes to one backend, and lets the
backend check the password. Standard library only, as a small real
deployment would run it.

Usage: auth_http.py PORT POP3_PORT HOST:IMAP_PORT [HOST:IMAP_PORT ...]
(POP3 logins go to the same host as the user's IMAP logins, on POP3_PORT.)
"""

import hashlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

BACKENDS = []
POP3_PORT = ["110"]


def backend_for(user):
    """The highest-ranked backend for user."""
    key = user.lower().encode()
    return max(BACKENDS, key=lambda b: hashlib.sha256(key + b"@" + b.encode()).digest())


class Server(ThreadingHTTPServer):
    """A threading server with a listen backlog for bursts of logins (the
    default of 5 drops SYNs and costs 1 s retransmits)."""

    request_queue_size = 4096
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    """Answers nginx's Auth-* request headers."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        user = unquote(self.headers.get("Auth-User", ""))
        host, port = backend_for(user).rsplit(":", 1)
        if self.headers.get("Auth-Protocol", "imap").lower() == "pop3":
            port = POP3_PORT[0]
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", host)
        self.send_header("Auth-Port", port)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        """No per-request log (and never the password)."""


def main():
    port = int(sys.argv[1])
    POP3_PORT[0] = sys.argv[2]
    BACKENDS.extend(sys.argv[3:])
    server = Server(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
