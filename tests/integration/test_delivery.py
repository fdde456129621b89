"""Delivery: store-and-forward to a
real Postfix primary, byte-exact; our Received header; the primary down and
back on the same port; dot-stuffing and line ends on the wire."""

import email.utils
import re
import time
from datetime import datetime, timezone

import pytest

from harness_mxspool import domain
from harness_util import (SilentServer, deferrals_logged, free_port, make_message,
                          send_mail, wait_deferred_in_log, wait_until)

# A body with the lines that break naive relays: dots, dot-dot, a lone dot,
# long-ish lines, trailing spaces, UTF-8 (8BITMIME).
TRICKY_BODY = (
    b"first line\r\n"
    b".\r\n"
    b"..x\r\n"
    b".x\r\n"
    b"...\r\n"
    b"trailing spaces   \r\n"
    b"\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac\r\n"
    + b"z" * 900 + b"\r\n"
    b"last line\r\n"
)


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value)


def split_headers(raw: bytes):
    """[(name, value-with-folding)] of the header block of LF message bytes,
    and the offset where the header block ends (after the blank line)."""
    head, sep, _ = raw.partition(b"\n\n")
    headers, cur = [], None
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and cur is not None:
            cur[1] += b"\n" + line
        else:
            name, _, value = line.partition(b":")
            cur = [name.decode(), value.strip()]
            headers.append(cur)
    return [(n, v.decode("utf-8", "replace")) for n, v in headers], len(head) + len(sep)


def test_delivered_byte_for_byte_with_our_received_header(mxspool, primary):
    """Protects the core promise: after 250 the message reaches the primary
    at once (first attempt immediate), byte-for-byte (dots, 8-bit, long
    lines), with one Received header prepended by us — `from <helo>
    ([127.0.0.1]) by mx2.test with ESMTP id <queue id> for <rcpt>; <date>` —
    that sits directly below the primary's own."""
    mx = mxspool([domain("example.com", primary.port)], retry="1s 1h")
    msg, mid = make_message(body=TRICKY_BODY)
    t0 = time.time()
    res = send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg, helo="client.test")
    assert res.accepted, res
    assert res.queue_id, f"DATA reply must be '250 2.0.0 Ok: queued as ID': {res.data}"
    (got,) = primary.wait_for_messages("alice", 1, timeout=10)
    assert time.time() - t0 < 10

    lf_original = msg.replace(b"\r\n", b"\n")
    assert got.endswith(lf_original), "the original headers and body must arrive unchanged"
    prefix = got[: -len(lf_original)]
    headers, _ = split_headers(prefix + b"\n")
    names = [n.lower() for n, _ in headers]
    received = [v for n, v in headers if n.lower() == "received"]
    assert len(received) == 2, f"want the primary's Received and ours: {headers}"
    primary_rcvd, ours = unfold(received[0]), unfold(received[1])
    assert "by pf0.primary.test" in primary_rcvd, primary_rcvd
    # ours is the last header before the original message
    assert names[-1] == "received" and headers[-1][1] == received[1]
    m = re.match(
        r"from client\.test \(\[127\.0\.0\.1\]\).*?\bby mx2\.test with ESMTP id (\S+?);?"
        r"(?:\s.*?)?\bfor <alice@example\.com>;\s*(.+)$", ours)
    assert m, f"our Received header has the wrong shape: {ours!r}"
    assert m.group(1).rstrip(";") == res.queue_id
    date = email.utils.parsedate_to_datetime(m.group(2).strip())
    if date.tzinfo is None:  # "-0000" (RFC 5322: zone unknown) parses naive
        date = date.replace(tzinfo=timezone.utc)
    assert abs((date - datetime.now(timezone.utc)).total_seconds()) < 120
    # the primary saw us as the client, with our EHLO name
    assert "mx2.test" in primary_rcvd


