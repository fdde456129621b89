"""A router's clock: OpenWrt has no real-time clock. It
boots weeks behind and steps the clock when NTP syncs, and again after
every power cut. Ages, retry spans and expiry must measure time that really
passed: a step forward is not age (no mail returned for it), a step back or
a restart with the clock behind does not stall the queue, and nothing
panics on any clock value.

The daemon's wall clock is moved with libfaketime (Debian `faketime`),
through a timestamp file read at every call; its monotonic clock stays
real. Under an emulator the router binary is static, but qemu-user (a
dynamically linked host program) serves the guest's clock_gettime with the
host libc's, so the same LD_PRELOAD on qemu moves the router build's wall
clock. Each test proves the move reached the daemon (the date in the
Received header it wrote), so a clock that did not move fails the test
instead of passing it trivially. The clock arithmetic itself is also
unit-tested on every target (src/clock.rs, src/spool/retry.rs)."""

import re
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from harness_mxspool import domain
from harness_util import (deferrals_logged, free_port, make_message, send_mail,
                          wait_deferred_in_log, wait_until)

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = [
    pytest.mark.skipif(not LIBFAKETIME.exists(),
                       reason="libfaketime is not installed (apt package faketime)"),
]

DAY = 86400


class WallClock:
    """The daemon's wall clock: an offset from the real one, in libfaketime's
    relative syntax ("-40d", "+0"), changeable while the daemon runs."""

    def __init__(self, workdir):
        self.path = Path(workdir) / "faketime"
        self.set("+0")

    def set(self, offset):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)

    def env(self):
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def daemon(mxspool, workdir, port, clock_offset, **kw):
    clock = WallClock(workdir)
    clock.set(clock_offset)
    mx = mxspool([domain("example.com", port)], start=False, **kw)
    mx.env = clock.env()
    mx.start()
    return mx, clock


def received_days_ago(content):
    """How many days before now the daemon's wall clock stood when it wrote
    the topmost Received header (its own)."""
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    (line,) = [h for h in head.split(b"\r\n") if h.lower().startswith(b"received:")][:1]
    stamp = parsedate_to_datetime(line.rsplit(b";", 1)[1].strip().decode())
    return (time.time() - stamp.timestamp()) / DAY


def assert_received_days_ago(t, days):
    got = received_days_ago(t.content)
    assert abs(got - days) < 0.5, f"the daemon's clock stood {got:.2f} days back, not {days}"


def delays(mx, qid):
    return [int(d) for d in re.findall(rf"id={qid} event=delivery .*? delay=(\d+)s", mx.log())]


def test_ntp_step_forward_is_not_age(mxspool, workdir, sink_factory):
    """Booted 40 days behind, mail queued with the primary down, then NTP
    steps the clock 40 days forward: the mail is 10 days from expiry, not
    40 days past it. It stays queued (no bounce, attempts logged with the
    real delay of seconds) and reaches the primary when it is back."""
    port = free_port()
    mx, clock = daemon(mxspool, workdir, port, "-40d", retry="1s 10d")
    msg, _ = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    wait_deferred_in_log(mx, res.queue_id, 1)
    clock.set("+0")
    n = deferrals_logged(mx, res.queue_id)
    wait_deferred_in_log(mx, res.queue_id, n + 2, timeout=45)
    assert "event=bounce" not in mx.log(), mx.log()[-3000:]
    assert max(delays(mx, res.queue_id)) < 600, delays(mx, res.queue_id)
    (entry,) = [e for e in mx.queue_json("list") if e["id"] == res.queue_id]
    assert entry["age"] < 600, entry
    sink = sink_factory(port=port)
    (t,) = sink.wait_for_messages(1, timeout=30)
    assert t.content.endswith(msg)
    assert_received_days_ago(t, 40)
    assert mx.running


def test_restart_with_the_clock_behind_does_not_stall_the_queue(mxspool, workdir, sink_factory):
    """Mail queued with the clock right; the router restarts (power cut) with
    its clock 40 days behind. The queue does not wait for the clock to catch
    up ("next in 39d"), `queue flush` does not kill the daemon (it once
    panicked in the retry rule), and the mail goes out when the primary is
    back."""
    port = free_port()
    mx, clock = daemon(mxspool, workdir, port, "+0", retry="1s 1h")
    msg, _ = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    wait_deferred_in_log(mx, res.queue_id, 1)
    mx.stop()
    clock.set("-40d")
    mx.start()
    (entry,) = [e for e in mx.queue_json("list") if e["id"] == res.queue_id]
    assert entry["age"] < 600, entry
    r = mx.run("queue", "flush", timeout=20)
    assert r.returncode == 0, r
    wait_until(lambda: deferrals_logged(mx, res.queue_id) >= 2, 20, what="the flushed attempt")
    assert mx.running, mx.log()[-3000:]
    msg2, _ = make_message(subject="after the clock moved")
    res2 = send_mail(mx.port, "s@sender.test", ["bob@example.com"], msg2)
    assert res2.accepted, res2
    sink = sink_factory(port=port)
    got = {tuple(t.rcpts): t for t in sink.wait_for_messages(2, timeout=30)}
    assert got[("alice@example.com",)].content.endswith(msg)
    assert_received_days_ago(got[("alice@example.com",)], 0)
    assert got[("bob@example.com",)].content.endswith(msg2)
    assert_received_days_ago(got[("bob@example.com",)], 40)
    assert "panicked" not in mx.log()


def test_clock_stepped_back_while_running_keeps_the_schedule(mxspool, workdir, sink_factory):
    """The wall clock jumps 30 days back while mail waits: retries keep
    coming on their own and the mail reaches the primary when it is back;
    the queue shows its true age."""
    port = free_port()
    mx, clock = daemon(mxspool, workdir, port, "+0", retry="1s 1h")
    msg, _ = make_message()
    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    wait_deferred_in_log(mx, res.queue_id, 1)
    clock.set("-30d")
    wait_deferred_in_log(mx, res.queue_id, 3, timeout=45)
    (entry,) = [e for e in mx.queue_json("list") if e["id"] == res.queue_id]
    assert entry["age"] < 600, entry
    msg2, _ = make_message(subject="after the clock moved")
    res2 = send_mail(mx.port, "s@sender.test", ["bob@example.com"], msg2)
    assert res2.accepted, res2
    sink = sink_factory(port=port)
    got = {tuple(t.rcpts): t for t in sink.wait_for_messages(2, timeout=30)}
    assert got[("alice@example.com",)].content.endswith(msg)
    assert_received_days_ago(got[("alice@example.com",)], 0)
    assert got[("bob@example.com",)].content.endswith(msg2)
    assert_received_days_ago(got[("bob@example.com",)], 30)
    assert mx.running
