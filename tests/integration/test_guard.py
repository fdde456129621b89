"""The dynamic-IP guard: before any
message is handed over, mxspool checks it talks to the owner's server. An
offline_address is never connected to; our own listen address, a greeting
or EHLO naming someone other than expect_greeting, or a greeting naming our
own hostname end the connection before MAIL FROM. The mail stays queued
(never a DSN because of the guard), a warning names the address and the
reason, and `guard_refusals` rises."""

import re

import pytest

from harness_mxspool import domain
from harness_tls import make_cert, server_context
from harness_util import free_port, make_message, send_mail, wait_until

IMPOSTOR_HOST = "127.0.0.2"


def queued(mx, qid):
    return [e for e in mx.queue_json("list") if e["id"] == qid]


def refusals(mx):
    return [l for l in mx.log().splitlines() if "event=guard_refusal" in l]


def saw_mail_from(sink):
    return [c for s in sink.sessions for c in s.commands if c.upper().startswith("MAIL FROM")]


def submit(mx, rcpt="alice@example.com"):
    msg, mid = make_message(to=rcpt)
    res = send_mail(mx.port, "sender@sender.test", [rcpt], msg)
    assert res.accepted and res.queue_id, res
    return res.queue_id, mid


def assert_refused_and_kept(mx, qid, dsn, reason_rx, n=2):
    """N guard refusals logged (retry 1s: several attempts), the message
    still queued with the reason as its last error, counted, no DSN."""
    wait_until(lambda: len(refusals(mx)) >= n, 20,
               what=f"{n} guard_refusal log lines")
    line = refusals(mx)[-1]
    assert re.search(reason_rx, line, re.I), line
    assert re.search(r"\bWARN", line), f"a guard refusal is a warning: {line}"
    (e,) = queued(mx, qid)
    assert re.search(reason_rx, e["last_error"], re.I), e
    assert mx.queue_json("stats")["guard_refusals"] >= n
    assert mx.queue_json("stats")["bounced"] == 0
    assert not dsn.sessions, f"the guard must never cause a DSN: {dsn.describe()}"


def test_offline_address_is_never_connected(mxspool, sink_factory):
    """Protects MailHop's "offline address", done right: a destination
    address listed in offline_address is never even connected to."""
    dsn = sink_factory(hostname="dsn.test")
    target = sink_factory(hostname="primary.test")
    mx = mxspool([domain("example.com", target.port, offline_address="127.0.0.1")],
                 retry="1s 1h", smarthost=dsn.port)
    qid, _ = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"offline_address")
    assert "127.0.0.1" in refusals(mx)[-1]
    assert target.sessions == [], f"connected to an offline address: {target.describe()}"


def test_impostor_with_other_greeting_never_sees_mail_then_retag_delivers(
        mxspool, sink_factory, postfix_primary, workdir):
    """Protects the core of the guard: a stranger that inherited the owner's
    address (another loopback address, another greeting, another
    certificate) never sees MAIL FROM; when the mail is re-pointed at the
    real primary (a real Postfix greeting as expected) it is delivered."""
    cert, key = make_cert(workdir / "imp", "impostor.test")
    impostor = sink_factory(hostname="impostor.test", host=IMPOSTOR_HOST,
                            tls=server_context(cert, key))
    dsn = sink_factory(hostname="dsn.test")
    pf = postfix_primary(users=("alice",))
    mx = mxspool([domain("example.com", f"{IMPOSTOR_HOST}:{impostor.port}",
                         expect_greeting="pf0.primary.test")],
                 retry="1s 1h", smarthost=dsn.port)
    qid, mid = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"impostor\.test|greet")
    assert f"{IMPOSTOR_HOST}:{impostor.port}" in refusals(mx)[-1]
    assert impostor.sessions, "the impostor was never even tried"
    assert saw_mail_from(impostor) == [], impostor.describe()

    r = mx.run("queue", "retag", "example.com", f"127.0.0.1:{pf.port}")
    assert r.returncode == 0, r.stderr
    got = pf.wait_for_messages("alice", 1, timeout=20)
    assert mid.encode() in got[0]
    mx.wait_log(rf"id={qid} event=removed\b")
    assert queued(mx, qid) == []
    assert saw_mail_from(impostor) == []
    assert not dsn.sessions


