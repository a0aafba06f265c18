#!/usr/bin/env python3
"""pop3_session.py: a real POP3 client (Python's poplib) for mailpin's
integration tests.

Connects to HOST:PORT over plain TCP or STLS, logs in with USER/PASS,
runs STAT and UIDL, retrieves the first message if any, and quits. Prints
one JSON line: {"ok": bool, "count": n, "size": n, "first": "<subject>",
"error": "<server text>"}. Passwords are never printed.

Exit code 0 when the session ran and logged in; with --expect-fail, when
the login was refused with -ERR (whose text is in "error").

Standard library only.
"""

import argparse
import json
import poplib
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="pass")
    p.add_argument("--stls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--expect-fail", action="store_true")
    a = p.parse_args()

    out = {"ok": False, "count": 0, "size": 0, "first": "", "error": ""}
    pop = poplib.POP3(a.host, a.port, timeout=30)
    try:
        caps = pop.capa()
        out["capa"] = sorted(caps.keys())
        if a.stls:
            ctx = ssl.create_default_context(cafile=a.cafile)
            # poplib's stls() uses self.host for SNI and the name check.
            pop.host = a.server_name
            pop.stls(context=ctx)
            out["tls"] = True
        try:
            pop.user(a.user)
            pop.pass_(a.password)
        except poplib.error_proto as e:
            out["error"] = e.args[0].decode("utf-8", "replace")
            print(json.dumps(out))
            return 0 if a.expect_fail else 1
        count, size = pop.stat()
        out["count"], out["size"] = count, size
        pop.uidl()
        if count:
            _, lines, _ = pop.retr(1)
            for line in lines:
                if line.lower().startswith(b"subject:"):
                    out["first"] = line[8:].strip().decode("utf-8", "replace")
                    break
        pop.quit()
        out["ok"] = True
    except Exception as e:  # noqa: BLE001 - report anything to the test
        out["error"] = repr(e)
        print(json.dumps(out))
        return 1
    print(json.dumps(out))
    return 1 if a.expect_fail else 0


if __name__ == "__main__":
    sys.exit(main())
