//! DNS blocklists (`list dnsbl`): the client's address is looked up under
//! every zone at connect, all zones in parallel, while the client is still
//! greeting us; the verdict is applied at MAIL FROM, because a
//! `sender_allow` sender (known only then) is exempt. A zone that does not
//! answer within `dnsbl_timeout` is skipped (fail open) and logged: a dead
//! blocklist must not stop mail. Answers are cached by TTL in the resolver.
//!
//! The name building, answer classification and reply text are pure
//! functions; `Check` is the thin driver.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::policy::{self, Refusal};
use crate::config::Config;
use crate::ctx::Ctx;
use crate::dns::{DnsError, Resolver};
use crate::smtp::Reply;

/// The longest TXT reason quoted back to the client: a reply line stays
/// far under RFC 5321's 512 octets whatever the zone publishes.
pub const MAX_REASON: usize = 200;

/// `d.c.b.a.ZONE` for IPv4, the 32 reversed nibbles then `ZONE` for IPv6
/// (RFC 5782 2.1, 2.4). An IPv4-mapped IPv6 client is its IPv4 address.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut s = String::with_capacity(72 + zone.len());
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(s, "{}.{}.{}.{}.", o[3], o[2], o[1], o[0]);
        }
        IpAddr::V6(v6) => {
            for b in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0x0F, b >> 4);
            }
        }
    }
    s.push_str(zone);
    s
}

/// What one zone said about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    NotListed,
    /// The listing codes (127.0.0.x).
    Listed(Vec<Ipv4Addr>),
    /// The zone could not be asked (fail open).
    Failed(String),
}

/// A listing is an address in 127.0.0.0/8 (RFC 5782 2.3). Spamhaus answers
/// 127.255.255.x for its own errors (query through a public resolver,
/// over the free limit): those are not listings, and neither is anything
/// outside 127/8 (a wildcard or a hijacking resolver).
pub fn classify(answer: Result<Vec<Ipv4Addr>, DnsError>) -> ZoneAnswer {
    match answer {
        Ok(addrs) => {
            let (codes, other): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) = addrs
                .into_iter()
                .partition(|a| a.octets()[0] == 127 && a.octets()[1..3] != [255, 255]);
            if !codes.is_empty() {
                ZoneAnswer::Listed(codes)
            } else if let Some(o) = other.first() {
                ZoneAnswer::Failed(format!("answered {o}, which is not a listing code"))
            } else {
                // NODATA: the name exists without an A record.
                ZoneAnswer::NotListed
            }
        }
        Err(DnsError::NxDomain) => ZoneAnswer::NotListed,
        Err(e) => ZoneAnswer::Failed(e.to_string()),
    }
}

/// The zone's TXT records as one printable line of at most `MAX_REASON`
/// characters; a generic text when there is none.
pub fn reason_text(zone: &str, txt: &[String]) -> String {
    let joined = txt.join(" ");
    let mut out = String::new();
    for c in joined.chars() {
        let c = if c.is_ascii_graphic() { c } else { ' ' };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() >= MAX_REASON {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    if out.is_empty() {
        format!("listed at {zone}")
    } else {
        out
    }
}

/// The refusal for a listed client, in Postfix's familiar form.
pub fn refusal(ip: IpAddr, zone: &str, reason: &str) -> Refusal {
    (
        "dnsbl",
        Reply::enh(
            554,
            (5, 7, 1),
            format!("Service unavailable; client [{ip}] blocked using {zone}; {reason}"),
        ),
    )
}

/// A listing found: the zone and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub zone: String,
    pub reason: String,
}

/// The lookups of one connection, started at connect.
#[derive(Default)]
pub struct Check {
    /// One task per zone, in configuration order; empty when the client
    /// is allowed or no zone is configured.
    pending: Vec<smol::Task<Option<Listing>>>,
    /// The verdict once the tasks were awaited.
    done: Option<Option<Listing>>,
}

impl Check {
    /// Starts every zone's lookup now (they run during the greeting pause
    /// and EHLO). `client_allow` skips the lookups entirely.
    pub fn start(ctx: &Ctx, ip: IpAddr) -> Check {
        let cfg = ctx.config();
        let m = &cfg.main;
        if m.dnsbl.is_empty() || m.client_allow.iter().any(|c| c.contains(ip)) {
            return Check::default();
        }
        let resolver = ctx.resolver.borrow().clone();
        let pending = m
            .dnsbl
            .iter()
            .map(|zone| {
                ctx.ex
                    .spawn(lookup(resolver.clone(), ip, zone.clone(), m.dnsbl_timeout))
            })
            .collect();
        Check {
            pending,
            done: None,
        }
    }

    /// At MAIL: the first zone (in configuration order) that lists the
    /// client refuses it, unless the sender is in `sender_allow`.
    pub async fn at_mail(&mut self, cfg: &Config, ip: IpAddr, sender: &str) -> Result<(), Refusal> {
        if policy::sender_allowed(cfg, sender) {
            return Ok(());
        }
        if self.done.is_none() {
            let mut first = None;
            for t in self.pending.drain(..) {
                let r = t.await;
                if first.is_none() {
                    first = r;
                }
            }
            self.done = Some(first);
        }
        match self.done.as_ref().and_then(|d| d.as_ref()) {
            Some(l) => Err(refusal(ip, &l.zone, &l.reason)),
            None => Ok(()),
        }
    }
}

async fn with_timeout<T>(t: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        smol::Timer::after(t).await;
        None
    })
    .await
}

