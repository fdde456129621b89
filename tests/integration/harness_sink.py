"""A capture SMTP server on plain sockets and threads (no aiosmtpd).

It records every byte received, every command in order, whether the client
pipelined, and each mail transaction (envelope, DATA as sent on the wire
with its dot-stuffing, and the un-stuffed content). Replies are scriptable:
per recipient (a string, or a callable taking the address and returning a
string), to MAIL, and to the end of data. EHLO keywords are configurable.
MAIL_REPLY answers the first MAIL_REPLY_TIMES MAIL commands (None: all) with
a refusal; after a refused MAIL, RCPT and DATA get Postfix's 503s.

It binds to HOST (any 127.0.0.x, for impostors on another loopback address)
and, given TLS (a server ssl.SSLContext), offers STARTTLS; TLS_BROKEN makes
it offer STARTTLS, answer 220 and then send garbage instead of a handshake.
Session.tls is the negotiated protocol version ("TLSv1.3") or None.
"""

import re
import socket
import ssl
import threading
import time

from harness_util import LOCALHOST, bare_newlines, wait_until


class Transaction:
    def __init__(self, mail_from, mail_params):
        self.mail_from = mail_from          # address inside <>, "" for <>
        self.mail_params = mail_params      # text after the >
        self.rcpts = []                     # accepted recipients (as sent)
        self.rejected = []                  # (rcpt, reply) not accepted
        self.data_wire = None               # bytes as on the wire (stuffed), w/o final .CRLF
        self.content = None                 # un-stuffed message bytes (CRLF)
        self.data_reply = None
        self.received_at = None             # time.time() at end of data
        self.session = None

    def __repr__(self):
        return (f"Transaction(from={self.mail_from!r}, rcpts={self.rcpts!r}, "
                f"rejected={self.rejected!r}, size={len(self.content or b'')}, "
                f"reply={self.data_reply!r})")


class Session:
    def __init__(self, peer):
        self.peer = peer
        self.raw = bytearray()              # every byte received
        self.commands = []                  # command lines (str, without CRLF)
        self.pipelined = False              # a command arrived before our previous reply
        self.transactions = []
        self.helo = None
        self.started_at = time.time()
        self.closed = False
        self.tls = None                     # negotiated TLS version after STARTTLS

    def __repr__(self):
        return f"Session(peer={self.peer}, commands={self.commands!r})"


_ADDR = re.compile(r"^\s*<([^>]*)>\s*(.*)$")


