#!/usr/bin/env python3
"""imap_sessions.py: a real IMAP client (Python's imaplib) for mailpin's
integration tests.

For each user it opens --sessions concurrent IMAP sessions to HOST:PORT (one
thread each), over plain TCP, STARTTLS or implicit TLS; logs in (LOGIN,
LOGIN with the password as a literal, or AUTHENTICATE PLAIN); does SELECT
INBOX and NOOP; prints "READY <n>" (n = sessions logged in) once every
session has tried; holds the sessions until a line arrives on stdin (or for
--hold SECONDS; 0 logs out at once); logs out; and prints a one-line JSON
summary. Passwords are never printed.

Exit code 0 only when every session logged in and out cleanly; with
--expect-fail, only when every login was refused with NO (the server's NO
texts are printed as "NO <text>" lines and in the summary).

Standard library only.
"""

import argparse
import imaplib
import json
import ssl
import sys
import threading
import time

# imaplib refuses commands it does not know; ID (RFC 2971) is allowed in
# every state.
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED", "LOGOUT"))


class NamedTLS(imaplib.IMAP4_SSL):
    """IMAP4_SSL that may send a server name (SNI, certificate check)
    other than the address it connects to."""

    def __init__(self, host, port, ssl_context, timeout, server_name):
        self._server_name = server_name
        super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(
            sock, server_hostname=self._server_name or self.host
        )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=143)
    parser.add_argument("--user", action="append", default=[],
                        help="a user name (repeatable)")
    parser.add_argument("--users", type=int, default=0,
                        help="also the generated users user0001..userNNNN")
    parser.add_argument("--first-user", type=int, default=1,
                        help="number of the first generated user (default 1)")
    parser.add_argument("--sessions", type=int, default=1,
                        help="concurrent sessions per user")
    parser.add_argument("--password", default="pass")
    parser.add_argument("--mode", choices=("plain", "starttls", "tls"),
                        default="plain")
    parser.add_argument("--cafile",
                        help="PEM file of the CA or certificate to trust")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server certificate")
    parser.add_argument("--server-name",
                        help="name to send as SNI and verify (default: --host)")
    parser.add_argument("--auth", choices=("login", "plain"), default="login",
                        help="LOGIN command or AUTHENTICATE PLAIN")
    parser.add_argument("--literal", action="store_true",
                        help="LOGIN with the password sent as a {n} literal")
    parser.add_argument("--id", action="append", default=[], metavar="KEY=VALUE",
                        help="send ID with these fields before logging in")
    parser.add_argument("--hold", default="stdin",
                        help="'stdin' (default): hold until a line arrives on "
                             "stdin; a number: hold that many seconds")
    parser.add_argument("--expect-fail", action="store_true",
                        help="success means every login was refused with NO")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="socket timeout in seconds")
    args = parser.parse_args()
    if args.hold != "stdin":
        try:
            args.hold = float(args.hold)
        except ValueError:
            parser.error("--hold takes 'stdin' or a number of seconds")
    users = list(args.user)
    users += ["user%04d" % n
              for n in range(args.first_user, args.first_user + args.users)]
    if not users:
        parser.error("no users: give --user NAME or --users N")
    args.all_users = users
    return args


def tls_context(args):
    if args.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=args.cafile)


def text_of(error, password):
    """The server's words from an imaplib exception, without the password."""
    if isinstance(error, imaplib.IMAP4.error) and error.args:
        message = error.args[0]
    else:
        message = str(error) or type(error).__name__
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    message = str(message)
    if password:
        message = message.replace(password, "***")
    return message


def quote_id_value(value):
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


