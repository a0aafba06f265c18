#!/usr/bin/env python3
"""imap_idle.py: a real IDLE client (Python's imaplib) for mailpin's
live-move tests.

It logs one user in over plain TCP, selects INBOX, starts IDLE and prints
"IDLING <local port>". Then it obeys one command per stdin line:

  QUIET    reads whatever has arrived within 0.3 s and prints "QUIET" if
           nothing did, else "GOT <line>|<line>..." ("<closed>" for EOF)
  EXISTS   waits (at most 15 s) for "* n EXISTS" and prints "EXISTS n",
           or "NOEXISTS <lines seen>"
  DONE     ends IDLE: sends DONE, reads up to the tagged reply, then runs
           NOOP and counts tagged replies that belong to neither; prints
           "DONE <status> extra=<n>"

At the end of stdin it logs out and prints a one-line JSON summary (lines
received while idling, whether a BYE came, whether the connection stayed
the same). One socket for the whole life: it never reconnects, so a moved
session it did not notice is one it kept.

Standard library only. Passwords are never printed.
"""

import argparse
import imaplib
import json
import re
import select
import sys
import time

EXISTS_RE = re.compile(rb"^\* (\d+) EXISTS")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=143)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="pass")
    parser.add_argument("--timeout", type=float, default=15.0)
    return parser.parse_args()


class IdleClient:
    """imaplib with IDLE (RFC 2177) on top: imaplib before Python 3.14
    has no IDLE of its own, so the command is sent with imaplib's own tag
    and socket, as IDLE clients built on imaplib do."""

    def __init__(self, args):
        self.imap = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
        self.port = self.imap.sock.getsockname()[1]
        self.idle_lines = []
        self.bye = False
        self.closed = False
        self.tag = None

    def start_idle(self):
        self.tag = self.imap._new_tag()
        self.imap.send(self.tag + b" IDLE\r\n")
        while True:
            line = self.imap.readline()
            if not line:
                raise RuntimeError("closed before the IDLE continuation")
            if line.startswith(b"+"):
                return
            if line.startswith(self.tag + b" "):
                raise RuntimeError("IDLE refused: %r" % line)

    def read_ready(self, wait):
        """Lines that arrive within `wait` seconds of silence."""
        got = []
        while not self.closed and select.select([self.imap.sock], [], [], wait)[0]:
            line = self.imap.readline()
            if not line:
                self.closed = True
                got.append(b"<closed>")
                break
            line = line.rstrip(b"\r\n")
            if line.startswith(b"* BYE"):
                self.bye = True
            got.append(line)
        self.idle_lines.extend(got)
        return got

    def wait_exists(self, limit):
        seen = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.closed:
            for line in self.read_ready(0.1):
                seen.append(line)
                m = EXISTS_RE.match(line)
                if m:
                    return int(m.group(1)), seen
        return None, seen

    def done(self):
        self.imap.send(b"DONE\r\n")
        status = None
        extra = 0
        while status is None:
            line = self.imap.readline()
            if not line:
                return "closed", extra
            if line.startswith(self.tag + b" "):
                status = line.split()[1].decode()
            elif not line.startswith(b"*"):
                extra += 1
        # Any further reply to the IDLE tag would arrive before NOOP's.
        noop = self.imap._new_tag()
        self.imap.send(noop + b" NOOP\r\n")
        while True:
            line = self.imap.readline()
            if not line:
                return "closed", extra
            if line.startswith(noop + b" "):
                break
            if not line.startswith(b"*"):
                extra += 1
        return status, extra


def main():
    args = parse_args()
    client = IdleClient(args)
    client.imap.login(args.user, args.password)
    typ, _ = client.imap.select("INBOX")
    if typ != "OK":
        print("SELECT failed", file=sys.stderr)
        return 1
    client.start_idle()
    print("IDLING %d" % client.port, flush=True)
    idling = True
    for command in sys.stdin:
        command = command.strip()
        if command == "QUIET":
            got = client.read_ready(0.3)
            if got:
                print("GOT " + "|".join(l.decode(errors="replace") for l in got), flush=True)
            else:
                print("QUIET", flush=True)
        elif command == "EXISTS":
            n, seen = client.wait_exists(args.timeout)
            if n is None:
                print("NOEXISTS " + "|".join(l.decode(errors="replace") for l in seen), flush=True)
            else:
                print("EXISTS %d" % n, flush=True)
        elif command == "DONE":
            status, extra = client.done()
            idling = False
            print("DONE %s extra=%d" % (status, extra), flush=True)
        else:
            print("UNKNOWN %s" % command, flush=True)
    # Judged before LOGOUT, whose end of the connection is no loss.
    closed = client.closed
    same = (not closed) and client.imap.sock.getsockname()[1] == client.port
    if not idling and not closed:
        client.imap.logout()
    print(json.dumps({
        "library": "imaplib",
        "idle_lines": [l.decode(errors="replace") for l in client.idle_lines],
        "bye": client.bye,
        "closed": closed,
        "same_connection": same,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
