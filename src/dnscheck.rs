//! `mxspool dnscheck DOMAIN [--json]`: reads the domain's MX setup through
//! the configured resolver and explains each finding with its fix, in words
//! a domain owner can act on. Exit 1 if there is a problem, 0 if there is
//! only advice or nothing. Each finding has a stable machine code (`CODES`)
//! that `--json` prints next to the words, for LuCI and scripts.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::Config;
use crate::control::json_str;
use crate::dns::{DnsError, Mx, Resolver};
use crate::outbound::route::literal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Problem,
    Advice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Stable machine name of the rule (one of `CODES`).
    pub code: &'static str,
    pub what: String,
    pub fix: String,
}

/// Every finding's code, with its severity. Scripts and the LuCI page key
/// on these: a code is never renamed, only added.
pub const CODES: &[(&str, Severity)] = &[
    ("domain_not_found", Severity::Problem),
    ("null_mx", Severity::Problem),
    ("not_listed", Severity::Problem),
    ("best_mx", Severity::Problem),
    ("only_mx", Severity::Problem),
    ("ip_literal_mx", Severity::Problem),
    ("mx_unresolvable", Severity::Problem),
    ("mx_no_address", Severity::Problem),
    ("cname_mx", Severity::Advice),
    ("primary_not_below", Severity::Advice),
];

/// What the lookups found for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Addresses, or the lookup error.
    pub addrs: Result<usize, String>,
    /// The alias target when the host is a CNAME.
    pub cname: Option<String>,
}

fn problem(code: &'static str, what: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Problem,
        code,
        what,
        fix,
    }
}

fn advice(code: &'static str, what: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Advice,
        code,
        what,
        fix,
    }
}

/// The DNS rules of `deliver_to 'mx'` that `dnscheck` reports, as a pure function.
pub fn analyze(
    domain: &str,
    our: &str,
    records: &[Mx],
    hosts: &HashMap<String, HostInfo>,
) -> Vec<Finding> {
    let mut out = vec![];
    if records.len() == 1 && records[0].exchange.is_empty() {
        out.push(problem(
            "null_mx",
            format!("{domain} publishes a null MX (RFC 7505): it declares that it accepts no mail at all"),
            format!("remove the '{domain}. MX 0 .' record, list your own mail server (e.g. MX 10 mail.{domain}.) and {our} below it (MX 20 {our}.)"),
        ));
        return out;
    }
    let ours = records
        .iter()
        .filter(|m| m.exchange.eq_ignore_ascii_case(our))
        .map(|m| m.preference)
        .min();
    match ours {
        None => out.push(problem(
            "not_listed",
            format!("{our} is not listed as an MX of {domain}: senders will never use this backup"),
            format!(
                "add a record '{domain}. MX {} {our}.' with a larger number than your primary's",
                records
                    .iter()
                    .map(|m| m.preference)
                    .max()
                    .map_or(20, |p| p.saturating_add(10))
            ),
        )),
        Some(p) => {
            let better = records.iter().filter(|m| m.preference < p).count();
            if better == 0 {
                let only = records.iter().all(|m| m.exchange.eq_ignore_ascii_case(our));
                out.push(problem(
                    if only { "only_mx" } else { "best_mx" },
                    format!(
                        "{our} is the {} MX of {domain}: mail would loop back to itself, so mxspool refuses it",
                        if only { "only" } else { "best (lowest preference)" }
                    ),
                    format!("list your own server with a smaller number than {our}, e.g. '{domain}. MX 10 mail.{domain}.' and '{domain}. MX {} {our}.'", p.max(20)),
                ));
            } else {
                // Primary-secondary-primary: spammers aim at the lowest
                // priority MX hoping it filters less; if the primary is
                // listed again below the backup, they reach it anyway.
                let primaries: Vec<&Mx> = records.iter().filter(|m| m.preference < p).collect();
                let again = records.iter().any(|m| {
                    m.preference > p
                        && primaries
                            .iter()
                            .any(|x| x.exchange.eq_ignore_ascii_case(&m.exchange))
                });
                if !again {
                    let first = primaries
                        .first()
                        .map_or("your primary", |m| m.exchange.as_str());
                    out.push(advice(
                        "primary_not_below",
                        format!("your primary is not listed again below {our}"),
                        format!("add '{domain}. MX {} {first}.' (primary-secondary-primary): spammers who target the lowest-priority MX then reach the primary, which filters best", p.saturating_add(10)),
                    ));
                }
            }
        }
    }
    let mut seen: Vec<&str> = vec![];
    for m in records {
        // A host listed twice (primary-secondary-primary) is reported once.
        if m.exchange.is_empty() || seen.contains(&m.exchange.as_str()) {
            continue;
        }
        seen.push(&m.exchange);
        if literal(&m.exchange).is_some() {
            out.push(problem(
                "ip_literal_mx",
                format!("the MX record 'MX {} {}' names an IP address, not a host (RFC 5321 5.1); mxspool refuses mail for {domain} while it is there", m.preference, m.exchange),
                format!("create a host record such as 'mail.{domain}. A {}' and point the MX at mail.{domain}.", m.exchange),
            ));
            continue;
        }
        let Some(info) = hosts.get(&m.exchange) else {
            continue;
        };
        match &info.addrs {
            Err(e) => out.push(problem(
                "mx_unresolvable",
                format!("the MX host {} does not resolve: {e}", m.exchange),
                format!(
                    "add A (and AAAA) records for {}, or remove that MX record",
                    m.exchange
                ),
            )),
            Ok(0) => out.push(problem(
                "mx_no_address",
                format!("the MX host {} has no address", m.exchange),
                format!(
                    "add A (and AAAA) records for {}, or remove that MX record",
                    m.exchange
                ),
            )),
            Ok(_) => {}
        }
        if let Some(c) = &info.cname {
            out.push(advice(
                "cname_mx",
                format!("the MX host {} is an alias (CNAME) of {c}; mxspool follows it, but many senders do not (RFC 2181 10.3)", m.exchange),
                format!("point the MX record at {c} directly"),
            ));
        }
    }
    out
}

