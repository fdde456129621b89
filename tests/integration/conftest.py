"""Fixtures of the integration suite (see tests/README-testing.md).

- workdir: a fresh per-test directory (mode 0755, so Postfix's unprivileged
  processes can traverse it); kept when the test fails, removed otherwise.
- postfix_primary: factory -> PostfixInstance (harness_postfix.py).
- primary: a started Postfix for example.com with alice, bob, carol, dave.
- sink_factory / sink: capture SMTP servers (harness_sink.py).
- nsd: a private authoritative DNS server, not started (harness_dns.py).
- mxspool: factory -> Mxspool (harness_mxspool.py), started by default. Its
  teardown fails the test (an error) when a daemon died during it without
  the harness stopping it (stop(), kill9(), restart(),
  send_signal(..., expect_exit=True)), when a graceful stop did not exit 0,
  or when the log reports a panic.
- mxspool_cmd: run `mxspool ARGS...` and capture exit status and output.
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness_primaries  # noqa: E402
from harness_dns import NsdServer  # noqa: E402
from harness_mxspool import Mxspool, run_command  # noqa: E402
from harness_postfix import PostfixInstance  # noqa: E402
from harness_sink import SmtpSink  # noqa: E402
from harness_util import log_tail  # noqa: E402

TEST_TIMEOUT = int(os.environ.get("MXSPOOL_TEST_TIMEOUT", "180"))
KEEP = os.environ.get("MXSPOOL_KEEP_TMP", "") not in ("", "0")


# --- per-test timeout and failure bookkeeping ---------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    if getattr(request.node, "_daemon_ended_badly", False):
        return True
    return any(getattr(request.node, "rep_" + w, None) is not None
               and getattr(request.node, "rep_" + w).failed
               for w in ("setup", "call"))


@pytest.fixture(autouse=True)
def _test_timeout(request):
    """A hung daemon must not hang CI: SIGALRM after MXSPOOL_TEST_TIMEOUT s."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT}s (MXSPOOL_TEST_TIMEOUT)")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def _run_dir():
    base = os.environ.get("MXSPOOL_TEST_TMP")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="mxspool-it-", dir=base))
    os.chmod(d, 0o755)
    yield d
    if not KEEP and not any(d.iterdir()):
        shutil.rmtree(d, ignore_errors=True)


_counter = [0]


