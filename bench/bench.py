#!/usr/bin/env python3
"""Side-by-side benchmark: mxspool vs a private Postfix vs OpenSMTPD.

Each server is a backup MX / relay for example.com on a loopback port and
relays to an `smtp-sink` primary on another loopback port. Load comes from
Postfix's `smtp-source`. Servers run one at a time (fresh spool for every
test), in an order that rotates every round; figures are medians over rounds.

Subcommands (see bench/README.md):
  compare    the full table (bench/run.sh)
  mem        mxspool only: 8 sessions x 9 MiB, peak and idle RSS (bench/memtest.sh)
  outage     mxspool only: a long outage; peak RSS, accept and drain rate against
             the queue length, and one `queue list --json` (bench/outage.sh)
  callgrind  mxspool under callgrind: instructions per accepted message
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from harness_postfix import PostfixInstance  # noqa: E402  (read-only reuse)
from harness_util import free_port, port_accepts, wait_until  # noqa: E402

LOCALHOST = "127.0.0.1"
DOMAIN = "example.com"
SENDER = "load@source.bench"
RCPT = f"user@{DOMAIN}"
MIB = 1024 * 1024
KIB = 1024

ALL = []  # everything started, stopped at exit


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


# --- process memory / cpu ---------------------------------------------------

def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(roots):
    kids = _children_map()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids):
    return sum(_status_kb(p, "VmRSS") for p in pids)


def pss_kb(pids):
    return sum(_pss_kb(p) for p in pids)


def memory(roots):
    """(rss_kib, pss_kib, nprocs) summed over ROOTS and their descendants."""
    pids = process_tree(roots)
    return rss_kb(pids), pss_kb(pids), len(pids)


def cpu_ticks(roots):
    t = 0
    for p in process_tree(roots):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            t += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return t


def wait_quiet(server, timeout=30.0, window=0.5, max_ticks=2):
    """Wait until the server's processes use (almost) no CPU."""
    deadline = time.monotonic() + timeout
    prev = cpu_ticks(server.roots())
    while time.monotonic() < deadline:
        time.sleep(window)
        cur = cpu_ticks(server.roots())
        if cur - prev <= max_ticks:
            return
        prev = cur


class Sampler:
    """Samples a server's summed RSS every INTERVAL seconds and its PSS every
    PSS_EVERY samples; keeps the peaks. Kept cheap because it shares the
    CPUs with the server it times: walking all of /proc and reading
    smaps_rollup of Postfix's ten processes every 50 ms cost Postfix about
    a third of its 1-session accept rate here. The process tree is re-read
    every TREE_EVERY samples."""

    PSS_EVERY = 10
    TREE_EVERY = 20

    def __init__(self, server, interval=0.05):
        self.server, self.interval = server, interval
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n, pids = 0, []
        while not self._stop.is_set():
            if n % self.TREE_EVERY == 0:
                pids = process_tree(self.server.roots())
            self.peak_rss = max(self.peak_rss, rss_kb(pids))
            if n % self.PSS_EVERY == 0:
                self.peak_pss = max(self.peak_pss, pss_kb(pids))
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        rss, pss, _ = memory(self.server.roots())
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)


def idle_memory(server, settle=1.0, samples=5):
    wait_quiet(server, timeout=15)
    time.sleep(settle)
    vals = []
    for _ in range(samples):
        vals.append(memory(server.roots()))
        time.sleep(0.2)
    return (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals),
            max(v[2] for v in vals))


# --- the primary: smtp-sink ----------------------------------------------------

class Sink:
    def __init__(self, workdir, port):
        self.port, self.out = port, Path(workdir) / "sink.out"
        self.proc = None

    def start(self):
        self.out.write_bytes(b"")
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"{LOCALHOST}:{self.port}", "512"],
            stdout=open(self.out, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: port_accepts(self.port), 10, what="smtp-sink")

    def count(self):
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes()[-300:])
        return int(found[-1]) if found else 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --- servers -------------------------------------------------------------------

