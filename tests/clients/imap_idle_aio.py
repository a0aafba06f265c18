#!/usr/bin/env python3
"""imap_idle_aio.py: a second real IDLE client for mailpin's live-move
tests, built on aioimaplib (asyncio; its own IMAP parser and IDLE
handling, nothing shared with imaplib). Installed from PyPI into the test
venv by scripts/install-test-deps; run it with that venv's python.

Same conversation as imap_idle.py: it logs one user in over plain TCP,
selects INBOX, starts IDLE (aioimaplib's idle_start) and prints
"IDLING <local port>"; then one command per stdin line:

  QUIET    prints "QUIET" if no byte has arrived since IDLE started (after
           a 0.3 s window), else "GOT <lines>" ("<closed>" when the
           connection was lost)
  EXISTS   waits (at most 15 s) for a pushed "n EXISTS" and prints
           "EXISTS n", or "NOEXISTS"
  DONE     idle_done, awaits IDLE's tagged reply, runs NOOP, counts tagged
           lines beyond those two; prints "DONE <status> extra=<n>"

At the end of stdin it logs out and prints a one-line JSON summary.
Passwords are never printed.
"""

import argparse
import asyncio
import json
import re
import sys

import aioimaplib

EXISTS_RE = re.compile(rb"^(\d+) EXISTS")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=143)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="pass")
    parser.add_argument("--timeout", type=float, default=15.0)
    return parser.parse_args()


def lines_of(chunks):
    data = b"".join(chunks)
    return [l for l in data.split(b"\r\n") if l]


async def main():
    args = parse_args()
    lost = []
    def on_lost(exc):
        lost.append(exc)
        print("connection lost: %r" % (exc,), file=sys.stderr, flush=True)

    client = aioimaplib.IMAP4(host=args.host, port=args.port, timeout=args.timeout,
                              conn_lost_cb=on_lost)
    await client.wait_hello_from_server()
    response = await client.login(args.user, args.password)
    if response.result != "OK":
        print("LOGIN failed", file=sys.stderr)
        return 1
    response = await client.select("INBOX")
    if response.result != "OK":
        print("SELECT failed", file=sys.stderr)
        return 1
    idle = await client.idle_start(timeout=3600)
    # Every byte from here on, as the transport hands it to aioimaplib.
    received = []
    protocol = client.protocol
    original = protocol.data_received

    def recording(data):
        received.append(data)
        original(data)

    protocol.data_received = recording
    port = protocol.transport.get_extra_info("sockname")[1]
    print("IDLING %d" % port, flush=True)
    loop = asyncio.get_running_loop()
    idling = True
    mark = 0
    while True:
        command = await loop.run_in_executor(None, sys.stdin.readline)
        if not command:
            break
        command = command.strip()
        if command == "QUIET":
            await asyncio.sleep(0.3)
            got = lines_of(received)
            if lost:
                got.append(b"<closed>")
            if got:
                print("GOT " + "|".join(l.decode(errors="replace") for l in got), flush=True)
            else:
                print("QUIET", flush=True)
        elif command == "EXISTS":
            found = None
            deadline = loop.time() + args.timeout
            while found is None and loop.time() < deadline:
                try:
                    pushed = await client.wait_server_push(timeout=deadline - loop.time())
                except asyncio.TimeoutError:
                    break
                if not isinstance(pushed, list):
                    break
                for line in pushed:
                    m = EXISTS_RE.match(line if isinstance(line, bytes) else line.encode())
                    if m:
                        found = int(m.group(1))
            print("EXISTS %d" % found if found is not None else "NOEXISTS", flush=True)
        elif command == "DONE":
            mark = len(b"".join(received))
            client.idle_done()
            done = await asyncio.wait_for(idle, args.timeout)
            noop = await client.noop()
            after = lines_of([b"".join(received)[mark:]])
            tagged = [l for l in after if not l.startswith(b"*") and not l.startswith(b"+")]
            extra = len(tagged) - 2 if noop.result == "OK" else len(tagged)
            idling = False
            print("DONE %s extra=%d" % (done.result, extra), flush=True)
        else:
            print("UNKNOWN %s" % command, flush=True)
    # Judged before LOGOUT, whose end of the connection is no loss.
    closed = bool(lost)
    same = not closed and protocol.transport.get_extra_info("sockname")[1] == port
    all_lines = lines_of(received)
    if not idling and not closed:
        await client.logout()
    print(json.dumps({
        "library": "aioimaplib",
        "idle_lines": [l.decode(errors="replace") for l in all_lines[:50]],
        "bye": any(l.startswith(b"* BYE") for l in all_lines),
        "closed": closed,
        "same_connection": same,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
