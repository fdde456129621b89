"""The router owner's view: `dnscheck --json`, the LuCI pages
(board/openwrt/luci-app-mxspool, run in Node with stand-ins for LuCI) and
the Prometheus collector (board/openwrt/prometheus-node-exporter-lua-mxspool,
run by lua5.1), all fed with the real daemon's output, so a change of the
CLI's JSON that the views or the collector do not follow fails here.

Waits read the daemon's log only; the queue is read once after waiting."""

import concurrent.futures
import json
import os
import re
import subprocess

import pytest

from harness_mxspool import REPO_ROOT, binary_path, domain, render_uci, runner_prefix, run_command
from harness_tls import make_cert
from harness_util import free_port, make_message, need, send_mail, wait_deferred_in_log

APP = REPO_ROOT / "board/openwrt/luci-app-mxspool"
COLLECTOR = (REPO_ROOT / "board/openwrt/prometheus-node-exporter-lua-mxspool/files/usr/lib/lua/"
             "prometheus-collectors/mxspool.lua")
COLLECTOR_RUNNER = REPO_ROOT / "board/openwrt/prometheus-node-exporter-lua-mxspool/tests/run-collector.lua"
OUR = "mx2.test"


def dnscheck(nsd, mxspool, zones, name):
    for origin, records in zones.items():
        nsd.zone(origin, records)
    nsd.zone("test", ["mx2 A 127.0.0.1"])
    nsd.start()
    mx = mxspool([domain("example.com", "mx")], start=False, resolver=nsd.resolver)
    return mx.run("dnscheck", name, timeout=60), mx.run("dnscheck", name, "--json", timeout=60)


LAYOUTS = [
    pytest.param("example.com", [f"@ MX 10 {OUR}.", "@ MX 20 mail", "mail A 127.0.0.2"],
                 ["best_mx"], [], id="best-mx"),
    pytest.param("example.com", [f"@ MX 10 {OUR}."], ["only_mx"], [], id="only-mx"),
    pytest.param("example.com", ["@ MX 10 mail", "mail A 127.0.0.2"], ["not_listed"], [],
                 id="not-listed"),
    pytest.param("example.com", ["@ MX 10 gone", f"@ MX 20 {OUR}.", "@ MX 30 gone"],
                 ["mx_unresolvable"], [], id="unresolvable"),
    pytest.param("example.com", ["@ MX 10 192.0.2.1.", f"@ MX 20 {OUR}.", "@ MX 30 192.0.2.1."],
                 ["ip_literal_mx"], [], id="ip-literal"),
    pytest.param("example.com", ["@ MX 0 ."], ["null_mx"], [], id="null-mx"),
    pytest.param("nosuch.example.com", ["@ MX 10 mail", "mail A 127.0.0.2"],
                 ["domain_not_found"], [], id="nxdomain"),
    pytest.param("example.com", ["@ MX 10 mail", f"@ MX 20 {OUR}.", "mail A 127.0.0.2"],
                 [], ["primary_not_below"], id="advice"),
    pytest.param("example.com", ["@ MX 10 alias", f"@ MX 20 {OUR}.", "@ MX 30 alias",
                                 "alias CNAME real", "real A 127.0.0.2"], [], ["cname_mx"], id="cname"),
    pytest.param("example.com", ["@ MX 10 mail", f"@ MX 20 {OUR}.", "@ MX 30 mail", "mail A 127.0.0.2"],
                 [], [], id="good"),
]


