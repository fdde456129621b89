"""Files and privileges: queued mail is readable by the
daemon's user only, and root never follows a symbolic link inside
spool_dir (the daemon's user could plant one to be handed any file)."""

import os
from pathlib import Path
import pwd
import re
import shutil
import stat

import pytest

from harness_mxspool import domain
from harness_util import free_port, make_message, send_mail


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_spool_and_control_socket_are_private(mxspool):
    """The spool directory is 0700 and its files 0600, also for a directory
    that existed with 0755 before (older versions, another umask); the
    control socket has no permissions for group or others."""
    mx = mxspool([domain("example.com", free_port())], start=False, retry="1h 1d")
    os.chmod(mx.spool_dir, 0o755)
    mx.start()
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
    assert mode(mx.spool_dir) == 0o700, oct(mode(mx.spool_dir))
    files = sorted(os.listdir(mx.spool_dir))
    assert "spool.redb" in files, files
    for name in files:
        assert mode(mx.spool_dir / name) == 0o600, (name, oct(mode(mx.spool_dir / name)))
    assert mode(mx.control_socket) & 0o077 == 0, oct(mode(mx.control_socket))


def test_the_shipped_openwrt_config_runs_the_daemon_as_its_user(mxspool, workdir):
    """The OpenWrt package runs mxspool as its own user: the shipped
    configuration says `option user 'mxspool'` (the package's USERID makes
    the user). Started as root with that configuration (the user here:
    nobody, as this machine has no mxspool user; the listener: a port below
    1024, as 25 is), the daemon binds the privileged port before it drops
    root, then runs with no uid 0 left (real, effective, saved, fs), and
    takes mail into a spool only it can read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    if os.environ.get("MXSPOOL_RUNNER"):
        pytest.skip("privilege drop cannot be checked under an emulator (MXSPOOL_RUNNER)")
    root = Path(__file__).resolve().parents[2]
    shipped = (root / "board/openwrt/files/mxspool.config").read_text()
    assert re.search(r"^\s*option user 'mxspool'", shipped, re.M), "the shipped config runs as root"
    makefile = (root / "board/openwrt/Makefile").read_text()
    assert re.search(r"USERID:=mxspool=\d+:mxspool=\d+", makefile), "the package makes no mxspool user"
    port = free_port(privileged=True)
    mx = mxspool([domain("example.com", free_port())], start=False, retry="1h 1d",
                 user="nobody", port=port)
    mx.start()
    status = Path(f"/proc/{mx.proc.pid}/status").read_text()
    for field in ("Uid", "Gid"):
        ids = re.search(rf"^{field}:\s+(.*)$", status, re.M).group(1).split()
        assert "0" not in ids, f"{field}: {ids}"
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
    assert os.stat(mx.spool_dir).st_uid == pwd.getpwnam("nobody").pw_uid
    assert mx.stop() == 0


def test_root_never_follows_a_link_inside_spool_dir(mxspool, workdir):
    """`option user`: at start root gives the spool to the user. A link the
    user planted in spool_dir (`x -> a directory of root's`) is not
    followed: the directory and its files stay root's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    if os.environ.get("MXSPOOL_RUNNER"):
        pytest.skip("privilege drop cannot be checked under an emulator (MXSPOOL_RUNNER)")
    nobody = pwd.getpwnam("nobody")
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "secret").write_text("root's\n")
    mx = mxspool([domain("example.com", free_port())], start=False, retry="1h 1d", user="nobody")
    os.symlink(victim, mx.spool_dir / "x")
    os.symlink(victim / "secret", mx.spool_dir / "journal.lnk")
    mx.start()
    assert os.stat(mx.spool_dir).st_uid == nobody.pw_uid
    for p in (victim, victim / "secret"):
        assert os.stat(p).st_uid == 0, f"{p} was given to nobody through a link"
    assert mx.stop() == 0


