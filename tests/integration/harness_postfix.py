"""A private Postfix instance acting as the primary mail server.

Each instance has its own config_directory, queue_directory, data_directory,
Maildir tree and log file under one base directory, listens for SMTP only on
127.0.0.1:PORT, and delivers its virtual domain(s) into Maildirs. Nothing
touches /etc/postfix (it is only read as meta_directory by `postfix check`)
or the system instance. Several instances can run at once.
"""

import os
import pwd
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from harness_util import (LOCALHOST, Mailboxes, free_port, maildir_files, port_accepts,
                          read_text, wait_until)

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SCRIPT = shutil.which("script")
# AF_UNIX path limit (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
# Delivery user for the virtual(8) agent: nobody/nogroup.
VMAIL_UID = 65534
VMAIL_GID = 65534

MASTER_CF_SERVICES = """\
# service   type  private unpriv  chroot  wakeup  maxproc command
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
proxywrite  unix  -       -       n       -       1       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
virtual     unix  -       n       n       -       -       virtual
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance(Mailboxes):
    """API: start(), stop(), running, port, messages(user),
    wait_for_messages(user, n, timeout), log(), users, domains."""

    def __init__(self, base: Path, domains=("example.com",), users=("alice",),
                 port=None, name="primary", hostname=None, extra_main_cf=None,
                 host=LOCALHOST):
        self.base = Path(base)
        self.host = host                    # listen address (any 127.0.0.x)
        self.name = name
        self.domains = [d.lower() for d in domains]
        self.users = [self._qualify(u) for u in users]
        self.port = port or free_port(host)
        self.hostname = hostname or f"{name}.primary.test"
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.data_dir = self.base / "data"
        self.mail_dir = self.base / "mail"
        self.log_file = self.base / "maillog"
        self.extra_main_cf = dict(extra_main_cf or {})
        longest = self.queue_dir / "public" / "postlog"
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"{longest} is longer than a unix socket path may be "
                f"({MAX_SOCKET_PATH}); use a shorter base directory")
        self._write_config()

    # --- configuration -------------------------------------------------
    def _qualify(self, user):
        return user.lower() if "@" in user else f"{user}@{self.domains[0]}".lower()

    def _write_config(self):
        for d in (self.base, self.config_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        # queue_directory: owned by root; `postfix check` (run by `postfix
        # start`) creates its subdirectories with the right owners.
        self.queue_dir.mkdir(exist_ok=True)
        os.chmod(self.queue_dir, 0o755)
        self.data_dir.mkdir(exist_ok=True)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pf.pw_uid, pf.pw_gid)
        os.chmod(self.data_dir, 0o700)
        os.chown(self.mail_dir, VMAIL_UID, VMAIL_GID)
        self.log_file.touch()

        vmailbox = self.config_dir / "vmailbox"
        vmailbox.write_text(
            "".join(f"{addr} {self._maildir_rel(addr)}\n" for addr in self.users)
        )
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "primary.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            # 127.0.0.1 even when listening elsewhere in 127/8: Postfix wants
            # an interface address here, and master.cf names the listen address.
            "inet_interfaces": LOCALHOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Like a real primary: accept mail for its own domains only.
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtpd_banner": "$myhostname ESMTP",
            "smtputf8_enable": "yes",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_maps": f"texthash:{vmailbox}",
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_uid_maps": f"static:{VMAIL_UID}",
            "virtual_gid_maps": f"static:{VMAIL_GID}",
            "virtual_minimum_uid": "100",
            # No DNS anywhere, no outbound mail: this instance only receives.
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "default_transport": "error:private test instance does not relay",
            "relay_transport": "error:private test instance does not relay",
            "local_transport": "error:private test instance has no local delivery",
            "alias_maps": "",
            "alias_database": "",
            # Keep delivered headers exactly as received (no rewriting or
            # added Message-ID/Date for "local" clients).
            "local_header_rewrite_clients": "",
            "always_add_missing_headers": "no",
            "message_size_limit": "20971520",
            "virtual_mailbox_limit": "52428800",
            "biff": "no",
            "syslog_name": f"postfix-{self.name}",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            "smtpd_client_connection_count_limit": "200",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
        }
        main.update(self.extra_main_cf)
        (self.config_dir / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in main.items())
        )
        services = MASTER_CF_SERVICES
        if "smtpd_tls_cert_file" in self.extra_main_cf:
            # smtpd's TLS needs tlsmgr (PRNG seed, session cache): without
            # it Postfix answers STARTTLS with 454 "local problem".
            services += "tlsmgr      unix  -       -       n       1000?   1       tlsmgr\n"
        (self.config_dir / "master.cf").write_text(
            f"{self.host}:{self.port} inet n - n - - smtpd\n" + services
        )

    def _maildir_rel(self, addr):
        local, domain = addr.split("@", 1)
        return f"{domain}/{local}/"

    # --- process control -----------------------------------------------
    def _postfix(self, *args, check=True):
        argv = [POSTFIX, "-c", str(self.config_dir), *args]
        # Postfix prints its fatal errors to stderr only when stderr is a
        # terminal (otherwise only to syslog, which a container may lack):
        # run it under script(1) so a failure explains itself.
        if SCRIPT:
            argv = [SCRIPT, "-qec", shlex.join(argv), "/dev/null"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed ({r.returncode}):\n"
                f"{r.stdout}{r.stderr}\n--- maillog ---\n{self.log()}"
            )
        return r

    def _master_pid(self):
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    @property
    def running(self):
        return self._master_pid() is not None

    def start(self, timeout=30):
        if self.running:
            return
        if port_accepts(self.port, self.host):
            raise RuntimeError(f"port {self.port} is already in use by someone else")
        self._postfix("start")
        wait_until(lambda: port_accepts(self.port, self.host), timeout,
                   what=f"postfix {self.name} to listen on {self.port}")

    def stop(self, timeout=30):
        """Stop the instance; on return nothing accepts on its port."""
        pid = self._master_pid()
        if pid is None:
            return
        self._postfix("stop", check=False)
        deadline = time.monotonic() + timeout
        while self._master_pid() is not None or port_accepts(self.port, self.host, timeout=0.2):
            if time.monotonic() > deadline:
                self._postfix("abort", check=False)
                try:
                    os.killpg(os.getpgid(pid), 9)
                except OSError:
                    pass
                break
            time.sleep(0.05)

    def cleanup(self):
        self.stop()

    # --- mailbox access ------------------------------------------------
    def _maildir(self, user):
        addr = self._qualify(user)
        return self.mail_dir / self._maildir_rel(addr)

    def messages(self, user):
        """Delivered messages of USER (a local part or a full address), as
        raw bytes exactly as stored (Postfix writes LF line ends and
        prepends Return-Path, Delivered-To and its own Received), oldest
        first."""
        return maildir_files(self._maildir(user))

    def log(self):
        return read_text(self.log_file)
