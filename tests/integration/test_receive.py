"""Receiving: greeting,
EHLO, relay protection, size limits, bare CR/LF, recipient and hop limits,
pipelining, connection limits. The destination is a capture sink, so a test
can also prove what was (not) passed on."""

import re
import threading

import pytest

from harness_mxspool import domain
from harness_util import RawSmtp, make_message, send_mail, wait_until


@pytest.fixture
def relay(mxspool, sink):
    """mxspool for example.com relaying to the sink, verify none."""
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    return mx, sink


def session(mx):
    c = RawSmtp(mx.port)
    g = c.greeting()
    assert g.code == 220, g
    return c


def test_greeting_and_ehlo_keywords(relay):
    """Protects: the 220 greeting names our hostname; EHLO advertises
    PIPELINING, SIZE <limit> (10M default), 8BITMIME, ENHANCEDSTATUSCODES,
    SMTPUTF8, and no STARTTLS without a certificate."""
    mx, _ = relay
    with RawSmtp(mx.port) as c:
        g = c.greeting()
        assert g.code == 220
        assert re.match(r"^mx2\.test ESMTP( |$)", g.lines[0]), g
        r = c.ehlo("client.test")
        assert r.code == 250
        assert r.lines[0].split()[0] == "mx2.test"
        kw = [l.upper() for l in r.lines[1:]]
        for k in ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
            assert k in kw, (k, r.lines)
        assert not any(k.startswith("STARTTLS") for k in kw)
        assert c.cmd("QUIT").code == 221


def test_rcpt_for_foreign_domain_is_relay_denied(relay):
    """Protects: RCPT only for configured domains; anything else 550 5.7.1."""
    mx, sink = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        r = c.cmd("RCPT TO:<victim@elsewhere.test>")
        assert r.code == 550 and r.lines[0].startswith("5.7.1"), r
        r = c.cmd("RCPT TO:<alice@example.com>")
        assert r.code == 250, r


@pytest.mark.parametrize("addr", [
    "<@evil.test:u@example.com>",
    "<u%evil.test@example.com>",
    '<"u@evil.test"@example.com>',
    "<u@[127.0.0.1]>",
    "<u@example.com.evil.test>",
    "<u@evil.test.example.com>",
])
def test_relay_tricks_are_never_accepted(relay, addr):
    """Protects: no address syntax (source route, %, quoted @, address
    literal, look-alike domains) makes us an open relay."""
    mx, sink = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        r = c.cmd(f"RCPT TO:{addr}")
        assert 500 <= r.code < 600, (addr, r)
        # nothing to deliver: DATA must not be accepted either
        r = c.cmd("DATA")
        assert r.code >= 500 and r.code != 354, r


def test_several_at_signs_is_a_syntax_error(relay):
    """Protects: `u@evil.test@example.com` is a syntax error (501)."""
    mx, _ = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        r = c.cmd("RCPT TO:<u@evil.test@example.com>")
        assert r.code == 501, r


def test_upper_case_and_trailing_dot_domain_is_ours(relay):
    """Protects: domain matching is case-insensitive and ignores a trailing
    dot: `U@EXAMPLE.COM.` is accepted."""
    mx, _ = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        r = c.cmd("RCPT TO:<U@EXAMPLE.COM.>")
        assert r.code == 250, r


def test_mail_size_parameter_over_limit(relay):
    """Protects: MAIL FROM SIZE=n over the limit (10M default) gets 552 5.3.4."""
    mx, _ = relay
    with session(mx) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@b.test> SIZE=10485761")
        assert r.code == 552 and r.lines[0].startswith("5.3.4"), r
        r = c.cmd("MAIL FROM:<a@b.test> SIZE=10485760")
        assert r.code == 250, r