class SmtpSink:
    def __init__(self, hostname="sink.test", pipelining=True, size=None,
                 eightbitmime=True, smtputf8=True, enhancedstatuscodes=True,
                 greeting=None, port=0, host=LOCALHOST, greeting_delay=0.0, tls=None,
                 tls_broken=False, starttls_extra=b"", mail_reply=None, mail_reply_times=1):
        self.hostname = hostname
        self.host = host                    # any 127.0.0.x works on Linux
        self.greeting_delay = greeting_delay  # seconds before the 220 (a tarpit)
        self.rcpt_delay = 0.0               # seconds before each RCPT reply (float('inf'): never)
        self.pipelining = pipelining
        self.size = size
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.enhancedstatuscodes = enhancedstatuscodes
        self.greeting = greeting or f"220 {hostname} ESMTP sink"
        self.tls = tls
        self.tls_broken = tls_broken
        # bytes sent in plaintext right behind our "220 Ready" (an injection
        # the client must discard before its handshake)
        self.starttls_extra = starttls_extra
        self.mail_reply = "250 2.1.0 Ok"  # the reply to MAIL once no refusal is left
        # e.g. "452 4.3.1 Insufficient system storage" (str or bytes): the
        # reply to the first MAIL_REPLY_TIMES MAILs (None: to every one)
        if isinstance(mail_reply, bytes):
            mail_reply = mail_reply.decode()
        self.mail_refusal = mail_reply
        self.mail_refusals_left = mail_reply_times
        self.mail_refused = 0               # MAIL commands answered with mail_refusal
        self.rcpt_replies = {}              # lower-case address -> reply or callable
        self.default_rcpt_reply = "250 2.1.5 Ok"
        self.data_reply = "250 2.0.0 Ok: queued"  # or callable(Transaction) -> str
        self.sessions = []
        self.cond = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stopping = False
        self._threads = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    # --- public API ----------------------------------------------------
    @property
    def transactions(self):
        with self.cond:
            return [t for s in self.sessions for t in s.transactions]

    @property
    def messages(self):
        """Transactions whose DATA we accepted with a 2xx."""
        return [t for t in self.transactions
                if t.data_reply and t.data_reply.startswith("2")]

    def wait_for_messages(self, n=1, timeout=20):
        wait_until(lambda: len(self.messages) >= n, timeout,
                   what=f"{n} message(s) at sink :{self.port} (have {len(self.messages)}: "
                        f"{self.transactions!r})")
        return self.messages

    def wait_for(self, predicate, timeout=20, what="sink condition"):
        return wait_until(predicate, timeout, what=what)

    def rcpt_attempts(self, addr):
        """How many times RCPT TO for ADDR was received."""
        addr = addr.lower()
        with self.cond:
            return sum(1 for s in self.sessions for c in s.commands
                       if c.upper().startswith("RCPT TO:") and f"<{addr}>" in c.lower())

    def all_raw(self):
        with self.cond:
            return b"".join(bytes(s.raw) for s in self.sessions)

    def bare_newlines(self):
        """[(session index, offsets)] of bare CR / LF seen in received bytes."""
        with self.cond:
            return [(i, bare_newlines(bytes(s.raw))) for i, s in enumerate(self.sessions)
                    if bare_newlines(bytes(s.raw))]

    def close(self):
        self._stopping = True
        try:
            # shutdown wakes the accept thread (a bare close does not on
            # Linux), so the port is free at once for a successor.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass

    def describe(self):
        with self.cond:
            out = [f"sink {self.host}:{self.port} sessions={len(self.sessions)}"]
            for s in self.sessions:
                out.append(f"  {s.peer} tls={s.tls} cmds={s.commands!r}")
                for t in s.transactions:
                    out.append(f"    {t!r}")
            return "\n".join(out)

    # --- server --------------------------------------------------------
    def _accept_loop(self):
        while not self._stopping:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            # Replies go out one write each: with Nagle, the second reply to
            # a pipelined group waits for the client's delayed ACK (40 ms).
            # Real servers flush a group's replies at once.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
            t.start()
            self._threads.append(t)

    def _ehlo_lines(self, session=None):
        kw = []
        if (self.tls is not None or self.tls_broken) and not (session and session.tls):
            kw.append("STARTTLS")
        if self.pipelining:
            kw.append("PIPELINING")
        if self.size is not None:
            kw.append(f"SIZE {self.size}")
        if self.eightbitmime:
            kw.append("8BITMIME")
        if self.enhancedstatuscodes:
            kw.append("ENHANCEDSTATUSCODES")
        if self.smtputf8:
            kw.append("SMTPUTF8")
        return [self.hostname] + kw

    def _serve(self, conn, peer):
        session = Session(peer)
        with self.cond:
            self.sessions.append(session)
            self.cond.notify_all()
        buf = bytearray()
        conn.settimeout(120)

        def recv_more():
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("eof")
            with self.cond:
                session.raw.extend(chunk)
            buf.extend(chunk)

        def read_line():
            while True:
                i = buf.find(b"\n")
                if i >= 0:
                    line = bytes(buf[: i + 1])
                    del buf[: i + 1]
                    return line
                recv_more()

        def reply(text):
            if buf:
                session.pipelined = True
            lines = text.split("\n")
            out = "".join(
                f"{l[:3]}{'-' if n < len(lines) - 1 else ' '}{l[4:]}\r\n"
                for n, l in enumerate(lines)
            )
            conn.sendall(out.encode())

        txn = None
        try:
            if self.greeting_delay:
                time.sleep(self.greeting_delay)
            conn.sendall(self.greeting.encode() + b"\r\n")
            while True:
                raw_line = read_line()
                line = raw_line.rstrip(b"\r\n").decode("utf-8", "replace")
                with self.cond:
                    session.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    session.helo = line[5:].strip()
                    txn = None
                    reply("\n".join("250 " + l for l in self._ehlo_lines(session)))
                elif verb == "HELO":
                    session.helo = line[5:].strip()
                    txn = None
                    reply(f"250 {self.hostname}")
                elif line.upper().startswith("MAIL FROM:"):
                    m = _ADDR.match(line[10:])
                    if not m:
                        reply("501 5.5.4 Syntax error in MAIL")
                        continue
                    with self.cond:
                        r = self.mail_reply
                        if self.mail_refusal is not None and self.mail_refusals_left != 0:
                            r = self.mail_refusal
                            self.mail_refused += 1
                            if self.mail_refusals_left is not None:
                                self.mail_refusals_left -= 1
                    if r.startswith("2"):
                        txn = Transaction(m.group(1), m.group(2))
                        txn.session = session
                        with self.cond:
                            session.transactions.append(txn)
                    else:
                        txn = None          # RCPT and DATA now get 503
                    reply(r)
                elif line.upper().startswith("RCPT TO:"):
                    m = _ADDR.match(line[8:])
                    if txn is None:
                        # Postfix's words (smtpd.c) after a refused or no MAIL
                        reply("503 5.5.1 Error: need MAIL command")
                        continue
                    if not m:
                        reply("501 5.5.4 Syntax error in RCPT")
                        continue
                    addr = m.group(1)
                    r = self.rcpt_replies.get(addr.lower(), self.default_rcpt_reply)
                    if callable(r):
                        r = r(addr)
                    if self.rcpt_delay:
                        if self.rcpt_delay == float("inf"):
                            while not self._stopping:
                                time.sleep(0.1)
                            break
                        time.sleep(self.rcpt_delay)
                    with self.cond:
                        if r.startswith("2"):
                            txn.rcpts.append(addr)
                        else:
                            txn.rejected.append((addr, r))
                    reply(r)
                elif verb == "DATA":
                    if txn is None:
                        reply("503 5.5.1 Error: need RCPT command")
                        continue
                    if not txn.rcpts:
                        reply("554 5.5.1 No valid recipients")
                        continue
                    reply("354 End data with <CR><LF>.<CR><LF>")
                    data = bytearray(b"\r\n")
                    while True:
                        end = data.find(b"\r\n.\r\n")
                        if end >= 0:
                            break
                        if not buf:
                            recv_more()
                        data.extend(buf)
                        buf.clear()
                    # anything after the terminator is the next command(s)
                    rest = data[end + 5:]
                    buf[:0] = rest
                    wire = bytes(data[2:end + 2])
                    txn.data_wire = wire
                    txn.content = unstuff(wire)
                    txn.received_at = time.time()
                    r = self.data_reply
                    if callable(r):
                        r = r(txn)
                    with self.cond:
                        txn.data_reply = r
                        self.cond.notify_all()
                    reply(r)
                    txn = None
                elif verb == "RSET":
                    txn = None
                    reply("250 2.0.0 Ok")
                elif verb == "STARTTLS" and (self.tls is not None or self.tls_broken) \
                        and not session.tls:
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n" + self.starttls_extra)
                    if self.tls_broken:
                        conn.sendall(b"\x15\x03\x03\x00\x02\x02\x28 this is not TLS\r\n")
                        break
                    buf.clear()   # RFC 3207: nothing sent before the handshake counts
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    with self.cond:
                        session.tls = conn.version()
                        session.helo = None
                    txn = None
                elif verb == "NOOP":
                    reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    reply("221 2.0.0 Bye")
                    break
                else:
                    reply("502 5.5.2 Command not recognized")
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            with self.cond:
                session.closed = True
                self.cond.notify_all()
            try:
                conn.close()
            except OSError:
                pass


def unstuff(wire: bytes) -> bytes:
    """Undo SMTP dot-stuffing of DATA as sent on the wire (CRLF lines)."""
    if not wire:
        return b""
    lines = wire.split(b"\r\n")
    out = [l[1:] if l.startswith(b".") else l for l in lines]
    return b"\r\n".join(out)
