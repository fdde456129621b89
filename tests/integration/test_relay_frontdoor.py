"""The relay front door (issue 6) against real peers: dnsmasq serving a
test DNSBL zone, spamd, clamd with a signature database written here, and
a small SMTP sink standing in for the owner's server on an alternate port.

Standard library + pytest, plus harness_util's exit checks (the daemon
fixture's teardown fails the test when the daemon died, panicked, or did
not stop cleanly). Needs target/debug/mxspool (or $MXSPOOL_BIN); the daemon
runs with `option syslog '0'`, so its log is its stderr.
"""

import os
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from harness_util import exit_problem, log_tail, panic_lines

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MXSPOOL_BIN", ROOT / "target" / "debug" / "mxspool"))
# A command prefix such as `qemu-mips` to run a cross-built binary.
RUNNER = shlex.split(os.environ.get("MXSPOOL_RUNNER", ""))
ZONE = "bl.test"
LISTED_IP = "127.0.0.2"  # listed in ZONE
CLEAN_IP = "127.0.0.3"  # not listed
REASON = "Listed by bl.test: see http://bl.test/127.0.0.2"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
VIRUS = "MXSPOOL-VIRUS-TEST-SIGNATURE-7f3a"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def need(binary, package):
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install {package}); cannot run this real-peer test")
    return path


# ---------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    """dnsmasq: bl.test answers NXDOMAIN except 2.0.0.127.bl.test (A + TXT)."""
    exe = need("dnsmasq", "dnsmasq")
    port = free_port()
    log = tmp_path_factory.mktemp("dns") / "dnsmasq.log"
    p = subprocess.Popen(
        [exe, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
         "--pid-file=", "--user=root" if os.geteuid() == 0 else "--user=",
         f"--address=/{ZONE}/", f"--address=/2.0.0.127.{ZONE}/127.0.0.2",
         f"--txt-record=2.0.0.127.{ZONE},{REASON}",
         "--log-facility=" + str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    if p.poll() is not None:
        pytest.fail(f"dnsmasq did not start: {log.read_text() if log.exists() else ''}")
    yield port
    stop(p)


@pytest.fixture(scope="module")
def spamd(tmp_path_factory):
    """Real spamd, local tests only, with one extra rule that scores 7."""
    exe = need("spamd", "spamd spamassassin")
    # spamd reads its rules as nobody: pytest's tmp dirs are root-only.
    d = Path(tempfile.mkdtemp(prefix="mxspool-spamd-"))
    d.chmod(0o755)
    site = d / "site"
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site)
    (site / "local.cf").write_text("body MXSPOOL_TAG_ME /mxspool-tag-me/\nscore MXSPOOL_TAG_ME 7.0\n")
    port = free_port()
    args = [exe, f"--listen=127.0.0.1:{port}", "--local", "--nouser-config",
            f"--siteconfigpath={site}", "--max-children=1", "--syslog=stderr"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    with open(d / "spamd.log", "wb") as log:
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, 120, p)
    yield port
    stop(p)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    """Real clamd with a one-signature database (no download possible)."""
    exe = need("clamd", "clamav-daemon")
    d = tmp_path_factory.mktemp("clamd")
    (d / "db").mkdir()
    (d / "db" / "mxspool.ndb").write_text(f"Mxspool.Test.Sig:0:*:{VIRUS.encode().hex()}\n")
    port = free_port()
    conf = d / "clamd.conf"
    conf.write_text(
        f"TCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {d / 'db'}\n"
        f"Foreground yes\nLogFile {d / 'clamd.log'}\nPidFile {d / 'clamd.pid'}\n")
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, 60, p)
    yield port
    stop(p)