def test_several_recipients_one_copy_each(mxspool, primary):
    """Protects: one message to several recipients of the domain reaches
    each mailbox exactly once."""
    mx = mxspool([domain("example.com", primary.port)], retry="1s 1h")
    msg, mid = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com", "bob@example.com"], msg)
    assert res.accepted, res
    for u in ("alice", "bob"):
        (got,) = primary.wait_for_messages(u, 1, timeout=10)
        assert got.endswith(msg.replace(b"\r\n", b"\n"))
    assert len(primary.messages("alice")) == 1 and len(primary.messages("bob")) == 1


def test_primary_down_then_up_on_same_port(mxspool, postfix_primary):
    """Protects store-and-forward: with the primary down mail is still
    accepted (250) and queued; when the primary comes back on the same port
    the mail is delivered within the retry interval (1 s here)."""
    pf = postfix_primary(users=("alice",), start=False)
    mx = mxspool([domain("example.com", pf.port)], retry="1s 1h")
    msg, mid = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    # let the daemon make its immediate attempt against the closed port
    wait_deferred_in_log(mx, res.queue_id)
    assert pf.messages("alice") == []
    pf.start()
    (got,) = pf.wait_for_messages("alice", 1, timeout=15)
    assert got.endswith(msg.replace(b"\r\n", b"\n"))


def test_dot_stuffing_and_line_ends_on_the_wire(mxspool, sink):
    """Protects the client side of the wire: lines `.`, `..x`, `.x` arrive
    correctly dot-stuffed (`..`, `...x`, `..x`), the un-stuffed content is
    exactly ours plus one Received header, and the destination never sees a
    bare CR or LF."""
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, mid = make_message(body=TRICKY_BODY)
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert t.mail_from == "s@sender.test"
    assert t.rcpts == ["alice@example.com"]
    assert b"\r\n..\r\n...x\r\n..x\r\n....\r\n" in t.data_wire, t.data_wire
    assert t.content.endswith(msg)
    added = t.content[: -len(msg)]
    assert added.startswith(b"Received: ") and added.endswith(b"\r\n")
    assert added.count(b"Received:") == 1
    assert sink.bare_newlines() == []


def test_pipelining_client_against_non_pipelining_server(mxspool, sink_factory):
    """Protects: towards a server that does not advertise PIPELINING we send
    one command at a time (and still deliver)."""
    sink = sink_factory(pipelining=False)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com", "bob@example.com"], msg).accepted
    sink.wait_for_messages(1, timeout=10)
    assert not any(s.pipelined for s in sink.sessions), sink.describe()


def test_null_sender_is_relayed_with_null_sender(mxspool, sink):
    """Protects: a bounce (MAIL FROM:<>) we receive is passed on with MAIL
    FROM:<> unchanged."""
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message(sender="MAILER-DAEMON@sender.test")
    res = send_mail(mx.port, "", ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert t.mail_from == ""


def test_new_mail_for_a_primary_just_found_down_shares_the_next_attempt(mxspool, sink_factory):
    """Protects the down mark (src/ctx/down.rs): right after a delivery
    could not connect, new mail for that destination makes no connection
    attempt of its own — the queue shows it "delivery temporarily
    suspended" — and it still goes out within seconds of the primary's
    return, without a flush and long before its first retry step (1 h)."""
    port = free_port()
    mx = mxspool([domain("example.com", port)], retry="1h 1d")
    first, _ = make_message()
    a = send_mail(mx.port, "s@sender.test", ["alice@example.com"], first)
    assert a.accepted, a
    wait_deferred_in_log(mx, a.queue_id)
    second, _ = make_message()
    b = send_mail(mx.port, "s@sender.test", ["bob@example.com"], second)
    assert b.accepted, b
    (entry,) = [e for e in mx.queue_json("list") if e["id"] == b.queue_id]
    assert entry["attempts"] == 0, entry
    assert "delivery temporarily suspended" in entry["last_error"], entry
    assert "connect" in entry["last_error"].lower(), entry
    sink = sink_factory(port=port)
    (t,) = sink.wait_for_messages(1, timeout=15)
    assert t.rcpts == ["bob@example.com"]
    assert t.content.endswith(second)
    deferred = [line for line in mx.log().splitlines() if "status=deferred" in line]
    assert len(deferred) == 1 and a.queue_id in deferred[0], deferred


STORAGE = "452 4.3.1 Insufficient system storage"


def delivery_lines(mx, queue_id):
    return re.findall(rf"^.*id={re.escape(queue_id)} event=delivery .*$", mx.log(), re.M)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "unpipelined"])
