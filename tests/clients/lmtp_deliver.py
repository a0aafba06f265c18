#!/usr/bin/env python3
"""lmtp_deliver.py: delivers one message over LMTP with Python's
smtplib.LMTP, for mailpin's integration tests.

LHLO, MAIL FROM, one RCPT TO per --rcpt, DATA, then reads the per-recipient
replies RFC 2033 sends after the message (smtplib returns the first; the
rest are read with getreply()). Prints one JSON line:
{"rcpt": {addr: [code, text]}, "data": {addr: [code, text]}} with
"data" in RCPT order over the recipients the server accepted.

Exit code 0 when the dialogue completed (whatever the replies said).

Standard library only.
"""

import argparse
import json
import smtplib
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sender", default="sender@example.org")
    p.add_argument("--rcpt", action="append", required=True)
    p.add_argument("--subject", default="mailpin test")
    p.add_argument("--body-kb", type=int, default=1)
    a = p.parse_args()

    body = ("x" * 76 + "\r\n") * max(1, a.body_kb * 1024 // 78)
    msg = (
        f"From: {a.sender}\r\nTo: {', '.join(a.rcpt)}\r\nSubject: {a.subject}\r\n\r\n"
        f".leading dot stays\r\n{body}"
    ).encode()
    out = {"rcpt": {}, "data": {}}
    lmtp = smtplib.LMTP(a.host, a.port, timeout=60)
    lmtp.ehlo_or_helo_if_needed()
    code, text = lmtp.mail(a.sender)
    if code != 250:
        print(json.dumps({"mail": [code, text.decode()]}))
        return 1
    accepted = []
    for r in a.rcpt:
        code, text = lmtp.rcpt(r)
        out["rcpt"][r] = [code, text.decode("utf-8", "replace")]
        if 200 <= code < 300:
            accepted.append(r)
    if accepted:
        code, text = lmtp.data(msg)
        out["data"][accepted[0]] = [code, text.decode("utf-8", "replace")]
        for r in accepted[1:]:
            code, text = lmtp.getreply()
            out["data"][r] = [code, text.decode("utf-8", "replace")]
    lmtp.quit()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
