"""`mxspool dnscheck DOMAIN` against a real authoritative NSD: each misconfiguration of a backup-MX
layout gives its finding (a `PROBLEM:` or `ADVICE:` line followed by its
`fix:` line) and the exit status the contract says: 1 if any problem, 0
with only advice or nothing. mxspool's hostname is mx2.test."""

import re

import pytest

from harness_mxspool import domain

OUR = "mx2.test"


def dnscheck(nsd, mxspool, records, name="example.com"):
    nsd.zone(name, records)
    nsd.zone("test", ["mx2 A 127.0.0.1"])
    nsd.start()
    mx = mxspool([domain(name, "mx")], start=False, resolver=nsd.resolver)
    r = mx.run("dnscheck", name, timeout=60)
    return r


def findings(out, tag):
    """[(what, fix)] of the TAG ('PROBLEM' or 'ADVICE') findings in OUT."""
    return re.findall(rf"(?m)^{tag}: (.+)\n\s+fix: (.+)$", out)


def assert_every_finding_has_a_fix(out):
    tagged = re.findall(r"(?m)^(?:PROBLEM|ADVICE): ", out)
    assert len(findings(out, "PROBLEM")) + len(findings(out, "ADVICE")) == len(tagged), \
        f"each finding must be followed by its fix:\n{out}"


PROBLEMS = [
    pytest.param([f"@ MX 10 {OUR}.", "@ MX 20 mail", "mail A 127.0.0.2"],
                 r"mx2\.test is the best \(lowest preference\) MX of example\.com",
                 r"smaller number", id="best-mx"),
    pytest.param([f"@ MX 10 {OUR}."],
                 r"mx2\.test is the only MX of example\.com", r"smaller number", id="only-mx"),
    pytest.param(["@ MX 10 mail", "mail A 127.0.0.2"],
                 r"mx2\.test is not listed as an MX of example\.com",
                 r"example\.com\. MX 20 mx2\.test\.", id="not-listed"),
    pytest.param(["@ MX 10 192.0.2.1.", f"@ MX 20 {OUR}.", "@ MX 30 192.0.2.1."],
                 r"'MX 10 192\.0\.2\.1' names an IP address", r"A 192\.0\.2\.1", id="ip-literal"),
    pytest.param(["@ MX 10 gone", f"@ MX 20 {OUR}.", "@ MX 30 gone"],
                 r"the MX host gone\.example\.com does not resolve",
                 r"add A \(and AAAA\) records for gone\.example\.com", id="unresolvable"),
    pytest.param(["@ MX 0 ."],
                 r"example\.com publishes a null MX \(RFC 7505\)", r"remove the", id="null-mx"),
]


@pytest.mark.parametrize("records,what,fix", PROBLEMS)
def test_problem_layouts_exit_1_with_their_finding(nsd, mxspool, records, what, fix):
    """Protects each problem of the DNS rules: best MX, only MX, not listed,
    an IP-literal MX, an MX host that does not resolve, a null MX — each is
    reported as a PROBLEM with its fix, and the exit status is 1."""
    r = dnscheck(nsd, mxspool, records)
    out = r.stdout
    assert r.returncode == 1, f"exit {r.returncode}\n{out}{r.stderr}"
    assert_every_finding_has_a_fix(out)
    match = [(w, f) for w, f in findings(out, "PROBLEM") if re.search(what, w)]
    assert match, f"no PROBLEM matching {what!r}:\n{out}"
    assert re.search(fix, match[0][1]), f"fix {match[0][1]!r} should say {fix!r}"


def test_cname_mx_is_advice_only(nsd, mxspool):
    """Protects: an MX that is a CNAME is advice (mxspool follows it), not a
    problem: exit 0, one ADVICE naming the alias and its target, no PROBLEM."""
    r = dnscheck(nsd, mxspool, ["@ MX 10 alias", f"@ MX 20 {OUR}.", "@ MX 30 alias",
                                "alias CNAME real", "real A 127.0.0.2"])
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}{r.stderr}"
    assert findings(out, "PROBLEM") == [] and "PROBLEM" not in out, out
    adv = findings(out, "ADVICE")
    assert len(adv) == 1, out
    what, fix = adv[0]
    assert "alias.example.com" in what and "CNAME" in what, what
    assert "real.example.com" in fix, fix
    assert_every_finding_has_a_fix(out)


def test_missing_primary_below_us_is_advice_only(nsd, mxspool):
    """Protects the primary-secondary-primary advice: with the primary
    listed only above us, dnscheck advises listing it again below us (with
    the record to add) and exits 0, no PROBLEM."""
    r = dnscheck(nsd, mxspool, ["@ MX 10 mail", f"@ MX 20 {OUR}.", "mail A 127.0.0.2"])
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}{r.stderr}"
    assert "PROBLEM" not in out, out
    adv = findings(out, "ADVICE")
    assert len(adv) == 1, out
    what, fix = adv[0]
    assert "not listed again below mx2.test" in what, what
    assert "MX 30 mail.example.com." in fix, fix


def test_good_layout_has_no_findings(nsd, mxspool):
    """Protects against false alarms: primary 10, us 20, primary again 30,
    every host resolving — exit 0, no PROBLEM and no ADVICE, and the MX
    records are listed."""
    r = dnscheck(nsd, mxspool, ["@ MX 10 mail", f"@ MX 20 {OUR}.", "@ MX 30 mail",
                                "mail A 127.0.0.2"])
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}{r.stderr}"
    assert "PROBLEM" not in out and "ADVICE" not in out, out
    assert re.search(r"(?m)^\s*10 mail\.example\.com$", out), out
    assert re.search(r"(?m)^\s*20 mx2\.test$", out), out
