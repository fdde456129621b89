"""STARTTLS both ways:
receiving with rustls (TLS 1.2 and 1.3 only, plaintext behind STARTTLS
discarded, EHLO state forgotten, `with ESMTPS`), bad certificate files as
configuration errors, and opportunistic TLS when delivering (a real Postfix
over TLS, fallback to plaintext when the handshake breaks, pinning)."""

import json
import re
import shutil
import signal
import smtplib
import ssl
import subprocess

import pytest

from harness_mxspool import domain
from harness_tls import client_context, make_cert, server_context, spki_pin
from harness_util import RawSmtp, make_message, send_mail, wait_until


@pytest.fixture
def certs(workdir):
    return make_cert(workdir / "certs", "mx2.test")


@pytest.fixture
def tls_relay(mxspool, sink, certs):
    """mxspool with a certificate, relaying example.com to the sink."""
    cert, key = certs
    return mxspool([domain("example.com", sink.port)], retry="1s 1h",
                   tls_cert=str(cert), tls_key=str(key))


def starttls(raw, version=None):
    """EHLO, STARTTLS, handshake on RAW's socket. Returns the TLS socket."""
    raw.greeting()
    r = raw.ehlo()
    assert r.code == 250 and any(l.upper() == "STARTTLS" for l in r.lines), r
    r = raw.cmd("STARTTLS")
    assert r.code == 220, r
    assert raw.buf == b"", f"nothing may follow the 220 to STARTTLS: {raw.buf!r}"
    raw.sock = client_context(version).wrap_socket(raw.sock)
    return raw.sock


# --- receiving -----------------------------------------------------------

def test_starttls_upgrade_forgets_ehlo_and_is_not_offered_again(tls_relay):
    """Protects RFC 3207 on our side: STARTTLS is offered with a certificate,
    a real TLS client upgrades, the session state is reset (MAIL before a new
    EHLO is 503) and STARTTLS is not offered (nor accepted) again."""
    with RawSmtp(tls_relay.port) as raw:
        tls = starttls(raw)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        r = raw.cmd("MAIL FROM:<a@sender.test>")
        assert r.code == 503, f"the EHLO before STARTTLS must be forgotten: {r}"
        r = raw.ehlo()
        assert r.code == 250, r
        assert not any(l.upper().startswith("STARTTLS") for l in r.lines), r
        r = raw.cmd("STARTTLS")
        assert r.code in (503, 554), f"a second STARTTLS must be refused: {r}"
        assert raw.cmd("MAIL FROM:<a@sender.test>").code == 250


def test_no_starttls_without_certificate(mxspool, sink):
    """Protects: without tls_cert/tls_key STARTTLS is neither offered nor
    accepted (a client must not be told to upgrade to nothing)."""
    mx = mxspool([domain("example.com", sink.port)])
    with RawSmtp(mx.port) as raw:
        raw.greeting()
        r = raw.ehlo()
        assert not any(l.upper().startswith("STARTTLS") for l in r.lines), r
        assert raw.cmd("STARTTLS").code in (454, 502, 503), "STARTTLS without a certificate"


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_12_and_13_are_accepted(tls_relay, version):
    """Protects: both TLS 1.2 and TLS 1.3 clients can upgrade and send mail."""
    v = getattr(ssl.TLSVersion, version)
    with RawSmtp(tls_relay.port) as raw:
        tls = starttls(raw, v)
        assert tls.version() == version.replace("_", "."), tls.version()
        assert raw.ehlo().code == 250


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_11_is_refused(tls_relay):
    """Protects the issue's "TLS 1.2 and 1.3 only": a TLS 1.1 client's
    handshake fails with the server's protocol_version alert (not because the
    local client could not even try)."""
    with RawSmtp(tls_relay.port) as raw:
        with pytest.raises(ssl.SSLError) as e:
            starttls(raw, ssl.TLSVersion.TLSv1_1)
    msg = str(e.value).upper()
    if "NO_PROTOCOLS_AVAILABLE" in msg or "NO PROTOCOLS" in msg:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {e.value}")
    # rustls answers a TLS 1.1-only ClientHello with a fatal alert
    # (handshake_failure or protocol_version): the refusal is the server's.
    assert "ALERT" in msg, e.value


