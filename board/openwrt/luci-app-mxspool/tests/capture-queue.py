#!/usr/bin/env python3
"""Starts the real daemon (MXSPOOL_BIN) with a primary that does not answer,
queues two messages to it over SMTP, waits until both were tried and
deferred, and writes what the Queue page reads to OUTDIR:
queue-list.json (`queue list --json --limit 50`), queue-stats.json (`queue
stats --json`), config (the UCI file the daemon ran with). Then stops the
daemon. For screenshots.sh; not a test.
usage: capture-queue.py OUTDIR"""

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage

BIN = os.environ.get("MXSPOOL_BIN", "target/debug/mxspool")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mxspool-shots-")
    # The primary, 192.0.2.25 (TEST-NET-1), has no route: it is down, as a
    # home server is when its line is. Nothing listens on `down` either.
    port, down = free_port(), free_port()
    conf = os.path.join(work, "mxspool.conf")
    with open(conf, "w") as f:
        f.write(f"""config mxspool 'main'
	option hostname 'mx2.example.net'
	list listen '127.0.0.1:{port}'
	option spool_dir '{work}/spool'
	option allow_volatile_spool '1'
	option control_socket '{work}/ctl.sock'
	option syslog '0'
	option retry '15m 24h'
	option connect_timeout '5s'
	option smarthost '127.0.0.1:{down}'

config domain 'example'
	option name 'example.com'
	option deliver_to '192.0.2.25'
	option verify 'none'
""")
    log = open(os.path.join(work, "log"), "w+")
    daemon = subprocess.Popen([BIN, "run", "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        subjects = ["Invoice 2026-118", "Photos from Saturday"]
        senders = ["billing@supplier.example", "grandma@family.example"]
        for subject, sender, size in zip(subjects, senders, (3000, 180000)):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = sender, "alice@example.com", subject
            msg.set_content("x" * size)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.send_message(msg, from_addr=sender, to_addrs=["alice@example.com"])
        # Both tried and deferred (the log's status=deferred lines).
        for _ in range(600):
            log.seek(0)
            if log.read().count("status=deferred") >= 2:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the messages were not deferred: " + open(log.name).read())
        time.sleep(2)  # an age of a few seconds, not 0
        for name, args in [("queue-list.json", ["queue", "list", "--json", "--limit", "50"]),
                           ("queue-stats.json", ["queue", "stats", "--json"])]:
            r = subprocess.run([BIN] + args + ["-c", conf], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise SystemExit(f"{' '.join(args)}: exit {r.returncode}: {r.stderr}")
            with open(os.path.join(outdir, name), "w") as f:
                f.write(r.stdout)
        with open(os.path.join(outdir, "config"), "w") as f:
            f.write(open(conf).read())
    finally:
        daemon.terminate()
        daemon.wait(timeout=40)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