@pytest.mark.parametrize("sender", ["s@sender.test", ""], ids=["sender", "null-sender"])
def test_mail_4xx_defers_every_recipient_then_delivers_once(mxspool, sink_factory, sender,
                                                            pipelining):
    """Protects against the field bug: the destination answers MAIL with
    452 (full disk, greylisting) and, like Postfix, each pipelined RCPT
    with "503 5.5.1 Error: need MAIL command". Those 503s answer nothing:
    every recipient is deferred with the 452 (RFC 5321 3.3, RFC 2920 3.1),
    no DSN is made (mail from <> is not dropped), and the retry (1 s)
    delivers one copy to each recipient. Without PIPELINING no RCPT
    follows the refused MAIL."""
    sink = sink_factory(pipelining=pipelining, mail_reply=STORAGE.encode(), mail_reply_times=1)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    rcpts = ["alice@example.com", "bob@example.com"]
    msg, _ = make_message()
    res = send_mail(mx.port, sender, rcpts, msg)
    assert res.accepted, res
    qid = res.queue_id

    # The first attempt: one line per recipient, both deferred with the 452.
    wait_until(lambda: len(delivery_lines(mx, qid)) >= 2, 15, interval=0.2,
               what=f"the first attempt of {qid} in the log")
    first = delivery_lines(mx, qid)[:2]
    for line in first:
        assert "status=deferred" in line and f'reply="{STORAGE}"' in line, first
    assert {re.search(r"to=<([^>]*)>", line).group(1) for line in first} == set(rcpts)
    refused = sink.sessions[0]
    assert sink.mail_refused == 1
    rcpt_cmds = [c for c in refused.commands if c.upper().startswith("RCPT")]
    assert len(rcpt_cmds) == (2 if pipelining else 0), refused.commands

    # The retry delivers, once per recipient, and the message is done.
    mx.wait_log(rf"id={re.escape(qid)} event=removed", timeout=15)
    got = sink.messages
    assert len(got) == 1, sink.describe()
    assert sorted(got[0].rcpts) == sorted(rcpts) and got[0].mail_from == sender
    assert got[0].content.endswith(msg)
    sent = [line for line in delivery_lines(mx, qid) if "status=sent" in line]
    assert len(sent) == 2, delivery_lines(mx, qid)
    log = mx.log()
    assert "status=bounced" not in log and "event=bounce" not in log, log
    assert "event=drop" not in log, log


def test_a_slow_destination_cannot_take_every_job_slot(mxspool, sink):
    """Protects max_destination_queue: with example.com's primary hanging
    (it accepts and never greets) and its queue capped at 2 waiting jobs,
    more due mail for it waits (no attempt, no deferral recorded), and mail
    for another destination is delivered at once."""
    silent = SilentServer()
    try:
        mx = mxspool([domain("example.com", silent.port), domain("example.org", sink.port)],
                     retry="1h 1d", greeting_timeout="60s", max_destination_connections="1",
                     max_destination_queue="2")
        stuck = []
        for _ in range(5):
            msg, _ = make_message()
            res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
            assert res.accepted, res
            stuck.append(res.queue_id)
        msg, _ = make_message()
        assert send_mail(mx.port, "s@sender.test", ["bob@example.org"], msg).accepted
        (t,) = sink.wait_for_messages(1, timeout=15)
        assert t.rcpts == ["bob@example.org"]
        assert not any(deferrals_logged(mx, q) for q in stuck), mx.log()[-3000:]
        assert "event=bounce" not in mx.log()
    finally:
        silent.close()


