"""Drive the mxspool binary: write a UCI config, run the daemon, run its
other commands.

Env: MXSPOOL_BIN (default target/debug/mxspool, relative to the repository
root), MXSPOOL_RUNNER (a command prefix such as `qemu-mips -L /sysroot`,
empty by default), MXSPOOL_START_TIMEOUT (seconds, default 20).
"""

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from harness_util import (LOCALHOST, exit_problem, free_port, panic_lines, port_accepts,
                          read_text, wait_until)

REPO_ROOT = Path(__file__).resolve().parents[2]


def binary_path():
    p = Path(os.environ.get("MXSPOOL_BIN") or "target/debug/mxspool")
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def runner_prefix():
    return shlex.split(os.environ.get("MXSPOOL_RUNNER", ""))


def command(*args):
    return runner_prefix() + [str(binary_path()), *map(str, args)]


def run_command(*args, timeout=60, input=None, text=True):
    """Run `mxspool ARGS...` to completion; returns CompletedProcess (text,
    or bytes with TEXT=False)."""
    return subprocess.run(command(*args), capture_output=True, text=text,
                          timeout=timeout, input=input)


def quote(v):
    v = str(v)
    if "'" not in v:
        return f"'{v}'"
    if '"' not in v and "\\" not in v and "$" not in v:
        return f'"{v}"'
    raise ValueError(f"cannot quote {v!r} for UCI")


def domain(name, deliver_to, verify="none", **extra):
    """A `config domain` section. DELIVER_TO: 'mx', 'HOST[:PORT]', or an int
    port meaning 127.0.0.1:PORT."""
    if isinstance(deliver_to, int):
        deliver_to = f"{LOCALHOST}:{deliver_to}"
    d = {"name": name, "deliver_to": deliver_to, "verify": verify}
    d.update(extra)
    return d


def render_uci(main: dict, domains: list) -> str:
    """UCI text. Values that are lists become `list` lines, None is skipped."""
    def section(kind, name, opts):
        out = [f"config {kind} '{name}'"]
        for k, v in opts.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                out += [f"\tlist {k} {quote(x)}" for x in v]
            else:
                out.append(f"\toption {k} {quote(v)}")
        return "\n".join(out) + "\n"

    text = section("mxspool", "main", main)
    for i, d in enumerate(domains):
        text += "\n" + section("domain", f"d{i}", d)
    return text


