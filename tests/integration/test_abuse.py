"""Load, abuse and security matrices against the real daemon.

Each test says what promise it protects. Bounded loops, loopback only.
The daemon is conftest.py's `mxspool` (its teardown fails the test when the
daemon died, panicked or did not stop cleanly), the primary a capture
`sink` (harness_sink.py), the clients harness_util's RawSmtp and send_mail."""
import os
import re
import smtplib
import socket
import threading
import time

import pytest
from harness_mxspool import binary_path, domain
from harness_util import RawSmtp, log_tail, send_mail, wait_until

pytestmark = pytest.mark.skipif(not binary_path().exists(),
                                reason=f"mxspool binary not built ({binary_path()})")


@pytest.fixture
def env(mxspool, sink):
    """The daemon (limits low enough to reach in a test) and its primary."""
    d = mxspool([domain("example.com", sink.port)], hostname="mx2.example.net",
                retry="1s 1h", log_level="info", max_connections="8",
                max_connections_per_ip="8", max_recipients="50",
                command_timeout="2s", data_timeout="2s", max_message_size="1M")
    return d, sink


def session(d):
    """A client past EHLO; a closed connection reads as reply code 0."""
    c = RawSmtp(d.port, eof_ok=True)
    assert c.reply().code == 220
    assert c.cmd("EHLO client.test").code == 250
    return c


def wait_for(pred, timeout=20):
    try:
        wait_until(pred, timeout, interval=0.1)
        return True
    except AssertionError:
        return False


def wire(sink):
    """Each message the primary accepted, as sent (dot-stuffed)."""
    return [t.data_wire for t in sink.messages]


# The contract: "No address syntax (source routes, %, quoted @, several @)
# turns it into an open relay." Each of these names a foreign final
# destination and must be refused (5xx); nothing may reach the primary.
RELAY_TRICKS = [
    "u@evil.example",
    "@example.com:u@evil.example",
    "@example.com,@x.example:u@evil.example",
    "u%evil.example@example.com",
    "u%evil.example",
    '"u@evil.example"@example.com',
    '"u@evil.example"',
    "u@evil.example@example.com",
    "u@example.com@evil.example",
    "u@[127.0.0.1]",
    "u@[IPv6:::1]",
    "u@evil.example.",
    "u@example.com.evil.example",
    "u@EVIL.EXAMPLE",
    "u!evil.example@example.com",
    "evil.example!u",
    "u@example.com\x00evil.example",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_open_relay_tricks_refused(env, rcpt):
    """Protects: no open relay. A trick either gets a 5xx at RCPT or, if
    accepted, can only be for example.com (delivered to our own primary)."""
    d, sink = env
    c = session(d)
    assert c.cmd("MAIL FROM:<s@example.org>").code == 250
    code, text = c.cmd(b"RCPT TO:<" + rcpt.encode("latin-1") + b">\r\n")
    if code == 250:
        # Accepted only if the domain part after the last @ is ours; then
        # it goes to the configured primary, never elsewhere.
        dom = rcpt.rsplit("@", 1)[-1].rstrip(".").lower()
        assert dom == "example.com", f"{rcpt!r} accepted: {text}"
    else:
        assert 500 <= code < 600, f"{rcpt!r}: {code} {text}"
    assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("rcpt", ["u@EXAMPLE.COM", "u@example.com.", "U@Example.Com"])
def test_own_domain_case_and_trailing_dot(env, rcpt):
    """Upper case and a trailing dot do not confuse the domain match: ours
    is either accepted (and delivered to the primary) or refused 5xx,
    consistently; never a 4xx or a hang."""
    d, _ = env
    c = session(d)
    assert c.cmd("MAIL FROM:<s@example.org>").code == 250
    code, _ = c.cmd(f"RCPT TO:<{rcpt}>")
    assert code == 250 or 500 <= code < 600
    c.close()


# Smuggling: every arrangement of bare CR/LF around a dot inside DATA. The
# daemon must never treat them as the end of data; it refuses the message
# with 5.5.2 (or keeps reading until the real <CRLF>.<CRLF>), and the
# smuggled MAIL/RCPT never becomes a second message.
SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r",
           b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n .\r\n", b"\r\n.\r\r\n",
           b"\n..\n", b"\r\n..\n"]
