"""Alerts (`alert_command`, `alert_after`): the events a router owner must
hear about run a program (no shell) with the event in MXSPOOL_ALERT_*
variables, at most one per kind per hour, and are logged as event=alert."""

import os

from harness_mxspool import domain
from harness_util import free_port, make_message, send_mail, wait_until


def recorder(workdir):
    """An alert command that appends each call's MXSPOOL_ALERT_* variables
    to a file; returns (script path, reader of the calls so far)."""
    out = workdir / "alerts.txt"
    script = workdir / "alert.sh"
    script.write_text("#!/bin/sh\n{ env | grep '^MXSPOOL_ALERT_' | sort; echo ---; } >> "
                      f"'{out}'\n")
    os.chmod(script, 0o755)

    def calls():
        if not out.exists():
            return []
        out_calls = []
        for block in out.read_text().split("---\n"):
            env = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if env:
                out_calls.append(env)
        return out_calls
    return str(script), calls


def test_returned_mail_raises_one_alert_per_hour(mxspool, workdir, sink):
    """Mail returned to its sender (the primary said 550) runs the command
    once with MXSPOOL_ALERT_EVENT=returned and the queue id; a second
    return within the hour is logged but runs nothing."""
    script, calls = recorder(workdir)
    sink.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user"
    mx = mxspool([domain("example.com", sink.port)], retry="1h 1d", alert_command=script,
                 smarthost=free_port())
    qids = []
    for _ in range(2):
        msg, _ = make_message()
        res = send_mail(mx.port, "s@sender.test", ["nobody@example.com"], msg)
        assert res.accepted, res
        qids.append(res.queue_id)
        mx.wait_log(rf"id={res.queue_id} event=bounce", timeout=15)
    wait_until(lambda: len(calls()) >= 1, 10, what="the alert command to run")
    (call,) = calls()
    assert call["MXSPOOL_ALERT_EVENT"] == "returned", call
    assert call["MXSPOOL_ALERT_QUEUE_ID"] == qids[0], call
    assert "nobody@example.com" in call["MXSPOOL_ALERT_RECIPIENTS"], call
    assert call["MXSPOOL_ALERT_HOSTNAME"] == "mx2.test", call
    assert mx.log().count("event=alert kind=returned") == 1


def test_a_primary_unreachable_past_alert_after_raises_an_alert(mxspool, workdir):
    """A destination that cannot be reached for alert_after (2 s here) is
    an alert; a shorter outage is not."""
    script, calls = recorder(workdir)
    port = free_port()
    mx = mxspool([domain("example.com", port)], retry="1s 1h", alert_command=script,
                 alert_after="2s")
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
    wait_until(lambda: calls(), 30, what="the destination_unreachable alert")
    (call,) = calls()
    assert call["MXSPOOL_ALERT_EVENT"] == "destination_unreachable", call
    assert str(port) in call["MXSPOOL_ALERT_DESTINATION"], call


def test_a_guard_refusal_raises_an_alert(mxspool, workdir):
    """A destination that fails the dynamic-IP guard (its greeting names
    another host) is an alert naming the address."""
    script, calls = recorder(workdir)
    from harness_sink import SmtpSink
    imposter = SmtpSink(hostname="someone-else.test")
    try:
        mx = mxspool([domain("example.com", imposter.port, expect_greeting="mail.example.com")],
                     retry="1h 1d", alert_command=script)
        msg, _ = make_message()
        assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
        wait_until(lambda: calls(), 15, what="the guard_refusal alert")
        (call,) = calls()
        assert call["MXSPOOL_ALERT_EVENT"] == "guard_refusal", call
        assert "127.0.0.1" in call["MXSPOOL_ALERT_ADDRESS"], call
        assert imposter.transactions == []
    finally:
        imposter.close()


def test_a_nearly_full_spool_raises_an_alert(mxspool, workdir):
    """Past 80 % of max_spool_size the owner hears of it, before mail is
    refused with 452."""
    script, calls = recorder(workdir)
    mx = mxspool([domain("example.com", free_port())], retry="1h 1d", alert_command=script,
                 max_spool_size="64K", max_message_size="20K")
    for _ in range(6):
        msg, _ = make_message(body="x" * 70 + "\r\n" * 1 + ("y" * 76 + "\r\n") * 120)
        if not send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted:
            break
    wait_until(lambda: calls(), 15, what="the spool_nearly_full alert")
    (call,) = calls()
    assert call["MXSPOOL_ALERT_EVENT"] == "spool_nearly_full", call
    assert int(call["MXSPOOL_ALERT_BYTES"]) * 5 >= 64 * 1024 * 4, call


def test_alert_command_must_be_an_absolute_path(mxspool, mxspool_cmd):
    """No shell and no PATH: a relative command is a configuration error
    naming the line."""
    mx = mxspool([domain("example.com", free_port())], start=False,
                 alert_command="notify-me --now")
    r = mxspool_cmd("check", "-c", str(mx.config_path))
    assert r.returncode == 2, r
    assert f"{mx.config_path}:" in r.stderr and "absolute path" in r.stderr, r.stderr
