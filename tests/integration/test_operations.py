"""Operations: the control socket and
every `mxspool queue` command with and without --json, reload on SIGHUP
without losing mail, graceful stop on SIGTERM, and the privilege drop."""

import os
import pwd
import re
import signal
import stat
import threading
import time

import pytest

from harness_mxspool import domain
from harness_util import (RawSmtp, free_port, make_message, port_accepts, send_mail,
                          wait_attempted, wait_until)

LIST_KEYS = {"id", "sender", "recipients", "size", "destination", "attempts",
             "next_attempt", "last_error"}
STATS_KEYS = {"accepted", "rejected", "delivered", "deferred", "bounced", "queued",
              "oldest_age", "spool_bytes", "guard_refusals"}


def submit(mx, rcpt, sender="sender@sender.test", subject=None):
    msg, mid = make_message(to=rcpt, sender=sender, subject=subject)
    res = send_mail(mx.port, sender, [rcpt], msg)
    assert res.accepted and res.queue_id, res
    return res.queue_id, mid


def ids(mx):
    return {e["id"] for e in mx.queue_json("list")}


@pytest.fixture
def down_port():
    """A port where nothing listens (yet): the primary is down."""
    return free_port()


# --- queue list / show / stats ------------------------------------------

def test_queue_list_show_stats_text_and_json(mxspool, sink_factory, down_port):
    """Protects the owner's view of the queue: list (text and JSON with the
    contract's keys and types), show (envelope, headers, attempts), stats
    (text and JSON with every contract key, counters that match what
    happened); the control socket is mode 0600."""
    dsn = sink_factory(hostname="dsn.test")
    mx = mxspool([domain("example.com", down_port), domain("example.org", down_port)],
                 retry="1h 1d", smarthost=dsn.port)
    assert stat.S_IMODE(os.stat(mx.control_socket).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(mx.control_socket).st_mode)
    t0 = time.time()
    a, mid_a = submit(mx, "alice@example.com", subject="first of three")
    b, _ = submit(mx, "bob@example.com", sender="other@sender.test")
    c, _ = submit(mx, "carol@example.org")
    # one relay attempt: counted as rejected (by reason)
    with RawSmtp(mx.port) as raw:
        raw.greeting()
        raw.ehlo()
        assert raw.cmd("MAIL FROM:<x@sender.test>").code == 250
        assert raw.cmd("RCPT TO:<victim@elsewhere.test>").code == 550
    for qid in (a, b, c):
        wait_attempted(mx, qid, 1, timeout=15)

    entries = mx.queue_json("list")
    assert isinstance(entries, list) and len(entries) == 3, entries
    by_id = {e["id"]: e for e in entries}
    assert set(by_id) == {a, b, c}
    for e in entries:
        assert LIST_KEYS <= set(e), f"missing keys {LIST_KEYS - set(e)} in {e}"
        assert isinstance(e["recipients"], list) and len(e["recipients"]) == 1
        assert isinstance(e["size"], int) and e["size"] > 100
        assert isinstance(e["attempts"], int) and e["attempts"] >= 1
        assert isinstance(e["next_attempt"], int)
        # retry '1h 1d': the next attempt is about an hour away (unix seconds)
        assert t0 + 3000 < e["next_attempt"] < time.time() + 3700, e
        assert isinstance(e["last_error"], str) and e["last_error"], e
        assert str(down_port) in e["destination"], e
    assert by_id[a]["sender"].strip("<>") == "sender@sender.test"
    assert by_id[b]["sender"].strip("<>") == "other@sender.test"
    assert [r.strip("<>") for r in by_id[c]["recipients"]] == ["carol@example.org"]

    text = mx.queue("list").stdout
    for qid in (a, b, c):
        assert qid in text, text
    assert "other@sender.test" in text and "carol@example.org" in text
    assert len([l for l in text.splitlines() if re.search(r"[0-9A-F]{13}", l)]) >= 3, text

    shown = mx.queue("show", a).stdout
    assert a in shown and "sender@sender.test" in shown and "alice@example.com" in shown
    assert "Subject: first of three" in shown, f"show must include the headers:\n{shown}"
    assert mid_a in shown
    assert re.search(r"attempt", shown, re.I), shown

    missing = mx.queue("show", "0000000000001", ok=False)
    assert missing.returncode == 1 and missing.stderr.strip(), missing

    # (wait_attempted above saw each deferral logged: counted before that)
    st = mx.queue_json("stats")
    assert STATS_KEYS <= set(st), f"missing keys {STATS_KEYS - set(st)} in {st}"
    assert st["accepted"] == 3 and st["queued"] == 3 and st["delivered"] == 0
    assert st["deferred"] >= 3 and st["bounced"] == 0 and st["guard_refusals"] == 0
    assert isinstance(st["rejected"], dict) and sum(st["rejected"].values()) >= 1, st
    assert isinstance(st["oldest_age"], int) and 0 <= st["oldest_age"] <= time.time() - t0 + 2
    assert st["spool_bytes"] >= sum(e["size"] for e in entries), st
    stext = mx.queue("stats").stdout
    assert re.search(r"accepted:?\s+3", stext), stext