# (b"\r\r\n.\r\n" is left out on purpose: it holds a real <CRLF>.<CRLF>,
# which every server reads as the end of data; what follows is the
# client's own next transaction, not smuggling.)


def replies_until_close(c):
    """Every reply the server sends until it closes the connection."""
    out = []
    while True:
        r = c.reply()
        if r.code == 0:
            return out
        out.append(r)


def queue_ids(d):
    return [e["id"] for e in d.queue_json("list")]


@pytest.mark.parametrize("eod", SMUGGLE, ids=[repr(s) for s in SMUGGLE])
def test_smuggling_inbound(env, eod):
    """Protects: no SMTP smuggling. A bare CR/LF around a dot never ends
    DATA: the daemon refuses the message (5.5.2) or takes it whole, as one
    message ending at the real <CRLF>.<CRLF>. Told apart from a successful
    smuggle (which also answers 250) by what follows: the replies after it
    are exactly NOOP's and QUIT's (a smuggled MAIL/RCPT/DATA would answer
    on its own), the daemon accepted at most one message (its log line
    `event=accept` is written before the 250), and the primary receives
    exactly that one, with the smuggling attempt inside its body."""
    d, sink = env
    c = session(d)
    assert c.cmd("MAIL FROM:<s@example.org>").code == 250
    assert c.cmd("RCPT TO:<alice@example.com>").code == 250
    assert c.cmd("DATA").code == 354
    inner = (b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
             b"Subject: smuggled\r\n\r\nx\r\n")
    c.send(b"Subject: outer\r\n\r\nbody" + eod + inner + b".\r\n")
    code, text = c.reply()
    # Either the whole thing is refused (bare CR/LF: 5.5.2), or it is one
    # message ending at the real <CRLF>.<CRLF>.
    assert code in (250, 550, 500, 554), text
    if code != 250:
        assert "5.5.2" in text or code == 554, text
    # In sync: NOOP and QUIT get their own replies and nothing else comes.
    # A smuggled transaction would put its own replies in between (250 for
    # MAIL and RCPT, 354, 250 queued) and the NOOP would read MAIL's 250.
    # (A 421 alone: the daemon closed the session after the refusal.)
    c.send(b"NOOP\r\nQUIT\r\n")
    rest = replies_until_close(c)
    c.close()
    codes = [r.code for r in rest]
    assert codes in ([250, 221], [421]), f"replies after the message: {rest}"
    # Every message the session left is logged (event=accept) before its
    # 250 and before QUIT's 221: the count is final now.
    accepted = re.findall(r"id=(\S+) event=accept ", d.log())
    if code != 250:
        assert accepted == [], f"refused, yet accepted: {accepted}\n{log_tail(d.log())}"
        # The refusal's log line names the client's sender (it once said
        # from=<>: the transaction was already reset when it was written).
        assert re.search(r"event=reject stage=DATA .*from=<s@example\.org> reason=",
                         d.log()), log_tail(d.log())
        assert queue_ids(d) == []
        assert wire(sink) == [], wire(sink)
    else:
        assert len(accepted) == 1, f"one message expected, accepted: {accepted}"
        qid = accepted[0]
        # Wait for that delivery itself (the primary answered it, the
        # daemon logged it sent), then for its removal from the spool (the
        # log line written once the spool has let it go): the queue is
        # then empty.
        assert wait_for(lambda: re.search(rf"id={qid} event=delivery .*status=sent", d.log())
                        and sink.messages), f"{qid} not delivered:\n{log_tail(d.log())}"
        d.wait_log(rf"id={qid} event=removed\b", timeout=20)
        assert queue_ids(d) == [], queue_ids(d)
        assert len(wire(sink)) == 1, f"the primary got {len(wire(sink))} messages: " \
            f"{wire(sink)}"
        header, _, body = wire(sink)[0].partition(b"\r\n\r\n")
        assert b"Subject: outer" in header and b"smuggled" not in header, wire(sink)[0]
        assert inner.replace(b"\r\n.", b"\r\n..") in body, \
            f"the smuggling attempt must arrive as body text: {body!r}"
    assert not sink.bare_newlines(), f"primary saw a bare CR/LF: {sink.bare_newlines()[:3]}"
    assert d.running, "the daemon died"