def test_a_queue_larger_than_the_destination_queue_drains_at_once(mxspool, sink_factory):
    """Protects the drain after an outage: 40 messages queued while the
    primary was down, max_destination_queue 3; when it is back and the
    owner flushes, every one is delivered at once, not 3 now and the rest a
    retry interval (here 1 h) later."""
    port = free_port()
    mx = mxspool([domain("example.com", port)], retry="1h 1d", max_destination_queue="3",
                 max_destination_connections="1")
    sent = []
    for _ in range(40):
        msg, mid = make_message()
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
        assert res.accepted, res
        sent.append(res.queue_id)
    wait_deferred_in_log(mx, sent[-1], 1, timeout=30)
    sink = sink_factory(port=port)
    assert mx.run("queue", "flush").returncode == 0
    sink.wait_for_messages(40, timeout=60)
    assert len(sink.messages) == 40


# --- 8BITMIME downgrade (RFC 6152 3): a destination without 8BITMIME -------

MULTIPART_8BIT = (
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"=_outer\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln = 100 \xe2\x82\xac  \r\n"
    b".dot line\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"plain ascii part = unchanged\r\n"
    b"--=_outer\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--=_outer--\r\n"
)
ASCII_PART = (b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
              b"plain ascii part = unchanged\r\n")


def assert_7bit_clean(content: bytes):
    """Only 7-bit octets, CRLF line ends, no line over 998 octets."""
    assert all(b < 128 for b in content), \
        [content[i - 20:i + 20] for i, b in enumerate(content) if b >= 128][:3]
    for line in content.split(b"\r\n"):
        assert b"\n" not in line and b"\r" not in line
        assert len(line) <= 998, len(line)


def decoded_body(part) -> bytes:
    """A part's body after its transfer decoding, line ends as CRLF."""
    return part.get_payload(decode=True).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("declared", [True, False], ids=["BODY=8BITMIME", "undeclared"])
def test_8bit_body_goes_quoted_printable_to_a_destination_without_8bitmime(mxspool,
                                                                          sink_factory,
                                                                          declared):
    """Protects RFC 6152 3 (the field bug: 8-bit sent raw): a message
    received with BODY=8BITMIME whose body has UTF-8 goes to a server that
    does not offer 8BITMIME without BODY=8BITMIME, 7-bit clean, as
    quoted-printable (MIME-Version and the encoding header added), and
    decodes back to exactly the original text; SIZE= is the converted size.
    The same when the client sent the 8-bit body without declaring it
    (common, though RFC 6152 forbids it): it is 8-bit all the same."""
    import email
    import email.policy
    sink = sink_factory(eightbitmime=False, smtputf8=False, size=10_000_000)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, mid = make_message(body=TRICKY_BODY)
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                    mail_options=["BODY=8BITMIME"] if declared else [])
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert "8BITMIME" not in t.mail_params.upper(), t.mail_params
    assert f"SIZE={len(t.content)}" in t.mail_params.split(), (len(t.content), t.mail_params)
    assert_7bit_clean(t.content)
    got = email.message_from_bytes(t.content, policy=email.policy.compat32)
    assert got["Content-Transfer-Encoding"] == "quoted-printable"
    assert got["MIME-Version"] == "1.0"
    assert got["Message-ID"] == mid
    assert decoded_body(got) == TRICKY_BODY
    text = email.message_from_bytes(t.content, policy=email.policy.default).get_content()
    assert text.replace("\r\n", "\n") == TRICKY_BODY.decode().replace("\r\n", "\n")
    assert sink.bare_newlines() == []


