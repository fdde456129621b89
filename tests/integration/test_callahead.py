"""Recipient verification:
call-ahead to a real Postfix primary that knows some users, the persistent
cache, the user lists, on_tempfail, and the warnings about a primary whose
setup defeats a backup MX (scripted with the capture sink)."""

import re
import time

import pytest

from harness_mxspool import domain
from harness_util import RawSmtp, make_message, send_mail, wait_until

SENDER = "sender@sender.test"


class Client:
    """One SMTP session to mxspool up to RCPT (several RCPTs allowed)."""

    def __init__(self, mx, timeout=40):
        self.c = RawSmtp(mx.port, timeout=timeout)
        assert self.c.greeting().code == 220
        assert self.c.ehlo().code == 250
        assert self.c.cmd(f"MAIL FROM:<{SENDER}>").code == 250

    def rcpt(self, addr):
        return self.c.cmd(f"RCPT TO:<{addr}>")

    def close(self):
        try:
            self.c.cmd("QUIT")
        except (OSError, AssertionError):
            pass
        self.c.close()


def rcpt_once(mx, addr):
    c = Client(mx)
    try:
        return c.rcpt(addr)
    finally:
        c.close()


def callahead(port, **extra):
    return domain("example.com", port, "callahead", **extra)


# --- with a real Postfix primary -----------------------------------------------

def test_unknown_is_550_with_the_primarys_code_known_is_250(mxspool, primary):
    """Protects the core of call-ahead: Postfix's 550 5.1.1 for an unknown
    user becomes our 550 carrying its enhanced code and reason at RCPT;
    a user Postfix knows gets 250, and the mail is then delivered. The
    call-ahead counters show up in `queue stats --json`."""
    mx = mxspool([callahead(primary.port)], retry="1s 1h")
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550, r
    assert r.text.startswith("5.1.1"), r
    assert "ghost@example.com" in r.text and "User unknown" in r.text, r
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["alice@example.com"], msg)
    assert res.rcpt["alice@example.com"][0] == 250, res
    assert res.accepted, res
    (got,) = primary.wait_for_messages("alice", 1, timeout=15)
    assert mid.encode() in got
    ca = mx.queue_json("stats").get("callahead")
    assert isinstance(ca, dict), mx.queue_json("stats")
    assert ca.get("rejected", 0) >= 1 and ca.get("accepted", 0) >= 1, ca


def test_primary_stopped_accepts_and_queues_then_delivers(mxspool, primary):
    """Protects the reason a backup MX exists: with the primary down, a
    recipient we never heard of is accepted (250) and queued, never refused;
    once the primary is back the mail is delivered."""
    mx = mxspool([callahead(primary.port)], retry="1s 1h")
    primary.stop()
    msg, mid = make_message(sender=SENDER)
    res = send_mail(mx.port, SENDER, ["bob@example.com"], msg)
    assert res.rcpt["bob@example.com"][0] == 250, res
    assert res.accepted, res
    primary.start()
    (got,) = primary.wait_for_messages("bob", 1, timeout=20)
    assert mid.encode() in got


def test_cached_negative_survives_restart_and_primary_down(mxspool, primary):
    """Protects the persistent cache: the primary's 550 for an address is
    learned, the primary is stopped — still 550 (while a known user is
    accepted) — and after a daemon restart, with the primary still down,
    the address is still refused with the primary's code: a dictionary
    attack gains nothing by waiting for an outage or a reboot."""
    mx = mxspool([callahead(primary.port)])
    assert rcpt_once(mx, "ghost@example.com").code == 550
    assert rcpt_once(mx, "alice@example.com").code == 250
    primary.stop()
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550 and r.text.startswith("5.1.1"), r
    assert rcpt_once(mx, "alice@example.com").code == 250
    mx.restart()
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550 and r.text.startswith("5.1.1"), r
    assert rcpt_once(mx, "someone-else@example.com").code == 250, \
        "an address never asked about is accepted while the primary is down"


# --- scripted primaries (the capture sink) ---------------------------------------