def test_outbound_never_bare_newline(env):
    """Protects: we never emit a bare CR/LF. Messages with dots at line
    starts, long lines near the limit and 8-bit bytes reach the primary
    with CRLF only, dot-stuffed, and unstuffed intact."""
    d, sink = env
    bodies = [b"Subject: a\r\n\r\n.\r\n..\r\n.x\r\n",
              b"Subject: b\r\n\r\n" + b"y" * 998 + b"\r\n",
              b"Subject: c\r\n\r\n\xff\xfe\x80 8-bit\r\n. \r\n"]
    for b in bodies:
        # send_mail dot-stuffs (smtplib): the client sends what `stuffed` is below
        assert send_mail(d.port, "s@example.org", "alice@example.com", b).accepted
    assert wait_for(lambda: len(sink.messages) >= 3), "not delivered"
    assert not sink.bare_newlines(), f"primary saw a bare CR/LF: {sink.bare_newlines()[:3]}"
    for b in bodies:
        stuffed = b.replace(b"\r\n.", b"\r\n..")
        assert any(m.endswith(stuffed[stuffed.index(b"\r\n\r\n"):]) for m in wire(sink)), b


def test_connection_flood(env):
    """Protects: max_connections holds (421 4.7.0 beyond it) and the daemon
    still answers a new client once the flood is gone."""
    d, _ = env
    held, refused = [], 0
    for _ in range(40):
        c = RawSmtp(d.port)
        code, text = c.reply()
        if code == 220:
            held.append(c)
        else:
            assert code == 421 and "4.7.0" in text, text
            refused += 1
            c.close()
    assert len(held) <= 8, f"{len(held)} sessions over max_connections 8"
    assert refused >= 32
    for c in held:
        c.close()
    assert wait_for(lambda: answers(d), 10), "no slot freed 10 s after the flood"


def answers(d):
    """True if a new client gets the 220 greeting now."""
    try:
        c = RawSmtp(d.port, timeout=5)
        ok = c.reply().code == 220
        c.close()
        return ok
    except OSError:
        return False


def test_slow_drip_clients_are_timed_out(env):
    """Protects: slow clients cannot hold slots: command_timeout (2s) frees
    them and a normal client gets in afterwards."""
    d, _ = env
    drips = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        drips.append(s)
    for s in drips:
        s.sendall(b"E")
    time.sleep(1.0)
    for s in drips:
        s.sendall(b"H")
    # No CRLF ever: after the timeout each must get 421 and be closed.
    closed = 0
    for s in drips:
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        if b"421" in data:
            closed += 1
        s.close()
    assert closed == 8
    assert wait_for(lambda: answers(d), 10), "slots not freed after the timeouts"



def test_thousands_of_rcpts(env):
    """Protects: max_recipients (50): the 51st and later get 452, the
    session stays in sync and the message goes to the first 50."""
    d, _ = env
    c = session(d)
    assert c.cmd("MAIL FROM:<s@example.org>").code == 250
    n = 3000
    codes = []
    try:
        for i in range(n):
            # Pipelined in bursts of 250 (about 7 KB: within any sane window).
            if i % 250 == 0:
                c.send(b"".join(b"RCPT TO:<u%d@example.com>\r\n" % j
                                for j in range(i, min(n, i + 250))))
            code = c.reply().code
            if code == 0:
                break
            codes.append(code)
            if code == 421:  # too many errors: closed, as RFC 5321 allows
                break
    except OSError:
        pass
    assert codes[:50] == [250] * 50
    assert len(codes) > 50 and all(x in (452, 421) for x in codes[50:]), set(codes[50:])
    c.close()
    assert wait_for(lambda: answers(d), 10)


