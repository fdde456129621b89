"""Real primaries (harness_primaries.py): mxspool delivers to servers that
behave as real ones do, not only to the capture sink and the plain private
Postfix.

- Exim 4 and OpenSMTPD, each down while mail arrives (the backup MX's job)
  and up later: the mail reaches both recipients' mailboxes on a retry;
  mail that arrives while they are up goes at once.
- Postfix with postgrey greylisting: the first attempt is answered `450
  4.2.0 ... Greylisted` at RCPT for each recipient; mxspool defers (never
  bounces) and delivers on a later retry.
- Postfix with a full disk (queue_minfree above the free space): `452 4.3.1
  Insufficient system storage` at MAIL FROM; mxspool keeps the mail, for a
  null sender too, with no DSN, and delivers it once the primary has room.

End state each time: every recipient delivered exactly once (counted by
Message-ID in the server's mailbox files), no `event=bounce` and no
`event=drop`. Waiting reads the servers' mailboxes and mxspool's log only,
never `mxspool queue` (it wakes the daemon and could hide a retry timer that
does not fire).
"""

import os
import re
import time

import pytest

import harness_primaries as hp
from harness_mxspool import domain
from harness_util import make_message, send_mail, wait_until

pytestmark = pytest.mark.skipif(bool(os.environ.get("MXSPOOL_RUNNER")),
                                reason="real-peer tests run natively only")

RCPTS = ("alice@example.com", "bob@example.com")
USERS = ("alice", "bob")
# Retry every 2 s for an hour: the real peers' refusals last seconds here.
RETRY = "2s 1h"
# Lines a relay can get wrong on the way: dot-stuffing, 8-bit, a long line.
BODY = (b"Hello.\r\n.\r\n..two dots\r\n.leading dot\r\n"
        b"caf\xc3\xa9 \xe2\x82\xac\r\n" + b"z" * 900 + b"\r\nlast line\r\n")


# --- checks -----------------------------------------------------------------

def delivered(server, user, mid):
    """The delivered files of USER at SERVER that carry Message-ID MID."""
    rx = re.compile(rb"(?im)^message-id:[ \t]*" + re.escape(mid.encode()) + rb"[ \t]*\r?$")
    return [m for m in server.messages(user) if rx.search(m.split(b"\n\n", 1)[0] + b"\n")]


def copies(server, user, mid):
    return len(delivered(server, user, mid))


def delivery_lines(mx, qid, rcpt, status):
    return re.findall(rf"id={re.escape(qid)} event=delivery to=<{re.escape(rcpt)}> .*"
                      rf"status={status}\b.*", mx.log())


def wait_deferred(mx, qid, text, attempts=1, timeout=30, rcpts=RCPTS):
    """Wait until mxspool logged ATTEMPTS deferrals of QID for each of
    RCPTS, each reply containing TEXT; return those log lines."""
    def done():
        lines = {r: [ln for ln in delivery_lines(mx, qid, r, "deferred") if text in ln]
                 for r in rcpts}
        return lines if all(len(v) >= attempts for v in lines.values()) else None
    return wait_until(done, timeout, interval=0.2,
                      what=f"{attempts} deferral(s) of {qid} for each of {list(rcpts)} with "
                           f"{text!r} in mxspool's log")


def wait_delivered(mx, server, sent, timeout=40):
    """Wait until mxspool is done with the message SENT (event=removed) and
    both users have it at SERVER; then, after the server's own delivery had
    a moment to finish, check each has it exactly once, unchanged below the
    headers the server prepends, and that mxspool sent it once per
    recipient."""
    qid, mid, msg = sent
    wait_until(lambda: re.search(rf"id={re.escape(qid)} event=removed\b", mx.log())
               and all(copies(server, u, mid) >= 1 for u in USERS), timeout, interval=0.2,
               what=f"{qid} ({mid}) removed by mxspool and in {USERS}'s mailboxes at "
                    f"{server.name} (have {[copies(server, u, mid) for u in USERS]})")
    time.sleep(1)
    got = {u: copies(server, u, mid) for u in USERS}
    assert got == {u: 1 for u in USERS}, f"each recipient must get {mid} exactly once: {got}"
    # The servers store LF line ends and prepend their trace headers.
    original = msg.replace(b"\r\n", b"\n")
    for u in USERS:
        (copy,) = delivered(server, u, mid)
        assert copy.replace(b"\r\n", b"\n").endswith(original), \
            f"{mid} reached {u} at {server.name} altered:\n{copy!r}\nwant the end:\n{original!r}"
    for r in RCPTS:
        sent = delivery_lines(mx, qid, r, "sent")
        assert len(sent) == 1, f"{qid} to {r}: want one status=sent line, got {sent}"


def assert_nothing_returned(mx):
    """These scenarios return nothing: no DSN, no dropped mail."""
    bad = [ln for ln in mx.log().splitlines() if re.search(r"event=(bounce|drop)\b", ln)
           or "status=bounced" in ln]
    assert not bad, "mail was returned or dropped:\n" + "\n".join(bad)


def send(mx, sender="sender@sender.test", subject=None):
    """One message to both recipients; returns (queue id, Message-ID, bytes)."""
    msg, mid = make_message(sender=sender or "mailer-daemon@sender.test",
                            to=", ".join(RCPTS), subject=subject, body=BODY)
    res = send_mail(mx.port, sender, list(RCPTS), msg)
    assert res.accepted and res.queue_id, res
    assert all(code == 250 for code, _ in res.rcpt.values()), res
    return res.queue_id, mid, msg


# --- Exim and OpenSMTPD: down while mail arrives, then up --------------------

