"""Non-delivery (CONTRACT.md "Delivery"): per-recipient 5xx returned to the
sender with an RFC 3464 DSN sent through the smarthost; 4xx retried until
the retry span ends, then returned; nothing ever returned to <>."""

import email
import email.policy
import re
import time

import pytest

from harness_mxspool import domain
from harness_util import make_message, send_mail

SENDER = "sender@sender.test"


@pytest.fixture
def primary_sink(sink_factory):
    s = sink_factory(hostname="primary.test")
    return s


@pytest.fixture
def dsn_sink(sink_factory):
    return sink_factory(hostname="smarthost.test")


def parse_dsn(content: bytes):
    """-> (message, per-message fields dict, [per-recipient dicts],
    headers-part text). Field names are lower-cased."""
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    types = [p.get_content_type() for p in parts]
    assert types[0] == "text/plain", types
    assert "message/delivery-status" in types, types
    ds = parts[types.index("message/delivery-status")]
    blocks = ds.get_payload()
    if isinstance(blocks, str):   # some parsers leave it as text
        blocks = [email.message_from_string(b) for b in re.split(r"\r?\n\r?\n", blocks.strip())]
    fields = [{k.lower(): v.strip() for k, v in b.items()} for b in blocks]
    per_message, per_rcpt = fields[0], [f for f in fields[1:] if f]
    assert "text/rfc822-headers" in types or "message/rfc822" in types, types
    orig = parts[types.index("text/rfc822-headers")] if "text/rfc822-headers" in types \
        else parts[types.index("message/rfc822")]
    orig_text = orig.as_string()
    return msg, per_message, per_rcpt, orig_text