def test_plaintext_behind_starttls_is_discarded(tls_relay):
    """Protects against STARTTLS command injection (CVE-2011-0411 class):
    `STARTTLS\\r\\nNOOP\\r\\n` in one write; the NOOP is answered neither in
    plaintext (before the handshake) nor inside TLS."""
    with RawSmtp(tls_relay.port) as raw:
        raw.greeting()
        raw.ehlo()
        raw.send(b"STARTTLS\r\nNOOP\r\n")
        r = raw.reply()
        assert r.code == 220, r
        # no plaintext answer to the NOOP
        assert not raw.readable_within(0.7), f"answered in plaintext: {raw.buf!r}"
        tls = client_context().wrap_socket(raw.sock)
        raw.sock = tls
        # and nothing unsolicited inside TLS
        tls.settimeout(1.0)
        try:
            got = tls.recv(4096)
        except (TimeoutError, ssl.SSLError, OSError):
            got = b""
        assert got == b"", f"the injected NOOP was answered inside TLS: {got!r}"
        r = raw.ehlo()
        assert r.code == 250 and r.lines[0].startswith("mx2.test"), \
            f"the first reply inside TLS must be our EHLO's, got {r}"


def test_received_header_says_esmtps(tls_relay, sink):
    """Protects RFC 3848: mail received over TLS carries `with ESMTPS` in our
    Received header, and it is delivered as usual."""
    msg, mid = make_message()
    with smtplib.SMTP("127.0.0.1", tls_relay.port, local_hostname="client.test",
                      timeout=30) as s:
        s.ehlo()
        s.starttls(context=client_context())
        s.ehlo()
        refused = s.sendmail("sender@sender.test", ["alice@example.com"], msg)
        assert not refused
    (t,) = sink.wait_for_messages(1, timeout=15)
    head = t.content.split(b"\r\n\r\n", 1)[0].decode()
    first = re.split(r"\r\n(?![ \t])", head)[0]
    assert first.startswith("Received:"), head
    assert re.search(r"\bby mx2\.test with ESMTPS\b", first), first
    assert mid.encode() in t.content


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl(1) missing")
def test_openssl_s_client_starttls_smtp(tls_relay, certs):
    """Protects interoperability with OpenSSL's own STARTTLS client: it
    negotiates TLS and sees our certificate."""
    r = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect",
         f"127.0.0.1:{tls_relay.port}", "-name", "client.test", "-brief"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert re.search(r"Protocol version: TLSv1\.[23]", out), out
    assert "CN = mx2.test" in out or "CN=mx2.test" in out, out


