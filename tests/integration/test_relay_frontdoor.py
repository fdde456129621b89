"""The relay front door against real peers: dnsmasq serving a
test DNSBL zone, spamd, clamd with a signature database written here, and
a capture sink (harness_sink.py) standing in for the owner's server on an
alternate port.

The daemon is conftest.py's `mxspool` (its teardown fails the test when the
daemon died, panicked, or did not stop cleanly); the peers are
harness_util.ServerProcess instances; the clients harness_util's RawSmtp
(which can connect from any 127.0.0.x) and send_mail.
"""

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from harness_mxspool import domain
from harness_util import RawSmtp, ServerProcess, free_port, need, send_mail

ZONE = "bl.test"
LISTED_IP = "127.0.0.2"  # listed in ZONE
CLEAN_IP = "127.0.0.3"  # not listed
REASON = "Listed by bl.test: see http://bl.test/127.0.0.2"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
VIRUS = "MXSPOOL-VIRUS-TEST-SIGNATURE-7f3a"


def peer(name, base, argv_of_port, timeout, udp=False):
    """A started ServerProcess NAME in BASE: ARGV_OF_PORT(port) -> argv
    (UDP: on a port free for UDP too)."""
    p = ServerProcess()
    p.name, p.base, p.port = name, base, free_port(udp=udp)
    p.out = Path(base) / f"{name}.out"
    p.spawn(argv_of_port(p.port), p.out, f"{name} on {p.port}", timeout)
    return p


# ---------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    """dnsmasq: bl.test answers NXDOMAIN except 2.0.0.127.bl.test (A + TXT)."""
    exe = need("dnsmasq", "dnsmasq")
    d = tmp_path_factory.mktemp("dns")
    p = peer("dnsmasq", d, lambda port: [
        exe, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        "--pid-file=", "--user=root" if os.geteuid() == 0 else "--user=",
        f"--address=/{ZONE}/", f"--address=/2.0.0.127.{ZONE}/127.0.0.2",
        f"--txt-record=2.0.0.127.{ZONE},{REASON}",
        "--log-facility=" + str(d / "dnsmasq.log")], 20, udp=True)
    yield p.port
    p.stop()


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

    def argv(port):
        args = [exe, f"--listen=127.0.0.1:{port}", "--local", "--nouser-config",
                f"--siteconfigpath={site}", "--max-children=1", "--syslog=stderr"]
        return args + (["-u", "nobody"] if os.geteuid() == 0 else [])
    p = peer("spamd", d, argv, 120)
    yield p.port
    p.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    """Real clamd with a one-signature database (no download possible)."""
    exe = need("clamd", "clamav-daemon")
    d = tmp_path_factory.mktemp("clamd")
    (d / "db").mkdir()
    (d / "db" / "mxspool.ndb").write_text(f"Mxspool.Test.Sig:0:*:{VIRUS.encode().hex()}\n")
    conf = d / "clamd.conf"

    def argv(port):
        conf.write_text(
            f"TCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {d / 'db'}\n"
            f"Foreground yes\nLogFile {d / 'clamd.log'}\nPidFile {d / 'clamd.pid'}\n")
        return [exe, "-c", conf]
    p = peer("clamd", d, argv, 60)
    yield p.port
    p.stop()


# ---------------------------------------------------------------- mxspool


@pytest.fixture
def daemon(mxspool):
    """Factory: daemon(deliver_to=None, **UCI main options) -> a started
    Mxspool for example.com (deliver_to: a port nothing listens on unless
    given)."""
    def start(deliver_to=None, **options):
        return mxspool([domain("example.com", deliver_to or free_port())],
                       hostname="mx.relay.test", **options)
    return start


MESSAGE = """From: <alice@sender.test>
To: <bob@example.com>
Subject: {subject}
Date: Mon, 23 Nov 2026 12:00:00 +0000
Message-ID: <{subject}@sender.test>

{body}
"""


def msg(subject, body="Hello Bob, see you tomorrow."):
    return MESSAGE.format(subject=subject.replace(" ", "-"), body=body).replace("\n", "\r\n").encode()


def send(d, sender, body, source=None):
    """One message to bob@example.com: the transaction's last reply (DATA's,
    or the refusal), (code, text)."""
    return send_mail(d.port, sender, "bob@example.com", body, source=source).reply


def resolver(dns):
    return {"resolver": f"127.0.0.1:{dns}", "dnsbl": [ZONE]}


# ---------------------------------------------------------------- DNSBL and lists


def test_listed_client_refused_with_txt_reason(dns, daemon):
    # 127.0.0.2 is listed: refused at MAIL with 554 5.7.1 and the zone's TXT.
    d = daemon(**resolver(dns))
    c = RawSmtp(d.port, source=LISTED_IP)
    assert c.greeting().code == 220
    assert c.cmd("EHLO client.test").code == 250
    code, text = c.cmd("MAIL FROM:<alice@sender.test>")
    assert code == 554 and "5.7.1" in text, text
    assert REASON in text and ZONE in text, text
    c.cmd("QUIT")
    c.close()
    d.wait_log("reason=dnsbl")
    # An unlisted client passes.
    assert send(d, "alice@sender.test", msg("clean"), CLEAN_IP)[0] == 250
    stats = d.run("queue", "stats", "--json", timeout=20)
    assert '"dnsbl": 1' in stats.stdout.replace('"dnsbl":1', '"dnsbl": 1'), stats.stdout