def _down_then_up(mxspool, server):
    mx = mxspool([domain("example.com", server.port)], retry=RETRY)
    # The primary is down: mxspool accepts and keeps the mail.
    first = send(mx, subject="while the primary is down")
    wait_deferred(mx, first[0], "Connection refused", attempts=1)
    assert not any(server.messages(u) for u in USERS)

    server.start()
    wait_delivered(mx, server, first, timeout=40)
    # Up: the next message goes at once.
    t0 = time.monotonic()
    second = send(mx, subject="while the primary is up")
    wait_delivered(mx, server, second, timeout=20)
    print(f"\n[{server.name}] spooled mail delivered after start; "
          f"direct delivery took {time.monotonic() - t0:.1f}s")
    assert_nothing_returned(mx)
    return mx


def test_exim_primary_down_then_up(mxspool, exim):
    """Protects: mail for an Exim primary that is down is kept and reaches
    both recipients exactly once when Exim is back; Exim's own log shows one
    arrival per message."""
    server = exim(start=False, users=USERS)
    _down_then_up(mxspool, server)
    log = server.log()
    arrivals = re.findall(r"^\S+ \S+ (\S+) <= \S+ .*", log, re.M)
    assert len(arrivals) == 2, f"Exim should have received exactly 2 messages:\n{log}"
    assert len(re.findall(r" => (alice|bob) <", log)) == 4, log


def test_opensmtpd_primary_down_then_up(mxspool, opensmtpd):
    """Protects: the same with an OpenSMTPD primary: kept while it is down,
    delivered exactly once per recipient after."""
    server = opensmtpd(start=False, users=USERS)
    _down_then_up(mxspool, server)
    log = server.log()
    assert len(re.findall(r"smtp message msgid=\S+ .*nrcpt=2\b", log)) == 2, log
    assert len(re.findall(r"mda delivery .*result=Ok", log)) == 4, log


# --- Postfix with greylisting (postgrey) --------------------------------------

@pytest.mark.parametrize("whitelisted", [(), ("alice@example.com",)],
                         ids=["both-greylisted", "one-whitelisted"])
def test_postfix_greylisting_defers_then_delivers(mxspool, postfix_primary, postgrey, whitelisted):
    """Protects: a greylisting primary's `450 4.2.0 Greylisted` at RCPT is a
    deferral, never a bounce; a later retry, after the greylisting delay,
    delivers each recipient exactly once. With one recipient whitelisted (as
    postgrey's list has postmaster@), the first attempt delivers that one and
    defers the other: the retry must not deliver the first one again."""
    pg = postgrey(delay=5, whitelist_recipients=whitelisted)
    pf = postfix_primary(users=USERS, extra_main_cf={
        "smtpd_recipient_restrictions": pg.restriction})
    mx = mxspool([domain("example.com", pf.port)], retry=RETRY)
    greylisted = [r for r in RCPTS if r not in whitelisted]
    t0 = time.monotonic()
    sent = send(mx)
    qid = sent[0]
    lines = wait_deferred(mx, qid, "Greylisted", attempts=1, timeout=20, rcpts=greylisted)
    for ls in lines.values():
        assert "450 4.2.0" in ls[0], ls[0]
    for r in greylisted:
        assert re.search(rf"reject: RCPT from \S+: 450 4\.2\.0 <{re.escape(r)}>: Recipient "
                         r"address rejected: Greylisted", pf.log()), pf.log()
    for r in whitelisted:
        # Delivered on the first attempt, alone.
        wait_until(lambda: copies(pf, r, sent[1]) == 1, 20,
                   what=f"{r} (whitelisted) to get the message on the first attempt")
        assert not delivery_lines(mx, qid, r, "deferred")
    wait_delivered(mx, pf, sent, timeout=40)
    took = time.monotonic() - t0
    deferred = {r: len(delivery_lines(mx, qid, r, "deferred")) for r in RCPTS}
    print(f"\n[greylisting {whitelisted or 'none whitelisted'}] delivered after {took:.1f}s, "
          f"deferrals per recipient {deferred}")
    assert took >= pg.delay, "delivered before the greylisting delay passed?"
    assert all(deferred[r] >= 1 for r in greylisted), deferred
    assert_nothing_returned(mx)


# --- Postfix with a full disk -------------------------------------------------

def test_postfix_full_disk_452_keeps_mail_until_room(mxspool, postfix_primary):
    """Protects: a primary without room (`452 4.3.1 Insufficient system
    storage` at MAIL FROM, Postfix's queue_minfree) costs nothing: every
    recipient is deferred, also for a null sender (no DSN, no drop), over
    several attempts; once the primary has room, all is delivered exactly
    once."""
    pf = postfix_primary(users=USERS, start=False)
    # Far above the free space of the queue's filesystem: Postfix refuses
    # every MAIL FROM.
    st = os.statvfs(pf.queue_dir)
    hp.postfix_reconfigure(pf, queue_minfree=max(st.f_bavail * st.f_frsize * 1000, 1 << 50))
    pf.start()
    mx = mxspool([domain("example.com", pf.port)], retry=RETRY)
    first = send(mx)
    null_sender = send(mx, sender="")
    for qid, _, _ in (first, null_sender):
        lines = wait_deferred(mx, qid, "4.3.1", attempts=2, timeout=30)
        for ls in lines.values():
            assert "452" in ls[0] and "Insufficient system storage" in ls[0], ls[0]
    assert "452 4.3.1 Insufficient system storage" in pf.log(), pf.log()
    assert not any(pf.messages(u) for u in USERS)
    assert_nothing_returned(mx)

    # The primary gets room again.
    hp.postfix_reconfigure(pf, queue_minfree=0)
    wait_delivered(mx, pf, first, timeout=40)
    wait_delivered(mx, pf, null_sender, timeout=40)
    assert_nothing_returned(mx)
