"""Storage full ("Storage full or spool over its limit:
452 4.3.1, never a silent loss"): the spool lives on a small tmpfs the test
mounts; it fills up, clients get 452 4.3.1, nothing acknowledged is lost or
damaged, and service returns when space does."""

import os
import subprocess
import time

import pytest

from harness_mxspool import domain
from harness_util import free_port, make_message, send_mail

FS_SIZE = "6m"


@pytest.fixture
def small_fs(workdir):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = workdir / "smallfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_gives_452_loses_nothing_and_recovers(mxspool, sink_factory, small_fs):
    """Protects: a full disk never costs an acknowledged message: 452 4.3.1
    while full, the spool intact, normal service when space returns."""
    # A filler takes most of the filesystem, so the spool meets a full disk
    # long before max_spool_size.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (2 * 1024 * 1024))
    port = free_port()
    mx = mxspool([domain("example.com", f"127.0.0.1:{port}")], retry="1h 1d",
                 spool_dir=str(small_fs / "spool"), max_message_size="200K",
                 max_spool_size="64M", cache_size="1M", allow_volatile_spool="1")
    body = "x" * 76 + "\r\n"
    acked, refused = [], []
    for i in range(60):
        msg, mid = make_message(subject=f"fill {i}", body=body * 800)  # ~62 KB
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg, timeout=20)
        if res.accepted:
            acked.append(mid)
        else:
            refused.append(res)
            if len(refused) >= 3:
                break
    assert refused, "the small filesystem never filled up"
    print("\n[storage-full] journal:", "unavailable (no room), running without"
          if "event=journal_unavailable" in mx.log() else "in use")
    for res in refused:
        # Refused at MAIL (the room check), or after DATA (the commit).
        steps = [res.mail, *res.rcpt.values(), res.data]
        code, text = next(r for r in steps if r and r[0] >= 400)
        assert code == 452 and "4.3.1" in str(text), res
    assert mx.running, "the daemon must survive a full disk"

    # Space returns: the next message is accepted again.
    filler.unlink()
    msg, mid = make_message(subject="after")
    deadline = time.monotonic() + 20
    while True:
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg, timeout=20)
        if res.accepted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.accepted, f"service did not return with free space: {res}"
    acked.append(mid)

    # Nothing acknowledged is lost or damaged, across a restart too.
    mx.stop()
    sink = sink_factory(hostname="primary.test", port=port)
    mx.start()
    mx.run("queue", "flush")
    sink.wait_for_messages(1, timeout=20)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = b"".join(m.content for m in sink.messages)
        if all(m.encode() in got for m in acked):
            break
        time.sleep(0.5)
    got = b"".join(m.content for m in sink.messages)
    missing = [m for m in acked if m.encode() not in got]
    print(f"\n[storage-full] accepted={len(acked)} refused={len(refused)} missing={len(missing)}")
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
