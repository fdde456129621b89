//! From a destination to the addresses to try, resolved at every attempt so
//! the owner's dynamic address may change while mail waits; and the MX
//! rules of RFC 5321 5.1 for a backup MX.

use std::net::{IpAddr, SocketAddr};

use crate::dns::{DnsError, Mx, Resolver};
use crate::spool::Destination;

/// One address to try, with the name it was found under (for the log and
/// the guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// Why no address could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Try again later (DNS timeout, no answer yet).
    Temporary(String),
    /// The destination cannot exist (null MX, loop to ourselves).
    Permanent(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Temporary(s) | RouteError::Permanent(s) => f.write_str(s),
        }
    }
}

/// `[::1]`, `::1`, `192.0.2.1` as an address.
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("IPv6:")
        .parse()
        .ok()
}

/// What the MX records of a domain say about delivering there from us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Deliver to these hosts, best first (the implicit MX is the domain).
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// We are the best (or only) MX: delivery would loop back to us.
    Loop,
    /// An MX record names an address, not a host (RFC 5321 5.1 forbids it).
    IpLiteral(String),
}

/// Applies RFC 5321 5.1 to `records` (sorted by preference): drop every
/// record at or below our own preference; nothing left means a loop.
pub fn plan(domain: &str, records: &[Mx], our_hostname: &str) -> MxPlan {
    if records.is_empty() {
        return MxPlan::Hosts(vec![domain.to_string()]);
    }
    if records.len() == 1 && records[0].exchange.is_empty() {
        return MxPlan::NullMx;
    }
    if let Some(lit) = records.iter().find(|m| literal(&m.exchange).is_some()) {
        return MxPlan::IpLiteral(lit.exchange.clone());
    }
    let ours = records
        .iter()
        .filter(|m| m.exchange.eq_ignore_ascii_case(our_hostname))
        .map(|m| m.preference)
        .min();
    let hosts: Vec<String> = records
        .iter()
        .filter(|m| ours.is_none_or(|p| m.preference < p))
        .filter(|m| !m.exchange.is_empty())
        .map(|m| m.exchange.clone())
        .collect();
    if hosts.is_empty() {
        return MxPlan::Loop;
    }
    MxPlan::Hosts(hosts)
}

fn dns_error(what: &str, e: &DnsError) -> RouteError {
    let msg = format!("{what}: {e}");
    match e {
        DnsError::NxDomain | DnsError::InvalidName(_) => RouteError::Permanent(msg),
        _ => RouteError::Temporary(msg),
    }
}

/// The MX plan for `domain`, looked up now.
pub async fn mx_plan(
    resolver: &Resolver,
    domain: &str,
    our_hostname: &str,
) -> Result<MxPlan, RouteError> {
    let ans = resolver
        .mx(domain)
        .await
        .map_err(|e| dns_error(&format!("MX lookup for {domain}"), &e))?;
    Ok(plan(domain, &ans.records, our_hostname))
}

/// Largest /etc/hosts we read (a router's is a few lines).
const MAX_HOSTS_FILE: u64 = 256 * 1024;

