"""A private authoritative DNS server (NSD, from Debian) on a loopback port,
serving zones the tests write and change at run time.

    dns = NsdServer(workdir / "dns")
    dns.zone("example.com", ["@ MX 10 mail", "@ MX 20 mx2.test.", "mail A 127.0.0.2"])
    dns.start()                      # nsd -d, UDP+TCP on 127.0.0.1:dns.port
    dns.zone("example.com", [...])   # change a zone; served before this returns
    dns.stop()                       # nothing answers any more

mxspool is pointed at it with `option resolver '127.0.0.1:PORT'`
(`dns.resolver`). Every record has TTL 0 and the SOA's negative TTL is 0,
so no resolver caches anything and a change is seen at the next lookup.

How a change is driven: while the set of zones stays the same, the zone file
is rewritten with a higher serial and a newer mtime and NSD gets SIGHUP
("scans zone files and if changed (mtime) reads them in"); a new or removed
zone restarts NSD (the zone list lives in nsd.conf). Either way the call
returns only when NSD serves the new serial (queried over UDP by
`query()` below), so a test never races the reload.

`query(name, qtype)` is a minimal stub (UDP, no recursion) for the harness's
own checks: it returns (rcode, [(type, rdata bytes)]) for the answer section.
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from harness_util import LOCALHOST, free_port, read_text, wait_until

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
NSD_CHECKCONF = shutil.which("nsd-checkconf") or "/usr/sbin/nsd-checkconf"

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}


# --- a minimal DNS client ----------------------------------------------------

def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def _read_name(msg, off):
    labels = []
    hops = 0
    while True:
        n = msg[off]
        if n == 0:
            break
        if n & 0xC0 == 0xC0:
            off = ((n & 0x3F) << 8) | msg[off + 1]
            hops += 1
            if hops > 20:
                raise ValueError("compression loop")
            continue
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels)


def query(port, name, qtype="A", host=LOCALHOST, timeout=1.0):
    """One UDP query to HOST:PORT. Returns (rcode, answers) where answers is
    [(type name, decoded rdata)]: A/AAAA as an address string, MX as
    (preference, exchange), CNAME/NS as a name, SOA as its serial, else bytes.
    Raises OSError/socket.timeout when nothing answers."""
    qid = random.randrange(65536)
    qt = TYPES[qtype]
    pkt = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + _encode_name(name) + struct.pack(">HH", qt, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(pkt, (host, port))
        while True:
            msg, _ = s.recvfrom(65535)
            if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    rcode = flags & 0xF
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    rev = {v: k for k, v in TYPES.items()}
    answers = []
    for _ in range(an):
        off = _skip_name(msg, off)
        t, _, _, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        rd = msg[off:off + rdlen]
        tn = rev.get(t, str(t))
        if tn == "A":
            val = socket.inet_ntop(socket.AF_INET, rd)
        elif tn == "AAAA":
            val = socket.inet_ntop(socket.AF_INET6, rd)
        elif tn == "MX":
            val = (struct.unpack(">H", rd[:2])[0], _read_name(msg, off + 2))
        elif tn in ("CNAME", "NS"):
            val = _read_name(msg, off)
        elif tn == "SOA":
            p = _skip_name(msg, _skip_name(msg, off))
            val = struct.unpack(">I", msg[p:p + 4])[0]
        else:
            val = rd
        answers.append((tn, val))
        off += rdlen
    return rcode, answers


# --- the server ---------------------------------------------------------------

class NsdServer:
    """API: zone(origin, records), remove_zone(origin), start(), stop(),
    restart(), running, port, resolver ('127.0.0.1:PORT'), log()."""

    def __init__(self, base: Path, port=None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.port = port or free_port(udp=True)
        self.conf = self.base / "nsd.conf"
        self.log_path = self.base / "nsd.log"
        self.zones = {}          # origin -> (serial, records)
        self._serial = int(time.time()) % 1000000 * 100
        self._served_zones = None
        self.proc = None

    @property
    def resolver(self):
        return f"{LOCALHOST}:{self.port}"

    # --- zones ---------------------------------------------------------
    def _zone_path(self, origin):
        return self.base / f"{origin.rstrip('.') or 'root'}.zone"

    def zone(self, origin, records):
        """Write (or rewrite) zone ORIGIN with RECORDS (zone-file lines
        relative to the origin, e.g. '@ MX 10 mail', 'mail A 127.0.0.2'). A
        running server serves the new content when this returns."""
        origin = origin.rstrip(".").lower()
        self._serial += 1
        serial = self._serial
        lines = [
            f"$ORIGIN {origin}.",
            "$TTL 0",
            # negative TTL (the last field) 0: NXDOMAIN/NODATA not cached
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 0",
            f"@ IN NS ns.{origin}.",
            f"ns IN A {LOCALHOST}",
        ] + list(records)
        path = self._zone_path(origin)
        path.write_text("\n".join(lines) + "\n")
        # NSD re-reads a zone file on SIGHUP when its mtime changed; make
        # sure it did, even for two writes within the timestamp resolution.
        st = path.stat()
        prev = self.zones.get(origin)
        bump = time.time() + (1 if prev else 0)
        os.utime(path, (bump, max(bump, st.st_mtime + 1)))
        self.zones[origin] = (serial, list(records))
        if self.running:
            self._apply()

    def remove_zone(self, origin):
        origin = origin.rstrip(".").lower()
        self.zones.pop(origin, None)
        if self.running:
            self._apply()

    def _write_conf(self):
        zones = "".join(
            f"zone:\n\tname: \"{o}\"\n\tzonefile: \"{self._zone_path(o)}\"\n\n"
            for o in sorted(self.zones)
        )
        self.conf.write_text(f"""server:
	ip-address: {LOCALHOST}@{self.port}
	port: {self.port}
	do-ip4: yes
	do-ip6: no
	server-count: 1
	username: ""
	chroot: ""
	zonesdir: "{self.base}"
	zonelistfile: "{self.base}/zone.list"
	xfrdfile: "{self.base}/xfrd.state"
	xfrdir: "{self.base}"
	pidfile: "{self.base}/nsd.pid"
	logfile: "{self.log_path}"
	database: ""
	verbosity: 2
	hide-version: yes
	refuse-any: yes
	zonefiles-check: yes