@pytest.mark.parametrize("name,records,problems,advice", LAYOUTS)
def test_dnscheck_json_has_the_text_forms_findings_codes_and_exit_status(
        nsd, mxspool, name, records, problems, advice):
    """Protects `dnscheck DOMAIN --json`: one
    object with domain, the MX hosts, problems and advice as {code, text,
    fix}, the same findings and the same exit status as the text form
    (1 with a problem, 0 otherwise)."""
    text, js = dnscheck(nsd, mxspool, {"example.com": records}, name)
    assert js.returncode == text.returncode == (1 if problems else 0), \
        f"text exit {text.returncode}, json exit {js.returncode}\n{text.stdout}{js.stdout}{js.stderr}"
    r = json.loads(js.stdout)
    assert r["domain"] == name and r["hostname"] == OUR and r["error"] is None, r
    assert [f["code"] for f in r["problems"]] == problems, r
    assert [f["code"] for f in r["advice"]] == advice, r
    for f in r["problems"] + r["advice"]:
        assert f["text"] and f["fix"], f
    # The same findings, in the same words, as the text form.
    assert [(f["text"], f["fix"]) for f in r["problems"]] == \
        re.findall(r"(?m)^PROBLEM: (.+)\n\s+fix: (.+)$", text.stdout), text.stdout
    assert [(f["text"], f["fix"]) for f in r["advice"]] == \
        re.findall(r"(?m)^ADVICE: (.+)\n\s+fix: (.+)$", text.stdout), text.stdout
    listed = re.findall(r"(?m)^\s+(\d+) (\S+)$", text.stdout)
    assert [(str(m["preference"]), m["host"]) for m in r["mx"]] == listed, (r["mx"], text.stdout)
    for m in r["mx"]:
        assert m["ours"] == (m["host"] == OUR), m


def test_dnscheck_json_says_why_when_the_dns_does_not_answer(mxspool):
    """Protects the runtime failure: no DNS server answering is exit 1, a
    stderr line, and a JSON object whose `error` says why."""
    mx = mxspool([domain("example.com", "mx")], start=False, resolver=f"127.0.0.1:{free_port()}")
    r = mx.run("dnscheck", "example.com", "--json", timeout=60)
    assert r.returncode == 1, r
    out = json.loads(r.stdout)
    assert out["error"] and out["problems"] == [] and out["mx"] == [], out
    assert r.stderr.strip(), "and a line on stderr"