class Sink(socketserver.ThreadingTCPServer):
    """A minimal SMTP server recording each message: the owner's server."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self):
        self.messages = []
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self):
        w = lambda s: self.wfile.write(s.encode() + b"\r\n")
        w("220 sink.test ESMTP")
        rcpts = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").strip().upper()
            if cmd.startswith("EHLO"):
                w("250-sink.test\r\n250 8BITMIME")
            elif cmd.startswith("DATA"):
                w("354 go")
                data = b""
                while True:
                    l = self.rfile.readline()
                    if l in (b".\r\n", b""):
                        break
                    data += l
                self.server.messages.append((rcpts, data.decode(errors="replace")))
                w("250 ok")
            elif cmd.startswith("RCPT"):
                rcpts.append(cmd)
                w("250 ok")
            elif cmd.startswith("QUIT"):
                w("221 bye")
                return
            else:
                w("250 ok")


# ---------------------------------------------------------------- mxspool


class Daemon:
    def __init__(self, tmp, main="", deliver_to=None):
        self.dir = tmp
        self.port = free_port()
        self.sock = tmp / "control.sock"
        self.log = tmp / "mxspool.log"
        self.conf = tmp / "mxspool.conf"
        self.conf.write_text(
            "config mxspool 'main'\n"
            "\toption hostname 'mx.relay.test'\n"
            f"\tlist listen '127.0.0.1:{self.port}'\n"
            f"\toption spool_dir '{tmp / 'spool'}'\n"
            f"\toption control_socket '{self.sock}'\n"
            "\toption syslog '0'\n"
            "\toption log_level 'debug'\n"
            f"{main}\n"
            "config domain\n"
            "\toption name 'example.com'\n"
            f"\toption deliver_to '{deliver_to or '127.0.0.1:' + str(free_port())}'\n"
            "\toption verify 'none'\n")
        assert BIN.exists(), f"{BIN} missing: run cargo build first"
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen([*RUNNER, str(BIN), "run", "-c", str(self.conf)],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        wait_port(self.port, 15, self.proc)

    def text(self):
        return self.log.read_text(errors="replace")

    def wait_log(self, needle, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            if needle in self.text():
                return
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not logged:\n{self.text()[-3000:]}")

    def queue(self, *args):
        return subprocess.run([*RUNNER, str(BIN), "queue", *args, "-c", str(self.conf)],
                              capture_output=True, text=True, timeout=20)

    def close(self):
        """Stop it (SIGTERM); returns what went wrong over its life: a death
        before this stop, a stop that did not exit 0, a panic in its log."""
        problems = []
        died = exit_problem("mxspool", self.proc, None, "during the test")
        if died:
            problems.append(died)
        else:
            stop(self.proc)
            bad = exit_problem("mxspool", self.proc, "graceful", "at stop")
            if bad:
                problems.append(bad)
        self.logf.close()
        problems += [f"mxspool logged a panic: {line.strip()}" for line in panic_lines(self.text())]
        return problems


@pytest.fixture
def daemon(tmp_path):
    made = []

    def start(main="", deliver_to=None):
        home = tmp_path / f"d{len(made)}"
        home.mkdir()
        d = Daemon(home, main, deliver_to)
        made.append(d)
        return d

    yield start
    bad = []
    for d in made:
        problems = d.close()
        if problems:
            bad.append("\n  ".join(problems) + f"\n--- log tail ({d.log}) ---\n" + log_tail(d.text()))
    if bad:
        pytest.fail("mxspool ended badly:\n  " + "\n".join(bad), pytrace=False)


class Smtp:
    """A plain SMTP client that can choose its source address."""

    def __init__(self, port, source="127.0.0.1", greet=True):
        self.s = socket.socket()
        self.s.settimeout(30)
        self.s.bind((source, 0))
        self.s.connect(("127.0.0.1", port))
        self.f = self.s.makefile("rb")
        if greet:
            self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            l = self.f.readline().decode(errors="replace")
            if not l:
                return (0, "\n".join(lines))
            lines.append(l.rstrip("\r\n"))
            if len(l) < 4 or l[3] != "-":
                return (int(l[:3]), "\n".join(lines))

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.reply()

    def send(self, sender, rcpt, body):
        """EHLO, MAIL, RCPT, DATA: returns the final reply (or the first refusal)."""
        for c in ["EHLO client.test", f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA"]:
            code, text = self.cmd(c)
            if code >= 400:
                return code, text
        self.s.sendall(body.replace("\n", "\r\n").encode() + b"\r\n.\r\n")
        return self.reply()

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.s.close()


MESSAGE = """From: <alice@sender.test>
To: <bob@example.com>
Subject: {subject}
Date: Mon, 23 Nov 2026 12:00:00 +0000
Message-ID: <{subject}@sender.test>

