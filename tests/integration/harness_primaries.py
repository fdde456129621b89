"""Real mail servers as the primary, besides the private Postfix of
harness_postfix.py: Exim, OpenSMTPD, and the postgrey greylisting policy
daemon for a Postfix primary.

Like harness_postfix: each instance is private, has its own directory under
the test's workdir (configuration, spool, mailboxes, logs), listens only on
127.0.0.1:PORT (a free high port), is started and stopped by the test's
fixtures and is never a system service. Exim and OpenSMTPD conflict with
postfix as packages, so they are not installed but unpacked from their
Debian packages under /var/tmp (real_peers.sh, run by tests/run.sh and again
here at first use: `ensure(server)`).

Every server has the mailbox API of PostfixInstance: `messages(user)` (raw
bytes of the delivered files, oldest first), `wait_for_messages(user, n,
timeout)`, `log()`, `port`, `start()`, `stop()`, `running`.
"""

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from harness_postfix import PostfixInstance
from harness_util import LOCALHOST, Mailboxes, ServerProcess, free_port, maildir_files

HERE = Path(__file__).resolve().parent
PEERS_SCRIPT = HERE / "real_peers.sh"
EXIM_ROOT = Path(os.environ.get("MXSPOOL_EXIM_ROOT", "/var/tmp/mxspool-peers/exim"))
# The root bench/setup.sh unpacks (and reuses) too.
OPENSMTPD_ROOT = Path(os.environ.get("OPENSMTPD_ROOT", "/var/tmp/mxspool-bench/opensmtpd"))
EXIM_USER = "Debian-exim"   # compiled into Debian's binary

_ensured = {}