def test_pipelining_flood_and_long_lines(env):
    """Protects: a flood of pipelined commands and 100 KB lines neither
    crash the daemon nor desynchronise replies: long lines get 500 5.5.x."""
    d, _ = env
    c = session(d)
    c.send(b"NOOP\r\n" * 2000)
    codes = [c.reply().code for _ in range(2000)]
    assert set(codes) <= {250, 421}
    if 421 not in codes:
        c.send(b"X" * 100_000 + b"\r\n")
        code, text = c.reply()
        assert 500 <= code < 600 or code == 421, text
        if code != 421:
            assert c.cmd("NOOP").code in (250, 421)
    c.close()
    c = session(d)
    assert c.cmd("QUIT").code == 221


@pytest.mark.parametrize("junk", [b"NOOP\x00\r\n", b"MAIL FROM:<a\x00@example.org>\r\n",
                                  b"\xff\xfe\xfd\r\n", b"EHLO \xc3\x28\r\n",
                                  b"RCPT TO:<\xff@example.com>\r\n", b"\x00\x00\x00\r\n",
                                  b"NOOP\rNOOP\r\n", b"NOOP\nNOOP\r\n"])
def test_nul_and_invalid_utf8(env, junk):
    """Protects: NUL bytes, invalid UTF-8 and bare CR/LF in commands get a
    5xx and the session stays in sync (or closes cleanly), and the daemon
    lives on: a closed connection is only acceptable from a daemon that
    still runs and still serves the next client (the env teardown also
    fails the test if the daemon died or panicked)."""
    d, _ = env
    c = session(d)
    code, text = c.cmd(junk)
    assert 500 <= code < 600 or code in (0, 421), (junk, code, text)
    if code not in (0, 421):
        assert c.cmd("NOOP").code == 250
    c.close()
    assert d.running, f"the daemon died on {junk!r}:\n{log_tail(d.log())}"
    c = session(d)
    assert c.cmd("QUIT").code == 221
    c.close()


def test_soak_rss(env):
    """Protects: memory stays bounded under load. ~1000 messages from 4
    threads; VmRSS sampled; the peak is reported and must stay under 64 MB
    (a router has 64-256 MB)."""
    d, sink = env
    total = int(os.environ.get("SOAK_MESSAGES", "1000"))
    per = total // 4
    peak = [d.rss_kb()]
    fails = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                peak.append(d.rss_kb())
            except OSError:
                pass
            time.sleep(0.2)

    def worker(w):
        for i in range(per):
            body = b"Message-ID: <soak-%d-%d@t>\r\n\r\n" % (w, i) + b"line\r\n" * (i % 50)
            try:
                code = send_mail(d.port, "s@example.org", "alice@example.com", body).reply[0]
            except (OSError, smtplib.SMTPException) as e:  # a broken connection
                code = repr(e)
            if code != 250:
                fails.append(code)

    t = threading.Thread(target=sampler)
    t.start()
    ws = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    wait_for(lambda: len(sink.messages) >= per * 4, 60)
    stop.set()
    t.join()
    print(f"\nSOAK: {per * 4} messages, {len(sink.messages)} delivered, peak VmRSS {max(peak)} kB")
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "target", "soak-rss.txt"), "w") as f:
        f.write(f"{per * 4} {len(sink.messages)} {max(peak)}\n")
    assert not fails, f"{len(fails)} sends failed: {fails[:5]}"
    assert len(sink.messages) >= per * 4
    if os.environ.get("MXSPOOL_RUNNER"):
        # Under qemu-user the sampled process is the emulator, whose own
        # translation caches dominate: no figure about mxspool. The load
        # above did run (and was checked); the memory bound was not.
        pytest.skip(f"memory bound not checked under MXSPOOL_RUNNER (qemu-user's own RSS, "
                    f"peak {max(peak)} kB, says nothing about mxspool); "
                    f"{per * 4} messages delivered")
    assert max(peak) < 64 * 1024, f"peak VmRSS {max(peak)} kB"