@pytest.mark.parametrize("breakage", ["garbage_cert", "missing_key", "mismatched_key"])
def test_bad_certificate_files_are_config_errors(mxspool, mxspool_cmd, workdir, certs, breakage):
    """Protects: a bad certificate or key is a configuration error naming
    the file and the config line at `check` (exit 2), and at `run` a clear
    one-line message and a non-zero exit — never a panic."""
    cert, key = certs
    if breakage == "garbage_cert":
        bad = workdir / "garbage.crt"
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
                       "-----END CERTIFICATE-----\n")
        cert = bad
    elif breakage == "missing_key":
        key = workdir / "nonexistent.key"
    else:
        _, key = make_cert(workdir / "other", "other.test")
    mx = mxspool([domain("example.com", 2)], start=False,
                 tls_cert=str(cert), tls_key=str(key))
    text = mx.config_path.read_text().splitlines()
    cert_line = next(i for i, l in enumerate(text, 1) if "tls_cert" in l)
    key_line = next(i for i, l in enumerate(text, 1) if "tls_key" in l)
    r = mxspool_cmd("check", "-c", mx.config_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(rf"{re.escape(str(mx.config_path))}:({cert_line}|{key_line}):", err), err
    assert "panicked" not in err
    run = mx.run("run", timeout=30)
    assert run.returncode not in (0, 101) and run.returncode > 0, (run.returncode, run.stderr)
    assert "panicked" not in run.stderr, run.stderr
    named = str(key) if breakage != "garbage_cert" else str(cert)
    assert named in run.stderr, f"the message must name {named}: {run.stderr}"
    assert named in err, f"check's message must name {named}: {err}"


# --- delivering ----------------------------------------------------------

def test_delivery_to_postfix_uses_starttls(mxspool, postfix_primary, workdir):
    """Protects opportunistic TLS on delivery: a real Postfix primary that
    offers STARTTLS receives the message over TLS (its log and its Received
    header say so)."""
    cert, key = make_cert(workdir / "pfcert", "pf0.primary.test")
    pf = postfix_primary(users=("alice",), extra_main_cf={
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_received_header": "yes",
        "smtpd_tls_loglevel": "1",
    })
    mx = mxspool([domain("example.com", pf.port)], retry="1s 1h")
    msg, mid = make_message()
    res = send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    (got,) = pf.wait_for_messages("alice", 1, timeout=20)
    top = got.split(b"\n\n", 1)[0].decode(errors="replace")
    assert re.search(r"\(using TLSv1\.[23]", top), f"Postfix's Received shows no TLS:\n{top}"
    assert re.search(r"TLS connection established from \S*\[127\.0\.0\.1\]", pf.log()), pf.log()


def test_broken_starttls_falls_back_to_plaintext(mxspool, sink_factory):
    """Protects: a destination that offers STARTTLS but cannot complete a
    handshake still gets its mail, in plaintext (RFC 7435 opportunistic),
    when no pin is set."""
    broken = sink_factory(tls_broken=True)
    mx = mxspool([domain("example.com", broken.port)], retry="1s 1h")
    msg, mid = make_message()
    res = send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    (t,) = broken.wait_for_messages(1, timeout=20)
    assert mid.encode() in t.content
    assert any("STARTTLS" in c.upper() for s in broken.sessions for c in s.commands), \
        "mxspool never tried STARTTLS although it was offered"
    assert t.session.tls is None


def test_delivery_over_tls_to_sink(mxspool, sink_factory, workdir):
    """Protects: with a working STARTTLS at the destination, the message
    travels inside TLS and EHLO is said again after the handshake."""
    cert, key = make_cert(workdir / "c", "primary.test")
    s = sink_factory(hostname="primary.test", tls=server_context(cert, key))
    mx = mxspool([domain("example.com", s.port)], retry="1s 1h")
    msg, mid = make_message()
    assert send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg).accepted
    (t,) = s.wait_for_messages(1, timeout=20)
    assert t.session.tls in ("TLSv1.2", "TLSv1.3")
    cmds = [c.split(" ")[0].upper() for c in t.session.commands]
    assert cmds.index("STARTTLS") < len(cmds) - 1 and cmds[cmds.index("STARTTLS") + 1] == "EHLO", cmds


def _pinned_setup(mxspool, sink_factory, workdir, sink_cert, pin_cert, offer_tls=True):
    cert, key = sink_cert
    dsn = sink_factory(hostname="dsn.test")
    s = sink_factory(hostname="primary.test",
                     tls=server_context(cert, key) if offer_tls else None)
    mx = mxspool([domain("example.com", s.port, tls_pin=spki_pin(pin_cert))],
                 retry="1s 1h", smarthost=dsn.port)
    return mx, s, dsn


def test_pinned_destination_with_right_certificate_gets_mail(mxspool, sink_factory, workdir):
    """Protects: tls_pin computed the documented way (openssl pipeline over
    the SPKI) matches our own computation, and the pinned server gets mail."""
    cert, key = make_cert(workdir / "c", "primary.test")
    mx, s, dsn = _pinned_setup(mxspool, sink_factory, workdir, (cert, key), cert)
    msg, mid = make_message()
    assert send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg).accepted
    (t,) = s.wait_for_messages(1, timeout=20)
    assert t.session.tls is not None
    assert mx.queue_json("stats")["guard_refusals"] == 0


