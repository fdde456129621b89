"""The command line:
version, check, and configuration errors as `PATH:LINE: ...` with exit 2."""

import json
import os
import re
import threading
import time

import pytest

from harness_mxspool import domain, render_uci
from harness_util import RawSmtp, free_port, wait_until


def write(tmp, text, name="mxspool.conf"):
    p = tmp / name
    p.write_text(text)
    return p


def good_config(tmp):
    return render_uci(
        {"hostname": "mx2.test", "listen": ["127.0.0.1:2525"],
         "spool_dir": str(tmp / "spool"), "control_socket": str(tmp / "ctl.sock"),
         "syslog": "0"},
        [domain("example.com", "127.0.0.1:2526")])


def assert_config_error(r, path, line=None):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, f"want one clear line on stderr, got {err!r}"
    prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    assert err.startswith(prefix), f"{err!r} should start with {prefix!r}"
    assert len(err) > len(prefix) + 3, "the message must say what is wrong"
    return err


def test_version(mxspool_cmd):
    """Protects: `mxspool version` prints `mxspool 0.1.0 <target-triple>` and
    exits 0 (OpenWrt's package CI checks the version is printed)."""
    r = mxspool_cmd("version")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"mxspool 0\.1\.0 [a-z0-9_]+(-[a-z0-9_.]+){2,3}\n?", r.stdout), r.stdout


def test_check_prints_effective_settings(mxspool_cmd, workdir):
    """Protects: `check -c F` accepts a valid file, exits 0 and shows the
    effective settings, including defaults (SIZE limit 10M)."""
    p = write(workdir, good_config(workdir))
    r = mxspool_cmd("check", "-c", p)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "mx2.test" in r.stdout
    assert "example.com" in r.stdout
    assert "127.0.0.1:2526" in r.stdout


def test_check_accepts_c_after_the_command_and_before(mxspool_cmd, workdir):
    """Protects: `-c PATH` is accepted before or after the command's other
    arguments."""
    p = write(workdir, good_config(workdir))
    r = mxspool_cmd("-c", p, "check")
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_unknown_option_names_its_line(mxspool_cmd, workdir):
    """Protects: an unknown option is an error with its line number, never
    silently ignored."""
    lines = good_config(workdir).splitlines()
    # line 7 (1-based): insert the bad option there
    lines.insert(6, "\toption no_such_option 'x'")
    p = write(workdir, "\n".join(lines) + "\n")
    assert p.read_text().splitlines()[6] == "\toption no_such_option 'x'"
    err = assert_config_error(mxspool_cmd("check", "-c", p), p, 7)
    assert "no_such_option" in err


def test_missing_hostname_names_the_section_line(mxspool_cmd, workdir):
    """Protects: a missing required option names the line of its section."""
    text = "# comment line\n" + good_config(workdir).replace("\toption hostname 'mx2.test'\n", "")
    p = write(workdir, text)
    err = assert_config_error(mxspool_cmd("check", "-c", p), p, 2)
    assert "hostname" in err


def test_bad_duration_names_its_line(mxspool_cmd, workdir):
    """Protects: durations need a unit among s m h d; `15x` is refused."""
    text = good_config(workdir).replace(
        "\toption syslog '0'\n", "\toption syslog '0'\n\tlist retry '15x 4d'\n")
    p = write(workdir, text)
    n = text.splitlines().index("\tlist retry '15x 4d'") + 1
    err = assert_config_error(mxspool_cmd("check", "-c", p), p, n)
    assert "15x" in err or "duration" in err.lower()


def test_unknown_section_type_names_its_line(mxspool_cmd, workdir):
    """Protects: an unknown section type is an error, not ignored."""
    text = good_config(workdir) + "\nconfig frobnicator 'x'\n\toption name 'y'\n"
    p = write(workdir, text)
    n = text.splitlines().index("config frobnicator 'x'") + 1
    err = assert_config_error(mxspool_cmd("check", "-c", p), p, n)
    assert "frobnicator" in err


