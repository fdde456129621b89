"""Non-delivery: per-recipient 5xx returned to the
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


# --- SMTPUTF8 (RFC 6531 3.4) and internationalized DSNs (RFC 6533) -------

UTF8_SENDER = "d\u00efana@sender.test"


def global_dsn(content: bytes):
    """An RFC 6533 DSN -> (message, per-message fields, [per-recipient
    fields], part types). Field names lower-cased."""
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in msg.get_payload()]
    assert "message/global-delivery-status" in types, types
    # Python parses message/global-* as one message: cut the part out.
    delim = b"\r\n--" + msg.get_param("boundary").encode()
    raw = content.split(delim)[1 + types.index("message/global-delivery-status")]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Type: message/global-delivery-status" in head, head
    text = body.decode("utf-8")
    blocks = [email.message_from_string(b) for b in re.split(r"\r?\n\r?\n", text.strip())]
    fields = [{k.lower(): v.strip() for k, v in b.items()} for b in blocks]
    return msg, fields[0], [f for f in fields[1:] if f], types


def test_smtputf8_message_to_a_destination_without_smtputf8_is_returned_5_6_7(
        mxspool, sink_factory, dsn_sink):
    """Protects RFC 6531 3.4: a message received with SMTPUTF8 whose header
    carries UTF-8 is never sent to a server that does not offer SMTPUTF8
    (no downgrade); it is returned at once with status 5.6.7, in an
    RFC 6533 DSN sent with SMTPUTF8."""
    primary = sink_factory(hostname="primary.test", smtputf8=False)
    mx = mxspool([domain("example.com", primary.port)], smarthost=dsn_sink.port,
                 retry="1s 1h")
    msg, _ = make_message(subject="Gr\u00fc\u00dfe", sender=SENDER, body="K\u00f6ln\r\n")
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg,
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert res.accepted, res
    (d,) = dsn_sink.wait_for_messages(1, timeout=20)
    assert primary.messages == [], primary.describe()
    assert d.mail_from == "" and d.rcpts == [SENDER]
    assert "SMTPUTF8" in d.mail_params.upper(), d.mail_params
    _, _, rcpts, types = global_dsn(d.content)
    assert "message/global-headers" in types, types
    (r,) = rcpts
    assert r["status"] == "5.6.7", r
    assert r["action"].lower() == "failed"
    assert "smtputf8" in r.get("diagnostic-code", "").lower(), r


def test_dsn_to_a_utf8_sender_uses_smtputf8_and_rfc_6533(mxspool, primary_sink, dsn_sink):
    """Protects the field bug: the DSN for a sender with a non-ASCII address
    goes out with SMTPUTF8 (and BODY=8BITMIME) in MAIL FROM, to the UTF-8
    address, as multipart/report with message/global-delivery-status whose
    Final-Recipient is the failed address."""
    primary_sink.rcpt_replies["bob@example.com"] = "550 5.1.1 <bob@example.com>: no such user"
    mx = mxspool([domain("example.com", primary_sink.port)], smarthost=dsn_sink.port,
                 retry="1s 1h")
    msg, mid = make_message(subject="f\u00fcr bob", sender=UTF8_SENDER)
    res = send_mail(mx.port, UTF8_SENDER, ["bob@example.com"], msg,
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert res.accepted, res
    (d,) = dsn_sink.wait_for_messages(1, timeout=20)
    assert d.mail_from == ""
    assert d.rcpts == [UTF8_SENDER]
    params = d.mail_params.upper().split()
    assert "SMTPUTF8" in params and "BODY=8BITMIME" in params, d.mail_params
    _, pm, rcpts, types = global_dsn(d.content)
    assert f"\r\nTo: <{UTF8_SENDER}>\r\n".encode() in d.content   # RFC 6532: raw UTF-8
    assert pm["reporting-mta"].lower().replace(" ", "") == "dns;mx2.test"
    (r,) = rcpts
    assert r["final-recipient"].lower().replace(" ", "") == "rfc822;bob@example.com"
    assert r["status"] == "5.1.1"
    assert "message/global-headers" in types, types
    assert mid.encode() in d.content and "f\u00fcr bob".encode() in d.content


@pytest.mark.parametrize("headers,body", [
    (["Content-Transfer-Encoding: binary"], b"caf\xc3\xa9\r\n"),
    (["X-Note: caf\u00e9"], b"plain\r\n"),
], ids=["binary-encoding", "8bit-header"])
def test_8bit_message_that_cannot_be_converted_is_returned_5_6_3(mxspool, sink_factory,
                                                                 dsn_sink, headers, body):
    """Protects RFC 6152 3: a BODY=8BITMIME message that has no 7-bit form
    (binary encoding; raw 8-bit header text without SMTPUTF8) is never sent
    raw to a server without 8BITMIME: it is returned at once with
    554 5.6.3."""
    primary = sink_factory(hostname="primary.test", eightbitmime=False, smtputf8=False)
    mx = mxspool([domain("example.com", primary.port)], smarthost=dsn_sink.port,
                 retry="1s 1h")
    msg, mid = make_message(sender=SENDER, body=body, extra_headers=headers)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg,
                    mail_options=["BODY=8BITMIME"])
    assert res.accepted, res
    (d,) = dsn_sink.wait_for_messages(1, timeout=20)
    assert primary.messages == [], primary.describe()
    _, _, rcpts, orig = parse_dsn(d.content)
    (r,) = rcpts
    assert r["status"] == "5.6.3", r
    assert "554" in r["diagnostic-code"] and "Conversion required" in r["diagnostic-code"], r
    assert mid in orig
