"""The command line (CONTRACT.md "Command line" and "Configuration: UCI"):
version, check, and configuration errors as `PATH:LINE: ...` with exit 2."""

import json
import re
import subprocess

from harness_mxspool import command, domain, render_uci
from harness_util import RawSmtp, free_port


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
        p = subprocess.run(command("queue", *args, "-c", mx.config_path),
                           capture_output=True, timeout=30)
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