def test_bad_size_is_refused(mxspool_cmd, workdir):
    """Protects: sizes are an integer with an optional K M G."""
    text = good_config(workdir).replace(
        "\toption syslog '0'\n", "\toption syslog '0'\n\toption max_message_size '10Q'\n")
    p = write(workdir, text)
    n = text.splitlines().index("\toption max_message_size '10Q'") + 1
    assert_config_error(mxspool_cmd("check", "-c", p), p, n)


def test_missing_config_file_is_a_usage_error(mxspool_cmd, workdir):
    """Protects: an unreadable config exits 2 with one line naming the path."""
    p = workdir / "nope.conf"
    r = mxspool_cmd("check", "-c", p)
    assert r.returncode == 2
    assert str(p) in r.stderr


def test_queue_command_without_daemon_exits_1(mxspool_cmd, workdir):
    """Protects: queue commands talk to the running daemon; with none running
    they say so and exit 1."""
    p = write(workdir, good_config(workdir))
    r = mxspool_cmd("queue", "list", "-c", p)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip()


def test_queue_output_never_passes_terminal_controls(mxspool):
    """Protects the operator's terminal: a stranger's header with an escape
    sequence (clear screen, set title, bell), a HELO name and addresses with
    a C1 CSI (U+009B, allowed under SMTPUTF8) reach `queue show` and
    `queue list` only escaped (`\\x1b`), never as raw control bytes; the
    JSON stays valid and gives the exact strings back."""
    csi = "\u009b"
    sender = f"x{csi}2J@sender.test"
    rcpt = f"a{csi}2J@example.com"
    mx = mxspool([domain("example.com", free_port())], retry="1h 1d")
    with RawSmtp(mx.port) as c:
        assert c.greeting().code == 220
        assert c.ehlo(f"evil{csi}2J.test").code == 250
        assert c.cmd(f"MAIL FROM:<{sender}> SMTPUTF8").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"From: <x@sender.test>\r\nSubject: hi \x1b[2J\x1b]0;pwned\x07 there\x7f\r\n"
               b"\r\nbody\r\n.\r\n")
        r = c.reply()
        assert r.code == 250, r
    qid = re.search(r"queued as (\S+)", r.text)
    assert qid, r
    qid = qid.group(1)

    def q(*args):
        p = mx.run("queue", *args, timeout=30, text=False)
        assert p.returncode == 0, p
        return p.stdout

    shown = q("show", qid)
    for bad in (b"\x1b", b"\x07", b"\x7f", csi.encode()):
        assert bad not in shown, f"{bad!r} reached the terminal:\n{shown!r}"
    assert b"Subject: hi \\x1b[2J\\x1b]0;pwned\\x07 there\\x7f" in shown, shown
    assert b"from: <x\\x9b2J@sender.test>" in shown, shown
    listed = q("list")
    assert qid.encode() in listed, listed
    for bad in (b"\x1b", csi.encode()):
        assert bad not in listed, f"{bad!r} reached the terminal:\n{listed!r}"
    raw = q("list", "--json")
    assert csi.encode() not in raw, raw
    (entry,) = json.loads(raw)
    assert entry["sender"].strip("<>") == sender and entry["recipients"] == [rcpt], entry


# --- queue list: paging and bounded memory -----------------------------