/// Formats findings for the terminal.
pub fn report(domain: &str, records: &[Mx], findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "MX records of {domain}:");
    if records.is_empty() {
        let _ = writeln!(
            out,
            "  (none: mail goes to {domain} itself, the implicit MX)"
        );
    }
    for m in records {
        let name = if m.exchange.is_empty() {
            "."
        } else {
            &m.exchange
        };
        let _ = writeln!(out, "  {:>5} {name}", m.preference);
    }
    for f in findings {
        let tag = match f.severity {
            Severity::Problem => "PROBLEM",
            Severity::Advice => "ADVICE",
        };
        let _ = writeln!(out, "{tag}: {}\n  fix: {}", f.what, f.fix);
    }
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    let advices = findings.len() - problems;
    let _ = writeln!(out, "{problems} problem(s), {advices} piece(s) of advice");
    out
}

/// The `--json` form: one object with the domain, our hostname, the MX
/// hosts found (with what their lookups gave), and the findings split into
/// `problems` and `advice`, each `{code, text, fix}`. `error` is null, or
/// why the MX records could not be read at all (exit 1, nothing checked).
pub fn report_json(
    domain: &str,
    our: &str,
    records: &[Mx],
    hosts: &HashMap<String, HostInfo>,
    findings: &[Finding],
    error: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"domain\":{},\"hostname\":{},\"mx\":[",
        json_str(domain),
        json_str(our)
    );
    for (i, m) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let info = hosts.get(&m.exchange);
        let addresses = match info.map(|h| &h.addrs) {
            Some(Ok(n)) => n.to_string(),
            _ => "null".into(),
        };
        let lookup_error = match info.map(|h| &h.addrs) {
            Some(Err(e)) => json_str(e),
            _ => "null".into(),
        };
        let cname = info
            .and_then(|h| h.cname.as_deref())
            .map_or("null".into(), json_str);
        let host = if m.exchange.is_empty() {
            "."
        } else {
            &m.exchange
        };
        let _ = write!(
            out,
            "{{\"preference\":{},\"host\":{},\"ours\":{},\"ip_literal\":{},\"addresses\":{addresses},\"cname\":{cname},\"error\":{lookup_error}}}",
            m.preference,
            json_str(host),
            m.exchange.eq_ignore_ascii_case(our),
            literal(&m.exchange).is_some(),
        );
    }
    out.push(']');
    for (key, severity) in [
        ("problems", Severity::Problem),
        ("advice", Severity::Advice),
    ] {
        let _ = write!(out, ",\"{key}\":[");
        for (i, f) in findings
            .iter()
            .filter(|f| f.severity == severity)
            .enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"code\":{},\"text\":{},\"fix\":{}}}",
                json_str(f.code),
                json_str(&f.what),
                json_str(&f.fix)
            );
        }
        out.push(']');
    }
    let _ = writeln!(
        out,
        ",\"error\":{}}}",
        error.map_or("null".into(), json_str)
    );
    out
}

