"""Crash rounds: kill -9 at random moments while several clients
send mail and, in half the rounds, while deliveries are in flight; restart
each time. At the end every message that got 250 must be delivered;
duplicates (a delivery whose bookkeeping died with the daemon) are allowed
and counted. MXSPOOL_CRASH_ROUNDS / MXSPOOL_CRASH_SEED replay or extend."""

import os
import random
import re
import threading
import time
from collections import Counter

from harness_mxspool import domain
from harness_util import free_port, make_message, send_mail

ROUNDS = int(os.environ.get("MXSPOOL_CRASH_ROUNDS", "6"))
SEED = int(os.environ.get("MXSPOOL_CRASH_SEED", str(int(time.time()))))
THREADS = 4


def test_kill9_rounds_lose_no_acknowledged_message(mxspool, sink_factory):
    """Protects "250 means on stable storage" under repeated SIGKILL at
    random moments, with sessions and deliveries in flight."""
    rng = random.Random(SEED)
    port = free_port()
    mx = mxspool([domain("example.com", f"127.0.0.1:{port}")], retry="1s 1d",
                 start=False)
    acked, lock = [], threading.Lock()
    sink = None
    sinks = []  # every primary incarnation: each keeps what it received
    for rnd in range(ROUNDS):
        # Odd rounds: the primary is up, so the kill also hits deliveries.
        if rnd % 2 == 1 and sink is None:
            sink = sink_factory(hostname="primary.test", port=port)
            sinks.append(sink)
        elif rnd % 2 == 0 and sink is not None:
            sink.close()
            sink = None
        mx.start()
        stop = threading.Event()

        def worker(n, rnd=rnd, stop=stop):
            i = 0
            while not stop.is_set():
                msg, mid = make_message(subject=f"crash r{rnd} t{n} m{i}")
                i += 1
                try:
                    res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg,
                                    timeout=10)
                except Exception:  # noqa: BLE001 - the daemon is being killed
                    return
                if res.accepted:
                    with lock:
                        acked.append(mid)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True)
                   for n in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        mx.kill9()
        stop.set()
        for t in threads:
            t.join(30)
    # Recovery: the primary comes up for good, the daemon starts once more.
    if sink is None:
        sink = sink_factory(hostname="primary.test", port=port)
        sinks.append(sink)
    mx.start()
    with lock:
        want = list(acked)
    assert len(want) >= ROUNDS, f"too few messages accepted to prove anything: {len(want)}"

    wanted = set(want)
    seen = {}  # id(transaction) -> the Message-ID it carried

    def delivered():
        # Each transaction is read once: a fast build acks thousands of
        # messages, and searching every one for every ID each half second
        # would outlast the deadline by itself.
        for t in (t for s in sinks for t in s.messages):
            if id(t) not in seen:
                m = re.search(rb"^Message-ID:\s*(<[^>\r\n]+>)", t.content, re.I | re.M)
                seen[id(t)] = m.group(1).decode() if m else None
        return Counter(mid for mid in seen.values() if mid in wanted)

    # The queue drains at the build's own pace (the release build under
    # qemu acks thousands of messages, and delivers them for minutes): give
    # up only when 60 s pass without one more message arriving, or after
    # 15 minutes in all.
    give_up = time.monotonic() + 900
    got = delivered()
    progress, last_count = time.monotonic(), len(got)
    while not all(got[m] for m in want) and time.monotonic() < give_up:
        if time.monotonic() - progress > 60:
            break
        time.sleep(0.5)
        got = delivered()
        if len(got) > last_count:
            progress, last_count = time.monotonic(), len(got)
    missing = [m for m in want if not got[m]]
    dups = sum(c - 1 for c in got.values() if c > 1)
    print(f"\n[crash] seed={SEED} rounds={ROUNDS} acked={len(want)} "
          f"missing={len(missing)} duplicates={dups}")
    assert not missing, f"seed {SEED}: {len(missing)} of {len(want)} 250'd messages lost"