def test_body_over_limit_refused_after_dot_and_not_queued(mxspool, sink):
    """Protects: a body over max_message_size without SIZE gets 552 5.3.4
    after the end of data, and nothing of it is queued or delivered (a
    following small message in the same session is, and alone)."""
    mx = mxspool([domain("example.com", sink.port)], max_message_size="100K", retry="1s 1h")
    with session(mx) as c:
        r = c.ehlo()
        assert "SIZE 102400" in [l.upper() for l in r.lines]
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        big, _ = make_message(subject="too big", body=b"x" * 998 + b"\r\n")
        big = big + (b"y" * 998 + b"\r\n") * 110   # ~110 KB > 100K
        c.send(big + b".\r\n")
        r = c.reply(timeout=30)
        assert r.code == 552 and r.lines[0].startswith("5.3.4"), r
        small, mid = make_message(subject="small one")
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(small + b".\r\n")
        assert c.reply().code == 250
    msgs = sink.wait_for_messages(1)
    assert mid.encode() in msgs[0].content
    assert len(sink.messages) == 1
    assert all(b"too big" not in t.content for t in sink.messages)


def test_bare_lf_in_data_is_refused_and_session_stays_usable(relay):
    """Protects (SMTP smuggling): only CRLF.CRLF ends DATA; `a LF . LF b` is
    neither an end of data nor accepted: after the real CRLF.CRLF the message
    is refused with 5xx 5.5.2, and the session goes on normally; the refused
    message (and the 'smuggled' one) is never delivered."""
    mx, sink = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: smuggle\r\n\r\na\n.\nMAIL FROM:<x@y.test>\nb\r\n")
        # LF.LF is not the end of data: no reply may come yet
        assert not c.readable_within(1.0), f"server replied early: {c.buf!r}"
        c.send(b".\r\n")
        r = c.reply()
        assert 500 <= r.code < 600 and r.lines[0].startswith("5.5.2"), r
        clean, mid = make_message(subject="clean one")
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(clean + b".\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    msgs = sink.wait_for_messages(1)
    assert len(sink.messages) == 1 and mid.encode() in msgs[0].content
    assert b"smuggle" not in sink.all_raw()


def test_bare_cr_in_data_is_refused(relay):
    """Protects: a bare CR in DATA is refused with 5.5.2 too."""
    mx, sink = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: cr\r\n\r\na\r.\rb\r\n.\r\n")
        r = c.reply()
        assert 500 <= r.code < 600 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("NOOP").code == 250


def test_bare_lf_in_command_is_refused(relay):
    """Protects: a command ended by bare LF is refused (5.5.2), never taken
    as a line end: MAIL terminated by LF is not executed."""
    mx, _ = relay
    with session(mx) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@b.test>\nRSET\r\n")
        r = c.reply()
        assert 500 <= r.code < 600 and r.lines[0].startswith("5.5.2"), r
        # the MAIL did not take effect: RCPT still needs a MAIL first
        try:
            r = c.cmd("RCPT TO:<alice@example.com>")
        except ConnectionError:
            return  # closing the connection is an acceptable answer too
        assert r.code == 503 or r.code >= 500, r


def test_too_many_recipients(mxspool, sink):
    """Protects: max_recipients 3: the 4th RCPT gets 452 4.5.3, the first
    three are kept and delivered."""
    mx = mxspool([domain("example.com", sink.port)], max_recipients="3", retry="1s 1h")
    msg, mid = make_message()
    rcpts = [f"u{i}@example.com" for i in range(1, 5)]
    res = send_mail(mx.port, "a@b.test", rcpts, msg)
    assert [res.rcpt[r][0] for r in rcpts] == [250, 250, 250, 452], res
    assert res.rcpt[rcpts[3]][1].startswith("4.5.3"), res
    assert res.accepted, res
    sink.wait_for(lambda: sorted(r for t in sink.messages for r in t.rcpts) == rcpts[:3],
                  what="3 recipients delivered")


def received_headers(n):
    return [f"Received: from h{i}.test (h{i}.test [192.0.2.{i}]) by relay{i}.test "
            f"with ESMTP id X{i}; Mon, 23 Nov 2026 10:00:0{i % 10} +0000" for i in range(n)]


def test_too_many_received_headers(mxspool, sink):
    """Protects loop detection: max_hops 5: a message arriving with 6
    Received headers gets 554 5.4.6; with exactly 5 it is accepted (ours is
    not counted)."""
    mx = mxspool([domain("example.com", sink.port)], max_hops="5", retry="1s 1h")
    looped, _ = make_message(subject="looped", extra_headers=received_headers(6))
    res = send_mail(mx.port, "a@b.test", ["alice@example.com"], looped)
    assert res.data[0] == 554 and res.data[1].startswith("5.4.6"), res
    ok, mid = make_message(subject="five hops", extra_headers=received_headers(5))
    res = send_mail(mx.port, "a@b.test", ["alice@example.com"], ok)
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1)
    assert mid.encode() in t.content
    assert b"looped" not in sink.all_raw()