@pytest.fixture
def workdir(request, _run_dir):
    # Short on purpose: Postfix's and mxspool's unix sockets live below it
    # and a unix socket path may not exceed 107 bytes.
    _counter[0] += 1
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    d = _run_dir / f"{_counter[0]:03d}-{name[5:25] if name.startswith('test_') else name[:20]}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    os.chmod(d, 0o755)
    yield d
    if _failed(request) or KEEP:
        print(f"\n[harness] files of this test kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


# --- peers --------------------------------------------------------------

def _factory(made, build):
    """The `make` of a factory fixture: make(*args, start=True, **kw) ->
    BUILD(len(MADE), *args, **kw), kept in MADE (for the teardown) and
    started unless START is false."""
    def make(*args, start=True, **kw):
        instance = build(len(made), *args, **kw)
        made.append(instance)
        if start:
            instance.start()
        return instance
    return make


@pytest.fixture
def postfix_primary(request, workdir):
    """Factory: postfix_primary(domains=("example.com",), users=("alice",),
    start=True, port=None, name=None, extra_main_cf=None, host='127.0.0.1',
    hostname=None) -> PostfixInstance."""
    instances = []

    def build(n, domains=("example.com",), users=("alice",), name=None, **kw):
        name = name or f"pf{n}"
        return PostfixInstance(workdir / name, domains=domains, users=users, name=name, **kw)

    yield _factory(instances, build)
    failed = _failed(request)
    for pf in instances:
        try:
            pf.stop()
        finally:
            if failed:
                print(f"\n--- postfix {pf.name} maillog ({pf.log_file}) ---\n{pf.log()[-20000:]}")


@pytest.fixture
def primary(postfix_primary):
    """A running Postfix primary for example.com: alice, bob, carol, dave."""
    return postfix_primary(users=("alice", "bob", "carol", "dave"))


@pytest.fixture
def nsd(request, workdir):
    """A private authoritative NSD on 127.0.0.1:PORT (harness_dns.py), not
    started: add zones with nsd.zone(origin, records), then nsd.start();
    point mxspool at it with resolver=nsd.resolver."""
    server = NsdServer(workdir / "dns")
    yield server
    try:
        server.stop()
    finally:
        if _failed(request):
            print(f"\n--- nsd (:{server.port}) log ---\n{server.log()[-10000:]}")
            for origin, (serial, records) in server.zones.items():
                print(f"--- zone {origin} (serial {serial}) ---\n" + "\n".join(records))


@pytest.fixture
def sink_factory(request):
    """Factory: sink_factory(**SmtpSink kwargs) -> SmtpSink."""
    sinks = []

    def make(**kw):
        s = SmtpSink(**kw)
        sinks.append(s)
        return s

    yield make
    failed = _failed(request)
    for s in sinks:
        if failed:
            print(f"\n--- {s.describe()}")
        s.close()


@pytest.fixture
def sink(sink_factory):
    return sink_factory()


def _real_primary(request, workdir, kind, cls):
    """The factory fixture of a real primary of harness_primaries.py,
    skipped (with the reason) when the server cannot be had here."""
    reason = harness_primaries.ensure(kind)
    if reason:
        pytest.skip(reason)
    servers = []
    yield _factory(servers, lambda n, **kw: cls(workdir / f"{kind[:2]}{n}", **kw))
    failed = _failed(request)
    for s in servers:
        try:
            s.stop()
        finally:
            if failed:
                print(f"\n--- {s.name} (:{s.port}) log ---\n{s.log()[-20000:]}")


@pytest.fixture
def exim(request, workdir):
    """Factory: exim(start=True, users=('alice', 'bob'), port=None) -> EximServer."""
    yield from _real_primary(request, workdir, "exim", harness_primaries.EximServer)


@pytest.fixture
def opensmtpd(request, workdir):
    """Factory: opensmtpd(start=True, users=..., port=None) -> OpenSmtpd."""
    yield from _real_primary(request, workdir, "opensmtpd", harness_primaries.OpenSmtpd)


@pytest.fixture
def postgrey(request, workdir):
    """Factory: postgrey(start=True, delay=5) -> Postgrey."""
    yield from _real_primary(request, workdir, "postgrey", harness_primaries.Postgrey)


# --- the daemon ---------------------------------------------------------

@pytest.fixture
def mxspool(request, workdir):
    """Factory: mxspool(domains, start=True, name=None, hostname='mx2.test',
    smarthost=None, retry=None, port=None, **uci_main_options) -> Mxspool.
    DOMAINS: dicts from harness_mxspool.domain(), or (name, deliver_to) tuples."""
    daemons = []
    yield _factory(daemons, lambda n, domains, name=None, **kw:
                   Mxspool(workdir / (name or f"mx{n}"), domains, **kw))
    failed = _failed(request)
    bad = []
    for mx in daemons:
        try:
            # Before stop() reaps it: did the daemon die during the test
            # (a crash, a panic with panic=abort, a signal) although nothing
            # the harness knows of stopped it?
            if mx.proc is not None and mx.proc.poll() is not None:
                mx.check_exit("during the test")
            mx.stop()  # a graceful stop must exit 0 (README: exit status 0 success)
        except Exception as e:  # noqa: BLE001 - reported below, the other daemons still stop
            mx.problems.append(f"stopping it raised {e!r}")
        finally:
            problems = mx.problems_at_teardown()
            if problems:
                bad.append(f"{mx.workdir.name}:\n  " + "\n  ".join(problems)
                           + f"\n  --- log tail ({mx.log_path}) ---\n"
                           + log_tail(mx.log()))
            if failed or problems:
                print(f"\n--- mxspool log ({mx.log_path}) ---\n{mx.log()[-30000:]}")
                try:
                    print(f"--- config ({mx.config_path}) ---\n{mx.config_path.read_text()}")
                except OSError:
                    pass
    if bad:
        request.node._daemon_ended_badly = True  # keep the test's files
        pytest.fail("mxspool ended badly (a test fails when a daemon it started dies, "
                    "panics, or does not stop cleanly):\n" + "\n".join(bad), pytrace=False)


@pytest.fixture
def mxspool_cmd():
    """mxspool_cmd(*args, timeout=60) -> CompletedProcess (text mode)."""
    return run_command