class Mxspool:
    name = "mxspool"

    def __init__(self, workdir, sink_port, binary, runner=(), extra_options=()):
        self.dir = Path(workdir) / "mx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.binary, self.runner = str(binary), list(runner)
        self.conf = self.dir / "mxspool.conf"
        self.sink_port, self.n = sink_port, 0
        self.extra = "".join(f"\toption {o.partition('=')[0]} '{o.partition('=')[2]}'\n"
                             for o in extra_options)
        self._write_conf()
        self.proc = None

    def _write_conf(self):
        """Config for spool directory number `self.n`."""
        self.conf.write_text(f"""config mxspool 'main'
\toption hostname 'mx2.bench'
\tlist listen '{LOCALHOST}:{self.port}'
\toption spool_dir '{self.dir}/spool{self.n}'
\toption control_socket '{self.dir}/ctl.sock'
\toption syslog '0'
\toption log_level 'info'
\toption max_connections '64'
\toption max_connections_per_ip '64'
\toption max_spool_size '2G'
\toption smarthost '{LOCALHOST}:{self.sink_port}'
{self.extra}
config domain 'd0'
\toption name '{DOMAIN}'
\toption deliver_to '{LOCALHOST}:{self.sink_port}'
\toption verify 'none'
""")

    def roots(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def start(self, fresh=True, timeout=20):
        if fresh:
            # A new spool directory; the old one stays until the end of the
            # run, as Postfix's old instances do (deleting just before a
            # test makes that test pay for the deletion).
            self.n += 1
            self._write_conf()
        self.proc = subprocess.Popen(self.runner + [self.binary, "run", "-c", str(self.conf)],
                                     stdout=open(self.dir / "mxspool.log", "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: port_accepts(self.port) or self.proc.poll() is not None, timeout,
                   what="mxspool to listen")
        if self.proc.poll() is not None:
            raise RuntimeError("mxspool exited:\n" + (self.dir / "mxspool.log").read_text()[-2000:])

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def flush(self):
        subprocess.run([self.binary, "queue", "flush", "-c", str(self.conf)],
                       capture_output=True, timeout=30, check=True)


class Postfix:
    name = "postfix"

    def __init__(self, workdir, sink_port):
        self.workdir, self.sink_port, self.n = Path(workdir), sink_port, 0
        self.pf = None
        self._new_instance()

    def _new_instance(self):
        """A new private instance: its own directories and port."""
        if self.pf is not None:
            # Stopped, not deleted: unlinking its thousands of queue files
            # right before the next test slows that test's fsyncs (the
            # work directory goes at the end of the run).
            self.pf.stop()
        self.n += 1
        base = self.workdir / f"pf{self.n}"
        base.mkdir(parents=True, exist_ok=True)
        (base / "etc").mkdir(exist_ok=True)
        transport = base / "etc" / "transport"
        transport.write_text(f"{DOMAIN} relay:[{LOCALHOST}]:{self.sink_port}\n")
        self.pf = PostfixInstance(base, domains=("local.bench",), users=("u",), name="bench",
                                  hostname="mx2p.bench", extra_main_cf={
                                      "relay_domains": DOMAIN,
                                      "transport_maps": f"texthash:{transport}",
                                      "relay_transport": "relay",
                                      "default_transport": "smtp",
                                  })
        self.port = self.pf.port

    def roots(self):
        pid = self.pf._master_pid()
        return [pid] if pid else []

    def start(self, fresh=True):
        if fresh:
            # A whole new instance, not `postsuper -d ALL`: deleting the
            # last test's thousands of queue files just before a test halved
            # Postfix's accept rate here (240-300 msg/s instead of 400-500);
            # the comparison is against Postfix at its best.
            self._new_instance()
        self.pf.start()

    def stop(self):
        self.pf.stop()

    def flush(self):
        subprocess.run(["postqueue", "-c", str(self.pf.config_dir), "-f"],
                       capture_output=True, timeout=30, check=True)


class OpenSMTPD:
    """OpenSMTPD 6.8 from Debian, unpacked (not installed: it conflicts with
    postfix). Its spool is compiled in (/var/spool/smtpd): one instance at a
    time. It runs in a private mount namespace whose /etc/resolv.conf says
    `lookup file`, so the client's reverse lookup reads /etc/hosts instead of
    waiting on DNS (Postfix and mxspool do no DNS here either)."""
    name = "opensmtpd"
    SPOOL = Path("/var/spool/smtpd")

    def __init__(self, workdir, sink_port, root):
        self.dir = Path(workdir) / "os"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.smtpd = str(Path(root) / "usr/sbin/smtpd")
        self.smtpctl = str(Path(root) / "usr/sbin/smtpctl")
        self.port = free_port()
        self.conf = self.dir / "smtpd.conf"
        self.conf.write_text(
            f"listen on {LOCALHOST} port {self.port} hostname mx2o.bench\n"
            f"action \"relay\" relay host smtp://{LOCALHOST}:{sink_port}\n"
            f"match from any for domain \"{DOMAIN}\" action \"relay\"\n")
        self.resolv = self.dir / "resolv.conf"
        self.resolv.write_text("lookup file\nnameserver 127.0.0.1\n")
        self.proc = None

    def roots(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def start(self, fresh=True):
        if fresh:
            shutil.rmtree(self.SPOOL, ignore_errors=True)
        cmd = (f"mount --bind {self.resolv} /etc/resolv.conf && "
               f"exec {self.smtpd} -d -f {self.conf}")
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", cmd],
                                     stdout=open(self.dir / "smtpd.log", "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: port_accepts(self.port) or self.proc.poll() is not None, 20,
                   what="opensmtpd to listen")
        if self.proc.poll() is not None:
            raise RuntimeError("smtpd exited:\n" + (self.dir / "smtpd.log").read_text()[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            pids = process_tree([self.proc.pid])
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for p in pids[1:]:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        self.proc = None

    drain_timeout = 60

    def prepare_drain(self, timeout=40):
        """After delivery errors OpenSMTPD disables the route (15 s, then
        longer) and `schedule all` cannot help until it is enabled again:
        wait for that before the drain clock starts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([self.smtpctl, "show", "routes"], capture_output=True,
                               text=True, timeout=10)
            flags = [ln.split()[4] for ln in r.stdout.splitlines() if len(ln.split()) > 4]
            if not any("D" in f for f in flags):
                return
            time.sleep(0.2)

    def flush(self):
        """`smtpctl schedule all` does not reliably restart delivery after the
        route was disabled (it delivered a few dozen, then stalled, in our
        tries); a restart makes the scheduler load and run every envelope at
        once. The drain clock starts when it listens again."""
        self.stop()
        self.start(fresh=False)
        t0 = time.monotonic()
        self.kick()
        return t0

    def kick(self):
        """Called every second while the drain runs: envelopes still waiting
        for their retry time are scheduled now."""
        subprocess.run([self.smtpctl, "schedule", "all"], capture_output=True, timeout=30)


# --- load ------------------------------------------------------------------------

def smtp_source(port, msgs, sessions, length, timeout=600):
    """Send MSGS messages of LENGTH bytes over SESSIONS parallel sessions (one
    connection per message, as MX traffic is); returns elapsed seconds."""
    cmd = ["smtp-source", "-m", str(msgs), "-s", str(sessions), "-l", str(length),
           "-f", SENDER, "-t", RCPT, "-M", "client.bench", f"{LOCALHOST}:{port}"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({r.returncode}): {r.stdout}{r.stderr}")
    return dt


def sectors_written(path):
    """512-byte sectors written so far to the block device holding PATH
    (field 7 of /sys/dev/block/M:m/stat), or None when it cannot be read."""
    st = os.stat(path)
    try:
        fields = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat") \
            .read_text().split()
        return int(fields[6])
    except (OSError, IndexError, ValueError):
        return None


def disk_dir(server):
    """Where SERVER's queue lives (whose device the write counter reads)."""
    return getattr(server, "SPOOL", None) or getattr(server, "dir", None) or server.workdir


def wait_sink(sink, n, timeout, kick=None):
    deadline = time.monotonic() + timeout
    next_kick = time.monotonic() + 1
    while sink.count() < n:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"sink has {sink.count()} of {n} messages after {timeout}s")
        if kick and now >= next_kick:
            kick()
            next_kick = now + 1
        time.sleep(0.01)
    return time.monotonic()


# --- compare -----------------------------------------------------------------------

def build_servers(args, workdir, sink_port):
    servers = []
    for name in args.servers.split(","):
        if name == "mxspool":
            servers.append(Mxspool(workdir, sink_port, args.binary,
                                   extra_options=args.mxspool_option))
        elif name == "postfix":
            servers.append(Postfix(workdir, sink_port))
        elif name == "opensmtpd":
            servers.append(OpenSMTPD(workdir, sink_port, args.opensmtpd_root))
        else:
            raise SystemExit(f"unknown server {name}")
    ALL.extend(servers)
    return servers


def start_fresh(server):
    """Starts SERVER on a new spool, after writing back what earlier tests
    left dirty, so no test pays for the previous one's disk writes (72 MiB
    after the 9 MiB test)."""
    os.sync()
    time.sleep(0.5)
    server.start(fresh=True)


def one_round(server, sink, args, res):
    """All tests for one server, each from a fresh spool with the primary down
    (a backup MX receives while the primary is away)."""
    def rec(key, val):
        res.setdefault(server.name, {}).setdefault(key, []).append(val)

    def peak(s):
        rec("peak_rss", s.peak_rss)
        rec("peak_pss", s.peak_pss)

    n = args.messages
    # 1. idle, then 4 KiB x 1 session
    start_fresh(server)
    rss, pss, nproc = idle_memory(server)
    rec("idle_rss", rss)
    rec("idle_pss", pss)
    rec("nproc_idle", nproc)
    before = sectors_written(disk_dir(server))
    with Sampler(server) as s:
        dt = smtp_source(server.port, n, 1, 4 * KIB)
    peak(s)
    rec("accept1", n / dt)
    # Flash wear: everything the device was given for these messages,
    # including what the file system writes back after the test.
    server.stop()
    os.sync()
    after = sectors_written(disk_dir(server))
    if before is not None and after is not None:
        rec("write1", (after - before) * 512 / KIB / n)

    # 2. 4 KiB x 8 sessions, then drain those to the primary once it is up
    start_fresh(server)
    with Sampler(server) as s:
        dt = smtp_source(server.port, n, 8, 4 * KIB)
    peak(s)
    rec("accept8", n / dt)
    wait_quiet(server, timeout=60)
    if hasattr(server, "prepare_drain"):
        server.prepare_drain()
    sink.start()
    timeout = min(args.drain_timeout, getattr(server, "drain_timeout", args.drain_timeout))
    try:
        with Sampler(server) as s:
            t0 = time.monotonic()
            t0 = server.flush() or t0
            try:
                t1 = wait_sink(sink, n, timeout=timeout,
                               kick=getattr(server, "kick", None))
                rec("drain_s", t1 - t0)
                rec("drain_rate", n / (t1 - t0))
            except RuntimeError as e:
                log(f"  {server.name}: drain did not finish: {e}")
                rec("drain_s", float("inf"))
                rec("drain_rate", sink.count() / timeout)
        peak(s)
    finally:
        sink.stop()
    server.stop()

    # 3. 1 MiB messages
    start_fresh(server)
    with Sampler(server) as s:
        dt = smtp_source(server.port, args.big_messages, args.big_sessions, MIB)
    peak(s)
    rec("accept_1m", args.big_messages / dt)
    server.stop()

    # 4. 8 sessions x 9 MiB (the memory bound)
    if args.huge:
        start_fresh(server)
        with Sampler(server) as s:
            smtp_source(server.port, 8, 8, 9 * MIB)
        rec("huge_rss", s.peak_rss)
        rec("huge_pss", s.peak_pss)
        server.stop()


ROWS = [
    # key, label, unit, higher_is_better, fmt
    ("accept1", "accept 4 KiB, 1 session", "msg/s", True, "{:.0f}"),
    ("accept8", "accept 4 KiB, 8 sessions", "msg/s", True, "{:.0f}"),
    ("accept_1m", "accept 1 MiB", "msg/s", True, "{:.1f}"),
    ("write1", "disk writes per 4 KiB message (1 session)", "KiB", False, "{:.1f}"),
    ("drain_s", "drain queued 4 KiB messages", "s", False, "{:.2f}"),
    ("drain_rate", "drain rate", "msg/s", True, "{:.0f}"),
    ("idle_rss", "idle RSS (all processes)", "MiB", False, "{:.1f}"),
    ("idle_pss", "idle PSS (all processes)", "MiB", False, "{:.1f}"),
    ("peak_rss", "peak RSS under load (sum)", "MiB", False, "{:.1f}"),
    ("peak_pss", "peak PSS under load (sum)", "MiB", False, "{:.1f}"),
    ("huge_rss", "peak RSS, 8 sessions x 9 MiB", "MiB", False, "{:.1f}"),
    ("huge_pss", "peak PSS, 8 sessions x 9 MiB", "MiB", False, "{:.1f}"),
    ("nproc_idle", "processes (idle)", "", False, "{:.0f}"),
    ("installed", "installed size: executables + shared libraries beyond libc", "MiB", False,
     "{:.2f}"),
    ("router", "router binary (mipsel, stripped, with TLS)", "MiB", False, "{:.2f}"),
]
MEM_KEYS = {"idle_rss", "idle_pss", "peak_rss", "peak_pss", "huge_rss", "huge_pss"}

TARGETS = {
    "accept1": ("postfix", 1.5, "≥ 1.5× Postfix"),
    "accept8": ("postfix", 3.0, "≥ 3× Postfix"),
    "drain_s": ("postfix", 1.0, "≤ Postfix (2 connections)"),
    "drain_rate": ("postfix", 1.0, "≥ Postfix"),
    "idle_rss": (None, 3.0, "< 3 MiB"),
    "huge_rss": (None, 16.0, "< 16 MiB"),
    "router": (None, 2.5, "< 2.5 MiB"),
}


# The C library's own shared objects: every server needs one, and on a
# router it is already there (musl's single libc.so holds all of these).
LIBC_PARTS = {"libc", "libm", "libpthread", "libdl", "librt", "libresolv", "libutil",
              "libanl", "libmvec", "ld-linux-x86-64", "ld-linux-aarch64", "ld-musl-x86_64"}


def server_files(args, name):
    """The executables each server installs and runs (stripped, as packaged)."""
    if name == "mxspool":
        return [Path(args.binary)]
    if name == "postfix":
        files = list(Path("/usr/lib/postfix/sbin").glob("*")) + \
            list(Path("/usr/lib/postfix").glob("libpostfix-*.so*")) + [Path("/usr/sbin/postfix")]
        return [f for f in files if f.is_file() and not f.is_symlink()]
    if name == "opensmtpd":
        return [Path(args.opensmtpd_root) / "usr/sbin/smtpd"]
    return []


def shared_libraries(files):
    """The shared libraries the files load (ldd), the C library's parts left out."""
    libs = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s+(/\S+)", line)
            if m and m.group(1).rsplit("/", 1)[-1].split(".so")[0] not in LIBC_PARTS:
                libs.add(os.path.realpath(m.group(1)))
    return sorted(libs - {os.path.realpath(f) for f in files})


def binary_sizes(args, names):
    """The size rows, and the note printed under the table. installed: what
    a server needs on disk beyond libc; the static musl mxspool carries its
    TLS stack, database and C library inside, the others load OpenSSL,
    Berkeley DB, ICU, libevent... The executables alone go in the note."""
    out, alone, static = {}, [], False
    for name in names:
        files = server_files(args, name)
        own = sum(f.stat().st_size for f in files)
        libs = shared_libraries(files)
        alone.append(f"{name} {own / MIB:.2f} MiB")
        static |= name == "mxspool" and not libs
        out[name] = {"installed": [(own + sum(os.path.getsize(x) for x in libs)) / MIB]}
        log(f"{name}: executables {own / MIB:.2f} MiB; libraries:",
            " ".join(Path(x).name for x in libs) or "none")
    note = "Executables alone (stripped, x86_64): " + ", ".join(alone) + "."
    if static:
        note += " mxspool is static: its TLS stack, database and C library are inside."
    if args.router_binary and "mxspool" in out:
        out["mxspool"]["router"] = [os.path.getsize(args.router_binary) / MIB]
    else:
        note += " Router binary not measured: no mipsel build (cross/setup.sh installs the tools)."
    return out, note


def load_note():
    try:
        la = open("/proc/loadavg").read().split()[:3]
    except OSError:
        la = ["?"] * 3
    return f"load average {' '.join(la)} on {os.cpu_count()} CPUs"


def table(res, names, args, started_load, ended_load):
    med = {}
    for s in names:
        for key, *_ in ROWS:
            vals = res.get(s, {}).get(key)
            if vals:
                v = statistics.median(vals)
                med[(s, key)] = v / 1024 if key in MEM_KEYS else v
    others = [s for s in names if s != "mxspool"]
    head = ["figure", "unit"] + names + [f"mxspool vs {o}" for o in others] + ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit, higher, fmt in ROWS:
        if not any((s, key) in med for s in names):
            continue
        row = [label, unit]
        for s in names:
            v = med.get((s, key))
            row.append("–" if v is None else "did not finish" if v == float("inf")
                       else fmt.format(v))
        for o in others:
            a, b = med.get(("mxspool", key)), med.get((o, key))
            if a and b and key != "nproc_idle":
                f = a / b if higher else b / a
                row.append(f"{f:.2f}× {'better' if f >= 1 else 'worse'}"
                           if 0 < f < float("inf") else "–")
            else:
                row.append("–")
        tgt = TARGETS.get(key)
        met = ""
        if tgt and ("mxspool", key) in med:
            ref, factor, text = tgt
            a = med[("mxspool", key)]
            if ref is None:
                met = "yes" if a < factor else "no"
            elif (ref, key) in med:
                b = med[(ref, key)]
                met = "yes" if ((a / b) if higher else (b / a)) >= factor else "no"
            row += [text, met]
        else:
            row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    nr = max((len(s.get("accept1", [])) for s in res.values()), default=0)
    hdr = (f"mxspool benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.uname().nodename}, "
           f"{os.cpu_count()} CPUs; medians of {nr} round(s); {args.messages} × 4 KiB messages, "
           f"{args.big_messages} × 1 MiB over {args.big_sessions} session(s); "
           f"one connection per message; primary down while receiving.\n"
           f"Machine load: {started_load} at start, {ended_load} at end. "
           f"The machine is shared: figures from a loaded machine are indicative; "
           f"compare ratios from the same run, not absolute numbers across runs.\n"
           f"Ratios: >1 means mxspool is better (faster, or less memory).\n")
    return hdr + "\n" + "\n".join(lines) + "\n"


def cmd_compare(args):
    names = args.servers.split(",")
    started = load_note()
    workdir = tempfile.mkdtemp(prefix="mxb-", dir=args.tmp)
    os.chmod(workdir, 0o755)
    sink = Sink(workdir, free_port())
    ALL.append(sink)
    servers = build_servers(args, workdir, sink.port)
    res = {}
    for r in range(args.rounds):
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        for srv in order:
            log(f"round {r + 1}/{args.rounds}: {srv.name}")
            try:
                one_round(srv, sink, args, res)
            finally:
                srv.stop()
                sink.stop()
            log("  so far:", {k: [round(x, 1) for x in v] for k, v in res.get(srv.name, {}).items()})
    sizes, note = binary_sizes(args, names)
    for name, v in sizes.items():
        res.setdefault(name, {}).update(v)
    out = table(res, names, args, started, load_note()) + "\n" + note + "\n"
    print(out)
    if args.output:
        Path(args.output).write_text(out)
        log("written to", args.output)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


# --- mem -----------------------------------------------------------------------------

def cmd_mem(args):
    workdir = tempfile.mkdtemp(prefix="mxm-", dir=args.tmp)
    sink = Sink(workdir, free_port())
    mx = Mxspool(workdir, sink.port, args.binary)
    ALL.extend([mx, sink])
    peaks, idles = [], []
    for r in range(args.rounds):
        mx.start(fresh=True)
        rss, pss, _ = idle_memory(mx)
        idles.append(rss)
        with Sampler(mx, interval=0.02) as s:
            smtp_source(mx.port, args.sessions, args.sessions, args.size_mib * MIB)
        peaks.append(s.peak_rss)
        log(f"round {r + 1}: idle RSS {rss / 1024:.2f} MiB (PSS {pss / 1024:.2f}), "
            f"peak RSS {s.peak_rss / 1024:.2f} MiB (PSS {s.peak_pss / 1024:.2f})")
        mx.stop()
    idle, peak = statistics.median(idles) / 1024, statistics.median(peaks) / 1024
    print(f"mxspool memory ({args.sessions} sessions × {args.size_mib} MiB, primary down, "
          f"median of {args.rounds}; {load_note()}):")
    print(f"  idle RSS {idle:.2f} MiB  (target < 3 MiB: {'met' if idle < 3 else 'MISSED'})")
    print(f"  peak RSS {peak:.2f} MiB  (target < 16 MiB: {'met' if peak < 16 else 'MISSED'})")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if idle < 3 and peak < 16 else 1


# --- outage --------------------------------------------------------------------------

def status_kib(pid, key):
    return _status_kb(pid, key)


def reset_peak(pid):
    """Starts VmHWM again from the current RSS (clear_refs 5, Linux >= 4.0);
    False when the kernel does not let us."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def listing_peak(mx):
    """One `queue list --json` against the queued mail: (RSS before, peak RSS
    during it, seconds, bytes of output), KiB. The peak is the kernel's
    VmHWM, reset just before, so nothing before the listing counts."""
    pid = mx.proc.pid
    exact = reset_peak(pid)
    before = status_kib(pid, "VmRSS")
    with Sampler(mx, interval=0.02) as s:
        t0 = time.monotonic()
        r = subprocess.run([mx.binary, "queue", "list", "--json", "-c", str(mx.conf)],
                           capture_output=True, timeout=600)
        dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"queue list failed: {r.stderr.decode(errors='replace')}")
    peak = status_kib(pid, "VmHWM") if exact else s.peak_rss
    return before, peak, dt, len(r.stdout)


def wait_deferred(mx, n, timeout):
    """Until every queued message had its first attempt (N deferrals in the
    daemon's log): a quiet moment comes sooner, while mail waits out the
    5 s a refused connection marks its destination down. The log, not
    `queue stats`: asking the daemon would change what is measured."""
    seen, offset = [0], [0]

    def deferred():
        with open(mx.dir / "mxspool.log", "rb") as f:
            f.seek(offset[0])
            data = f.read()
        cut = data.rfind(b"\n") + 1
        seen[0] += data[:cut].count(b"status=deferred")
        offset[0] += cut
        return seen[0] >= n
    try:
        wait_until(deferred, timeout, interval=0.5, what=f"{n} deferrals")
    except AssertionError as e:
        log(f"  {e}; measuring anyway")


def outage_one(args, workdir, n):
    """One queue length: receive N messages with the primary down, look at
    the queue, then bring the primary up and drain it."""
    sink = Sink(workdir, free_port())
    mx = Mxspool(Path(workdir) / f"n{n}", sink.port, args.binary,
                 extra_options=args.mxspool_option)
    ALL.extend([mx, sink])
    row = {"n": n}
    try:
        os.sync()
        mx.start(fresh=True)
        with Sampler(mx) as s:
            dt = smtp_source(mx.port, n, args.sessions, args.size, timeout=3600)
            # The first attempts (refused, all deferred) are part of the outage.
            wait_deferred(mx, n, timeout=600)
            wait_quiet(mx, timeout=600)
        row.update(accept=n / dt, peak_accept=s.peak_rss)
        time.sleep(1)
        row["idle"] = status_kib(mx.proc.pid, "VmRSS")
        row["list_before"], row["list_peak"], row["list_s"], row["list_bytes"] = listing_peak(mx)
        sink.start()
        with Sampler(mx) as s:
            t0 = time.monotonic()
            mx.flush()
            try:
                t1 = wait_sink(sink, n, timeout=args.drain_timeout)
                row.update(drain_s=t1 - t0, drain=n / (t1 - t0))
            except RuntimeError as e:
                log(f"  drain did not finish: {e}")
                row.update(drain_s=None, drain=sink.count() / args.drain_timeout,
                           drained=sink.count())
        row["peak_drain"] = s.peak_rss
    finally:
        mx.stop()
        sink.stop()
    log(f"{n}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in row.items()))
    return row


def drain_cell(r, args):
    if r["drain_s"] is not None:
        return f"{r['drain_s']:.2f}"
    return f"did not finish: {r['drained']} of {r['n']} in {args.drain_timeout:.0f} s"


def cmd_outage(args):
    """Peak RSS, accept and drain rate against the queue length of a long
    outage (bench/README.md "Long outage")."""
    workdir = tempfile.mkdtemp(prefix="mxo-", dir=args.tmp)
    os.chmod(workdir, 0o755)
    started = load_note()
    rows = [outage_one(args, workdir, int(n)) for n in args.queued.split(",")]
    mib = 1024.0
    out = [f"mxspool long outage, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
           f"{os.uname().nodename}, {os.cpu_count()} CPUs; {Path(args.binary).name} "
           f"({args.binary}); {args.size} B messages over {args.sessions} sessions, "
           f"one per connection, primary down; {started} at start, {load_note()} at end.",
           "",
           "| queued | accept (msg/s) | peak RSS receiving (MiB) | RSS idle, queued (MiB) "
           "| `queue list --json`: RSS before → peak (MiB) | its time (s) | its output (MiB) "
           "| drain (s) | drain (msg/s) | peak RSS draining (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['n']} | {r['accept']:.0f} | {r['peak_accept'] / mib:.1f} "
                   f"| {r['idle'] / mib:.1f} | {r['list_before'] / mib:.1f} → "
                   f"{r['list_peak'] / mib:.1f} | {r['list_s']:.2f} "
                   f"| {r['list_bytes'] / MIB:.1f} | {drain_cell(r, args)} | {r['drain']:.0f} "
                   f"| {r['peak_drain'] / mib:.1f} |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)
        log("written to", args.output)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


# --- callgrind -----------------------------------------------------------------------

def callgrind_run(args, workdir, n):
    sink = Sink(workdir, free_port())
    mx = Mxspool(Path(workdir) / f"n{n}", sink.port, args.binary)
    out = Path(workdir) / f"callgrind.{n}.out"
    mx.runner = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
    ALL.extend([mx, sink])
    sink.start()
    try:
        mx.start(fresh=True, timeout=120)
        wait_quiet(mx, timeout=60)
        for _ in range(n):  # one session, strictly sequential: deterministic batches
            smtp_source(mx.port, 1, 1, 4 * KIB)
        wait_sink(sink, n, timeout=300)
        wait_quiet(mx, timeout=60)
        mx.stop(timeout=120)
    finally:
        mx.stop()
        sink.stop()
    total = None
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
    if total is None:
        raise RuntimeError(f"no totals in {out}")
    return total


def cmd_callgrind(args):
    workdir = tempfile.mkdtemp(prefix="mxc-", dir=args.tmp)
    a = callgrind_run(args, workdir, args.low)
    b = callgrind_run(args, workdir, args.high)
    per = (b - a) / (args.high - args.low)
    print(f"callgrind: {args.low} messages: {a:,} Ir; {args.high} messages: {b:,} Ir")
    print(f"instructions per accepted message (4 KiB, received, spooled, delivered to "
          f"smtp-sink): {per:,.0f} Ir")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "target/release/mxspool"))
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--messages", type=int, default=2000)
    c.add_argument("--big-messages", type=int, default=50)
    c.add_argument("--big-sessions", type=int, default=1)
    c.add_argument("--no-huge", dest="huge", action="store_false",
                   help="skip the 8 x 9 MiB test")
    c.add_argument("--drain-timeout", type=float, default=300)
    c.add_argument("--servers", default="mxspool,postfix,opensmtpd")
    c.add_argument("--mxspool-option", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra option for mxspool's main section (e.g. journal_size=0)")
    c.add_argument("--router-binary", default=None,
                   help="the mipsel release-z build, for the router binary row")
    c.add_argument("--opensmtpd-root", default=os.environ.get(
        "OPENSMTPD_ROOT", "/var/tmp/mxspool-bench/opensmtpd"))
    c.add_argument("--output", default=str(REPO / "bench/results.md"))
    m = sub.add_parser("mem")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--sessions", type=int, default=8)
    m.add_argument("--size-mib", type=int, default=9)
    o = sub.add_parser("outage")
    o.add_argument("--queued", default="1000,10000,50000",
                   help="queue lengths to measure, comma-separated")
    o.add_argument("--sessions", type=int, default=8)
    o.add_argument("--size", type=int, default=4 * KIB, help="message size in bytes")
    o.add_argument("--drain-timeout", type=float, default=300)
    o.add_argument("--mxspool-option", action="append", default=[], metavar="NAME=VALUE")
    o.add_argument("--output", default=None, help="also write the table to this file")
    g = sub.add_parser("callgrind")
    g.add_argument("--low", type=int, default=20)
    g.add_argument("--high", type=int, default=120)
    args = ap.parse_args()
    try:
        if args.cmd == "compare":
            return cmd_compare(args)
        if args.cmd == "mem":
            return cmd_mem(args)
        if args.cmd == "outage":
            return cmd_outage(args)
        return cmd_callgrind(args)
    finally:
        for x in reversed(ALL):
            try:
                x.stop()
            except Exception as e:  # noqa: BLE001 - best-effort cleanup
                log("cleanup:", e)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    sys.exit(main() or 0)