def test_5xx_for_one_recipient_returns_dsn_and_delivers_the_other(mxspool, primary_sink, dsn_sink):
    """Protects: per-recipient outcome. The primary's 550 for bob makes a
    DSN to the sender (MAIL FROM:<>, via smarthost): multipart/report with
    Reporting-MTA dns; mx2.test, Arrival-Date, Final-Recipient rfc822;
    bob, Action failed, Status 5.x.x, Diagnostic-Code smtp; 550 ...,
    Remote-MTA, Last-Attempt-Date, and the original headers; alice is
    delivered and not mentioned as failed."""
    primary_sink.rcpt_replies["bob@example.com"] = "550 5.1.1 <bob@example.com>: no such user"
    mx = mxspool([domain("example.com", primary_sink.port)], smarthost=dsn_sink.port,
                 retry="1s 1h")
    msg, mid = make_message(subject="for two", sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com", "bob@example.com"], msg)
    assert res.accepted, res
    (t,) = primary_sink.wait_for_messages(1, timeout=10)
    assert t.rcpts == ["alice@example.com"]
    (d,) = dsn_sink.wait_for_messages(1, timeout=20)
    assert d.mail_from == "", "a DSN is sent with the null reverse-path"
    assert d.rcpts == [SENDER]
    dsn, pm, rcpts, orig = parse_dsn(d.content)
    assert dsn["To"] and SENDER in dsn["To"]
    assert pm["reporting-mta"].lower().replace(" ", "") == "dns;mx2.test"
    assert email.utils.parsedate_to_datetime(pm["arrival-date"]) is not None
    assert len(rcpts) == 1, rcpts
    r = rcpts[0]
    assert r["final-recipient"].lower().replace(" ", "") == "rfc822;bob@example.com"
    assert r["action"].lower() == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", r["status"]), r
    assert re.match(r"(?i)smtp;\s*550\b", r["diagnostic-code"]), r
    assert "no such user" in r["diagnostic-code"]
    assert r["remote-mta"].lower().startswith("dns;"), r
    assert email.utils.parsedate_to_datetime(r["last-attempt-date"]) is not None
    assert mid in orig and "Subject: for two" in orig
    assert dsn_sink.bare_newlines() == []
    # only one DSN, and the delivered recipient is not re-sent
    assert len(dsn_sink.messages) == 1
    assert len(primary_sink.messages) == 1


def test_5xx_from_real_postfix_unknown_user(mxspool, postfix_primary, dsn_sink):
    """Protects the same with a real primary: Postfix's 550 5.1.1 for an
    unknown user (verify 'none' lets us accept it) becomes a DSN whose
    Diagnostic-Code carries Postfix's reply."""
    pf = postfix_primary(users=("alice",))
    mx = mxspool([domain("example.com", pf.port)], smarthost=dsn_sink.port, retry="1s 1h")
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com", "ghost@example.com"], msg)
    assert res.accepted, res
    pf.wait_for_messages("alice", 1, timeout=10)
    (d,) = dsn_sink.wait_for_messages(1, timeout=20)
    _, _, rcpts, orig = parse_dsn(d.content)
    assert [r["final-recipient"].split(";")[1].strip() for r in rcpts] == ["ghost@example.com"]
    assert rcpts[0]["status"] == "5.1.1"
    assert "User unknown" in rcpts[0]["diagnostic-code"]
    assert mid in orig


def test_4xx_until_retry_span_ends_then_dsn(mxspool, primary_sink, dsn_sink):
    """Protects the retry schedule: with `retry '1s 4s'` a recipient that
    keeps getting 451 is retried about every second and, once the 4 s span
    (counted from receipt) has ended, returned with Action: failed -- never
    before."""
    primary_sink.default_rcpt_reply = "451 4.3.0 try again later"
    mx = mxspool([domain("example.com", primary_sink.port)], smarthost=dsn_sink.port,
                 retry="1s 4s")
    msg, mid = make_message(sender=SENDER)
    t0 = time.time()
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.accepted, res
    (d,) = dsn_sink.wait_for_messages(1, timeout=30)
    elapsed = d.received_at - t0
    # receipt time may be kept with one-second resolution: allow 1 s
    assert elapsed >= 3.0, f"DSN after {elapsed:.1f}s, before the 4 s span ended"
    attempts = primary_sink.rcpt_attempts("alice@example.com")
    assert attempts >= 3, f"only {attempts} attempt(s) in the 4 s span at 1 s intervals"
    _, _, rcpts, orig = parse_dsn(d.content)
    assert len(rcpts) == 1
    assert rcpts[0]["action"].lower() == "failed"
    assert rcpts[0]["status"][0] in "45"
    assert "451" in rcpts[0].get("diagnostic-code", ""), rcpts[0]
    assert mid in orig
    # and then it is gone: no further attempts after the DSN
    n = primary_sink.rcpt_attempts("alice@example.com")
    time.sleep(2.5)  # a negative check needs a window; 2.5 intervals
    assert primary_sink.rcpt_attempts("alice@example.com") == n
    assert len(dsn_sink.messages) == 1


def test_permanent_failure_of_null_sender_mail_is_dropped_not_bounced(mxspool, primary_sink,
                                                                       dsn_sink):
    """Protects against bounce loops/backscatter: mail from <> that fails
    permanently gets no DSN; it is dropped and the drop is logged with its
    queue id."""
    primary_sink.default_rcpt_reply = "550 5.1.1 no such user"
    mx = mxspool([domain("example.com", primary_sink.port)], smarthost=dsn_sink.port,
                 retry="1s 1h")
    msg, _ = make_message(sender="MAILER-DAEMON@sender.test")
    res = send_mail(mx.port, "", ["alice@example.com"], msg)
    assert res.accepted, res
    primary_sink.wait_for(lambda: primary_sink.rcpt_attempts("alice@example.com") >= 1,
                          timeout=10, what="the delivery attempt")
    line = mx.wait_log(rf"(?im)^.*{re.escape(res.queue_id)}.*\bdrop.*$|"
                       rf"^.*\bdrop.*{re.escape(res.queue_id)}.*$", timeout=10)
    assert line
    time.sleep(3)  # a negative check needs a window: no DSN may appear
    assert dsn_sink.messages == [], dsn_sink.describe()
