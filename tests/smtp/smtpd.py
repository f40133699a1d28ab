#!/usr/bin/python3
"""A scriptable SMTP server for the smimestream transport tests (aiosmtpd).

  smtpd.py --port-file FILE --store DIR [--control FILE] [--log FILE]
           [--tls-cert PEM --tls-key PEM [--smtps]] [--auth USER:PASSWORD]

Listens on 127.0.0.1 on a free port and writes the port number to FILE once
it is listening.  Every message it accepts is stored byte-exact
(envelope.original_content, i.e. after dot-unstuffing) as DIR/N.eml, with
DIR/N.json holding the envelope ({"mail_from": ..., "rcpt_tos": [...]}).
The .eml is renamed into place before the server answers 250.

--tls-cert/--tls-key offer STARTTLS (required before AUTH and MAIL when
--auth is given); with --smtps the whole connection is TLS instead.
--auth USER:PASSWORD enables AUTH PLAIN and LOGIN and requires it.
--rcvbuf BYTES fixes the socket receive buffer (default 256 KiB; 0 leaves
the kernel's autotuning on).

The control file (JSON, read again at each new connection; missing or
empty means "behave") scripts faults:
  "greeting": "421 ..."          reply to the connection, then close
  "mail": "451 ..."              reply to MAIL FROM
  "rcpt": {"addr": "550 ..."}    reply to RCPT TO for that address
  "data": "554 ..."              reply to DATA instead of 354
  "final": "554 ..."             reply to the final dot (nothing stored)
  "disconnect_after": K          abort the connection after K bytes of DATA
  "stall_after": K               stop reading after K bytes of DATA; abort
                                 the connection "stall_seconds" later (5)
  "drop_after_dot": true         store the message, then close without reply
  "final_delay": S               store the message, wait S seconds, answer 250
  "hide_auth": true              leave AUTH out of the EHLO reply

--log FILE receives one JSON object per line: {"conn": N, "event": ...}
with events connect, cmd (the verb only, never arguments: AUTH lines carry
credentials), fault, stored, closed (with "in_data" and "data_bytes").
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

VERBS = {"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "QUIT",
         "RSET", "NOOP", "VRFY", "HELP"}


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else None

    def __call__(self, conn, event, **kw):
        if self.f:
            kw.update(conn=conn, event=event)
            self.f.write(json.dumps(kw) + "\n")


class Store:
    def __init__(self, path):
        self.path = path
        os.makedirs(path, exist_ok=True)

    def save(self, envelope):
        n = 1
        while os.path.exists(os.path.join(self.path, "%d.json" % n)):
            n += 1
        base = os.path.join(self.path, str(n))
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from,
                       "rcpt_tos": list(envelope.rcpt_tos)}, f)
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".tmp", base + ".eml")
        return base + ".eml"


class Handler:
    """Per-connection hooks; ctl is the control file as read at connect."""

    def __init__(self, ctl, store, log, conn):
        self.ctl, self.store, self.log, self.conn = ctl, store, log, conn

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.ctl.get("hide_auth"):
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        if "mail" in self.ctl:
            return self.ctl["mail"]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.ctl.get("rcpt", {}).get(address)
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if "final" in self.ctl:
            self.log(self.conn, "fault", kind="final", reply=self.ctl["final"])
            return self.ctl["final"]
        path = self.store.save(envelope)
        self.log(self.conn, "stored", file=path, bytes=len(envelope.original_content))
        if self.ctl.get("final_delay"):
            self.log(self.conn, "fault", kind="final_delay")
            await asyncio.sleep(float(self.ctl["final_delay"]))
        if self.ctl.get("drop_after_dot"):
            self.log(self.conn, "fault", kind="drop_after_dot")
            server.transport.abort()
            # The connection is gone: wait to be cancelled, answer nothing.
            await asyncio.sleep(3600)
        return "250 2.0.0 OK: queued as %s" % os.path.basename(path)


class ScriptedSMTP(SMTP):
    def __init__(self, handler, ctl, log, conn, **kw):
        super().__init__(handler, **kw)
        self.ctl, self.log, self.conn = ctl, log, conn
        self._in_data = False
        self._lost_in_data = False
        self._data_bytes = 0
        self._faulted = None
        self._line = b""

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.log(self.conn, "connect")

    def connection_lost(self, error):
        self.log(self.conn, "closed", in_data=self._in_data or self._lost_in_data,
                 data_bytes=self._data_bytes)
        super().connection_lost(error)

    async def _handle_client(self):
        if "greeting" in self.ctl:
            await self.push(self.ctl["greeting"])
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg):
        if "data" in self.ctl and self.envelope.rcpt_tos:
            return await self.push(self.ctl["data"])
        self._in_data = True
        self._data_bytes = 0
        try:
            await super().smtp_DATA(arg)
        except asyncio.CancelledError:
            # The client went away in the middle of the data (aiosmtpd
            # cancels us on EOF, before connection_lost()).
            self._lost_in_data = True
            raise
        finally:
            self._in_data = False

    def _log_commands(self, data):
        self._line += data
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            if verb in VERBS:
                self.log(self.conn, "cmd", verb=verb)
        self._line = self._line[-1024:]

    def _fault(self, kind, at):
        self._faulted = kind
        self.log(self.conn, "fault", kind=kind, at=at)
        if kind == "disconnect":
            self.transport.abort()
        else:
            self.transport.pause_reading()
            self.loop.call_later(float(self.ctl.get("stall_seconds", 5)), self._end_stall)

    def _end_stall(self):
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data):
        if not self._in_data:
            self._log_commands(data)
            return super().data_received(data)
        if self._faulted:
            # Stalled: the stream reader may resume the transport once its
            # buffer drains; keep it paused and take nothing more.
            self.transport.pause_reading()
            return
        for kind in ("disconnect", "stall"):
            k = self.ctl.get(kind + "_after")
            if k is not None and self._data_bytes + len(data) >= k:
                take = max(0, k - self._data_bytes)
                self._data_bytes += take
                if take:
                    super().data_received(data[:take])
                return self._fault(kind, k)
        self._data_bytes += len(data)
        super().data_received(data)


def read_control(path):
    if not path:
        return {}
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    return json.loads(text) if text.strip() else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--control")
    ap.add_argument("--log")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--smtps", action="store_true")
    ap.add_argument("--auth")
    ap.add_argument("--rcvbuf", type=int, default=256 * 1024)
    args = ap.parse_args()

    log = Log(args.log)
    store = Store(args.store)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    user = password = None
    if args.auth:
        user, password = args.auth.split(":", 1)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == user.encode()
              and auth_data.password == password.encode())
        return AuthResult(success=True) if ok else AuthResult(success=False, handled=False)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    counter = [0]

    def factory():
        counter[0] += 1
        ctl = read_control(args.control)
        kw = dict(data_size_limit=None, hostname="smtp.test", loop=loop, timeout=60)
        if tls and not args.smtps:
            kw.update(tls_context=tls, require_starttls=True)
        if user is not None:
            kw.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=not args.smtps)
        handler = Handler(ctl, store, log, counter[0])
        return ScriptedSMTP(handler, ctl, log, counter[0], **kw)

    # A small, fixed receive buffer (no autotuning, which on loopback grows to
    # tens of MiB): a client can then be at most a few MiB ahead of what the
    # server has read, so a fault "at byte K" hits a client still sending.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.bind(("127.0.0.1", 0))
    server = loop.run_until_complete(loop.create_server(
        factory, sock=sock, ssl=tls if args.smtps else None))
    port = server.sockets[0].getsockname()[1]
    with open(args.port_file + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(args.port_file + ".tmp", args.port_file)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.run_forever()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