/// One zone: the A lookup, then (listed) the TXT reason, each within `t`.
async fn lookup(resolver: Resolver, ip: IpAddr, zone: String, t: Duration) -> Option<Listing> {
    let name = query_name(ip, &zone);
    let answer = match with_timeout(t, resolver.a(&name)).await {
        Some(r) => classify(r),
        None => {
            log::warn!(
                "id=NOQUEUE event=dnsbl_timeout client=[{ip}] zone={zone} timeout={}s action=\"skipped (fail open)\"",
                t.as_secs()
            );
            return None;
        }
    };
    match answer {
        ZoneAnswer::NotListed => {
            log::debug!("id=NOQUEUE event=dnsbl client=[{ip}] zone={zone} result=not_listed");
            None
        }
        ZoneAnswer::Failed(e) => {
            log::warn!(
                "id=NOQUEUE event=dnsbl_error client=[{ip}] zone={zone} error=\"{e}\" action=\"skipped (fail open)\""
            );
            None
        }
        ZoneAnswer::Listed(codes) => {
            // No TXT (or no answer in time) still leaves the client listed.
            let txt = match with_timeout(t, resolver.txt(&name)).await {
                Some(Ok(txt)) => txt,
                _ => vec![],
            };
            let reason = reason_text(&zone, &txt);
            let codes: Vec<String> = codes.iter().map(Ipv4Addr::to_string).collect();
            log::info!(
                "id=NOQUEUE event=dnsbl client=[{ip}] zone={zone} result=listed codes={} reason=\"{reason}\"",
                codes.join(",")
            );
            Some(Listing { zone, reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 5782 2.1/2.4 query names: reversed octets, reversed nibbles, and
    // a mapped IPv4 client asked as IPv4 (else it would never be listed).
    #[test]
    fn query_names() {
        let v4: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(query_name(v4, "zen.example"), "99.2.0.192.zen.example");
        let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(v6, "bl.example"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(query_name(mapped, "z.example"), "2.0.0.127.z.example");
    }

    // NXDOMAIN and NODATA are "not listed"; 127/8 codes are listings;
    // Spamhaus error codes and other addresses fail open, as do errors.
    #[test]
    fn answers_are_classified() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(classify(Err(DnsError::NxDomain)), ZoneAnswer::NotListed);
        assert_eq!(classify(Ok(vec![])), ZoneAnswer::NotListed);
        assert_eq!(
            classify(Ok(vec![a("127.0.0.2"), a("127.0.0.10")])),
            ZoneAnswer::Listed(vec![a("127.0.0.2"), a("127.0.0.10")])
        );
        assert!(matches!(
            classify(Ok(vec![a("127.255.255.254")])),
            ZoneAnswer::Failed(_)
        ));
        assert!(matches!(
            classify(Ok(vec![a("192.0.2.1")])),
            ZoneAnswer::Failed(_)
        ));
        assert!(matches!(
            classify(Err(DnsError::Timeout)),
            ZoneAnswer::Failed(_)
        ));
        assert!(matches!(
            classify(Err(DnsError::ServFail)),
            ZoneAnswer::Failed(_)
        ));
    }

    // The TXT reason is one printable line, bounded, never empty: a zone
    // cannot inject CRLF into our reply or make it overlong.
    #[test]
    fn reasons_are_sanitized_and_bounded() {
        assert_eq!(
            reason_text("z.example", &["Listed:  see\r\nhttp://x/?1.2.3.4".into()]),
            "Listed: see http://x/?1.2.3.4"
        );
        assert_eq!(reason_text("z.example", &[]), "listed at z.example");
        assert_eq!(
            reason_text("z.example", &["\u{7}\t ".into()]),
            "listed at z.example"
        );
        let long = reason_text("z.example", &["x".repeat(5000)]);
        assert_eq!(long.len(), MAX_REASON);
        assert_eq!(
            reason_text("z", &["a".into(), "b".into()]),
            "a b",
            "several TXT records are joined"
        );
    }

    // The refusal is 554 5.7.1 naming client, zone and reason, for stats
    // under "dnsbl".
    #[test]
    fn refusal_text() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let (reason, reply) = refusal(ip, "bl.test", "spam source");
        assert_eq!(reason, "dnsbl");
        assert_eq!(
            reply.one_line(),
            "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test; spam source"
        );
    }
}
