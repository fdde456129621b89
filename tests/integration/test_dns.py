"""Backup-MX delivery by DNS,
against a real authoritative NSD serving zones the tests write and change.

Every MX host resolves to a loopback address 127.0.0.x; the domain's `port`
option is one port on which the peers of a test listen, each on its own
127.0.0.x. mxspool's hostname mx2.test is what the zones list where "we are
an MX"."""

import time

import pytest

from harness_mxspool import domain
from harness_util import (RawSmtp, free_port, make_message, send_mail, wait_attempted,
                          wait_deferred_in_log)

SENDER = "sender@sender.test"
OUR = "mx2.test"


def serve(nsd, records, origin="example.com"):
    """Zone ORIGIN with RECORDS, plus the zone `test` where our own
    hostname mx2.test has an address (as it would in real life)."""
    nsd.zone(origin, records)
    if "test" not in nsd.zones:
        nsd.zone("test", ["mx2 A 127.0.0.1"])
    if not nsd.running:
        nsd.start()


def backup(nsd, mxspool, port, verify="none", **kw):
    """mxspool as backup MX for example.com (deliver_to 'mx', port PORT)."""
    return mxspool([domain("example.com", "mx", verify, port=str(port))],
                   resolver=nsd.resolver, **kw)


def rcpt_reply(mx, rcpt="alice@example.com"):
    with RawSmtp(mx.port, timeout=30) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        return c.cmd(f"RCPT TO:<{rcpt}>")


def test_mail_goes_to_the_mx_above_us_never_to_those_at_or_below(nsd, mxspool, postfix_primary,
                                                                  sink_factory):
    """Protects RFC 5321 5.1 for a backup MX: only MX hosts strictly better
    than our own preference are delivery targets. While the primary (a real
    Postfix, MX 10 at 127.0.0.2) is down, the mail stays queued; the host
    at our own preference (20) and the one below us (30) are never
    contacted, even after attempts failed; when the primary is back the mail
    is delivered to it."""
    port = free_port("127.0.0.2", "127.0.0.3", "127.0.0.4")
    serve(nsd, [
        "@ MX 10 mail",
        f"@ MX 20 {OUR}.",
        "@ MX 20 peer",
        "@ MX 30 low",
        "mail A 127.0.0.2",
        "peer A 127.0.0.3",
        "low A 127.0.0.4",
    ])
    pf = postfix_primary(users=("alice",), host="127.0.0.2", port=port, start=False)
    peer = sink_factory(host="127.0.0.3", port=port, hostname="peer.example.com")
    low = sink_factory(host="127.0.0.4", port=port, hostname="low.example.com")
    mx = backup(nsd, mxspool, port, retry="1s 1h")
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.accepted, res
    wait_deferred_in_log(mx, res.queue_id, attempts=2, timeout=30)
    assert peer.sessions == [] and low.sessions == [], \
        "an MX at or below our preference was contacted"
    pf.start()
    (got,) = pf.wait_for_messages("alice", 1, timeout=20)
    assert mid.encode() in got
    assert peer.sessions == [] and low.sessions == []
    # The primary can have the mail before mxspool has logged its 250
    # (seen under qemu): wait for the line, do not read the log once.
    mx.wait_log(r"event=delivery to=<alice@example.com> relay=\S*127\.0\.0\.2\S* .*status=sent")


@pytest.mark.parametrize("layout", [
    pytest.param([f"@ MX 10 {OUR}.", "@ MX 20 mail", "mail A 127.0.0.2"], id="best"),
    pytest.param([f"@ MX 10 {OUR}."], id="only"),
    pytest.param(["@ MX 10 mail", f"@ MX 10 {OUR}.", "mail A 127.0.0.2"], id="equal"),
])
def test_we_are_the_best_mx_refused_at_rcpt(nsd, mxspool, layout):
    """Protects loop refusal: when our hostname is the best, the only, or an
    equally good MX, nothing ranks above us and delivery would loop back to
    ourselves, so RCPT is refused with 5xx 5.4.6 (nothing is queued)."""
    serve(nsd, layout)
    mx = backup(nsd, mxspool, 2525)
    r = rcpt_reply(mx)
    assert 500 <= r.code < 600 and r.text.startswith("5.4.6"), r
    assert mx.queue_json("list") == []


def test_ip_literal_mx_refused_at_rcpt(nsd, mxspool):
    """Protects: an MX record naming an IP address (RFC 5321 5.1 forbids it)
    is a misconfiguration mxspool refuses with a 5xx at RCPT."""
    serve(nsd, ["@ MX 10 127.0.0.2.", f"@ MX 20 {OUR}."])
    mx = backup(nsd, mxspool, 2525)
    r = rcpt_reply(mx)
    assert 500 <= r.code < 600, r


def test_cname_mx_is_followed_with_a_warning(nsd, mxspool, sink_factory):
    """Protects: an MX that is an alias (CNAME) is followed — the mail is
    accepted and delivered to the alias target's address — and a warning
    event=dns_warning kind=cname_mx is logged."""
    port = free_port("127.0.0.2")
    serve(nsd, ["@ MX 10 alias", f"@ MX 20 {OUR}.", "alias CNAME real", "real A 127.0.0.2"])
    primary = sink_factory(host="127.0.0.2", port=port)
    mx = backup(nsd, mxspool, port)
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = primary.wait_for_messages(1, timeout=15)
    assert t.rcpts == ["alice@example.com"] and mid.encode() in t.content
    line = mx.wait_log(r"event=dns_warning[^\n]*kind=cname_mx[^\n]*")
    assert "alias.example.com" in line.group(0)


