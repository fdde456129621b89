"""Timers: every behaviour that only a timer can start happens with nothing
else touching the daemon while the test waits: no `queue` command, no new
connection, no signal. The waits read the daemon's log file and the peers'
own state, which never wake the daemon.

Why: the MIPS router build slept in epoll with no timeout while
a retry was due (rustix left polling's timerfd unarmed); the suite did not
see it because its waits polled `queue list`, and every poll woke the
daemon, which then noticed the overdue retry. These tests fail on such a
build. Other timer tests live beside their features (the down mark and the
primary's return in test_delivery.py, the host check in test_dns.py) and
wait the same way."""

import time

from harness_mxspool import domain
from harness_util import (RawSmtp, SilentServer, deferrals_logged, free_port,
                          make_message, send_mail, wait_deferred_in_log)


def test_retries_keep_their_schedule_with_nothing_touching_the_daemon(mxspool, sink_factory):
    """Protects the retry timer: with the primary down, attempts keep
    coming on their own (retry every 1 s, held to the 5 s down mark), and
    when the primary is back the queued mail reaches it by the next retry,
    while the test only reads the log and the primary's mailbox."""
    port = free_port()
    mx = mxspool([domain("example.com", port)], retry="1s 1h")
    msg, _ = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    # The first attempt follows the 250; the next two only a timer can start.
    wait_deferred_in_log(mx, res.queue_id, attempts=3, timeout=45)
    sink = sink_factory(port=port)
    (t,) = sink.wait_for_messages(1, timeout=30)
    assert t.content.endswith(msg)


def test_idle_session_times_out(mxspool):
    """Protects the server's command timeout (RFC 5321 4.5.3.2.7): a client
    that says nothing after EHLO gets `421 4.4.2` and is disconnected once
    command_timeout (2 s here) has passed, so silent clients cannot pin
    connection slots."""
    mx = mxspool([domain("example.com", free_port())], command_timeout="2s")
    with RawSmtp(mx.port, timeout=30) as c:
        c.greeting()
        assert c.ehlo().code == 250
        t0 = time.monotonic()
        r = c.reply(timeout=30)
        assert r.code == 421 and r.text.startswith("4.4.2"), r
        assert c.closed_by_peer(timeout=10)
        assert time.monotonic() - t0 >= 1.5, "closed before the timeout"
    mx.wait_log(r"event=timeout client=\[127\.0\.0\.1\]")


def test_session_stalled_in_data_times_out_and_queues_nothing(mxspool):
    """Protects the DATA timeout: a client that stops in the middle of a
    message is disconnected after data_timeout (2 s here) and nothing of
    the half message is queued."""
    mx = mxspool([domain("example.com", free_port())], data_timeout="2s")
    with RawSmtp(mx.port, timeout=30) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@sender.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.com>").code == 250
        assert c.cmd("DATA").code == 354
        msg, _ = make_message()
        c.send(msg[: len(msg) // 2])
        r = c.reply(timeout=30)
        assert r.code == 421, r
        assert c.closed_by_peer(timeout=10)
    mx.wait_log(r"event=timeout client=\[127\.0\.0\.1\]")
    assert "event=accept" not in mx.log()


def test_destination_that_never_greets_is_given_up_on_and_retried(mxspool):
    """Protects the client's greeting timeout (RFC 5321 4.5.3.2.1): a
    primary that accepts the connection and then hangs costs one attempt of
    greeting_timeout (2 s here), after which the mail is deferred and
    retried on its own, connection after connection."""
    silent = SilentServer()
    try:
        mx = mxspool([domain("example.com", silent.port)], retry="1s 1h",
                     greeting_timeout="2s")
        msg, _ = make_message()
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
        assert res.accepted, res
        wait_deferred_in_log(mx, res.queue_id, attempts=2, timeout=45)
        assert len(silent.conns) >= 2, silent.conns
        assert deferrals_logged(mx, res.queue_id) >= 2
    finally:
        silent.close()


def test_callahead_budget_ends_while_the_primary_hangs(mxspool):
    """Protects the call-ahead budget: while the primary accepts the probe's
    connection and never answers, RCPT is still answered once
    callahead_timeout (2 s here) has passed, with acceptance (unreachable
    means queue it), and the client's own connection is the only one."""
    silent = SilentServer()
    try:
        mx = mxspool([domain("example.com", silent.port, verify="callahead")],
                     callahead_timeout="2s", retry="1h 1d")
        with RawSmtp(mx.port, timeout=60) as c:
            c.greeting()
            c.ehlo()
            assert c.cmd("MAIL FROM:<s@sender.test>").code == 250
            t0 = time.monotonic()
            r = c.cmd("RCPT TO:<alice@example.com>")
            assert r.code == 250, r
            assert time.monotonic() - t0 >= 1.5, "answered before the probe's budget ended"
        assert silent.conns, "the probe never connected"
    finally:
        silent.close()


class TrickleServer(SilentServer):
    """Answers like an SMTP server, except the reply after the body, which
    it sends one byte every TRICKLE seconds: every read meets its timeout,
    the transaction never ends (a slow-drip peer)."""

    def __init__(self, trickle=2.0):
        self.trickle = trickle
        super().__init__()

    def serve(self, c):
        try:
            f = c.makefile("rb")
            c.sendall(b"220 trickle.test ESMTP\r\n")
            in_data = False
            for line in f:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        for b in b"250 2.0.0 queued\r\n":
                            if self._stop:
                                return
                            time.sleep(self.trickle)
                            c.sendall(bytes([b]))
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    c.sendall(b"250 trickle.test\r\n")
                elif verb == b"DATA":
                    in_data = True
                    c.sendall(b"354 go on\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            c.close()


def test_a_destination_that_trickles_is_given_up_on_at_the_transaction_deadline(mxspool):
    """Protects the whole-transaction deadline: a destination that answers
    the end of the body one byte every 2 s meets every per-read timeout
    (5 min and 10 min by RFC 5321) but not transaction_timeout (3 s here):
    the attempt ends, the mail is deferred (never delivered twice, never
    returned), and the worker is free again."""
    slow = TrickleServer(trickle=2.0)
    try:
        mx = mxspool([domain("example.com", slow.port)], retry="1h 1d",
                     transaction_timeout="3s")
        msg, _ = make_message()
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
        assert res.accepted, res
        wait_deferred_in_log(mx, res.queue_id, 1, timeout=30)
        assert "took longer than 3s" in mx.log(), mx.log()[-2000:]
        assert "event=bounce" not in mx.log()
    finally:
        slow.close()
