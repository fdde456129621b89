"""Small shared helpers for the integration harness: ports, polling, a raw
SMTP client for byte-exact conversations, and message builders."""

import email.utils
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_port(*hosts, privileged=False, udp=False):
    """A TCP port that was free a moment ago on every one of HOSTS (default
    127.0.0.1): bound to 0 on the first, then tried on the others (peers
    on several loopback addresses that must share one port, e.g. the MX
    hosts of a zone, all on the one port of a domain's `port` option).
    PRIVILEGED: a port below 1024 (600-999; binding it needs root, as port
    25 does); the test skips when none is free. UDP: free for UDP too (a
    DNS server)."""
    hosts = hosts or (LOCALHOST,)

    def free(port):
        return (all(_bindable(h, port) for h in hosts)
                and (not udp or all(_bindable(h, port, socket.SOCK_DGRAM) for h in hosts)))
    if privileged:
        for port in range(600, 1000):
            if free(port):
                return port
        import pytest
        pytest.skip(f"no free port below 1024 on {', '.join(hosts)}")
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if free(port):
            return port
    raise RuntimeError(f"no port free on all of {hosts}" + (" (TCP and UDP)" if udp else ""))


def _bindable(host, port, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll PREDICATE until it returns a truthy value; return that value.
    Raise AssertionError naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def describe_exit(rc):
    """A Popen returncode in words: 'exit status N' or 'killed by signal
    SIGNAME (N)' (a negative returncode is the signal that ended it)."""
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by signal {name} ({-rc})"
    return f"exit status {rc}"


PANIC_RE = re.compile(r"^.*panicked at.*$", re.M)


def panic_lines(log_text):
    """The lines of a daemon log that report a Rust panic ("thread 'x'
    panicked at src/...:N:M:"). A panic in any thread is a bug, even one
    that did not take the process down."""
    return PANIC_RE.findall(log_text)


def exit_problem(name, proc, expect, when="during the test"):
    """What is wrong with how the daemon PROC ended, as a sentence, or None
    (still running, or ended as the harness was told it would). For the
    teardown checks of harness_mxspool.Mxspool (conftest.py's mxspool
    fixture). EXPECT is what the harness
    was told: None (nobody stopped it: any exit is a death), "graceful"
    (SIGTERM: must exit 0, README "Exit status: 0 success"), or "any"
    (SIGKILL on purpose)."""
    rc = proc.poll() if proc is not None else None
    if rc is None:
        return None
    if expect is None:
        return f"{name} (pid {proc.pid}) died {when} without being stopped: {describe_exit(rc)}"
    if expect == "graceful" and rc != 0:
        return (f"{name} (pid {proc.pid}) was stopped with SIGTERM and ended with "
                f"{describe_exit(rc)}; a graceful stop exits 0")
    return None


def log_tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


def port_accepts(port, host=LOCALHOST, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerProcess:
    """A peer server run in the foreground in its own process group, its
    output in the file OUT (the real primaries of harness_primaries.py, the
    relay front door's dnsmasq, spamd and clamd). Subclasses or callers set
    `host`, `port`, `out` (and `base`, its working directory) and call
    spawn(argv, what); log() returns OUT (subclasses may add more)."""

    name = "server"
    proc = None
    host = LOCALHOST
    base = None

    def spawn(self, argv, out: Path, what, timeout=20):
        """Start ARGV and wait until PORT accepts TCP connections (its log
        in the error when it exits first or does not listen in TIMEOUT s)."""
        if self.running:
            return
        if port_accepts(self.port, self.host):
            raise RuntimeError(f"port {self.port} is already in use by someone else")
        with open(out, "ab") as f:
            f.write(f"=== start {time.strftime('%H:%M:%S')}: {shlex.join(map(str, argv))}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(list(map(str, argv)), stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.base,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_accepts(self.port, self.host, timeout=0.3):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode} before "
                                   f"listening on {self.port}\n--- log ---\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not listen on {self.port} within {timeout}s"
                                   f"\n--- log ---\n{self.log()[-5000:]}")
            time.sleep(0.05)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=15):
        """SIGTERM the server, SIGKILL its process group after TIMEOUT; on
        return nothing accepts on its port."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children (Exim's delivery processes, smtpd's privsep processes)
        # must not outlive the test.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        wait_until(lambda: not port_accepts(self.port, self.host, timeout=0.2), 10,
                   what=f"port {self.port} of {self.name} to close")

    def log(self):
        return read_text(self.out)


def need(tool, package):
    """The path of the program TOOL (on PATH, or in /usr/sbin), or skip the
    test naming the Debian PACKAGE that has it (tests/run.sh installs it)."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        import pytest
        pytest.skip(f"{tool} not installed (Debian package {package}; tests/run.sh installs it)")
    return path


def read_text(*paths):
    """The text of the files PATHS one after the other (a log): a missing
    one reads as empty."""
    out = ""
    for p in paths:
        try:
            out += Path(p).read_text(errors="replace")
        except OSError:
            pass
    return out


def maildir_files(md: Path):
    """The messages of the Maildir MD (new/ and cur/), raw bytes as stored,
    oldest first."""
    files = []
    for sub in ("new", "cur"):
        d = Path(md) / sub
        if d.is_dir():
            files.extend(p for p in d.iterdir() if p.is_file())
    files.sort(key=lambda p: (p.stat().st_mtime, p.name))
    return [p.read_bytes() for p in files]


class Mailboxes:
    """wait_for_messages() for a primary with `messages(user)` and a `name`
    (the private Postfix, Exim, OpenSMTPD)."""

    def wait_for_messages(self, user, n=1, timeout=20):
        """Poll USER's mailbox until it holds at least N messages; return
        them all."""
        wait_until(lambda: len(self.messages(user)) >= n, timeout,
                   what=f"{n} message(s) for {user} at {self.name} "
                        f"(have {len(self.messages(user))})")
        return self.messages(user)


def bare_newlines(data: bytes):
    """Offsets of every CR not followed by LF and every LF not preceded by CR."""
    bad = []
    for i, b in enumerate(data):
        if b == 0x0D and (i + 1 >= len(data) or data[i + 1] != 0x0A):
            bad.append(i)
        elif b == 0x0A and (i == 0 or data[i - 1] != 0x0D):
            bad.append(i)
    return bad


def make_message(
    subject=None,
    body="Hello.\r\n",
    sender="sender@sender.test",
    to="alice@example.com",
    extra_headers=(),
    message_id=None,
):
    """An RFC 5322 message as CRLF bytes with a unique Message-ID.
    Returns (bytes, message_id)."""
    message_id = message_id or f"<{uuid.uuid4().hex}@sender.test>"
    subject = subject or f"test {message_id}"
    headers = list(extra_headers) + [
        f"From: <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: {message_id}",
    ]
    if isinstance(body, str):
        body = body.encode()
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body, message_id


class SmtpReply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # text after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return f"SmtpReply({self.code}, {self.lines!r})"

    def __str__(self):
        return "\n".join(f"{self.code} {line}" for line in self.lines)

    def __iter__(self):
        """Unpacks as (code, text): `code, text = c.cmd("NOOP")`."""
        return iter((self.code, self.text))


class ServerClosed(ConnectionError):
    """The server closed the connection (end of file)."""


class RawSmtp:
    """A byte-level SMTP client over a plain socket, for conversations smtplib
    would not produce (bare LF, pipelined batches, connection limits, junk).

    SOURCE: the local address to connect from (any 127.0.0.x, e.g. a client
    a DNSBL lists). EOF_OK: a server that closes the connection instead of
    replying gives SmtpReply(0, lines read so far) rather than ServerClosed
    (floods and junk, where a close is an allowed answer). Every reply line
    must end with CRLF: a bare LF in a reply is an AssertionError."""

    def __init__(self, port, host=LOCALHOST, timeout=15.0, source=None, eof_ok=False):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.timeout = timeout
        self.eof_ok = eof_ok

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ServerClosed(
                f"connection closed by server (unparsed buffer: {self.buf!r})"
            )
        self.buf += chunk

    def read_line(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete reply line within {timeout}s: {self.buf!r}")
            self._fill(left)
        line, self.buf = self.buf.split(b"\r\n", 1)
        assert b"\n" not in line, f"reply line without CRLF (a bare LF): {line!r}"
        return line.decode("utf-8", "replace")

    def reply(self, timeout=None) -> SmtpReply:
        """Read one (possibly multi-line) reply (code 0: closed, with EOF_OK)."""
        lines = []
        while True:
            try:
                line = self.read_line(timeout)
            except ServerClosed:
                if self.eof_ok:
                    return SmtpReply(0, lines)
                raise
            if len(line) < 3 or not line[:3].isdigit():
                raise AssertionError(f"malformed reply line {line!r}")
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return SmtpReply(int(line[:3]), lines)
            if line[3] != "-":
                raise AssertionError(f"malformed reply line {line!r}")

    def cmd(self, line) -> SmtpReply:
        """Send LINE (str: CRLF appended; bytes: sent as they are) and read
        the reply."""
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()

    def readable_within(self, seconds) -> bool:
        """True if the server sent anything (or closed) within SECONDS."""
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], seconds)
        return bool(r)

    def closed_by_peer(self, timeout=5.0) -> bool:
        """True if the server closes the connection within TIMEOUT (any
        remaining data is drained and kept in self.buf)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.buf += chunk

    def ehlo(self, name="client.test") -> SmtpReply:
        return self.cmd(f"EHLO {name}")

    def greeting(self) -> SmtpReply:
        return self.reply()


def env_bool(name, default=False):
    v = os.environ.get(name)
    if v is None:
        return default
    return v not in ("", "0", "no", "false")


QUEUED_RE = r"^2\.0\.0 Ok: queued as (\S+)$"


class SendResult:
    def __init__(self):
        self.mail = None          # (code, text)
        self.rcpt = {}            # addr -> (code, text)
        self.data = None          # (code, text) or None if DATA was not reached
        self.queue_id = None

    @property
    def accepted(self):
        return self.data is not None and self.data[0] == 250

    @property
    def reply(self):
        """The transaction's last word, (code, text): DATA's final reply, or
        the refusal that ended it (MAIL's, or the last RCPT's when no
        recipient was accepted)."""
        if self.data is not None:
            return self.data
        if self.mail is not None and self.mail[0] != 250:
            return self.mail
        if self.rcpt:
            return list(self.rcpt.values())[-1]
        return self.mail

    def __repr__(self):
        return f"SendResult(mail={self.mail}, rcpt={self.rcpt}, data={self.data})"


def send_mail(port, sender, rcpts, msg: bytes, helo="client.test", host=LOCALHOST,
              mail_options=(), timeout=30, source=None):
    """One transaction with smtplib (which dot-stuffs MSG, CRLF bytes); never
    raises for SMTP replies, returns a SendResult with every reply. RCPTS: a
    list, or one address. SOURCE: the local address to connect from (any
    127.0.0.x). A refused connection or greeting raises (OSError,
    smtplib.SMTPException)."""
    import smtplib
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    res = SendResult()
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout,
                      source_address=(source, 0) if source else None) as s:
        s.ehlo(helo)
        res.mail = s.mail(sender, list(mail_options))
        res.mail = (res.mail[0], res.mail[1].decode("utf-8", "replace"))
        if res.mail[0] != 250:
            return res
        ok = False
        for r in rcpts:
            code, text = s.rcpt(r)
            res.rcpt[r] = (code, text.decode("utf-8", "replace"))
            ok = ok or code in (250, 251)
        if not ok:
            s.rset()
            return res
        code, text = s.data(msg)
        res.data = (code, text.decode("utf-8", "replace"))
        m = re.match(QUEUED_RE, res.data[1])
        if m:
            res.queue_id = m.group(1)
        try:
            s.quit()
        except smtplib.SMTPException:
            pass
    return res


def deferrals_logged(mx, queue_id):
    """How many `status=deferred` delivery lines the daemon has logged for
    QUEUE_ID (one per attempt for a one-recipient message)."""
    return len(re.findall(rf"id={re.escape(queue_id)} event=delivery .*status=deferred", mx.log()))


def wait_deferred_in_log(mx, queue_id, attempts=1, timeout=15):
    """Wait until the daemon has logged ATTEMPTS deferred attempts for
    QUEUE_ID. Reads the daemon's log file only: unlike a `queue` command or
    a connection, that never wakes the daemon, so a retry timer that does
    not fire cannot be hidden by the wait itself (on MIPS the
    reactor once slept with no timeout and every CLI poll woke it)."""
    wait_until(lambda: deferrals_logged(mx, queue_id) >= attempts, timeout, interval=0.2,
               what=f"{attempts} deferred attempt(s) of {queue_id} in the log "
                    f"(have {deferrals_logged(mx, queue_id)})")


def wait_attempted(mx, queue_id, attempts=1, timeout=15):
    """Wait until the daemon has recorded ATTEMPTS delivery attempts of
    QUEUE_ID that left it queued: its log line `id=QUEUE_ID event=scheduled`
    (debug level, the harness's default), written once the spool holds the
    attempt and the next retry time, so `queue list` shows them from then
    on. Reads the log only, like wait_deferred_in_log (a `queue` command
    would wake the daemon)."""
    assert mx.main.get("log_level") == "debug", \
        "wait_attempted reads the debug line event=scheduled: keep log_level 'debug'"
    rx = re.compile(rf"id={re.escape(queue_id)} event=scheduled\b")
    wait_until(lambda: len(rx.findall(mx.log())) >= attempts, timeout, interval=0.2,
               what=f"{attempts} recorded attempt(s) of {queue_id} in the log "
                    f"(have {len(rx.findall(mx.log()))})")


class SilentServer:
    """Accepts TCP connections and never says a word: a primary that hangs
    after the handshake (the stalled peer of RFC 5321 4.5.3.2's timeouts).
    Subclasses that do talk override `serve(conn)` (run on its own thread)."""

    def __init__(self, port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, conn):
        """Says nothing: the connection stays open until close()."""

    def close(self):
        self._stop = True
        self._t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()