{body}
"""


def msg(subject, body="Hello Bob, see you tomorrow."):
    return MESSAGE.format(subject=subject.replace(" ", "-"), body=body)


def resolver(dns):
    return f"\toption resolver '127.0.0.1:{dns}'\n\tlist dnsbl '{ZONE}'\n"


# ---------------------------------------------------------------- DNSBL and lists


def test_listed_client_refused_with_txt_reason(dns, daemon):
    # 127.0.0.2 is listed: refused at MAIL with 554 5.7.1 and the zone's TXT.
    d = daemon(resolver(dns))
    c = Smtp(d.port, LISTED_IP)
    assert c.greeting[0] == 220
    assert c.cmd("EHLO client.test")[0] == 250
    code, text = c.cmd("MAIL FROM:<alice@sender.test>")
    assert code == 554 and "5.7.1" in text, text
    assert REASON in text and ZONE in text, text
    c.close()
    d.wait_log("reason=dnsbl")
    # An unlisted client passes.
    c = Smtp(d.port, CLEAN_IP)
    assert c.send("alice@sender.test", "bob@example.com", msg("clean"))[0] == 250
    c.close()
    stats = d.queue("stats", "--json")
    assert '"dnsbl": 1' in stats.stdout.replace('"dnsbl":1', '"dnsbl": 1'), stats.stdout


def test_client_allow_and_sender_allow_skip_dnsbl(dns, daemon):
    # client_allow skips the lookup entirely; sender_allow skips the verdict.
    d = daemon(resolver(dns) + f"\tlist client_allow '{LISTED_IP}/32'\n\tlist sender_allow 'friend.test'\n")
    c = Smtp(d.port, LISTED_IP)
    assert c.send("alice@sender.test", "bob@example.com", msg("allowed client"))[0] == 250
    c.close()
    d2 = daemon(resolver(dns) + "\tlist sender_allow 'friend.test'\n")
    c = Smtp(d2.port, LISTED_IP)
    assert c.send("pal@friend.test", "bob@example.com", msg("allowed sender"))[0] == 250
    c.close()
    c = Smtp(d2.port, LISTED_IP)
    assert c.send("pal@sub.friend.test", "bob@example.com", msg("subdomain"))[0] == 554
    c.close()


def test_dead_dnsbl_zone_fails_open(daemon):
    # A resolver that never answers: the zone is skipped and logged, mail flows.
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    port = blackhole.getsockname()[1]
    d = daemon(f"\toption resolver '127.0.0.1:{port}'\n\tlist dnsbl '{ZONE}'\n\toption dnsbl_timeout '1s'\n")
    c = Smtp(d.port, LISTED_IP)
    t = time.time()
    assert c.send("alice@sender.test", "bob@example.com", msg("dead zone"))[0] == 250
    assert time.time() - t < 10
    c.close()
    d.wait_log("event=dnsbl_timeout")
    blackhole.close()


def test_sender_and_client_deny(daemon):
    d = daemon("\tlist sender_deny 'spam.test'\n\tlist client_deny '127.0.0.4'\n")
    c = Smtp(d.port, CLEAN_IP)
    code, text = c.send("x@spam.test", "bob@example.com", msg("denied"))
    assert code == 554 and "5.7.1" in text, text
    c.close()
    c = Smtp(d.port, "127.0.0.4")
    assert c.greeting[0] == 554 and "5.7.1" in c.greeting[1], c.greeting
    c.s.close()


# ---------------------------------------------------------------- early talker


def test_pregreet_refused(daemon):
    d = daemon("\toption greet_pause '1s'\n")
    c = Smtp(d.port, greet=False)
    c.s.sendall(b"EHLO bot.test\r\n")
    code, text = c.reply()
    assert code == 554 and "5.5.1" in text and "talked before greeting" in text, text
    assert c.f.readline() == b"", "connection closed after the refusal"
    d.wait_log("reason=pregreet")
    # A patient client is greeted after the pause and served normally.
    t = time.time()
    c = Smtp(d.port)
    assert c.greeting[0] == 220 and time.time() - t >= 0.9
    assert c.send("alice@sender.test", "bob@example.com", msg("patient"))[0] == 250
    c.close()


# ---------------------------------------------------------------- scanners


def scanners(spamd=None, clamd=None, extra=""):
    s = ""
    if spamd:
        s += f"\toption spamd '127.0.0.1:{spamd}'\n\toption spam_reject_score '50'\n"
    if clamd:
        s += f"\toption clamd '127.0.0.1:{clamd}'\n"
    return s + extra


def test_gtube_refused_nothing_queued(spamd, daemon):
    d = daemon(scanners(spamd=spamd))
    c = Smtp(d.port)
    code, text = c.send("alice@sender.test", "bob@example.com", msg("gtube", GTUBE))
    assert code == 554 and "5.7.1" in text, text
    c.close()
    d.wait_log("reason=spam")
    assert d.queue("list").stdout.count("@") == 0, "nothing queued"


def test_spam_headers_by_threshold(spamd, daemon):
    sink = Sink()
    d = daemon(scanners(spamd=spamd), deliver_to=f"127.0.0.1:{sink.port}")
    c = Smtp(d.port)
    assert c.send("alice@sender.test", "bob@example.com", msg("clean", "Lunch tomorrow?"))[0] == 250
    assert c.send("alice@sender.test", "bob@example.com", msg("tagged", "please mxspool-tag-me now"))[0] == 250
    c.close()
    end = time.time() + 20
    while len(sink.messages) < 2 and time.time() < end:
        time.sleep(0.2)
    got = {("tagged" if "Subject: tagged" in m else "clean"): m for _, m in sink.messages}
    assert set(got) == {"clean", "tagged"}, sink.messages
    clean, tagged = got["clean"], got["tagged"]
    assert "X-Spam-Status: No, score=" in clean and "required=5.0" in clean
    assert "X-Spam-Flag" not in clean
    assert "X-Spam-Flag: YES" in tagged and "X-Spam-Status: Yes, score=" in tagged
    assert "X-Spam-Score: " in tagged
    # Right below our Received header.
    lines = tagged.splitlines()
    assert lines[0].startswith("Received: from client.test")
    first_other = next(i for i, l in enumerate(lines[1:], 1) if not l[:1].isspace())
    assert lines[first_other] == "X-Spam-Flag: YES", lines[:8]
    sink.shutdown()


def test_virus_refused(clamd, daemon):
    d = daemon(scanners(clamd=clamd))
    c = Smtp(d.port)
    code, text = c.send("alice@sender.test", "bob@example.com", msg("virus", f"attached: {VIRUS}"))
    assert code == 554 and "5.7.1" in text and "Mxspool.Test.Sig" in text, text
    assert c.send("alice@sender.test", "bob@example.com", msg("no virus"))[0] == 250
    c.close()
    d.wait_log("reason=virus")


def test_scanner_down_accepts_or_defers(daemon):
    dead = free_port()
    d = daemon(scanners(spamd=dead, clamd=dead))
    c = Smtp(d.port)
    assert c.send("alice@sender.test", "bob@example.com", msg("unscanned"))[0] == 250
    c.close()
    d.wait_log("event=scan_skipped scanner=clamd")
    d.wait_log("event=scan_skipped scanner=spamd")
    d2 = daemon(scanners(clamd=dead, extra="\toption scan_required '1'\n"))
    c = Smtp(d2.port)
    code, text = c.send("alice@sender.test", "bob@example.com", msg("required"))
    assert code == 451 and "4.7.1" in text, text
    c.close()


def test_scanner_timeout_is_bounded(daemon):
    # A scanner that accepts and never answers: skipped after scan_timeout.
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(5)
    d = daemon(scanners(clamd=mute.getsockname()[1], extra="\toption scan_timeout '2s'\n"))
    c = Smtp(d.port)
    t = time.time()
    assert c.send("alice@sender.test", "bob@example.com", msg("slow scanner"))[0] == 250
    assert 1.5 < time.time() - t < 10
    c.close()
    mute.close()


# ---------------------------------------------------------------- relay and retag


def test_relay_alternate_port_and_retag(daemon):
    # Tagged at receipt with a dead HOST:PORT; retag re-points it at the sink.
    sink = Sink()
    d = daemon()
    c = Smtp(d.port)
    code, text = c.send("alice@sender.test", "bob@example.com", msg("retag me"))
    assert code == 250, text
    c.close()
    listed = d.queue("list")
    assert "bob@example.com" in listed.stdout, listed
    r = d.queue("retag", "example.com", f"127.0.0.1:{sink.port}")
    assert r.returncode == 0, r
    end = time.time() + 20
    while not sink.messages and time.time() < end:
        time.sleep(0.2)
    assert sink.messages and "Subject: retag-me" in sink.messages[0][1], d.text()[-2000:]
    sink.shutdown()