def test_second_rcpt_for_the_same_unknown_address_does_not_reach_the_primary(mxspool, sink):
    """Protects the dictionary-attack cost: one probe per address. The same
    unknown address in three sessions is refused each time, but the
    primary sees its RCPT once."""
    sink.default_rcpt_reply = "550 5.1.1 no such user"
    mx = mxspool([callahead(sink.port)])
    for _ in range(3):
        r = rcpt_once(mx, "ghost@example.com")
        assert r.code == 550 and r.text.startswith("5.1.1"), r
    assert sink.rcpt_attempts("ghost@example.com") == 1, sink.describe()
    assert mx.queue_json("stats")["callahead"].get("cache_negative", 0) >= 2


def test_verify_users_accepts_only_the_list_and_never_probes(mxspool, sink):
    """Protects verify 'users': only listed users (a local part or a full
    address) are accepted, others get 550, and the primary is never asked."""
    mx = mxspool([domain("example.com", sink.port, "users",
                         user=["alice", "carol@example.com"])])
    c = Client(mx)
    try:
        assert c.rcpt("alice@example.com").code == 250
        assert c.rcpt("carol@example.com").code == 250
        r = c.rcpt("bob@example.com")
        assert r.code == 550, r
    finally:
        c.close()
    assert sink.sessions == [], "verify 'users' must not call ahead"


def test_listed_user_is_accepted_without_asking_under_callahead(mxspool, sink):
    """Protects: with verify 'callahead', a user on the `user` list is
    accepted without a probe (even though this primary would refuse it),
    while an unlisted one is asked and refused."""
    sink.default_rcpt_reply = "550 5.1.1 no such user"
    mx = mxspool([callahead(sink.port, user=["alice"])])
    c = Client(mx)
    try:
        assert c.rcpt("alice@example.com").code == 250
        assert c.rcpt("bob@example.com").code == 550
    finally:
        c.close()
    assert sink.rcpt_attempts("alice@example.com") == 0
    assert sink.rcpt_attempts("bob@example.com") == 1


@pytest.mark.parametrize("on_tempfail,code", [("defer", 450), ("accept", 250)])
def test_on_tempfail(mxspool, sink, on_tempfail, code):
    """Protects on_tempfail: when the primary answers the probe with 4xx,
    'defer' answers 450 at our RCPT and 'accept' accepts (250)."""
    sink.default_rcpt_reply = "451 4.3.0 try again later"
    mx = mxspool([callahead(sink.port, on_tempfail=on_tempfail)])
    r = rcpt_once(mx, "alice@example.com")
    assert r.code == code, r
    assert sink.rcpt_attempts("alice@example.com") == 1


@pytest.mark.parametrize("on_tempfail,code", [("defer", 450), ("accept", 250)])
def test_mail_4xx_at_the_probe_is_a_tempfail(mxspool, sink_factory, on_tempfail, code):
    """Protects call-ahead from reading a MAIL 4xx as an answer about the
    address: the primary answers the probe's MAIL with 452 (full disk) and
    its pipelined RCPT, as Postfix does, with 503. That is a tempfail
    (on_tempfail decides), never a refusal, nothing is cached (the next
    session asks again), and it is not taken for a primary that refuses
    MAIL FROM:<>."""
    sink = sink_factory(mail_reply="452 4.3.1 Insufficient system storage",
                        mail_reply_times=None)
    mx = mxspool([callahead(sink.port, on_tempfail=on_tempfail)])
    for attempt in (1, 2):
        r = rcpt_once(mx, "alice@example.com")
        assert r.code == code, r
        assert sink.mail_refused == attempt, sink.describe()
    if code == 450:
        assert "Insufficient system storage" in r.text, r
    assert sink.rcpt_attempts("alice@example.com") == 2, "pipelined: the RCPT got its 503"
    mx.stop()
    assert "null_sender_refused" not in mx.log(), mx.log()