class Mxspool:
    """One daemon instance. API: start(), stop(), kill9(), restart(),
    send_signal(sig, expect_exit=False), log(), run(*args) for other
    commands with -c, port, host, config_path, spool_dir, control_socket,
    write_config(), proc.

    The harness knows which exits it caused: stop() (SIGTERM: the daemon
    must exit 0), kill9(), and send_signal(..., expect_exit=True). Any
    other exit of a daemon it started is a death, recorded in `problems`
    (checked when the next start() replaces the process, by stop() and
    kill9(), and by check_exit()); conftest.py's teardown fails the test
    on any problem and on any panic in the log (problems_at_teardown())."""

    def __init__(self, workdir: Path, domains, hostname="mx2.test", smarthost=None,
                 retry=None, port=None, **options):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOCALHOST
        self.port = port or free_port()
        self.config_path = self.workdir / "mxspool.conf"
        self.spool_dir = self.workdir / "spool"
        self.control_socket = self.workdir / "ctl.sock"
        self.log_path = self.workdir / "mxspool.log"
        main = {
            "hostname": hostname,
            "listen": [f"{LOCALHOST}:{self.port}"],
            "spool_dir": str(self.spool_dir),
            "control_socket": str(self.control_socket),
            "syslog": "0",
            "log_level": "debug",
        }
        if smarthost is not None:
            if isinstance(smarthost, int):
                smarthost = f"{LOCALHOST}:{smarthost}"
            main["smarthost"] = smarthost
        if retry is not None:
            main["retry"] = [retry] if isinstance(retry, str) else list(retry)
        main.update(options)
        self.main = main
        self.domains = [d if isinstance(d, dict) else domain(*d) for d in domains]
        self.proc = None
        # What the harness expects of the current process's exit: None (it
        # must not exit), "graceful" (SIGTERM sent: exit 0), "any" (SIGKILL).
        self._expect = None
        self._exit_checked = False
        self.problems = []
        # Extra environment for the daemon (e.g. libfaketime's variables).
        self.env = {}
        # A command in front of the daemon's (e.g. strace -f -o FILE): the
        # harness then signals the whole process group, so SIGTERM reaches
        # the daemon (strace -o FILE PROG blocks it and exits with the
        # daemon's own status).
        self.wrapper = []
        self._logf = None
        self.start_timeout = float(os.environ.get("MXSPOOL_START_TIMEOUT", "20"))
        self.write_config()

    def write_config(self):
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_uci(self.main, self.domains))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def check_exit(self, when="during the test"):
        """Record the current process's exit in `problems` if the harness
        did not cause it (or a SIGTERM did not end it with status 0).
        Returns the problem or None. Each process is judged once."""
        if self.proc is None or self._exit_checked or self.proc.poll() is None:
            return None
        self._exit_checked = True
        problem = exit_problem(f"mxspool {self.workdir.name}", self.proc, self._expect, when)
        if problem:
            self.problems.append(problem)
        return problem

    def problems_at_teardown(self):
        """Everything that makes the test fail at teardown: recorded
        problems, and every panic the log reports (any process)."""
        return self.problems + [f"mxspool {self.workdir.name} logged a panic: {line.strip()}"
                                for line in panic_lines(self.log())]

    def send_signal(self, sig, expect_exit=False):
        """Send SIG to the daemon. EXPECT_EXIT: the test means to end it
        this way (SIGTERM: it must then exit 0; another signal: any exit);
        otherwise (SIGHUP, a reload) an exit is a death."""
        assert self.running, "not running"
        if expect_exit:
            self._expect = "graceful" if sig == signal.SIGTERM else "any"
        self._signal(sig)

    def _signal(self, sig):
        if self.wrapper:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def start(self):
        assert not self.running, "already running"
        self.check_exit("before this start()")
        self._close_log()
        if port_accepts(self.port):
            raise RuntimeError(f"port {self.port} is already taken before mxspool starts")
        self._logf = open(self.log_path, "ab")
        self._logf.write(f"=== start {time.strftime('%H:%M:%S')} ===\n".encode())
        self._logf.flush()
        self.proc = subprocess.Popen(
            list(self.wrapper) + command("run", "-c", self.config_path),
            stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        self._expect = None
        self._exit_checked = False
        deadline = time.monotonic() + self.start_timeout
        while not port_accepts(self.port, timeout=0.3):
            if self.proc.poll() is not None:
                # Reported here (the test fails with the log); not again.
                self._exit_checked = True
                raise RuntimeError(
                    f"mxspool exited with {self.proc.returncode} before listening "
                    f"on {self.port}\n--- log ---\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(
                    f"mxspool did not listen on {self.port} within "
                    f"{self.start_timeout}s\n--- log ---\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, grace=10):
        """SIGTERM, then SIGKILL after GRACE seconds. Returns the exit status.
        A daemon found already dead (not by the harness's doing), one that
        needs the SIGKILL, or one that exits non-zero is a recorded problem."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._expect = "graceful"
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.problems.append(f"mxspool {self.workdir.name} (pid {self.proc.pid}) "
                                     f"did not exit within {grace}s of SIGTERM: SIGKILLed")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # a wrapper's child too
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
            self.check_exit("at stop()")
        else:
            self.check_exit("before stop()")
        rc = self.proc.returncode
        self._close_log()
        return rc

    def kill9(self):
        """SIGKILL the daemon (its whole process group, so a runner such as
        qemu dies with it)."""
        if self.proc is None:
            return
        self.check_exit("before kill9()")
        if self.proc.poll() is None:
            self._expect = "any"
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._close_log()

    def restart(self):
        self.stop()
        wait_until(lambda: not port_accepts(self.port, timeout=0.2), 10,
                   what=f"port {self.port} to be released")
        return self.start()

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def log(self):
        return read_text(self.log_path)

    def rss_kb(self):
        """The daemon process's VmRSS in kB (under MXSPOOL_RUNNER: the
        emulator's)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def run(self, *args, timeout=60, input=None, text=True):
        """`mxspool ARGS... -c CONFIG` to completion (e.g. run("queue",
        "list", "--json"), or run("run") for a start that must fail)."""
        return run_command(*args, "-c", self.config_path, timeout=timeout, input=input,
                           text=text)

    def queue(self, *args, ok=True, timeout=30):
        """`mxspool queue ARGS... -c CONFIG`; with OK it must exit 0."""
        r = self.run("queue", *args, timeout=timeout)
        if ok:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def queue_json(self, *args):
        """`mxspool queue ARGS... --json` (it must exit 0), parsed: e.g.
        queue_json("list") (a list of dicts), queue_json("stats")."""
        r = self.queue(*args, "--json")
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"queue {' '.join(args)} --json is not JSON: {e}\n{r.stdout!r}")

    def wait_log(self, pattern, timeout=10):
        import re
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout,
                          what=f"log line matching {pattern!r}")