def ensure(server):
    """Make SERVER ('exim', 'opensmtpd', 'postgrey') runnable, installing it
    at first use (real_peers.sh: quick when it is there already). Returns
    None, or why it cannot be had (the caller skips with that reason)."""
    if server in _ensured:
        return _ensured[server]
    if os.geteuid() != 0:
        reason = f"{server}: the real-server harness needs root (real_peers.sh installs and unpacks packages)"
    else:
        env = {**os.environ, "MXSPOOL_EXIM_ROOT": str(EXIM_ROOT),
               "OPENSMTPD_ROOT": str(OPENSMTPD_ROOT)}
        try:
            r = subprocess.run(["bash", str(PEERS_SCRIPT), server], capture_output=True,
                               text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
            out = (r.stdout + r.stderr).strip()
            reason = None if r.returncode == 0 else (
                f"{server} cannot be installed here (tests/integration/real_peers.sh "
                f"{server} exited {r.returncode}): {out[-1500:]}")
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"{server} cannot be installed here (real_peers.sh {server}): {e}"
    _ensured[server] = reason
    return reason


class _Daemon(ServerProcess, Mailboxes):
    """A primary: a foreground server process (harness_util.ServerProcess)
    with domains, users and mailboxes."""

    def _where(self, base, domains, users, port, hostname):
        """What every primary here is told: its folder, address and names."""
        self.base = Path(base)
        self.host = LOCALHOST
        self.port = port or free_port()
        self.domains = [d.lower() for d in domains]
        self.users = [u.lower() for u in users]
        self.hostname = hostname


class EximServer(_Daemon):
    """Debian's Exim 4 (exim4-daemon-light), unpacked under EXIM_ROOT, run
    as `exim4 -bdf -oX PORT -oP PIDFILE -C BASE/exim.conf` (-bdf: the -bd
    daemon, in the foreground, so the fixture owns it). Accepts the users'
    local parts of its domains (others: 550 5.1.1 at RCPT, other domains:
    550 relay not permitted) and delivers each user into
    BASE/mail/USER/Maildir as Debian-exim.

    Privileges: the binary is set-uid root and Debian's build looks up its
    user Debian-exim before reading any configuration (real_peers.sh creates
    it). A configuration given with -C is not in Debian's
    /etc/exim4/trusted_configs, so Exim gives up root when it re-executes
    itself for delivery ("exim user lost privilege for using -C option") and
    cannot switch to another delivery user: the daemon runs as root only to
    listen; receiving and delivery run as Debian-exim
    (deliver_drop_privilege), which owns the spool, the logs and the
    mailboxes. Nothing is written to /etc, /var/spool/exim4 or
    /var/log/exim4."""

    name = "exim"

    def __init__(self, base: Path, domains=("example.com",), users=("alice", "bob"),
                 port=None, hostname="exim.primary.test"):
        self._where(base, domains, users, port, hostname)
        self.binary = EXIM_ROOT / "usr/sbin/exim4"
        self.conf = self.base / "exim.conf"
        self.spool_dir = self.base / "spool"
        self.log_dir = self.base / "log"
        self.mail_dir = self.base / "mail"
        self.out = self.base / "exim.out"
        self.pid_file = self.base / "exim.pid"
        self._write_config()

    def _write_config(self):
        pw = pwd.getpwnam(EXIM_USER)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for d in (self.spool_dir, self.log_dir, self.mail_dir):
            d.mkdir(exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(d, 0o755)
        b = self.base
        # The configuration must be owned by root and writable by no one
        # else, or Exim refuses it.
        self.conf.write_text(f"""\
# mxspool test primary: a private Exim (harness_primaries.EximServer)
exim_path = {self.binary}
exim_user = {EXIM_USER}
exim_group = {EXIM_USER}
deliver_drop_privilege = true
keep_environment =
spool_directory = {self.spool_dir}
log_file_path = {self.log_dir}/%slog
pid_file_path = {self.pid_file}
primary_hostname = {self.hostname}
qualify_domain = {self.domains[0]}
local_interfaces = <; {self.host}
domainlist local_domains = {' : '.join(self.domains)}
# No DNS, no ident, no TLS: a loopback test peer.
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  accept  domains     = +local_domains
          local_parts = {' : '.join(self.users)}
  deny    domains     = +local_domains
          message     = 5.1.1 unknown user
  deny    message     = 5.7.1 relay not permitted

begin routers

local_user:
  driver = accept
  domains = +local_domains
  local_parts = {' : '.join(self.users)}
  transport = maildir_delivery

begin transports

# ${{local_part_data}}: the matched list item (untainted, unlike $local_part).
maildir_delivery:
  driver = appendfile
  directory = {b}/mail/${{local_part_data}}/Maildir
  maildir_format
  create_directory
  user = {EXIM_USER}
  group = {EXIM_USER}
  envelope_to_add
  return_path_add

begin retry

*  *  F,1h,1m
""")
        os.chmod(self.conf, 0o644)

    def start(self, timeout=20):
        self.spawn([str(self.binary), "-bdf", "-oX", str(self.port), "-oP", str(self.pid_file),
                     "-C", str(self.conf)], self.out, f"exim on {self.port}", timeout)

    def messages(self, user):
        return maildir_files(self.mail_dir / user.split("@")[0].lower() / "Maildir")

    def log(self):
        parts = []
        for name in ("mainlog", "rejectlog", "paniclog"):
            p = self.log_dir / name
            if p.exists():
                parts.append(f"--- {name} ---\n{p.read_text(errors='replace')}")
        if self.out.exists():
            parts.append(f"--- stdout/stderr ---\n{self.out.read_text(errors='replace')}")
        return "\n".join(parts)


class OpenSmtpd(_Daemon):
    """Debian's OpenSMTPD 6.8, unpacked under OPENSMTPD_ROOT, run as `smtpd
    -d -f BASE/smtpd.conf` in a private mount namespace (unshare -m), since
    its spool (/var/spool/smtpd), control socket (/var/run/smtpd.sock) and
    helpers (/usr/libexec/opensmtpd/mail.*) are compiled-in paths: there
    BASE/varspool is bound over /var/spool, BASE/run over /run, the root's
    usr/libexec over /usr/libexec, and a resolv.conf saying `lookup file`
    over /etc/resolv.conf (the client's reverse lookup reads /etc/hosts
    instead of waiting on DNS, as in bench/bench.py). So several instances
    (and the bench's) can run at once and none touches the system's files.
    Accepts its users at its domains (others: 550 Invalid recipient) and
    delivers each into BASE/mail/USER (a Maildir) as nobody."""

    name = "opensmtpd"

    def __init__(self, base: Path, domains=("example.com",), users=("alice", "bob"),
                 port=None, hostname="opensmtpd.primary.test"):
        self._where(base, domains, users, port, hostname)
        self.smtpd = OPENSMTPD_ROOT / "usr/sbin/smtpd"
        self.conf = self.base / "smtpd.conf"
        self.varspool = self.base / "varspool"
        self.run_dir = self.base / "run"
        self.mail_dir = self.base / "mail"
        self.resolv = self.base / "resolv.conf"
        self.out = self.base / "smtpd.log"
        self._write_config()

    def _write_config(self):
        nobody = pwd.getpwnam("nobody")
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for d in (self.varspool, self.run_dir, self.mail_dir):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        self.resolv.write_text("lookup file\nnameserver 127.0.0.1\n")
        addrs = [f"{u}@{d}" for d in self.domains for u in self.users]
        rcpts = ", ".join(f'"{a}"' for a in addrs)
        virt = ", ".join(f'"{a}" = "nobody"' for a in addrs)
        domains = ", ".join(f'"{d}"' for d in self.domains)
        self.conf.write_text(f"""\
# mxspool test primary: a private OpenSMTPD (harness_primaries.OpenSmtpd)
table domains {{ {domains} }}
table rcpts {{ {rcpts} }}
table virt {{ {virt} }}
listen on {self.host} port {self.port} hostname {self.hostname}
action "local" maildir "{self.mail_dir}/%{{rcpt.user:lowercase}}" virtual <virt> user nobody
match from any for domain <domains> rcpt-to <rcpts> action "local"
match from any for domain <domains> reject
""")

    def start(self, timeout=20):
        if not self.running:
            # The resolver target: bound over /etc/resolv.conf, or written
            # into the private /run when /etc/resolv.conf links there.
            script = (
                'set -e; t=$(readlink -f /etc/resolv.conf); '
                'mount --bind "$RUN" /run; mount --bind "$VARSPOOL" /var/spool; '
                'mount --bind "$LIBEXEC" /usr/libexec; '
                'case $t in /run/*) mkdir -p "${t%/*}"; cp "$RESOLV" "$t";; '
                '*) mount --bind "$RESOLV" /etc/resolv.conf;; esac; '
                'exec "$SMTPD" -d -f "$CONF"')
            argv = ["env", f"RUN={self.run_dir}", f"VARSPOOL={self.varspool}",
                    f"LIBEXEC={OPENSMTPD_ROOT / 'usr/libexec'}", f"RESOLV={self.resolv}",
                    f"SMTPD={self.smtpd}", f"CONF={self.conf}",
                    "unshare", "-m", "--propagation", "private", "sh", "-c", script]
            self.spawn(argv, self.out, f"opensmtpd on {self.port}", timeout)

    def messages(self, user):
        return maildir_files(self.mail_dir / user.split("@")[0].lower())


class Postgrey(_Daemon):
    """Debian's postgrey (a Postfix policy daemon) on 127.0.0.1:PORT with a
    short greylisting delay, its database in BASE/db, no whitelists (empty
    files instead of /etc/postgrey's, or the recipients given as
    WHITELIST_RECIPIENTS, as a real one lists postmaster@), no
    auto-whitelisting. Point a Postfix
    at it with `smtpd_recipient_restrictions = check_policy_service
    inet:127.0.0.1:PORT` (see `restriction`). A first attempt is answered
    `450 4.2.0 <rcpt>: Recipient address rejected: Greylisted, ...`."""

    name = "postgrey"

    def __init__(self, base: Path, delay=5, port=None, whitelist_recipients=()):
        self.base = Path(base)
        self.host = LOCALHOST
        self.port = port or free_port()
        self.delay = delay
        self.db_dir = self.base / "db"
        self.out = self.base / "postgrey.log"
        self.binary = shutil.which("postgrey") or "/usr/sbin/postgrey"
        pw = pwd.getpwnam("postgrey")
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.db_dir.mkdir(exist_ok=True)
        os.chown(self.db_dir, pw.pw_uid, pw.pw_gid)
        self.empty = self.base / "empty-whitelist"
        self.empty.write_text("")
        self.recipients = self.base / "whitelist-recipients"
        self.recipients.write_text("".join(f"{r}\n" for r in whitelist_recipients))

    @property
    def restriction(self):
        return f"check_policy_service inet:{self.host}:{self.port}"

    def start(self, timeout=20):
        self.spawn([self.binary, f"--inet={self.host}:{self.port}", f"--delay={self.delay}",
                     f"--dbdir={self.db_dir}", "--user=postgrey", "--group=postgrey",
                     f"--whitelist-clients={self.empty}",
                     f"--whitelist-recipients={self.recipients}",
                     "--auto-whitelist-clients=0", "--verbose"],
                    self.out, f"postgrey on {self.port}", timeout)


def postfix_reconfigure(pf: PostfixInstance, **main_cf):
    """Change main.cf parameters of a private Postfix and, when it runs,
    `postfix reload` it (as an admin would: smtpd processes pick the change
    up for their next session)."""
    pf.extra_main_cf.update({k: str(v) for k, v in main_cf.items()})
    pf._write_config()
    if pf.running:
        pf._postfix("reload")