def test_probe_time_budget(mxspool, sink):
    """Protects the sender from a hung primary: the primary never answers
    RCPT; our RCPT is still answered within callahead_timeout (3s) plus
    slack, and the address is accepted (unreachable means accept)."""
    sink.rcpt_delay = float("inf")
    mx = mxspool([callahead(sink.port)], callahead_timeout="3s")
    c = Client(mx)
    try:
        t0 = time.monotonic()
        r = c.rcpt("alice@example.com")
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    assert r.code == 250, r
    assert sink.rcpt_attempts("alice@example.com") == 1, "the primary was asked"
    assert 2.5 <= elapsed <= 6, f"RCPT answered after {elapsed:.1f}s (budget 3s)"


def warning(mx, kind, timeout=10):
    return mx.wait_log(rf"event=primary_warning[^\n]*kind={kind}\b[^\n]*", timeout=timeout).group(0)


def test_tarpitting_primary_is_warned_about(mxspool, sink_factory):
    """Protects the tarpit warning: a primary whose greeting takes 5s (more
    than 4s, less than callahead_timeout 15s) still answers the probe (250
    at our RCPT) and a warning event=primary_warning kind=tarpit is logged,
    and counted in the stats."""
    s = sink_factory(greeting_delay=5.0)
    s.default_rcpt_reply = "550 5.1.1 no such user"
    s.rcpt_replies["alice@example.com"] = "250 2.1.5 Ok"
    mx = mxspool([callahead(s.port)], callahead_timeout="15s")
    assert rcpt_once(mx, "alice@example.com").code == 250
    assert s.rcpt_attempts("alice@example.com") == 1
    line = warning(mx, "tarpit")
    assert "domain=example.com" in line
    assert mx.queue_json("stats")["callahead"].get("tarpit", 0) >= 1


def test_soft_rejecting_primary_is_warned_about(mxspool, sink):
    """Protects the soft-reject warning: a primary that answers 450 for
    users it does not have (found with a random local part) defeats
    call-ahead; event=primary_warning kind=soft_reject is logged."""
    sink.default_rcpt_reply = "450 4.1.1 unknown user, try later"
    sink.rcpt_replies["alice@example.com"] = "250 2.1.5 Ok"
    mx = mxspool([callahead(sink.port)])
    assert rcpt_once(mx, "alice@example.com").code == 250
    warning(mx, "soft_reject")
    random = [c for s in sink.sessions for c in s.commands
              if c.upper().startswith("RCPT TO:") and "alice@" not in c.lower()]
    assert random, f"the random-address probe must have reached the primary: {sink.describe()}"


def test_accept_all_primary_is_warned_about(mxspool, sink):
    """Protects the accept-all warning: a primary that accepts any address
    (the random local part gets 2xx) makes call-ahead useless;
    event=primary_warning kind=accept_all is logged."""
    mx = mxspool([callahead(sink.port)])
    assert rcpt_once(mx, "alice@example.com").code == 250
    warning(mx, "accept_all")


def test_good_primary_gets_no_warning(mxspool, sink):
    """Protects against false alarms: a prompt primary that refuses unknown
    users with 550 gets no primary_warning at all."""
    sink.default_rcpt_reply = "550 5.1.1 no such user"
    sink.rcpt_replies["alice@example.com"] = "250 2.1.5 Ok"
    mx = mxspool([callahead(sink.port)])
    assert rcpt_once(mx, "alice@example.com").code == 250
    # The random-address probe runs on the probe connection before our 250
    # (so its verdict is in the log by now): it reached the primary, and
    # there is nothing to warn about.
    rcpts = [c for s in sink.sessions for c in s.commands if c.upper().startswith("RCPT TO:")]
    assert len(rcpts) >= 2, sink.describe()
    mx.stop()
    assert not re.search(r"event=primary_warning", mx.log()), mx.log()


def test_callahead_through_the_mx_records(mxspool, postfix_primary, nsd):
    """Protects "same resolution as delivery": with deliver_to 'mx', the
    probe goes to the MX host ranked above us (a real Postfix on
    127.0.0.2, found through a real NSD): its unknown user is refused with
    550 5.1.1, its known user accepted."""
    pf = postfix_primary(users=("alice",), host="127.0.0.2")
    nsd.zone("example.com", ["@ MX 10 mail", "@ MX 20 mx2.test.", "@ MX 30 mail",
                             "mail A 127.0.0.2"])
    nsd.zone("test", ["mx2 A 127.0.0.1"])
    nsd.start()
    mx = mxspool([domain("example.com", "mx", "callahead", port=str(pf.port))],
                 resolver=nsd.resolver)
    c = Client(mx)
    try:
        r = c.rcpt("ghost@example.com")
        assert r.code == 550 and r.text.startswith("5.1.1"), r
        assert c.rcpt("alice@example.com").code == 250
    finally:
        c.close()
    wait_until(lambda: "<ghost@example.com>" in pf.log(), 10,
               what="Postfix to log the probe for ghost")


