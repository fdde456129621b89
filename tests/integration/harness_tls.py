"""TLS helpers for the integration tests: short-lived self-signed
certificates made with openssl(1) in the test directory (never downloaded),
their tls_pin value, and client/server ssl contexts."""

import os
import ssl
import subprocess
from pathlib import Path

OPENSSL = "openssl"


def make_cert(directory, cn, kind="ec"):
    """A self-signed certificate for CN valid for one day. Returns
    (cert_path, key_path), both PEM, mode 0644 (Postfix and a daemon that
    dropped privileges must read them)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{cn}.crt", d / f"{cn}.key"
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
              if kind == "ec" else ["-newkey", "rsa:2048"])
    subprocess.run([OPENSSL, "req", "-x509", *newkey, "-nodes", "-days", "1",
                    "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o644)
    return cert, key


def spki_pin(cert_path):
    """'sha256:' + base64 of the SHA-256 of the certificate's SPKI DER, the
    way the README tells users to compute it (an openssl pipeline)."""
    out = subprocess.run(
        ["sh", "-c", f"{OPENSSL} x509 -in '{cert_path}' -pubkey -noout"
                     f" | {OPENSSL} pkey -pubin -outform der"
                     f" | {OPENSSL} dgst -sha256 -binary | base64"],
        check=True, capture_output=True, text=True, timeout=30)
    return "sha256:" + out.stdout.strip()


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(version=None):
    """An opportunistic client context (no verification); VERSION pins the
    protocol (ssl.TLSVersion.TLSv1_2 ...)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses old protocols at its default security level
            # on the client side already; lower it so that the refusal we
            # observe is the server's.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx
