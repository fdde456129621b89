"""Self-contained helpers for the hardening tests (issue 9): start the
daemon (env MXSPOOL_BIN, MXSPOOL_RUNNER), a tiny SMTP sink as the primary,
and a raw SMTP client. Stdlib only; loopback only."""
import os
import shlex
import socket
import subprocess
import threading
import time

from harness_util import exit_problem, panic_lines

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def binary():
    return os.environ.get("MXSPOOL_BIN", os.path.join(ROOT, "target", "debug", "mxspool"))


def runner():
    return shlex.split(os.environ.get("MXSPOOL_RUNNER", ""))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Daemon:
    def __init__(self, tmp, sink_port, extra="", spool_dir=None):
        self.port = free_port()
        self.tmp = str(tmp)
        self.spool = spool_dir or os.path.join(self.tmp, "spool")
        self.conf = os.path.join(self.tmp, "mxspool.conf")
        self.sink_port = sink_port
        with open(self.conf, "w") as f:
            f.write(f"""config mxspool 'main'
\toption hostname 'mx2.example.net'
\tlist listen '127.0.0.1:{self.port}'
\toption spool_dir '{self.spool}'
\toption control_socket '{self.tmp}/ctl.sock'
\toption syslog '0'
\toption log_level 'info'
\tlist retry '1s 1h'
{extra}
config domain 'example'
\toption name 'example.com'
\toption deliver_to '127.0.0.1:{sink_port}'
\toption verify 'none'
""")
        self.proc = None
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.log = open(self.log_path, "ab")
        # What the harness expects of the process's exit (harness_util.
        # exit_problem): None (none), "graceful" (stop()), "any" (kill9()).
        self.expect = None
        self._judged = False
        self.problems = []

    def start(self):
        self._note_exit("before this start()")
        self.expect = None
        self._judged = False
        self.proc = subprocess.Popen(runner() + [binary(), "run", "-c", self.conf],
                                     stdout=self.log, stderr=self.log)
        assert wait_port(self.port), "daemon did not start listening"
        return self

    def _note_exit(self, when):
        """Record the process's exit if the harness did not cause it (each
        process is judged once, when it is seen to have ended)."""
        if self._judged or self.proc is None or self.proc.poll() is None:
            return
        self._judged = True
        problem = exit_problem("mxspool", self.proc, self.expect, when)
        if problem:
            self.problems.append(problem)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill9(self):
        self._note_exit("before kill9()")
        if self.proc and self.proc.poll() is None:
            self.expect = "any"
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM; SIGKILL after 10 s. Returns the exit status. A daemon
        found dead, one that needs the SIGKILL, or one whose graceful stop
        does not exit 0 is a recorded problem."""
        self._note_exit("before stop()")
        if self.proc and self.proc.poll() is None:
            self.expect = "graceful"
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.problems.append("mxspool did not exit within 10s of SIGTERM: SIGKILLed")
                self.proc.kill()
                self.proc.wait()
            self._note_exit("at stop()")
        return self.proc.returncode if self.proc else None

    def problems_at_teardown(self):
        """Recorded problems plus every panic in the log."""
        return self.problems + [f"mxspool logged a panic: {line.strip()}"
                                for line in panic_lines(self.log_text())]

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def queue(self, *args):
        return subprocess.run(runner() + [binary(), "queue", *args, "-c", self.conf],
                              capture_output=True, text=True, timeout=20)


class Sink:
    """A minimal SMTP server playing the primary: stores each message's raw
    DATA bytes (dot-stuffed, as on the wire) and notes any bare CR/LF seen
    anywhere in what the daemon sent."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.messages = []
        self.bare = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        raw = b""
        try:
            c.sendall(b"220 primary.example ESMTP\r\n")
            buf = b""
            in_data = False
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    return
                raw += chunk
                buf += chunk
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0 and buf.startswith(b".\r\n") and data == b"":
                            end = -2  # empty body
                        if end == -1:
                            break
                        if end == -2:
                            buf = buf[3:]
                        else:
                            data += buf[:end + 2]
                            buf = buf[end + 5:]
                        with self.lock:
                            self.messages.append(data)
                        data = b""
                        in_data = False
                        c.sendall(b"250 2.0.0 ok\r\n")
                        continue
                    i = buf.find(b"\r\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 2:]
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        c.sendall(b"250-primary.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    elif verb == b"DATA":
                        in_data = True
                        c.sendall(b"354 go\r\n")
                    elif verb == b"QUIT":
                        c.sendall(b"221 bye\r\n")
                        return
                    else:
                        c.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            with self.lock:
                for i, b in enumerate(raw):
                    if b == 13 and raw[i + 1:i + 2] != b"\n":
                        self.bare.append(raw[max(0, i - 20):i + 20])
                    if b == 10 and (i == 0 or raw[i - 1] != 13):
                        self.bare.append(raw[max(0, i - 20):i + 20])
            c.close()


class Client:
    def __init__(self, port, timeout=15):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.s.makefile("rb")

    def reply(self):
        """One whole reply: (code, text). (0, '') on EOF."""
        lines = []
        while True:
            line = self.f.readline(4096)
            if not line:
                return 0, "".join(lines)
            assert line.endswith(b"\r\n"), f"reply line without CRLF: {line!r}"
            lines.append(line.decode("latin-1"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "".join(lines)

    def send(self, data):
        self.s.sendall(data)

    def cmd(self, line):
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def send_mail(port, rcpt, body, sender="s@example.org"):
    """One transaction; returns the code after DATA's end (0 on a broken connection)."""
    c = Client(port)
    try:
        assert c.reply()[0] == 220
        c.cmd("EHLO client.test")
        if c.cmd(f"MAIL FROM:<{sender}>")[0] != 250:
            return -1
        if c.cmd(f"RCPT TO:<{rcpt}>")[0] != 250:
            return -2
        if c.cmd("DATA")[0] != 354:
            return -3
        c.send(body + b".\r\n")
        code = c.reply()[0]
        c.cmd("QUIT")
        return code
    except OSError:
        return 0
    finally:
        c.close()