class Session:
    """One IMAP session of one user."""

    def __init__(self, args, user, number):
        self.args = args
        self.user = user
        self.number = number
        self.conn = None
        self.stage = "connect"
        self.error = None
        self.rejected = None
        self.logged_in = False
        self.logged_out = False

    def fail(self, error):
        self.error = text_of(error, self.args.password)

    def open(self):
        args = self.args
        try:
            if args.mode == "tls":
                self.conn = NamedTLS(args.host, args.port, tls_context(args),
                                     args.timeout, args.server_name)
            else:
                self.conn = imaplib.IMAP4(args.host, args.port,
                                          timeout=args.timeout)
            if args.mode == "starttls":
                self.stage = "starttls"
                if args.server_name:
                    self.conn.host = args.server_name
                self.conn.starttls(ssl_context=tls_context(args))
            if args.id:
                self.stage = "id"
                fields = []
                for pair in args.id:
                    key, _, value = pair.partition("=")
                    fields += [quote_id_value(key), quote_id_value(value)]
                self.conn._simple_command("ID", "(%s)" % " ".join(fields))
            self.stage = "login"
            self.login()
            self.logged_in = True
            self.stage = "select"
            typ, data = self.conn.select("INBOX")
            if typ != "OK":
                raise imaplib.IMAP4.error(data[-1] if data else typ)
            self.stage = "noop"
            self.conn.noop()
        except imaplib.IMAP4.error as error:
            if self.stage == "login" and self.args.expect_fail:
                self.rejected = text_of(error, self.args.password)
            else:
                self.fail(error)
            self.close_quietly()
        except (OSError, EOFError, ValueError) as error:
            self.fail(error)
            self.close_quietly()

    def login(self):
        args, conn = self.args, self.conn
        if args.auth == "plain":
            payload = "\0%s\0%s" % (self.user, args.password)
            conn.authenticate("PLAIN", lambda _challenge: payload.encode("utf-8"))
        elif args.literal:
            # imaplib sends self.literal as a {n} literal after the other
            # arguments and waits for the "+" continuation.
            conn.literal = args.password.encode("utf-8")
            typ, data = conn._simple_command("LOGIN", conn._quote(self.user))
            if typ != "OK":
                raise conn.error(data[-1] if data else typ)
            conn.state = "AUTH"
        else:
            conn.login(self.user, args.password)

    def close(self):
        if self.conn is None:
            return
        self.stage = "logout"
        try:
            typ, _data = self.conn.logout()
            self.logged_out = typ == "BYE"
            if not self.logged_out:
                self.error = "LOGOUT answered %s" % typ
        except (imaplib.IMAP4.error, OSError, EOFError) as error:
            self.fail(error)
        self.conn = None

    def close_quietly(self):
        if self.conn is not None:
            try:
                self.conn.shutdown()
            except OSError:
                pass
            self.conn = None


def run_all(sessions, method):
    threads = [threading.Thread(target=getattr(s, method), daemon=True)
               for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main():
    args = parse_args()
    sessions = [Session(args, user, n)
                for user in args.all_users for n in range(args.sessions)]
    run_all(sessions, "open")
    logged_in = sum(1 for s in sessions if s.logged_in)

    if not args.expect_fail:
        print("READY %d" % logged_in, flush=True)
        if args.hold == "stdin":
            sys.stdin.readline()
        elif args.hold > 0:
            time.sleep(args.hold)
        run_all([s for s in sessions if s.logged_in], "close")
    else:
        run_all([s for s in sessions if s.logged_in], "close")
        for session in sessions:
            if session.rejected is not None:
                print("NO %s" % session.rejected, flush=True)

    failures = [{"user": s.user, "session": s.number, "stage": s.stage,
                 "error": s.error}
                for s in sessions if s.error is not None]
    rejections = [{"user": s.user, "session": s.number, "text": s.rejected}
                  for s in sessions if s.rejected is not None]
    ok = sum(1 for s in sessions if s.logged_in and s.logged_out)
    summary = {
        "mode": args.mode,
        "sessions": len(sessions),
        "logged_in": logged_in,
        "ok": ok,
        "rejected": len(rejections),
        "failures": failures,
        "rejections": rejections,
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    if args.expect_fail:
        return 0 if len(rejections) == len(sessions) else 1
    return 0 if ok == len(sessions) and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