def submit_many(port, n, sessions=1):
    """N small messages for example.com over SESSIONS parallel connections,
    MAIL/RCPT/DATA pipelined (RFC 2920); returns the queue ids, each
    session's in the order it sent them (one session: arrival order)."""
    per = [n // sessions + (1 if i < n % sessions else 0) for i in range(sessions)]
    out = [[] for _ in range(sessions)]
    errors = []

    def session(k):
        try:
            with RawSmtp(port, timeout=60) as c:
                assert c.greeting().code == 220
                assert c.ehlo("load.test").code == 250
                for i in range(per[k]):
                    c.send(b"MAIL FROM:<load@sender.test>\r\n"
                           b"RCPT TO:<alice@example.com>\r\nDATA\r\n")
                    codes = [c.reply().code for _ in range(3)]
                    assert codes == [250, 250, 354], codes
                    c.send(f"Subject: m{k}-{i}\r\n\r\nhello\r\n.\r\n".encode())
                    r = c.reply()
                    assert r.code == 250, r
                    out[k].append(re.search(r"queued as (\S+)", r.text).group(1))
                c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [qid for ids in out for qid in ids]


def test_queue_list_pages_walk_the_queue_once_in_arrival_order(mxspool):
    """Protects README "Command line": `queue list --limit N [--after ID]`
    shows at most N messages after ID, oldest first, with the total and
    where the next page starts (`next`, null on the last page); walking
    the pages shows every message exactly once. Plain `--json` stays one
    JSON array of message objects; bad paging options are exit 2."""
    mx = mxspool([domain("example.com", free_port())], retry="1h 1d")
    ids = submit_many(mx.port, 50)
    assert len(ids) == 50 and ids == sorted(ids, key=lambda q: int(q, 16))

    seen, after, pages = [], [], 0
    while True:
        r = mx.run("queue", "list", "--json", "--limit", "20", *after)
        assert r.returncode == 0, r.stderr
        page = json.loads(r.stdout)
        assert set(page) == {"total", "messages", "next"}, page.keys()
        assert page["total"] == 50
        assert 0 < len(page["messages"]) <= 20
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == seen[-1]
        after = ["--after", page["next"]]
    assert pages == 3
    assert seen == ids

    r = mx.run("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    whole = json.loads(r.stdout)
    assert isinstance(whole, list) and [m["id"] for m in whole] == ids
    assert all(m["recipients"] == ["alice@example.com"] for m in whole)

    r = mx.run("queue", "list", "--limit", "20")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:20]] == ids[:20]
    assert lines[20:] == [f"20 of 50 shown; next: mxspool queue list --limit 20 --after {ids[19]}"]
    r = mx.run("queue", "list", "--after", ids[39])
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:10]] == ids[40:]
    assert lines[10:] == ["10 of 50 shown"]
    r = mx.run("queue", "list", "--json", "--after", ids[-1])
    assert json.loads(r.stdout) == {"total": 50, "messages": [], "next": None}

    for bad in (["--limit", "0"], ["--limit"], ["--after", "nothex"], ["--all"],
                ["--limit", "5", "--limit", "6"]):
        r = mx.run("queue", "list", *bad)
        assert r.returncode == 2, (bad, r.returncode, r.stdout, r.stderr)
        assert r.stderr.startswith("mxspool: ") and not r.stdout, (bad, r.stderr)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def wait_idle(pid, timeout=120, window=0.5):
    """Until the process used no CPU for one WINDOW (its first delivery
    attempts and their bookkeeping are over)."""
    def ticks():
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    prev = [ticks()]

    def idle():
        time.sleep(window)
        now = ticks()
        quiet, prev[0] = now == prev[0], now
        return quiet
    wait_until(idle, timeout, interval=0, what=f"process {pid} to go idle")


def test_queue_list_memory_does_not_grow_with_the_queue(mxspool):
    """Protects the 64 MB router (README "The control socket"): a listing
    is streamed a page at a time, so one `queue list --json` of 5000
    queued messages raises the daemon's peak RSS (VmHWM) by far less than
    the 5 MiB the whole answer would take (it took 1.1 KiB a message when
    it was built in memory), and the array is still whole and valid."""
    if os.environ.get("MXSPOOL_RUNNER"):
        pytest.skip("under MXSPOOL_RUNNER /proc shows the emulator's memory, not mxspool's")
    n = 5000
    mx = mxspool([domain("example.com", free_port())], retry="1h 1d",
                 max_connections="32", max_connections_per_ip="16", log_level="info")
    ids = submit_many(mx.port, n, sessions=8)
    assert len(set(ids)) == n
    pid = mx.proc.pid
    wait_idle(pid)
    # The peak so far is the receiving burst's: start the count again from
    # now (clear_refs 5 resets VmHWM to the current RSS, Linux >= 4.0).
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status_kib(pid, "VmHWM")
    r = mx.run("queue", "list", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    after = status_kib(pid, "VmHWM")
    listed = json.loads(r.stdout)
    assert len(listed) == n and {m["id"] for m in listed} == set(ids)
    growth = after - before
    print(f"VmHWM {before} KiB before the listing, {after} KiB after "
          f"({len(r.stdout)} bytes listed)")
    assert growth < 2048, f"one listing raised the peak by {growth} KiB"