def test_8bit_multipart_converts_only_its_8bit_parts(mxspool, sink_factory):
    """Protects the MIME walk of the downgrade: in a multipart message only
    the 8-bit part is re-encoded (quoted-printable, decoding to the original
    bytes); the 7-bit and base64 parts and the framing arrive unchanged."""
    import email
    import email.policy
    sink = sink_factory(eightbitmime=False, smtputf8=False)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message(body=b"", subject="multipart")
    msg = msg[:-2] + MULTIPART_8BIT      # our MIME headers join the header block
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                    mail_options=["BODY=8BITMIME"])
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert "8BITMIME" not in t.mail_params.upper(), t.mail_params
    assert_7bit_clean(t.content)
    got = email.message_from_bytes(t.content, policy=email.policy.compat32)
    parts = got.get_payload()
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "text/plain", "application/octet-stream"]
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded_body(parts[0]) == \
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln = 100 \xe2\x82\xac  \r\n.dot line"
    assert ASCII_PART in t.content
    assert b"AAECAwQFBgcICQ==\r\n--=_outer--\r\n" in t.content
    assert parts[2].get_payload(decode=True) == bytes(range(10))


def test_undeclared_8bit_body_is_declared_to_a_server_with_8bitmime(mxspool, sink_factory):
    """An 8-bit body the client did not declare goes, unchanged, to a server
    that offers 8BITMIME with BODY=8BITMIME (RFC 6152: the sender of 8-bit
    data declares it)."""
    sink = sink_factory(eightbitmime=True)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message(body=TRICKY_BODY)
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert "BODY=8BITMIME" in t.mail_params.upper(), t.mail_params
    assert t.content.endswith(msg)


def test_all_7bit_message_declared_8bitmime_goes_unchanged(mxspool, sink_factory):
    """Protects the common case: BODY=8BITMIME on a message that is all
    7-bit is sent to a server without 8BITMIME byte for byte, without the
    parameter."""
    sink = sink_factory(eightbitmime=False, smtputf8=False)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message(body=b"only ascii = here\r\n")
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                    mail_options=["BODY=8BITMIME"])
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert "8BITMIME" not in t.mail_params.upper(), t.mail_params
    assert t.content.endswith(msg)


def test_real_postfix_without_8bitmime_stores_the_converted_message(mxspool, postfix_primary):
    """Protects the downgrade against a real server: a Postfix primary that
    does not offer 8BITMIME (smtpd_discard_ehlo_keywords) stores a 7-bit
    quoted-printable message that decodes to the original body."""
    import email
    import email.policy
    pf = postfix_primary(users=("alice",),
                         extra_main_cf={"smtpd_discard_ehlo_keywords": "8bitmime"})
    mx = mxspool([domain("example.com", pf.port)], retry="1s 1h")
    msg, mid = make_message(body=TRICKY_BODY)
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                    mail_options=["BODY=8BITMIME"])
    assert res.accepted, res
    (stored,) = pf.wait_for_messages("alice", 1, timeout=15)
    assert all(b < 128 for b in stored), "Postfix stored 8-bit octets"
    got = email.message_from_bytes(stored, policy=email.policy.compat32)
    assert got["Message-ID"] == mid
    assert got["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded_body(got) == TRICKY_BODY


def test_ascii_message_received_with_smtputf8_goes_to_a_server_without_it(mxspool,
                                                                          sink_factory):
    """Protects RFC 6531 3.4 read as it is written: only UTF-8 addresses and
    headers need SMTPUTF8. A message received with SMTPUTF8 whose envelope
    and header are ASCII (its body UTF-8) is delivered, unchanged and
    without the parameter, to a server with 8BITMIME but no SMTPUTF8."""
    sink = sink_factory(smtputf8=False)
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    msg, _ = make_message(body="K\u00f6ln\r\n")
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=10)
    assert t.mail_params.upper().split() == ["BODY=8BITMIME"], t.mail_params
    assert t.content.endswith(msg)