/// The addresses `/etc/hosts` gives `host` (LAN names, `localhost`), as
/// the system resolver would: mxspool has no libc resolver of its own.
fn hosts_file(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?;
            let mut w = l.split_whitespace();
            let ip: IpAddr = w.next()?.parse().ok()?;
            w.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

/// The addresses of one host: a literal, /etc/hosts, or A then AAAA records.
pub async fn addresses(resolver: &Resolver, host: &str) -> Result<Vec<IpAddr>, RouteError> {
    if let Some(ip) = literal(host) {
        return Ok(vec![ip]);
    }
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open("/etc/hosts") {
        use std::io::Read;
        let _ = f.take(MAX_HOSTS_FILE).read_to_string(&mut text);
    }
    let local = hosts_file(&text, host.trim_end_matches('.'));
    if !local.is_empty() {
        return Ok(local);
    }
    let ans = resolver
        .ip(host)
        .await
        .map_err(|e| dns_error(&format!("address lookup for {host}"), &e))?;
    if ans.addrs.is_empty() {
        return Err(RouteError::Temporary(format!("{host} has no address")));
    }
    Ok(ans.addrs)
}

/// A relay host is the owner's own choice, typically a dynamic-DNS name:
/// one that does not resolve right now (lapsed, mistyped and about to be
/// retagged) defers the mail instead of bouncing the whole queue.
fn relay_error(e: RouteError) -> RouteError {
    match e {
        RouteError::Permanent(m) => RouteError::Temporary(m),
        t => t,
    }
}

/// The addresses for `dest`, in the order to try them.
pub async fn resolve(
    resolver: &Resolver,
    our_hostname: &str,
    dest: &Destination,
) -> Result<Vec<Target>, RouteError> {
    match dest {
        Destination::Relay { host, port } => Ok(addresses(resolver, host)
            .await
            .map_err(relay_error)?
            .into_iter()
            .map(|ip| Target {
                host: host.clone(),
                addr: SocketAddr::new(ip, *port),
            })
            .collect()),
        Destination::Mx { domain, port } => {
            let hosts = match mx_plan(resolver, domain, our_hostname).await? {
                MxPlan::Hosts(h) => h,
                MxPlan::NullMx => {
                    return Err(RouteError::Permanent(format!(
                        "{domain} accepts no mail (null MX, RFC 7505)"
                    )));
                }
                MxPlan::Loop => {
                    return Err(RouteError::Permanent(format!(
                        "mail for {domain} loops back to myself ({our_hostname} is its best MX)"
                    )));
                }
                MxPlan::IpLiteral(l) => {
                    return Err(RouteError::Permanent(format!(
                        "an MX record of {domain} is an IP address ({l}), not a host name"
                    )));
                }
            };
            let mut targets = vec![];
            let mut errors = vec![];
            for h in hosts {
                match addresses(resolver, &h).await {
                    Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                        host: h.clone(),
                        addr: SocketAddr::new(ip, *port),
                    })),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if targets.is_empty() {
                // A host that does not resolve today may tomorrow: defer.
                return Err(RouteError::Temporary(errors.join("; ")));
            }
            Ok(targets)
        }
    }
}

#[cfg(test)]
mod tests {
    // A relay name that does not resolve defers (retry, retag), never bounces.
    #[test]
    fn relay_lookup_failures_are_temporary() {
        assert_eq!(
            super::relay_error(RouteError::Permanent("nx".into())),
            RouteError::Temporary("nx".into())
        );
        assert_eq!(
            super::relay_error(RouteError::Temporary("t".into())),
            RouteError::Temporary("t".into())
        );
    }
    use super::*;

    #[test]
    fn hosts_file_names_resolve_case_insensitively_and_comments_do_not() {
        let t = "127.0.0.1 localhost\n192.168.1.2 NAS nas.lan # box\n# 10.0.0.1 old\n::1 localhost ip6-localhost\n";
        assert_eq!(
            hosts_file(t, "localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(
            hosts_file(t, "nas"),
            vec!["192.168.1.2".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_file(t, "old").is_empty());
        assert!(hosts_file(t, "box").is_empty());
    }

    fn mx(p: u16, h: &str) -> Mx {
        Mx {
            preference: p,
            exchange: h.into(),
        }
    }

    #[test]
    fn keeps_only_hosts_better_than_us() {
        let r = [
            mx(10, "mail.example.com"),
            mx(20, "mx2.test"),
            mx(30, "mail.example.com"),
        ];
        assert_eq!(
            plan("example.com", &r, "MX2.test"),
            MxPlan::Hosts(vec!["mail.example.com".into()])
        );
    }

    #[test]
    fn best_or_only_or_equal_mx_is_a_loop() {
        assert_eq!(
            plan("e.com", &[mx(10, "mx2.test")], "mx2.test"),
            MxPlan::Loop
        );
        assert_eq!(
            plan(
                "e.com",
                &[mx(10, "mx2.test"), mx(20, "other.test")],
                "mx2.test"
            ),
            MxPlan::Loop
        );
        // Equal preference is discarded too (RFC 5321 5.1: "equal or higher").
        assert_eq!(
            plan("e.com", &[mx(10, "a.test"), mx(10, "mx2.test")], "mx2.test"),
            MxPlan::Loop
        );
    }

    #[test]
    fn not_listed_means_every_mx_and_no_mx_means_the_domain_itself() {
        let r = [mx(10, "a.test"), mx(20, "b.test")];
        assert_eq!(
            plan("e.com", &r, "mx2.test"),
            MxPlan::Hosts(vec!["a.test".into(), "b.test".into()])
        );
        assert_eq!(
            plan("e.com", &[], "mx2.test"),
            MxPlan::Hosts(vec!["e.com".into()])
        );
    }

    #[test]
    fn null_mx_and_ip_literal_mx_are_recognised() {
        assert_eq!(plan("e.com", &[mx(0, "")], "mx2.test"), MxPlan::NullMx);
        assert_eq!(
            plan(
                "e.com",
                &[mx(10, "192.0.2.1"), mx(20, "mx2.test")],
                "mx2.test"
            ),
            MxPlan::IpLiteral("192.0.2.1".into())
        );
    }
}