def test_no_mx_means_the_implicit_mx(nsd, mxspool, sink_factory):
    """Protects RFC 5321 5.1: a domain without MX records is its own mail
    host (its A record); mail is accepted and delivered there."""
    port = free_port("127.0.0.2")
    serve(nsd, ["@ A 127.0.0.2"])
    primary = sink_factory(host="127.0.0.2", port=port)
    mx = backup(nsd, mxspool, port)
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = primary.wait_for_messages(1, timeout=15)
    assert mid.encode() in t.content


def test_null_mx_refused_at_rcpt(nsd, mxspool):
    """Protects RFC 7505: a domain publishing the null MX accepts no mail;
    RCPT is refused with a 5xx and nothing is queued."""
    serve(nsd, ["@ MX 0 ."])
    mx = backup(nsd, mxspool, 2525)
    r = rcpt_reply(mx)
    assert 500 <= r.code < 600, r
    assert mx.queue_json("list") == []


def test_dns_failure_is_451_never_a_guess(nsd, mxspool):
    """Protects: when DNS does not answer, RCPT gets 451 4.4.3 (try later),
    neither an accept nor a 5xx — even right after the same lookup
    succeeded (records with TTL 0 must not be served from a cache)."""
    serve(nsd, ["@ MX 10 mail", f"@ MX 20 {OUR}.", "mail A 127.0.0.2"])
    mx = backup(nsd, mxspool, 2525)
    assert rcpt_reply(mx).code == 250
    nsd.stop()
    r = rcpt_reply(mx)
    assert r.code == 451 and r.text.startswith("4.4.3"), r


def test_host_status_change_redelivers_at_once(nsd, mxspool, sink_factory):
    """Protects MailHop's "host status change": the primary is down at its
    old address (127.0.0.2), the mail is queued with a long retry interval
    (1h); the zone then moves the primary to 127.0.0.5, where it listens.
    The mail is delivered within a few host_check_intervals (2s) — only
    the address change can explain that — and event=host_status_change is
    logged with the old and the new address."""
    port = free_port("127.0.0.2", "127.0.0.5")
    records = ["@ MX 10 mail", f"@ MX 20 {OUR}.", "@ MX 30 mail"]
    serve(nsd, records + ["mail A 127.0.0.2"])
    mx = backup(nsd, mxspool, port, retry="1h 1d", host_check_interval="2s")
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.accepted, res
    wait_attempted(mx, res.queue_id, attempts=1, timeout=15)
    (entry,) = [e for e in mx.queue_json("list") if e["id"] == res.queue_id]
    assert int(entry["next_attempt"]) > time.time() + 600, \
        f"the retry interval alone must not explain a prompt delivery: {entry}"
    # The owner's dynamic address changes; the primary is up at the new one.
    primary = sink_factory(host="127.0.0.5", port=port)
    nsd.zone("example.com", records + ["mail A 127.0.0.5"])
    (t,) = primary.wait_for_messages(1, timeout=10)
    assert mid.encode() in t.content
    line = mx.wait_log(r"event=host_status_change[^\n]*")
    assert "127.0.0.2" in line.group(0) and "127.0.0.5" in line.group(0), line.group(0)
    mx.wait_log(rf"id={res.queue_id} event=removed\b")
    assert mx.queue_json("list") == []


@pytest.fixture
def port25_sink(sink_factory):
    """A sink on 127.0.0.9:25: without a smarthost, DSNs go to the sender
    domain's MX on port 25."""
    try:
        return sink_factory(host="127.0.0.9", port=25, hostname="mx.sender.test")
    except PermissionError:
        pytest.skip("binding port 25 needs root (CI runs as root)")


def test_dsn_goes_to_the_sender_domains_mx(nsd, mxspool, sink_factory, port25_sink):
    """Protects: without a smarthost, the DSN for a recipient the primary
    refuses with 5xx goes to the MX of the original sender's domain (port
    25), found through DNS: sender.test MX 10 mx.sender.test -> 127.0.0.9."""
    port = free_port("127.0.0.2")
    nsd.zone("sender.test", ["@ MX 10 mx", "mx A 127.0.0.9"])
    serve(nsd, ["@ MX 10 mail", f"@ MX 20 {OUR}.", "mail A 127.0.0.2"])
    primary = sink_factory(host="127.0.0.2", port=port)
    primary.rcpt_replies["bob@example.com"] = "550 5.1.1 <bob@example.com>: no such user"
    mx = backup(nsd, mxspool, port, retry="1s 1h")
    msg, mid = make_message(sender=SENDER, to="bob@example.com")
    res = send_mail(mx.port, SENDER, ["bob@example.com"], msg)
    assert res.accepted, res
    (d,) = port25_sink.wait_for_messages(1, timeout=20)
    assert d.mail_from == ""
    assert d.rcpts == [SENDER]
    assert b"multipart/report" in d.content and mid.encode() in d.content
    assert primary.messages == []