def test_a_spool_on_an_unmounted_disk_is_not_started_on_flash(mxspool, workdir, mxspool_cmd):
    """spool_dir on a USB disk that is not mounted: the mount point's parent
    path is missing (or the mount point is empty). mxspool never makes the
    missing parents, which would start a new spool on the router's flash
    beneath the mount point and hide it once the disk is mounted: `check`
    and `run` exit 2 naming the file, the line and the likely cause, and
    nothing is created. Once the disk is there, the daemon makes the spool
    directory itself (its last component only)."""
    usb = workdir / "mnt" / "usb"
    mx = mxspool([domain("example.com", free_port())], start=False,
                 spool_dir=str(usb / "mxspool"))
    assert not (workdir / "mnt").exists()
    r = mxspool_cmd("check", "-c", str(mx.config_path))
    assert r.returncode == 2, r
    assert f"{mx.config_path}:" in r.stderr and "not mounted" in r.stderr, r.stderr
    r = mxspool_cmd("run", "-c", str(mx.config_path), timeout=30)
    assert r.returncode == 2, r
    assert "not mounted" in r.stderr, r.stderr
    assert not (workdir / "mnt").exists(), "run made the missing parents"
    usb.mkdir(parents=True)
    mx.start()
    assert (usb / "mxspool").is_dir()
    assert stat.S_IMODE((usb / "mxspool").stat().st_mode) == 0o700
    assert "event=spool_created" in mx.log(), mx.log()
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
    assert mx.stop() == 0


@pytest.mark.skipif(bool(os.environ.get("MXSPOOL_RUNNER")),
                    reason="strace's fault injection would hit qemu-user's own calls")
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_a_kernel_without_ipv6_still_gets_the_ipv4_listener(mxspool, workdir):
    """The default OpenWrt configuration listens on [::]:25 and 0.0.0.0:25.
    A kernel without IPv6 (socket(AF_INET6) fails with EAFNOSUPPORT, made
    here by strace's fault injection on the first socket call, the IPv6
    listener's) must not stop the daemon: the IPv6 listener is skipped with
    a log line, and mail is taken on IPv4."""
    port = free_port()
    mx = mxspool([domain("example.com", free_port())], start=False, retry="1h 1d")
    mx.main["listen"] = [f"[::1]:{port}", f"127.0.0.1:{mx.port}"]
    mx.write_config()
    trace = workdir / "strace.txt"
    mx.wrapper = [shutil.which("strace"), "-f", "-o", str(trace), "-e", "trace=socket",
                  "-e", "inject=socket:error=EAFNOSUPPORT:when=1"]
    mx.start()
    first = next(line for line in trace.read_text().splitlines() if "socket(" in line)
    assert "AF_INET6" in first and "EAFNOSUPPORT" in first, first
    assert re.search(rf"event=listen_skipped addr=\[::1\]:{port} ", mx.log()), mx.log()
    msg, _ = make_message()
    assert send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg).accepted
    assert mx.stop() == 0


def test_a_spool_in_ram_is_refused_unless_allowed(mxspool, workdir, mxspool_cmd):
    """On OpenWrt /tmp and /var are RAM: a spool there loses all queued mail
    at the next reboot. `check` and `run` refuse a spool_dir on tmpfs with
    exit 2 and a message naming the file, the line and the fix, unless
    allow_volatile_spool is 1."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = workdir / "ram"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        mx = mxspool([domain("example.com", free_port())], start=False,
                     spool_dir=str(mnt / "spool"))
        r = mxspool_cmd("check", "-c", str(mx.config_path))
        assert r.returncode == 2, r
        assert f"{mx.config_path}:" in r.stderr and "tmpfs" in r.stderr, r.stderr
        assert "allow_volatile_spool" in r.stderr, r.stderr
        r = mxspool_cmd("run", "-c", str(mx.config_path), timeout=30)
        assert r.returncode == 2, r
        assert "tmpfs" in r.stderr, r.stderr
        mx.main["allow_volatile_spool"] = "1"
        mx.write_config()
        r = mxspool_cmd("check", "-c", str(mx.config_path))
        assert r.returncode == 0, r
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