def node_test(file, env):
    node = need("node", "nodejs")
    r = subprocess.run([node, "--test", str(APP / "tests" / file)], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"node --test {file} failed:\n{r.stdout[-20000:]}\n{r.stderr[-5000:]}"
    assert re.search(r"(?m)^# pass [1-9]", r.stdout) and re.search(r"(?m)^# fail 0$", r.stdout), r.stdout


def collector(stats_file):
    lua = need("lua5.1", "lua5.1")
    r = subprocess.run([lua, str(COLLECTOR_RUNNER), str(COLLECTOR), str(stats_file)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    types = dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", r.stdout))
    samples = {}
    for line in lines:
        if line.startswith("#") or line.startswith("popen: "):
            continue
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return [line[len("popen: "):] for line in lines if line.startswith("popen: ")], types, samples


def test_luci_views_and_collector_against_the_real_daemon(nsd, mxspool, workdir):
    """Protects the LuCI pages and the metrics against drift from the CLI:
    with a down primary and two queued messages, the real views (Node,
    stand-ins for LuCI) show the real `queue list --json`, `queue stats
    --json` and `dnscheck --json` output, run flush, retag, delete and
    return on the real daemon after a confirmation, and say so when it is
    stopped; the Lua collector turns the real stats into the gauges and
    counters (test names in board/openwrt/luci-app-mxspool/tests/
    views.test.js)."""
    need("node", "nodejs")
    need("lua5.1", "lua5.1")
    nsd.zone("example.com", ["@ MX 10 mail", f"@ MX 20 {OUR}.", "mail A 127.0.0.2"])
    nsd.zone("example.org", [f"@ MX 10 {OUR}.", "@ MX 20 mail", "mail A 127.0.0.2"])
    nsd.zone("test", ["mx2 A 127.0.0.1"])
    nsd.start()
    down = free_port()  # nothing listens there: the primary is down
    mx = mxspool([domain("example.com", down), domain("example.org", down)],
                 resolver=nsd.resolver, retry="1h 1d", smarthost=free_port())
    ids = []
    for _ in range(2):
        msg, _ = make_message()
        res = send_mail(mx.port, "s@sender.test", ["alice@example.com"], msg)
        assert res.accepted, res
        ids.append(res.queue_id)
    for qid in ids:
        wait_deferred_in_log(mx, qid)

    stats = workdir / "stats.json"
    r = mx.run("queue", "stats", "--json", timeout=20)
    assert r.returncode == 0, r.stderr
    stats.write_text(r.stdout)
    st = json.loads(r.stdout)

    # The collector, on the real stats: popen of exactly the stats command.
    cmds, types, samples = collector(stats)
    assert cmds == ["/usr/sbin/mxspool queue stats --json 2>/dev/null"], cmds
    assert samples["mxspool_up"] == 1
    for metric, key in [("mxspool_queue_messages", "queued"),
                        ("mxspool_queue_oldest_age_seconds", "oldest_age"),
                        ("mxspool_spool_bytes", "spool_bytes"),
                        ("mxspool_spool_limit_bytes", "max_spool_size"),
                        ("mxspool_accepted_total", "accepted"),
                        ("mxspool_delivered_total", "delivered"),
                        ("mxspool_deferred_total", "deferred"),
                        ("mxspool_bounced_total", "bounced"),
                        ("mxspool_guard_refusals_total", "guard_refusals")]:
        assert samples.get(metric) == st[key], (metric, samples, st)
        assert types[metric] == ("counter" if metric.endswith("_total") else "gauge"), types
    assert samples["mxspool_queue_messages"] == 2 and samples["mxspool_deferred_total"] >= 2, samples
    assert types["mxspool_rejected_total"] == "counter" and types["mxspool_callahead_total"] == "counter"
    dest = f"127.0.0.1:{down}"
    assert samples.get(f'mxspool_destination_unreachable_seconds{{destination="{dest}"}}', -1) >= 0, samples
    for reason, n in st["rejected"].items():
        assert samples[f'mxspool_rejected_total{{reason="{reason}"}}'] == n

    expect = {
        "ids": ids, "sender": "s@sender.test", "recipients": ["alice@example.com"],
        "destination": dest, "domains": ["example.com", "example.org"], "hostname": OUR,
        "dnscheck": {"example.com": {"problems": [], "advice": ["primary_not_below"]},
                     "example.org": {"problems": ["best_mx"], "advice": []}},
        "retag_to": f"127.0.0.1:{free_port()}", "log": str(mx.log_path),
    }
    env = {"MXSPOOL_UI_BIN": str(binary_path()), "MXSPOOL_UI_CONFIG": str(mx.config_path),
           "MXSPOOL_UI_RUNNER": " ".join(runner_prefix()), "MXSPOOL_UI_EXPECT": json.dumps(expect)}
    node_test("views.test.js", {**env, "MXSPOOL_UI_PHASE": "up"})

    assert mx.stop() == 0
    node_test("views.test.js", {**env, "MXSPOOL_UI_PHASE": "down"})
    empty = workdir / "empty.json"
    empty.write_text("")
    cmds, types, samples = collector(empty)
    assert samples == {"mxspool_up": 0}, samples


# --- the Settings page writes what `mxspool check` accepts -----------------

# Not sampled: check reads these files or directories, so a value's syntax
# alone does not decide (the example config below uses real ones).
FILE_OPTIONS = {"spool_dir", "tls_cert", "tls_key"}
# Where the page is deliberately stricter than the parser: relative paths
# (mxspool takes them relative to the config file; on a router that is
# /etc/config, never what is meant) for the control socket and the alert
# command.
STRICTER_ABSOLUTE = {"control_socket", "alert_command"}


def stricter(name, value):
    return name in STRICTER_ABSOLUTE and not value.startswith("/")
# Options whose samples need another one moved out of the way (cross-checks
# of the parser: the spool must hold the largest message, reject >= tag).
COMPANIONS = {
    "max_message_size": {"max_spool_size": "1000G"},
    "max_spool_size": {"max_message_size": "1"},
    "spam_tag_score": {"spam_reject_score": "100000"},
    "spam_reject_score": {"spam_tag_score": "-100000"},
}


def check_uci(path, main, domains):
    path.write_text(render_uci(main, domains))
    r = run_command("check", "-c", str(path), timeout=30)
    return r


@pytest.fixture
def settings(workdir):
    node = need("node", "nodejs")
    r = subprocess.run([node, str(APP / "tests/dump-settings.js")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    form = json.loads(r.stdout)
    cert, key = make_cert(workdir / "tls", OUR)
    spool = workdir / "spool"
    spool.mkdir()
    base_main = {"hostname": OUR, "spool_dir": str(spool), "allow_volatile_spool": "1"}
    base_domain = {"name": "example.com"}
    return form, base_main, base_domain, {"tls_cert": str(cert), "tls_key": str(key), "spool_dir": str(spool)}


def test_every_example_on_the_settings_page_together_passes_mxspool_check(settings, workdir):
    """Protects "saving produces a file `mxspool check` accepts": every
    field of the Settings page set at once to its example (lists too, every
    flag on), plus each choice of each flag and list, is accepted."""
    form, base_main, base_domain, files = settings
    main, dom = dict(base_main), dict(base_domain)
    for sect, target in (("mxspool", main), ("domain", dom)):
        for o in form[sect]:
            v = files.get(o["name"]) or o.get("example") or o["choices"][0]
            if o["name"] == "allow_volatile_spool":
                v = "1"  # the test directory may be on tmpfs
            target[o["name"]] = [v] if o["kind"] == "DynamicList" else v
    r = check_uci(workdir / "all.conf", main, [dom])
    assert r.returncode == 0, f"{r.stderr}\n{(workdir / 'all.conf').read_text()}"
    for sect, target in (("mxspool", main), ("domain", dom)):
        for name in target:
            assert re.search(rf"(?m)^\t(option|list) {name} ", r.stdout), f"check did not print {name}"
    # Each choice of each Flag and ListValue, one at a time.
    for sect in ("mxspool", "domain"):
        for o in form[sect]:
            for c in o.get("choices", []):
                m, d = dict(base_main), dict(base_domain, user=["alice"])
                (m if sect == "mxspool" else d)[o["name"]] = c
                if o["name"] == "allow_volatile_spool":
                    continue  # 0 would refuse the test directory on tmpfs
                r = check_uci(workdir / "choice.conf", m, [d])
                assert r.returncode == 0, f"{sect}.{o['name']} '{c}': {r.stderr}"


def test_the_settings_page_and_mxspool_check_agree_on_each_value(settings, workdir):
    """Protects the page's validators against drift from the parser: for
    each field and each sample value, what the page would save is accepted
    by `mxspool check`, and what it refuses is refused there too (but for
    the page's documented extra strictness: absolute paths)."""
    form, base_main, base_domain, _files = settings
    jobs = []
    for sect in ("mxspool", "domain"):
        for o in form[sect]:
            if "verdicts" not in o or o["name"] in FILE_OPTIONS:
                continue
            for value, page_ok in o["verdicts"].items():
                m, d = dict(base_main), dict(base_domain)
                target = m if sect == "mxspool" else d
                target.update(COMPANIONS.get(o["name"], {}))
                target[o["name"]] = [value] if o["kind"] == "DynamicList" else value
                jobs.append((sect, o["name"], value, page_ok, m, d))
    counter = iter(range(len(jobs)))

    def run(job):
        sect, name, value, page_ok, m, d = job
        r = check_uci(workdir / f"s{next(counter)}.conf", m, [d])
        return sect, name, value, page_ok, r.returncode == 0, r.stderr.strip()

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    written_but_refused = [f"{s}.{n} '{v}': {err}" for s, n, v, ok, rust, err in results if ok and not rust]
    refused_but_fine = [f"{s}.{n} '{v}'" for s, n, v, ok, rust, _ in results
                        if rust and not ok and not stricter(n, v)]
    assert not written_but_refused, "the page would save values mxspool check refuses:\n" + \
        "\n".join(written_but_refused)
    assert not refused_but_fine, "the page refuses values mxspool accepts:\n" + "\n".join(refused_but_fine)
    assert len(results) > 1000