remote-control:
	control-enable: no

{zones}""")

    def _serves(self, origin, serial):
        try:
            rcode, ans = query(self.port, origin, "SOA", timeout=0.3)
        except OSError:
            return False
        return rcode == 0 and ("SOA", serial) in ans

    def _wait_served(self, timeout=15):
        for origin, (serial, _) in self.zones.items():
            wait_until(lambda: self._serves(origin, serial), timeout, interval=0.05,
                       what=f"nsd on :{self.port} to serve {origin} serial {serial}\n"
                            f"--- nsd log ---\n{self.log()}")

    def _apply(self):
        if set(self.zones) != self._served_zones:
            self.restart()
            return
        self.proc.send_signal(signal.SIGHUP)
        self._wait_served()

    # --- process control -----------------------------------------------
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=15):
        assert not self.running, "nsd already running"
        self._write_conf()
        for f in ("zone.list", "xfrd.state", "nsd.pid"):
            try:
                (self.base / f).unlink()
            except FileNotFoundError:
                pass
        check = subprocess.run([NSD_CHECKCONF, str(self.conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nsd-checkconf {self.conf}: {check.stdout}{check.stderr}")
        self._stderr = open(self.base / "nsd.stderr", "ab")
        # -d: stay in the foreground (we own the process and its exit)
        self.proc = subprocess.Popen([NSD, "-d", "-c", str(self.conf)],
                                     stdout=self._stderr, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._served_zones = set(self.zones)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited with {self.proc.returncode}\n{self.log()}")
            if all(self._serves(o, s) for o, (s, _) in self.zones.items()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nsd did not answer on {self.port} within {timeout}s\n"
                                   f"{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self):
        """Stop NSD; on return nothing answers on its port."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # nsd -d forks a server child and xfrd; make sure none is left.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._stderr.close()

        def silent():
            try:
                query(self.port, "ns." + next(iter(self.zones), "test"), "A", timeout=0.2)
                return False
            except OSError:
                return True
        wait_until(silent, 10, what=f"nsd on :{self.port} to stop answering")

    def restart(self):
        self.stop()
        return self.start()

    def log(self):
        return read_text(self.log_path, self.base / "nsd.stderr")