/// The command. Returns the exit status.
pub fn run(config: &Config, domain: &str, json: bool) -> i32 {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let our = config.main.hostname.as_str();
    let fail = |e: String| {
        eprintln!("mxspool: {e}");
        if json {
            print!(
                "{}",
                report_json(&domain, our, &[], &HashMap::new(), &[], Some(&e))
            );
        }
        1
    };
    let servers = match crate::dns::system_nameservers(config.main.resolver) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let resolver = Resolver::new(servers, crate::dns::Options::default());
    smol::block_on(async {
        let records = match resolver.mx(&domain).await {
            Ok(a) => a.records,
            Err(DnsError::NxDomain) => {
                let f = problem(
                    "domain_not_found",
                    format!("{domain} does not exist in the DNS"),
                    "check the spelling, or register/delegate the domain".into(),
                );
                if json {
                    print!(
                        "{}",
                        report_json(&domain, our, &[], &HashMap::new(), &[f], None)
                    );
                } else {
                    println!("PROBLEM: {}\n  fix: {}", f.what, f.fix);
                }
                return 1;
            }
            Err(e) => return fail(format!("cannot read the MX records of {domain}: {e}")),
        };
        let mut hosts = HashMap::new();
        for m in &records {
            if m.exchange.is_empty() || literal(&m.exchange).is_some() {
                continue;
            }
            let info = match resolver.ip(&m.exchange).await {
                Ok(a) => HostInfo {
                    addrs: Ok(a.addrs.len()),
                    cname: a.cname,
                },
                Err(e) => HostInfo {
                    addrs: Err(e.to_string()),
                    cname: None,
                },
            };
            hosts.insert(m.exchange.clone(), info);
        }
        let findings = analyze(&domain, our, &records, &hosts);
        if json {
            print!(
                "{}",
                report_json(&domain, our, &records, &hosts, &findings, None)
            );
        } else {
            print!("{}", report(&domain, &records, &findings));
        }
        i32::from(findings.iter().any(|f| f.severity == Severity::Problem))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(p: u16, h: &str) -> Mx {
        Mx {
            preference: p,
            exchange: h.into(),
        }
    }

    fn ok(hosts: &[&str]) -> HashMap<String, HostInfo> {
        hosts
            .iter()
            .map(|h| {
                (
                    h.to_string(),
                    HostInfo {
                        addrs: Ok(1),
                        cname: None,
                    },
                )
            })
            .collect()
    }

    fn severities(f: &[Finding]) -> Vec<Severity> {
        f.iter().map(|f| f.severity).collect()
    }

    #[test]
    fn a_good_primary_secondary_primary_layout_has_no_findings() {
        let r = [
            mx(10, "mail.e.com"),
            mx(20, "mx2.test"),
            mx(30, "mail.e.com"),
        ];
        assert!(analyze("e.com", "mx2.test", &r, &ok(&["mail.e.com", "mx2.test"])).is_empty());
    }

    #[test]
    fn missing_primary_below_us_is_advice_only() {
        let r = [mx(10, "mail.e.com"), mx(20, "mx2.test")];
        let f = analyze("e.com", "mx2.test", &r, &ok(&["mail.e.com", "mx2.test"]));
        assert_eq!(severities(&f), vec![Severity::Advice]);
        assert!(f[0].fix.contains("MX 30 mail.e.com."));
    }

    #[test]
    fn best_only_unlisted_null_literal_unresolvable_are_problems() {
        let only = analyze(
            "e.com",
            "mx2.test",
            &[mx(10, "mx2.test")],
            &ok(&["mx2.test"]),
        );
        assert_eq!(severities(&only), vec![Severity::Problem]);
        assert!(only[0].what.contains("only"));
        let best = analyze(
            "e.com",
            "mx2.test",
            &[mx(10, "mx2.test"), mx(20, "mail.e.com")],
            &ok(&["mx2.test", "mail.e.com"]),
        );
        assert!(best[0].what.contains("best"));
        let unlisted = analyze(
            "e.com",
            "mx2.test",
            &[mx(10, "mail.e.com")],
            &ok(&["mail.e.com"]),
        );
        assert!(unlisted[0].what.contains("not listed"));
        let null = analyze("e.com", "mx2.test", &[mx(0, "")], &HashMap::new());
        assert!(null[0].what.contains("null MX"));
        let lit = analyze(
            "e.com",
            "mx2.test",
            &[mx(10, "192.0.2.1"), mx(20, "mx2.test")],
            &ok(&["mx2.test"]),
        );
        assert!(
            lit.iter()
                .any(|f| f.severity == Severity::Problem && f.what.contains("IP address"))
        );
        let mut h = ok(&["mx2.test"]);
        h.insert(
            "gone.e.com".into(),
            HostInfo {
                addrs: Err("no such domain".into()),
                cname: None,
            },
        );
        let gone = analyze(
            "e.com",
            "mx2.test",
            &[mx(10, "gone.e.com"), mx(20, "mx2.test")],
            &h,
        );
        assert!(
            gone.iter()
                .any(|f| f.severity == Severity::Problem && f.what.contains("does not resolve"))
        );
    }

    #[test]
    fn cname_mx_is_advice() {
        let mut h = ok(&["mx2.test"]);
        h.insert(
            "alias.e.com".into(),
            HostInfo {
                addrs: Ok(1),
                cname: Some("real.e.com".into()),
            },
        );
        let f = analyze(
            "e.com",
            "mx2.test",
            &[
                mx(10, "alias.e.com"),
                mx(20, "mx2.test"),
                mx(30, "alias.e.com"),
            ],
            &h,
        );
        assert_eq!(severities(&f), vec![Severity::Advice]);
        assert!(f[0].fix.contains("real.e.com"));
    }

    #[test]
    fn every_code_used_is_listed_with_its_severity() {
        let mut h = ok(&["mx2.test"]);
        h.insert(
            "alias.e.com".into(),
            HostInfo {
                addrs: Ok(1),
                cname: Some("real.e.com".into()),
            },
        );
        h.insert(
            "gone.e.com".into(),
            HostInfo {
                addrs: Err("no such domain".into()),
                cname: None,
            },
        );
        h.insert(
            "empty.e.com".into(),
            HostInfo {
                addrs: Ok(0),
                cname: None,
            },
        );
        let layouts: [&[Mx]; 5] = [
            &[mx(0, "")],
            &[mx(10, "mx2.test")],
            &[mx(10, "mx2.test"), mx(20, "alias.e.com")],
            &[mx(10, "alias.e.com")],
            &[
                mx(10, "192.0.2.1"),
                mx(11, "gone.e.com"),
                mx(12, "empty.e.com"),
                mx(20, "mx2.test"),
            ],
        ];
        let mut seen = vec![];
        for r in layouts {
            for f in analyze("e.com", "mx2.test", r, &h) {
                let listed = CODES.iter().find(|(c, _)| *c == f.code);
                assert_eq!(listed.map(|l| l.1), Some(f.severity), "{}", f.code);
                seen.push(f.code);
            }
        }
        for (c, _) in CODES {
            assert!(
                *c == "domain_not_found" || seen.contains(c),
                "{c} never produced"
            );
        }
    }

    #[test]
    fn json_report_splits_problems_and_advice_and_lists_the_hosts() {
        let mut h = ok(&["mx2.test"]);
        h.insert(
            "gone.e.com".into(),
            HostInfo {
                addrs: Err("no \"such\" domain".into()),
                cname: None,
            },
        );
        let r = [mx(10, "gone.e.com"), mx(20, "mx2.test")];
        let f = analyze("e.com", "mx2.test", &r, &h);
        let j = report_json("e.com", "mx2.test", &r, &h, &f, None);
        assert!(j.starts_with("{\"domain\":\"e.com\",\"hostname\":\"mx2.test\",\"mx\":["));
        assert!(j.contains("{\"preference\":10,\"host\":\"gone.e.com\",\"ours\":false,\"ip_literal\":false,\"addresses\":null,\"cname\":null,\"error\":\"no \\\"such\\\" domain\"}"), "{j}");
        assert!(j.contains("\"ours\":true"), "{j}");
        assert!(
            j.contains("\"problems\":[{\"code\":\"mx_unresolvable\""),
            "{j}"
        );
        assert!(
            j.contains("\"advice\":[{\"code\":\"primary_not_below\""),
            "{j}"
        );
        assert!(j.ends_with(",\"error\":null}\n"), "{j}");
    }
}