# --- flush, retag ---------------------------------------------------------

def test_flush_domain_then_retag_to_second_primary(mxspool, sink_factory, down_port):
    """Protects "the primary is back, send it now": flush DOMAIN retries only
    that domain's mail at once (its back-off reset); retag re-points every
    queued message of a domain to a second primary, which then gets it."""
    mx = mxspool([domain("example.com", down_port), domain("example.org", down_port)],
                 retry="1h 1d")
    a, mid_a = submit(mx, "alice@example.com")
    o, mid_o = submit(mx, "carol@example.org")
    wait_attempted(mx, a, 1)
    wait_attempted(mx, o, 1)
    back = sink_factory(hostname="primary.test", port=down_port)
    time.sleep(1.5)
    assert back.messages == [], "nothing may be retried before its time without a flush"

    # flush example.org only; make sure example.com is not touched
    back.default_rcpt_reply = "250 2.1.5 Ok"
    r = mx.queue("flush", "example.org")
    assert re.search(r"\b1\b", r.stdout), r.stdout
    (t,) = back.wait_for_messages(1, timeout=15)
    assert mid_o.encode() in t.content
    mx.wait_log(rf"id={o} event=removed\b")
    assert ids(mx) == {a}, "only example.com's mail left"
    time.sleep(1.0)
    assert len(back.messages) == 1, "flush example.org must not deliver example.com"

    second = sink_factory(hostname="primary2.test")
    back.close()
    r = mx.queue("retag", "example.com", f"127.0.0.1:{second.port}")
    assert re.search(r"\b1\b", r.stdout), r.stdout
    # retag also retries at once: the message may already be on its way.
    for e in mx.queue_json("list"):
        assert str(second.port) in e["destination"], e
    mx.queue("flush")
    (t2,) = second.wait_for_messages(1, timeout=15)
    assert mid_a.encode() in t2.content
    mx.wait_log(rf"id={a} event=removed\b")
    assert ids(mx) == set()
    assert mx.queue_json("stats")["delivered"] == 2


# --- delete, bounce --------------------------------------------------------

def test_delete_and_bounce(mxspool, sink_factory, down_port):
    """Protects cleaning the queue: delete drops a message silently; bounce
    returns one to its sender now, with an RFC 3464 DSN from <>, and removes
    it; both refuse an id that is not queued."""
    dsn = sink_factory(hostname="dsn.test")
    mx = mxspool([domain("example.com", down_port)], retry="1h 1d", smarthost=dsn.port)
    d, _ = submit(mx, "alice@example.com", sender="junk@sender.test")
    b, mid_b = submit(mx, "bob@example.com", sender="owner@sender.test")
    wait_attempted(mx, d, 1)
    wait_attempted(mx, b, 1)

    mx.queue("delete", d)
    assert ids(mx) == {b}
    assert mx.queue("delete", d, ok=False).returncode == 1

    mx.queue("bounce", b)
    (t,) = dsn.wait_for_messages(1, timeout=15)
    assert t.mail_from == "", f"a DSN is sent from <>: {t!r}"
    assert [r.lower() for r in t.rcpts] == ["owner@sender.test"]
    assert re.search(rb"multipart/report;.*report-type=\"?delivery-status", t.content, re.I | re.S)
    assert b"bob@example.com" in t.content
    # (the DSN itself leaves the queue a moment after the sink's 250)
    dsn_id = mx.wait_log(r"id=(\S+) event=delivery to=<owner@sender\.test> .*status=sent").group(1)
    mx.wait_log(rf"id={dsn_id} event=removed\b")
    assert ids(mx) == set()
    time.sleep(1.0)
    assert len(dsn.transactions) == 1, "delete must not send a DSN: " + dsn.describe()
    st = mx.queue_json("stats")
    assert st["bounced"] >= 1 and st["queued"] == 0, st
    assert mx.queue("bounce", b, ok=False).returncode == 1


