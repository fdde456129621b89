//! `mxspool dnscheck DOMAIN`: reads the domain's MX setup through the
//! configured resolver and explains each finding with its fix, in words a
//! domain owner can act on. Exit 1 if there is a problem, 0 if there is
//! only advice or nothing.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::Config;
use crate::deliver::route::literal;
use crate::dns::{DnsError, Mx, Resolver};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Problem,
    Advice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

/// What the lookups found for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Addresses, or the lookup error.
    pub addrs: Result<usize, String>,
    /// The alias target when the host is a CNAME.
    pub cname: Option<String>,
}

fn problem(what: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Problem,
        what,
        fix,
    }
}

fn advice(what: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Advice,
        what,
        fix,
    }
}

/// The rules of CONTRACT.md "DNS rules", as a pure function.
pub fn analyze(
    domain: &str,
    our: &str,
    records: &[Mx],
    hosts: &HashMap<String, HostInfo>,
) -> Vec<Finding> {
    let mut out = vec![];
    if records.len() == 1 && records[0].exchange.is_empty() {
        out.push(problem(
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
                format!("the MX host {} does not resolve: {e}", m.exchange),
                format!(
                    "add A (and AAAA) records for {}, or remove that MX record",
                    m.exchange
                ),
            )),
            Ok(0) => out.push(problem(
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

/// The command. Returns the exit status.
pub fn run(config: &Config, domain: &str) -> i32 {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let servers = match crate::dns::system_nameservers(config.main.resolver) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mxspool: {e}");
            return 1;
        }
    };
    let resolver = Resolver::new(servers, crate::dns::Options::default());
    smol::block_on(async {
        let records = match resolver.mx(&domain).await {
            Ok(a) => a.records,
            Err(DnsError::NxDomain) => {
                println!(
                    "PROBLEM: {domain} does not exist in the DNS\n  fix: check the spelling, or register/delegate the domain"
                );
                return 1;
            }
            Err(e) => {
                eprintln!("mxspool: cannot read the MX records of {domain}: {e}");
                return 1;
            }
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
        let findings = analyze(&domain, &config.main.hostname, &records, &hosts);
        print!("{}", report(&domain, &records, &findings));
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
}