def test_pipelined_batch_gets_replies_in_order(relay):
    """Protects PIPELINING: MAIL, RCPT, RCPT, DATA in one write get their
    four replies in order; the message then goes through."""
    mx, sink = relay
    with session(mx) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.com>\r\n"
               b"RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250, 250, 550, 250, 354], codes
        msg, mid = make_message()
        # end of data and QUIT pipelined too
        c.send(msg + b".\r\nQUIT\r\n")
        r1, r2 = c.reply(), c.reply()
        assert (r1.code, r2.code) == (250, 221), (r1, r2)
    (t,) = sink.wait_for_messages(1)
    assert sorted(t.rcpts) == ["alice@example.com", "bob@example.com"]


def test_connection_limit_per_ip(mxspool, sink):
    """Protects: max_connections_per_ip 2: a third simultaneous connection
    gets 421 4.7.0 and is closed; once one closes, a new one is served."""
    mx = mxspool([domain("example.com", sink.port)], max_connections_per_ip="2",
                 retry="1s 1h")
    a, b = session(mx), session(mx)
    try:
        c = RawSmtp(mx.port)
        r = c.reply()
        assert r.code == 421 and r.lines[0].startswith("4.7.0"), r
        assert c.closed_by_peer(5), "the refused connection must be closed"
        c.close()
        a.cmd("QUIT")
        a.close()

        def third_gets_220():
            with RawSmtp(mx.port) as d:
                return d.reply().code == 220
        wait_until(third_gets_220, 10, interval=0.2, what="a new connection after one closed")
        assert b.cmd("NOOP").code == 250
    finally:
        a.close()
        b.close()


def test_many_concurrent_sessions_all_accepted(mxspool, sink):
    """Protects: concurrent sessions (below the limits) are all served and
    every 250'd message is passed on exactly once."""
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    ids, errors = [], []
    lock = threading.Lock()

    def worker(n):
        try:
            for i in range(3):
                msg, mid = make_message(subject=f"w{n} m{i}")
                res = send_mail(mx.port, "a@b.test", ["alice@example.com"], msg)
                assert res.accepted, res
                with lock:
                    ids.append(mid)
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    sink.wait_for_messages(len(ids), timeout=30)
    got = [m for t in sink.messages for m in ids if m.encode() in t.content]
    assert sorted(got) == sorted(ids)


def test_unknown_command_and_bad_sequence(relay):
    """Protects basic RFC 5321 state handling: RCPT before MAIL is 503,
    DATA without recipients is refused, unknown verbs are 500/502, and the
    session survives all of them."""
    mx, _ = relay
    with session(mx) as c:
        c.ehlo()
        assert c.cmd("RCPT TO:<alice@example.com>").code == 503
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        assert c.cmd("DATA").code in (503, 554)
        assert c.cmd("FROBNICATE").code in (500, 502)
        assert c.cmd("RSET").code == 250
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