# --- no daemon, bad usage --------------------------------------------------

def test_queue_without_daemon_and_bad_usage(mxspool, mxspool_cmd, sink):
    """Protects the command line around the socket: with no daemon, every
    queue command says "mxspool is not running (no control socket at PATH)"
    and exits 1 (also after a clean stop removed the socket); bad usage
    exits 2, with or without a daemon."""
    mx = mxspool([domain("example.com", sink.port)], start=False)
    want = f"mxspool is not running (no control socket at {mx.control_socket})"
    for args in (("list",), ("list", "--json"), ("stats", "--json"), ("flush",),
                 ("flush", "example.com"), ("retag", "example.com", "127.0.0.1:2")):
        r = mx.queue(*args, ok=False)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert want in r.stderr, (args, r.stderr)
    bad = [("frobnicate",), ("show",), ("show", "not-an-id!"), ("retag", "example.com"),
           ("list", "--xml"), ("delete", "a", "b"), ("retag", "example.com", "host:notaport")]
    for args in bad:
        r = mx.queue(*args, ok=False)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stderr.strip(), args
    mx.start()
    assert mx.queue("list").returncode == 0
    for args in bad:
        assert mx.queue(*args, ok=False).returncode == 2, args
    assert mx.stop() == 0
    r = mx.queue("list", ok=False)
    assert r.returncode == 1 and want in r.stderr, r.stderr


# --- SIGHUP -----------------------------------------------------------------

class Flow:
    """Submits messages to example.com in a background thread until stopped;
    remembers every 250'd message id and every failure."""

    def __init__(self, port, threads=2):
        self.port = port
        self.accepted = []
        self.failures = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self):
        while not self._stop.is_set():
            msg, mid = make_message(to="alice@example.com")
            try:
                res = send_mail(self.port, "flow@sender.test", ["alice@example.com"], msg)
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                self.failures.append(repr(e))
                continue
            if res.accepted:
                self.accepted.append(mid)
            else:
                self.failures.append(repr(res))

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(30)


def rcpt_code(mx, rcpt):
    with RawSmtp(mx.port) as raw:
        raw.greeting()
        raw.ehlo()
        assert raw.cmd("MAIL FROM:<probe@sender.test>").code == 250
        return raw.cmd(f"RCPT TO:<{rcpt}>").code


def test_sighup_reload_valid_and_invalid_while_mail_flows(mxspool, sink):
    """Protects reload without loss: while mail flows, a valid change applies
    (a new domain accepted, a removed one refused) and an invalid one is
    refused with its reason logged, the daemon running on the old config;
    every 250'd message reaches the primary and no session fails."""
    mx = mxspool([domain("example.com", sink.port), domain("example.org", sink.port)],
                 retry="1s 1h")
    pid = mx.proc.pid
    assert rcpt_code(mx, "x@example.net") == 550
    assert rcpt_code(mx, "x@example.org") == 250
    flow = Flow(mx.port)
    try:
        wait_until(lambda: len(flow.accepted) >= 5, 20, what="mail to flow")
        mx.domains = [domain("example.com", sink.port), domain("example.net", sink.port)]
        mx.write_config()
        mx.send_signal(signal.SIGHUP)
        mx.wait_log(r"event=reloaded", timeout=10)
        n = len(flow.accepted)
        wait_until(lambda: len(flow.accepted) >= n + 5, 20, what="mail to keep flowing")
        assert rcpt_code(mx, "x@example.net") == 250, "the added domain must be accepted"
        assert rcpt_code(mx, "x@example.org") == 550, "the removed domain must be refused"

        good = mx.config_path.read_text()
        mx.config_path.write_text(good + "\tlist frobnicate 'yes'\n")
        bad_line = len(good.splitlines()) + 1
        mx.send_signal(signal.SIGHUP)
        line = mx.wait_log(r"event=reload_failed[^\n]*", timeout=10).group(0)
        assert "frobnicate" in line and f":{bad_line}" in line, line
        n = len(flow.accepted)
        wait_until(lambda: len(flow.accepted) >= n + 5, 20, what="mail to keep flowing")
        assert mx.running and mx.proc.pid == pid
        assert rcpt_code(mx, "x@example.net") == 250, "the running config must stay"
        assert rcpt_code(mx, "x@example.org") == 550
    finally:
        flow.stop()
    assert flow.failures == [], flow.failures[:5]
    want = set(flow.accepted)
    wait_until(lambda: want <= {m for t in sink.messages for m in re.findall(
        r"<[0-9a-f]{32}@sender\.test>", t.content.decode(errors="replace"))},
        30, what=f"all {len(want)} accepted messages at the primary")


