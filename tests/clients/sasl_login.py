#!/usr/bin/env python3
"""One SASL login (OAUTHBEARER, XOAUTH2, SCRAM-SHA-1/-256) over IMAP, POP3
or ManageSieve, for mailpin's integration tests (tests/sasl_dovecot.rs).

Raw mode prints the exchange line by line, exactly as seen on the wire
("S: ..." from the server, "C: ..." from the client), so a test can check
that a backend's answer was relayed word for word. --imaplib logs in with
imaplib's authenticate() instead (no initial response, as Thunderbird's
first attempt). The SCRAM client is written here with hashlib and hmac
(RFC 5802/7677), and checks the server signature.

Ends with a JSON line {"ok": bool, "final": "<last server line>"}. With
--hold, a successful login prints READY and waits for a line on stdin
before logging out, so the test can look at `doveadm who` meanwhile.
"""

import argparse
import base64
import hashlib
import hmac
import imaplib
import json
import os
import socket
import sys


def b64(data):
    return base64.b64encode(data).decode()


def oauth_messages(mech, user, token, host, port):
    """The client's messages of an OAuth mechanism: the token, then the
    dummy answer to an error challenge (RFC 7628 §3.2.3 / XOAUTH2)."""
    if mech == "OAUTHBEARER":
        first = f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
        server = yield first.encode()
        yield b"\x01"
    else:
        first = f"user={user}\x01auth=Bearer {token}\x01\x01"
        server = yield first.encode()
        yield b""
    del server


def scram_messages(mech, user, password, authzid):
    """The client's messages of SCRAM: client-first, client-final, and the
    empty answer after the server-final message (checked)."""
    hname = "sha256" if mech == "SCRAM-SHA-256" else "sha1"
    nonce = b64(os.urandom(18))
    name = user.replace("=", "=3D").replace(",", "=2C")
    bare = f"n={name},r={nonce}"
    gs2 = "n," + (f"a={authzid}" if authzid else "") + ","
    server_first = (yield (gs2 + bare).encode()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise SystemExit("server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(hname, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hname).digest()
    stored_key = hashlib.new(hname, client_key).digest()
    without_proof = f"c={b64(gs2.encode())},r={attrs['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hname).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_final = (yield f"{without_proof},p={b64(proof)}".encode()).decode()
    server_key = hmac.new(salted, b"Server Key", hname).digest()
    expected = "v=" + b64(hmac.new(server_key, auth_message, hname).digest())
    if server_final != expected:
        raise SystemExit(f"bad server signature: {server_final!r}")
    yield b""


def messages(args, host, port):
    if args.mech.startswith("SCRAM-"):
        return scram_messages(args.mech, args.user, args.secret, args.authzid)
    return oauth_messages(args.mech, args.user, args.secret, host, port)


class Wire:
    def __init__(self, host, port, source):
        bind = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=30, source_address=bind)
        self.file = self.sock.makefile("rb")

    def line(self):
        raw = self.file.readline()
        if not raw:
            raise SystemExit("connection closed")
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        print("S: " + text, flush=True)
        return text

    def send(self, text):
        print("C: " + text, flush=True)
        self.sock.sendall(text.encode() + b"\r\n")


def raw_login(args, host, port):
    """Returns (ok, final line, wire)."""
    w = Wire(host, port, args.source)
    msgs = messages(args, host, port)
    first = b64(next(msgs))
    proto = args.proto
    if proto == "imap":
        w.line()
        w.send(f"a1 AUTHENTICATE {args.mech}" + (f" {first}" if args.ir else ""))
    elif proto == "pop3":
        w.line()
        w.send(f"AUTH {args.mech}" + (f" {first}" if args.ir else ""))
    else:
        while not w.line().startswith("OK"):
            pass
        w.send(f'AUTHENTICATE "{args.mech}"' + (f' "{first}"' if args.ir else ""))
    sent_first = args.ir
    while True:
        line = w.line()
        if proto == "imap":
            if line.startswith("a1 "):
                return line.split(" ")[1] == "OK", line, w
            if not line.startswith("+"):
                continue
            challenge = line[2:]
        elif proto == "pop3":
            if line.startswith("+OK") or line.startswith("-ERR"):
                return line.startswith("+OK"), line, w
            challenge = line[2:]
        else:
            word = line.split(" ")[0].upper()
            if word in ("OK", "NO", "BYE"):
                return word == "OK", line, w
            challenge = line.strip('"')
        if not sent_first:
            answer = first
            sent_first = True
        else:
            answer = b64(msgs.send(base64.b64decode(challenge)))
        w.send(f'"{answer}"' if proto == "sieve" else answer)


def imaplib_login(args, host, port):
    conn = imaplib.IMAP4(host, port, timeout=20)
    msgs = messages(args, host, port)
    state = {"first": True}

    def step(challenge):
        if state["first"]:
            state["first"] = False
            return next(msgs)
        return msgs.send(challenge)

    try:
        typ, data = conn.authenticate(args.mech, step)
        return typ == "OK", f"{typ} {data[0].decode()}", conn
    except imaplib.IMAP4.error as e:
        return False, str(e), conn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proto", choices=["imap", "pop3", "sieve"], required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--mech", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--secret", required=True, help="token or password")
    p.add_argument("--authzid", default="")
    p.add_argument("--ir", action="store_true", help="send an initial response")
    p.add_argument("--imaplib", action="store_true")
    p.add_argument("--source", default="", help="local address to connect from (127.x.y.z)")
    p.add_argument("--hold", action="store_true")
    args = p.parse_args()
    args.mech = args.mech.upper()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    if args.imaplib:
        ok, final, conn = imaplib_login(args, host, port)
    else:
        ok, final, conn = raw_login(args, host, port)
    if ok and args.hold:
        print("READY", flush=True)
        sys.stdin.readline()
    if ok:
        if args.imaplib:
            conn.logout()
        elif args.proto == "imap":
            conn.send("a2 LOGOUT")
        elif args.proto == "pop3":
            conn.send("QUIT")
        else:
            conn.send("LOGOUT")
    print(json.dumps({"ok": ok, "final": final}), flush=True)


if __name__ == "__main__":
    main()