def test_impostor_then_real_primary_on_the_same_address(mxspool, sink_factory):
    """Protects: the guard is re-checked at every attempt, so when the real
    primary is back on the same address and port (greeting as expected),
    the held mail is delivered there — and only there."""
    port = free_port(IMPOSTOR_HOST)
    dsn = sink_factory(hostname="dsn.test")
    impostor = sink_factory(hostname="stranger.example", host=IMPOSTOR_HOST, port=port)
    mx = mxspool([domain("example.com", f"{IMPOSTOR_HOST}:{port}",
                         expect_greeting="mail.example.com")],
                 retry="1s 1h", smarthost=dsn.port)
    qid, mid = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"stranger\.example|greet")
    impostor.close()
    wait_until(lambda: all(s.closed for s in impostor.sessions), 10, what="impostor sessions to end")
    real = sink_factory(hostname="MAIL.example.com", host=IMPOSTOR_HOST, port=port)
    assert mx.run("queue", "flush").returncode == 0
    (t,) = real.wait_for_messages(1, timeout=20)
    assert mid.encode() in t.content
    assert saw_mail_from(impostor) == []
    assert not dsn.sessions


def test_ehlo_name_must_match_too(mxspool, sink_factory):
    """Protects: a server that copies the expected greeting but names
    itself otherwise in its EHLO reply is refused as well."""
    dsn = sink_factory(hostname="dsn.test")
    impostor = sink_factory(hostname="impostor.test", greeting="220 mail.example.com ESMTP")
    mx = mxspool([domain("example.com", impostor.port, expect_greeting="mail.example.com")],
                 retry="1s 1h", smarthost=dsn.port)
    qid, _ = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"impostor\.test|greet")
    assert any(c.upper().startswith("EHLO") for s in impostor.sessions for c in s.commands)
    assert saw_mail_from(impostor) == [], impostor.describe()


def test_greeting_naming_our_own_hostname_is_refused(mxspool, sink_factory):
    """Protects against loops: a server that greets with our own hostname
    (e.g. another mxspool instance of ours, or ourselves through NAT) never
    gets the mail."""
    dsn = sink_factory(hostname="dsn.test")
    looper = sink_factory(hostname="MX2.test")
    mx = mxspool([domain("example.com", looper.port)], retry="1s 1h", smarthost=dsn.port)
    qid, _ = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"own hostname|mx2\.test|loop")
    assert saw_mail_from(looper) == [], looper.describe()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.3"])
def test_our_own_listen_address_is_refused(mxspool, sink_factory, host):
    """Protects against delivering to ourselves: a destination that is one
    of our listen addresses (or, with a wildcard listener, a local address on
    our port) is never connected to."""
    dsn = sink_factory(hostname="dsn.test")
    port = free_port()
    listen = "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0"
    mx = mxspool([domain("example.com", f"{host}:{port}")], retry="1s 1h",
                 smarthost=dsn.port, port=port, listen=[f"{listen}:{port}"])
    qid, _ = submit(mx)
    assert_refused_and_kept(mx, qid, dsn, r"own|listen")
    # Had we connected to ourselves, a session would start after the refusal.
    log = mx.log()
    after = log[log.index("event=guard_refusal"):]
    assert "event=connect" not in after, f"mxspool connected to itself:\n{after}"
    deliveries = [l for l in log.splitlines() if "event=delivery" in l]
    assert deliveries and all("relay=none" in l for l in deliveries), deliveries


def test_callahead_probe_is_guarded_too(mxspool, sink_factory):
    """Protects: the call-ahead probe goes through the same guard, so an
    impostor never even learns which recipients we ask about (no MAIL FROM:<>
    and no RCPT); the guard failing means "accept and queue"."""
    dsn = sink_factory(hostname="dsn.test")
    impostor = sink_factory(hostname="impostor.test", host=IMPOSTOR_HOST)
    impostor.default_rcpt_reply = "550 5.1.1 no such user"
    mx = mxspool([domain("example.com", f"{IMPOSTOR_HOST}:{impostor.port}",
                         verify="callahead", expect_greeting="mail.example.com")],
                 retry="1s 1h", smarthost=dsn.port)
    qid, _ = submit(mx, "bob@example.com")
    assert_refused_and_kept(mx, qid, dsn, r"impostor\.test|greet")
    assert impostor.sessions, "neither probe nor delivery reached the impostor's address"
    assert saw_mail_from(impostor) == [], impostor.describe()
    assert impostor.rcpt_attempts("bob@example.com") == 0


@pytest.mark.parametrize("option,value", [
    ("tls_pin", "md5:abc"),
    ("tls_pin", "sha256:not base64!"),
    ("offline_address", "203.0.113.300"),
])
def test_bad_guard_settings_are_config_errors(mxspool, mxspool_cmd, option, value):
    """Protects: a guard setting that cannot work is refused at `check` with
    its line (exit 2) — never silently ignored, which would leave the owner's
    mail unguarded."""
    mx = mxspool([domain("example.com", 2, **{option: value})], start=False)
    lines = mx.config_path.read_text().splitlines()
    n = next(i for i, l in enumerate(lines, 1) if option in l)
    r = mxspool_cmd("check", "-c", mx.config_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith(f"{mx.config_path}:{n}:"), r.stderr