# --- SIGTERM ----------------------------------------------------------------

def test_sigterm_during_data_then_restart_delivers_every_250(mxspool, sink_factory, down_port):
    """Protects the graceful stop: after SIGTERM an idle session
    gets its 421, and sessions in the middle of DATA get no 250 when they
    finish (a 421 or the connection closed: what arrives after the stop is
    never executed). Silent or stalled clients cannot hold the daemon: it
    exits 0 well within procd's default 5 s term_timeout (else procd's
    SIGKILL would cut the clean close of the spool). Nothing that got a 250
    before is lost: after the restart every such message is delivered, and
    nothing else."""
    mx = mxspool([domain("example.com", down_port)], retry="1h 1d")
    acked = [submit(mx, "alice@example.com")[1] for _ in range(3)]
    partial = []
    for i in range(4):
        raw = RawSmtp(mx.port)
        raw.greeting()
        raw.ehlo()
        assert raw.cmd("MAIL FROM:<s@sender.test>").code == 250
        assert raw.cmd("RCPT TO:<alice@example.com>").code == 250
        assert raw.cmd("DATA").code == 354
        msg, mid = make_message(to="alice@example.com")
        raw.send(msg[: len(msg) // 2])
        partial.append((raw, msg[len(msg) // 2:], mid))
    stalled = partial.pop()
    idle = RawSmtp(mx.port)
    idle.greeting()
    idle.ehlo()
    time.sleep(0.3)  # every half body has been read: the sessions wait in DATA
    t0 = time.monotonic()
    mx.send_signal(signal.SIGTERM, expect_exit=True)
    time.sleep(0.3)
    try:
        r = idle.reply(timeout=5)
        assert r.code == 421, f"an idle session must get 421 at a stop: {r}"
    finally:
        idle.close()
    refused = []
    for raw, rest, mid in partial:
        try:
            raw.send(rest + b".\r\n")
            r = raw.reply(timeout=12)
            assert r.code != 250, f"DATA finished after SIGTERM got 250: {r}"
            assert r.code == 421, r
            refused.append(mid)
        except (ConnectionError, OSError, TimeoutError):
            refused.append(mid)  # closed without a 250
        finally:
            raw.close()
    raw, _, _ = stalled
    got = b""
    try:
        while raw.readable_within(15):
            chunk = raw.sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    raw.close()
    assert not re.search(rb"^250", got, re.M), f"the stalled DATA got a 250: {got!r}"
    rc = mx.proc.wait(15)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"a stop on SIGTERM is a clean exit, got {rc}"
    assert elapsed < 4, f"stop took {elapsed:.1f}s with idle and stalled clients"
    assert re.search(r"event=stopped", mx.log())

    primary = sink_factory(hostname="primary.test", port=down_port)
    mx.start()
    mx.queue("flush")
    want = acked
    primary.wait_for_messages(len(want), timeout=20)
    time.sleep(1.0)
    got = b"".join(t.content for t in primary.messages)
    for mid in want:
        assert mid.encode() in got, f"{mid} got 250 and was lost"
    assert got.count(b"Message-ID:") == len(want), \
        f"only 250'd mail may be delivered (refused: {refused}): {primary.describe()}"


# --- privilege drop ---------------------------------------------------------

def test_privilege_drop_to_nobody(mxspool, sink):
    """Protects `option user`: the daemon binds as root, then every thread
    runs as the user (real, effective, saved, fs uid and gid); the spool and
    the control socket (mode 0600) belong to it; mail still flows and the
    queue commands still work."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    if os.environ.get("MXSPOOL_RUNNER"):
        # qemu-user runs threads of its own that the guest cannot drop, and
        # mxspool rightly refuses to drop with other threads alive; the
        # drop itself is tested natively.
        pytest.skip("privilege drop cannot be checked under an emulator (MXSPOOL_RUNNER)")
    nobody = pwd.getpwnam("nobody")
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h", user="nobody")
    pid = mx.proc.pid
    for task in os.listdir(f"/proc/{pid}/task"):
        status = open(f"/proc/{pid}/task/{task}/status").read()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        assert uids == [str(nobody.pw_uid)] * 4, f"thread {task} Uid: {uids}"
        assert gids == [str(nobody.pw_gid)] * 4, f"thread {task} Gid: {gids}"
        groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
        assert "0" not in groups, f"thread {task} kept root's group: {groups}"
    msg, mid = make_message()
    res = send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = sink.wait_for_messages(1, timeout=15)
    assert mid.encode() in t.content
    st = os.stat(mx.control_socket)
    assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o600, st
    for root, dirs, files in os.walk(mx.spool_dir):
        for name in [root] + [os.path.join(root, f) for f in files]:
            assert os.stat(name).st_uid == nobody.pw_uid, f"{name} is not nobody's"
    mx.wait_log(r"event=delivery .*status=sent")  # counted before it is logged
    assert mx.queue_json("stats")["delivered"] == 1
    assert mx.stop() == 0


def test_sighup_opens_and_closes_listen_addresses(mxspool, sink):
    """Protects reload of `listen`: an added address accepts mail at once, a
    removed one stops accepting. The SIGHUP comes right after the port first
    accepts (procd may reload a service it just started): it must reload,
    not kill the daemon with SIGHUP's default action."""
    mx = mxspool([domain("example.com", sink.port)], retry="1s 1h")
    extra = free_port()
    mx.main["listen"] = [f"127.0.0.1:{mx.port}", f"127.0.0.1:{extra}"]
    mx.write_config()
    mx.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    assert mx.running, f"SIGHUP at startup killed the daemon: {mx.proc.returncode}"
    mx.wait_log(r"event=reloaded", timeout=10)
    msg, mid = make_message()
    res = send_mail(extra, "sender@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    sink.wait_for_messages(1, timeout=15)

    old = mx.port
    mx.main["listen"] = [f"127.0.0.1:{extra}"]
    mx.write_config()
    mx.send_signal(signal.SIGHUP)
    wait_until(lambda: not port_accepts(old, timeout=0.2), 10,
               what=f"the removed listener {old} to close")
    msg, mid2 = make_message()
    assert send_mail(extra, "sender@sender.test", ["alice@example.com"], msg).accepted
    sink.wait_for_messages(2, timeout=15)
    mx.port = extra  # so that teardown's stop and any restart look here


def test_reload_removing_a_domain_keeps_its_queued_mail(mxspool, sink_factory, down_port):
    """Protects "reload without losing mail": mail queued for a domain that a
    reload removes is still in the queue and still delivered to the
    destination it was tagged with at receipt."""
    mx = mxspool([domain("example.com", down_port), domain("example.org", down_port)],
                 retry="1h 1d")
    qid, mid = submit(mx, "carol@example.org")
    wait_attempted(mx, qid, 1)
    mx.domains = [domain("example.com", down_port)]
    mx.write_config()
    mx.send_signal(signal.SIGHUP)
    mx.wait_log(r"event=reloaded", timeout=10)
    assert rcpt_code(mx, "x@example.org") == 550
    assert ids(mx) == {qid}, "the reload dropped queued mail"
    primary = sink_factory(hostname="primary.test", port=down_port)
    mx.queue("flush")
    (t,) = primary.wait_for_messages(1, timeout=15)
    assert mid.encode() in t.content