def test_client_allow_and_sender_allow_skip_dnsbl(dns, daemon):
    # client_allow skips the lookup entirely; sender_allow skips the verdict.
    d = daemon(**resolver(dns), client_allow=[f"{LISTED_IP}/32"], sender_allow=["friend.test"])
    assert send(d, "alice@sender.test", msg("allowed client"), LISTED_IP)[0] == 250
    d2 = daemon(**resolver(dns), sender_allow=["friend.test"])
    assert send(d2, "pal@friend.test", msg("allowed sender"), LISTED_IP)[0] == 250
    assert send(d2, "pal@sub.friend.test", msg("subdomain"), LISTED_IP)[0] == 554


def test_dead_dnsbl_zone_fails_open(daemon):
    # A resolver that never answers: the zone is skipped and logged, mail flows.
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    port = blackhole.getsockname()[1]
    d = daemon(resolver=f"127.0.0.1:{port}", dnsbl=[ZONE], dnsbl_timeout="1s")
    t = time.time()
    assert send(d, "alice@sender.test", msg("dead zone"), LISTED_IP)[0] == 250
    assert time.time() - t < 10
    d.wait_log("event=dnsbl_timeout")
    blackhole.close()


def test_sender_and_client_deny(daemon):
    d = daemon(sender_deny=["spam.test"], client_deny=["127.0.0.4"])
    code, text = send(d, "x@spam.test", msg("denied"), CLEAN_IP)
    assert code == 554 and "5.7.1" in text, text
    c = RawSmtp(d.port, source="127.0.0.4")
    greeting = c.greeting()
    assert greeting.code == 554 and "5.7.1" in greeting.text, greeting
    c.close()


# ---------------------------------------------------------------- early talker


def test_pregreet_refused(daemon):
    d = daemon(greet_pause="1s")
    c = RawSmtp(d.port, timeout=30)
    c.send(b"EHLO bot.test\r\n")
    code, text = c.reply()
    assert code == 554 and "5.5.1" in text and "talked before greeting" in text, text
    assert c.closed_by_peer(30) and c.buf == b"", f"connection closed after the refusal ({c.buf!r})"
    c.close()
    d.wait_log("reason=pregreet")
    # A patient client is greeted after the pause and served normally (on
    # that connection).
    t = time.time()
    c = RawSmtp(d.port, timeout=30)
    assert c.greeting().code == 220 and time.time() - t >= 0.9
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.com>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(msg("patient") + b".\r\n")
    assert c.reply().code == 250
    c.cmd("QUIT")
    c.close()


# ---------------------------------------------------------------- scanners


def scanners(spamd=None, clamd=None, **extra):
    s = {}
    if spamd:
        s.update(spamd=f"127.0.0.1:{spamd}", spam_reject_score="50")
    if clamd:
        s.update(clamd=f"127.0.0.1:{clamd}")
    return {**s, **extra}


def test_gtube_refused_nothing_queued(spamd, daemon):
    d = daemon(**scanners(spamd=spamd))
    code, text = send(d, "alice@sender.test", msg("gtube", GTUBE))
    assert code == 554 and "5.7.1" in text, text
    d.wait_log("reason=spam")
    assert d.run("queue", "list", timeout=20).stdout.count("@") == 0, "nothing queued"


def test_spam_headers_by_threshold(spamd, daemon, sink):
    d = daemon(sink.port, **scanners(spamd=spamd))
    assert send(d, "alice@sender.test", msg("clean", "Lunch tomorrow?"))[0] == 250
    assert send(d, "alice@sender.test", msg("tagged", "please mxspool-tag-me now"))[0] == 250
    messages = [t.content.decode(errors="replace") for t in sink.wait_for_messages(2, 20)]
    got = {("tagged" if "Subject: tagged" in m else "clean"): m for m in messages}
    assert set(got) == {"clean", "tagged"}, messages
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


def test_virus_refused(clamd, daemon):
    d = daemon(**scanners(clamd=clamd))
    code, text = send(d, "alice@sender.test", msg("virus", f"attached: {VIRUS}"))
    assert code == 554 and "5.7.1" in text and "Mxspool.Test.Sig" in text, text
    assert send(d, "alice@sender.test", msg("no virus"))[0] == 250
    d.wait_log("reason=virus")


def test_scanner_down_accepts_or_defers(daemon):
    dead = free_port()
    d = daemon(**scanners(spamd=dead, clamd=dead))
    assert send(d, "alice@sender.test", msg("unscanned"))[0] == 250
    d.wait_log("event=scan_skipped scanner=clamd")
    d.wait_log("event=scan_skipped scanner=spamd")
    d2 = daemon(**scanners(clamd=dead, scan_required="1"))
    code, text = send(d2, "alice@sender.test", msg("required"))
    assert code == 451 and "4.7.1" in text, text


def test_scanner_timeout_is_bounded(daemon):
    # A scanner that accepts and never answers: skipped after scan_timeout.
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(5)
    d = daemon(**scanners(clamd=mute.getsockname()[1], scan_timeout="2s"))
    t = time.time()
    assert send(d, "alice@sender.test", msg("slow scanner"))[0] == 250
    assert 1.5 < time.time() - t < 10
    mute.close()


# ---------------------------------------------------------------- relay and retag


def test_relay_alternate_port_and_retag(daemon, sink):
    # Tagged at receipt with a dead HOST:PORT; retag re-points it at the sink.
    d = daemon()
    code, text = send(d, "alice@sender.test", msg("retag me"))
    assert code == 250, text
    listed = d.run("queue", "list", timeout=20)
    assert "bob@example.com" in listed.stdout, listed
    r = d.run("queue", "retag", "example.com", f"127.0.0.1:{sink.port}", timeout=20)
    assert r.returncode == 0, r
    got = sink.wait_for_messages(1, 20)
    assert "Subject: retag-me" in got[0].content.decode(errors="replace"), d.log()[-2000:]