@pytest.mark.parametrize("case", ["wrong_certificate", "no_starttls"])
def test_pinned_destination_failing_the_pin_gets_nothing(mxspool, sink_factory, workdir, case):
    """Protects the guard's pin: a server with another key, or one that does
    not offer STARTTLS at all, never sees MAIL FROM; the mail stays queued
    with the reason as last error, a guard_refusal is logged and counted, and
    no DSN is sent."""
    right, _ = make_cert(workdir / "right", "primary.test")
    other = make_cert(workdir / "other", "primary.test")
    mx, s, dsn = _pinned_setup(mxspool, sink_factory, workdir, other, right,
                               offer_tls=(case == "wrong_certificate"))
    msg, mid = make_message()
    res = send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg)
    assert res.accepted, res
    mx.wait_log(r"event=guard_refusal", timeout=15)
    assert mx.queue_json("stats")["guard_refusals"] >= 1  # counted before it is logged
    # several attempts (retry 1s) and still nothing handed over
    wait_until(lambda: len(s.sessions) >= 2, 15, what="a second attempt")
    assert not any(c.upper().startswith("MAIL FROM") for ss in s.sessions for c in ss.commands), \
        s.describe()
    if case == "wrong_certificate":
        # (a session may still be in its handshake: look at finished ones)
        wait_until(lambda: all(ss.closed for ss in s.sessions[:2]), 10, what="sessions to end")
        done = [ss for ss in s.sessions[:2]]
        assert all(ss.tls for ss in done), f"the pin is checked inside TLS: {s.describe()}"
    entries = json.loads(mx.run("queue", "list", "--json").stdout)
    (e,) = [e for e in entries if e["id"] == res.queue_id]
    assert re.search(r"pin|STARTTLS", e["last_error"], re.I), e
    assert not dsn.sessions or not any(ss.transactions for ss in dsn.sessions), dsn.describe()
    line = next(l for l in mx.log().splitlines() if "event=guard_refusal" in l)
    assert f"127.0.0.1:{s.port}" in line, line


def served_cert(port):
    with RawSmtp(port) as raw:
        tls = starttls(raw)
        return tls.getpeercert(binary_form=True)


def pem_der(path):
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_reloads_certificate_and_keeps_old_one_when_new_is_bad(tls_relay, workdir, certs):
    """Protects certificate renewal without a restart (reload
    applies TLS files): after SIGHUP the new certificate is served; a broken
    one is refused with its reason logged, and the running one stays."""
    mx = tls_relay
    old_cert, _ = certs
    assert served_cert(mx.port) == pem_der(old_cert)
    new_cert, new_key = make_cert(workdir / "renewed", "mx2.test")
    mx.main["tls_cert"], mx.main["tls_key"] = str(new_cert), str(new_key)
    mx.write_config()
    mx.send_signal(signal.SIGHUP)
    mx.wait_log(r"event=reloaded", timeout=10)
    assert served_cert(mx.port) == pem_der(new_cert), "the renewed certificate is not served"

    broken = workdir / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    mx.main["tls_cert"] = str(broken)
    mx.write_config()
    mx.send_signal(signal.SIGHUP)
    line = mx.wait_log(r"event=reload_failed[^\n]*", timeout=10).group(0)
    assert "broken.crt" in line, line
    assert mx.running
    assert served_cert(mx.port) == pem_der(new_cert)


def test_client_discards_plaintext_behind_servers_220(mxspool, sink_factory, workdir):
    """Protects the client side of RFC 3207 injection: bytes a server (or a
    man in the middle) sends after its `220 Ready` are discarded before the
    handshake — never read as a reply inside TLS; the mail still goes over
    TLS (not in plaintext after a failed handshake)."""
    cert, key = make_cert(workdir / "c", "primary.test")
    s = sink_factory(hostname="primary.test", tls=server_context(cert, key),
                     starttls_extra=b"250-primary.test\r\n250 PIPELINING\r\n")
    mx = mxspool([domain("example.com", s.port)], retry="1s 1h")
    msg, mid = make_message()
    assert send_mail(mx.port, "sender@sender.test", ["alice@example.com"], msg).accepted
    (t,) = s.wait_for_messages(1, timeout=20)
    assert t.session.tls in ("TLSv1.2", "TLSv1.3"), s.describe()
    assert "event=tls_failed" not in mx.log()
