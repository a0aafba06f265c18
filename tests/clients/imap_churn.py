#!/usr/bin/env python3
"""imap_churn.py: users that log in again and again (Python's imaplib), for
mailpin's failover tests.

Each of --users users runs --sessions threads. Each thread loops: connect,
LOGIN, SELECT INBOX, NOOP, hold the session for --hold seconds (NOOP every
0.1 s, so a server-side close is seen at once), LOGOUT; then again, until a
line arrives on stdin (or --duration seconds pass). A session the server
closes (BYE, reset) is not a failed login; a login that gets NO, or a
connection that fails before the login answer, is.

Prints "READY <n>" once every thread has logged in once, then, at the end,
one JSON line: for every user the wall-clock times (time.time()) of its
successful logins and of its failed logins with their error text, and the
count of sessions the server closed. Passwords are never printed.

Standard library only.
"""

import argparse
import imaplib
import json
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--first-user", type=int, default=1)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--password", default="pass")
    p.add_argument("--hold", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: at a stdin line)")
    p.add_argument("--limit", type=float, default=120.0,
                   help="hard stop after this many seconds in any case")
    p.add_argument("--timeout", type=float, default=10.0)
    return p.parse_args()


class Record:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failed = {}
        self.closed = {}

    def add(self, table, user, value):
        with self.lock:
            table.setdefault(user, []).append(value)


def error_text(error, password):
    msg = error.args[0] if getattr(error, "args", None) else str(error)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    msg = str(msg) or type(error).__name__
    return msg.replace(password, "***") if password else msg


def worker(args, user, record, stop, first_login):
    first = True
    while not stop.is_set():
        conn = None
        stage = "connect"
        try:
            conn = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
            stage = "login"
            conn.login(user, args.password)
            record.add(record.ok, user, time.time())
            if first:
                first = False
                first_login.release()
            stage = "session"
            conn.select("INBOX")
            until = time.time() + args.hold
            while time.time() < until and not stop.is_set():
                conn.noop()
                stop.wait(0.1)
            conn.logout()
        except (imaplib.IMAP4.error, OSError, EOFError) as error:
            if stage in ("connect", "login"):
                record.add(record.failed, user, [time.time(), error_text(error, args.password)])
                stop.wait(0.05)
            else:
                record.add(record.closed, user, time.time())
            if conn is not None:
                try:
                    conn.shutdown()
                except Exception:
                    pass


def main():
    args = parse_args()
    users = ["user%04d" % n for n in range(args.first_user, args.first_user + args.users)]
    record = Record()
    stop = threading.Event()
    first_login = threading.Semaphore(0)
    threads = []
    for user in users:
        for _ in range(args.sessions):
            t = threading.Thread(target=worker, args=(args, user, record, stop, first_login), daemon=True)
            t.start()
            threads.append(t)
    deadline = time.time() + args.limit
    ready = 0
    for _ in threads:
        if not first_login.acquire(timeout=max(0.0, deadline - time.time())):
            break
        ready += 1
    print("READY %d" % ready, flush=True)
    if args.duration > 0:
        stop.wait(args.duration)
    else:
        waiter = threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True)
        waiter.start()
        stop.wait(max(0.0, deadline - time.time()))
    stop.set()
    for t in threads:
        t.join(timeout=args.timeout + 2)
    print(json.dumps({"ok": record.ok, "failed": record.failed, "closed": record.closed}), flush=True)


if __name__ == "__main__":
    main()