# --- what the cache remembers: only "no such address" ------------------------

@pytest.mark.parametrize("answer", [
    "554 5.7.1 <mx2.test[127.0.0.1]>: Client host rejected: Access denied",
    "550 5.7.1 <ghost@example.com>: Relay access denied",
    "554 Client host rejected",
])
def test_policy_refusal_is_passed_on_warned_and_not_cached(mxspool, sink, answer):
    """Protects the backup MX from a primary that refuses the backup itself
    (e.g. a policy refusal of its address): the RCPT gets 550 with the
    primary's reason (the sender learns), a warning naming the likely
    misconfiguration is logged once, and nothing is cached: once the
    primary is gone, the same address is accepted and queued, never
    refused from the cache."""
    sink.default_rcpt_reply = answer
    mx = mxspool([callahead(sink.port)])
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550, r
    reason = answer.split(" ", 2)[-1] if answer[4:5].isdigit() else answer[4:]
    assert reason in r.text, (r, answer)
    assert not r.text.startswith("5.1."), f"not a mailbox refusal: {r}"
    assert sink.rcpt_attempts("ghost@example.com") == 1
    sink.close()
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 250, f"refused from the cache while the primary is down: {r}"
    assert mx.queue_json("stats")["callahead"].get("cache_negative", 0) == 0, mx.queue_json("stats")
    line = mx.wait_log(r"event=callahead_policy_refusal[^\n]*").group(0)
    assert "to=<ghost@example.com>" in line and f'reply="{answer}"' in line, line
    assert "hint=" in line, line
    assert len(re.findall(r"event=callahead_policy_refusal", mx.log())) == 1, mx.log()


@pytest.mark.parametrize("answer", ["550 5.1.1 <ghost@example.com>: User unknown",
                                    "550 User unknown"])
def test_no_such_address_is_still_cached(mxspool, sink, answer):
    """Counter-test: the primary's "no such mailbox" (5.1.x, or a bare 550
    from a server without enhanced codes) is remembered: with the primary
    gone, the address is still refused, from the cache."""
    sink.default_rcpt_reply = answer
    mx = mxspool([callahead(sink.port)])
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550 and r.text.startswith("5.1.1"), r
    sink.close()
    r = rcpt_once(mx, "ghost@example.com")
    assert r.code == 550 and r.text.startswith("5.1.1") and "User unknown" in r.text, r
    assert mx.queue_json("stats")["callahead"].get("cache_negative", 0) >= 1, mx.queue_json("stats")
    assert "event=callahead_policy_refusal" not in mx.log()


def test_refused_null_sender_is_warned_accepted_and_not_cached(mxspool, sink):
    """Protects against a primary that refuses MAIL FROM:<> (a common
    misconfiguration): the probe says nothing about the address, so the
    RCPT is accepted (the mail is delivered later with its real sender),
    the refusal is logged as a policy refusal naming the null sender, and
    nothing is cached."""
    sink.mail_reply = "550 5.7.1 <>: Sender address rejected: null sender not allowed"
    sink.default_rcpt_reply = "550 5.1.1 no such user"
    mx = mxspool([callahead(sink.port)])
    assert rcpt_once(mx, "ghost@example.com").code == 250
    line = mx.wait_log(r"event=callahead_policy_refusal[^\n]*").group(0)
    assert "stage=mail" in line and "to=<ghost@example.com>" in line, line
    assert "MAIL FROM:<>" in line, line
    sink.mail_reply = "250 2.1.0 Ok"
    sink.close()
    assert rcpt_once(mx, "ghost@example.com").code == 250
