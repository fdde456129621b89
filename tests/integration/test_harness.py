"""Self-tests of the harness itself (no mxspool needed): they prove the
Postfix primary fixture and the capture sink behave as the daemon tests
assume, so a failing daemon test points at the daemon, not the harness."""

import smtplib
import socket

import pytest

from harness_mxspool import domain, render_uci
from harness_util import RawSmtp, bare_newlines, make_message, port_accepts


def test_postfix_delivers_known_user_to_maildir_and_rejects_unknown(primary):
    """Protects: the primary accepts its users over SMTP from 127.0.0.1,
    delivers them into Maildirs we can read byte-exactly, and refuses an
    unknown user at RCPT with 550 5.1.1 (what the DSN tests rely on)."""
    msg, mid = make_message(body=b"line one\r\n.starts with dot\r\n")
    with smtplib.SMTP("127.0.0.1", primary.port, timeout=10) as s:
        code, caps = s.ehlo("client.test")
        assert code == 250 and b"SMTPUTF8" in caps
        refused = s.sendmail("a@b.test", ["alice@example.com"], msg)
        assert refused == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as ei:
            s.sendmail("a@b.test", ["nobody@example.com"], msg)
        code, text = ei.value.recipients["nobody@example.com"]
        assert code == 550 and text.startswith(b"5.1.1")
        # not our domain: the primary is no open relay either
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@b.test", ["x@elsewhere.test"], msg)
    got = primary.wait_for_messages("alice", 1, timeout=20)
    assert len(got) == 1
    stored = got[0]
    assert stored.endswith(msg.replace(b"\r\n", b"\n")), stored
    assert b"Delivered-To: alice@example.com\n" in stored
    assert primary.messages("bob") == []


def test_postfix_stop_and_start_on_the_same_port(primary):
    """Protects: `stop()` really makes the primary unreachable (connection
    refused) and `start()` brings it back on the SAME port, delivering."""
    port = primary.port
    primary.stop()
    assert not primary.running
    assert not port_accepts(port)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=3)
    primary.start()
    assert primary.port == port and port_accepts(port)
    msg, _ = make_message()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("a@b.test", ["bob@example.com"], msg)
    primary.wait_for_messages("bob", 1, timeout=20)


def test_two_postfix_instances_run_side_by_side(postfix_primary):
    """Protects: several private instances (distinct dirs, ports, domains)
    can run at once without interfering."""
    a = postfix_primary(domains=("one.test",), users=("u",))
    b = postfix_primary(domains=("two.test",), users=("u",))
    assert a.port != b.port
    for pf, rcpt in ((a, "u@one.test"), (b, "u@two.test")):
        msg, _ = make_message(to=rcpt)
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as s:
            s.sendmail("a@b.test", [rcpt], msg)
    assert len(a.wait_for_messages("u", 1)) == 1
    assert len(b.wait_for_messages("u", 1)) == 1
    # the other instance's domain is not accepted
    with smtplib.SMTP("127.0.0.1", a.port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@b.test", ["u@two.test"], b"Subject: x\r\n\r\nx\r\n")


def test_sink_records_bytes_commands_and_scripted_replies(sink_factory):
    """Protects: the sink answers per recipient as scripted, records raw
    bytes, the stuffed wire form and the un-stuffed content of DATA."""
    sink = sink_factory(size=1000000)
    sink.rcpt_replies["bad@example.com"] = "550 5.1.1 no such user"
    sink.rcpt_replies["later@example.com"] = "451 4.3.0 try later"
    body = b"x\r\n.\r\n..x\r\n.x\r\n"
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as s:
        code, caps = s.ehlo("me.test")
        assert b"PIPELINING" in caps and b"SIZE 1000000" in caps
        refused = s.sendmail("from@x.test",
                             ["ok@example.com", "bad@example.com", "later@example.com"],
                             b"Subject: s\r\n\r\n" + body)
    assert refused == {"bad@example.com": (550, b"5.1.1 no such user"),
                       "later@example.com": (451, b"4.3.0 try later")}
    (t,) = sink.wait_for_messages(1)
    assert t.mail_from == "from@x.test"
    assert t.rcpts == ["ok@example.com"]
    assert t.content == b"Subject: s\r\n\r\n" + body
    # smtplib stuffs every leading dot once more
    assert t.data_wire == b"Subject: s\r\n\r\nx\r\n..\r\n...x\r\n..x\r\n"
    assert sink.rcpt_attempts("later@example.com") == 1
    assert sink.sessions[0].commands[0] == "ehlo me.test"
    assert sink.bare_newlines() == []
    assert b"\r\n.\r\n" in sink.all_raw()


def test_sink_refuses_mail_as_scripted_then_accepts(sink_factory):
    """Protects the sink's MAIL refusal: MAIL_REPLY answers the first
    MAIL_REPLY_TIMES MAILs; behind it RCPT and DATA get Postfix's 503s;
    then MAIL is accepted again."""
    sink = sink_factory(mail_reply=b"452 4.3.1 Insufficient system storage", mail_reply_times=1)
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as s:
        s.ehlo("me.test")
        assert s.mail("a@x.test") == (452, b"4.3.1 Insufficient system storage")
        assert s.rcpt("b@example.com") == (503, b"5.5.1 Error: need MAIL command")
        assert s.docmd("DATA") == (503, b"5.5.1 Error: need RCPT command")
        assert s.rset()[0] == 250
        assert s.mail("a@x.test")[0] == 250
        assert s.rcpt("b@example.com")[0] == 250
    assert sink.mail_refused == 1
    assert sink.transactions[0].rcpts == ["b@example.com"]


def test_sink_detects_pipelining_and_bare_newlines(sink):
    """Protects: the sink notices a pipelined batch and bare LF bytes (the
    wire-correctness checks of the daemon's client side depend on it)."""
    with RawSmtp(sink.port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert sink.sessions[0].pipelined is False
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n")
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: z\r\n\r\nbare\nlf\r\n.\r\n")
        assert c.reply().code == 250
        assert c.cmd("QUIT").code == 221
    sink.wait_for_messages(1)
    assert sink.sessions[0].pipelined is True
    (idx, offsets), = sink.bare_newlines()
    assert len(offsets) == 1
    assert bare_newlines(b"a\r\nb\nc\rd\r\n") == [4, 6]


def test_sink_can_hide_extensions(sink_factory):
    """Protects: the sink can play an old server without PIPELINING/8BITMIME/
    SMTPUTF8 and with a SIZE limit."""
    sink = sink_factory(pipelining=False, eightbitmime=False, smtputf8=False, size=5000)
    with RawSmtp(sink.port) as c:
        c.greeting()
        r = c.ehlo()
        assert r.lines == ["sink.test", "SIZE 5000", "ENHANCEDSTATUSCODES"]


def test_uci_rendering():
    """Protects: the config writer produces the contract's UCI syntax."""
    text = render_uci({"hostname": "mx2.test", "listen": ["127.0.0.1:2525"],
                       "retry": ["1s 4s"], "skip": None},
                      [domain("example.com", 2526)])
    assert text == (
        "config mxspool 'main'\n"
        "\toption hostname 'mx2.test'\n"
        "\tlist listen '127.0.0.1:2525'\n"
        "\tlist retry '1s 4s'\n"
        "\n"
        "config domain 'd0'\n"
        "\toption name 'example.com'\n"
        "\toption deliver_to '127.0.0.1:2526'\n"
        "\toption verify 'none'\n")


def test_nothing_of_ours_listens_on_port_25():
    """Protects the brief: the Debian postfix package's system instance must
    not be running; tests never depend on port 25."""
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", 25)) != 0
