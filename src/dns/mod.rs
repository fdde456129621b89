//! The DNS resolver: a caching stub resolver for MX, A/AAAA, TXT,
//! PTR, asking the configured recursive name servers.
//!
//! Layout: `wire` (sans-IO: build, parse, validate, interpret), `cache`
//! (pure, clock passed in), `transport` (UDP/TCP with deadlines), and
//! [`Resolver`] here, which ties them together. Single-threaded: the
//! resolver is `Rc`-shared and used from one `LocalExecutor`.

mod cache;
mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cache::{Cache, Cached};
use wire::{Outcome, RData};

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (authoritative; permanent).
    NxDomain,
    /// Every name server asked answered SERVFAIL.
    ServFail,
    /// The name server refused to answer us.
    Refused,
    /// No name server answered in time.
    Timeout,
    /// A malformed or nonsensical answer (CNAME loop, bad packet, ...).
    Protocol(String),
    /// A socket error talking to a name server.
    Io(String),
    /// No name server is configured or found.
    NoNameservers,
    /// The name asked for is not a valid DNS name (permanent).
    InvalidName(String),
}

impl DnsError {
    /// Whether trying again later may succeed. Only a non-existent domain
    /// and an unusable name are permanent; everything else (including a
    /// missing resolver) is the network's or configuration's fault and must
    /// defer mail, never bounce it.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, DnsError::NxDomain | DnsError::InvalidName(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NxDomain => f.write_str("domain does not exist (NXDOMAIN)"),
            DnsError::ServFail => f.write_str(
                "DNS server failure (SERVFAIL): the name server could not resolve it; the domain's DNS may be broken",
            ),
            DnsError::Refused => f.write_str(
                "DNS query refused (REFUSED): the configured name server does not answer us; check the 'resolver' option",
            ),
            DnsError::Timeout => f.write_str(
                "DNS timeout: no name server answered; check the uplink and the 'resolver' option",
            ),
            DnsError::Protocol(m) => write!(f, "bad DNS answer: {m}"),
            DnsError::Io(m) => write!(f, "DNS network error: {m}"),
            DnsError::NoNameservers => f.write_str(
                "no DNS name server: set option 'resolver' or check /tmp/resolv.conf.d/resolv.conf.auto and /etc/resolv.conf",
            ),
            DnsError::InvalidName(m) => write!(f, "invalid DNS name {m}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Resolver tuning.
#[derive(Debug, Clone)]
pub struct Options {
    /// Wait for one server's answer (UDP; also the whole TCP exchange).
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
    /// Cache size in entries (one per name and type); 0 disables it.
    pub cache_entries: usize,
    /// Cap on positive TTLs.
    pub max_ttl: Duration,
    /// Cap on negative (NXDOMAIN/NODATA) TTLs; RFC 2308 takes them from the
    /// SOA, which a hostile or sloppy zone can set to days.
    pub negative_ttl_cap: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(2),
            attempts: 2,
            cache_entries: 256,
            max_ttl: Duration::from_secs(3600),
            negative_ttl_cap: Duration::from_secs(900),
        }
    }
}

/// One MX record. `exchange` is lower-case without the trailing dot; the
/// null MX (RFC 7505, exchange ".") is "". It may be an IP literal if the
/// zone is broken that way; MX selection must check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

/// A domain's MX set, sorted by preference (stable), duplicates removed.
/// `exists` is always true (NXDOMAIN is `Err(DnsError::NxDomain)`); empty
/// `records` with `exists` is NODATA (RFC 5321 §5.1: use the A/AAAA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxAnswer {
    pub records: Vec<Mx>,
    pub exists: bool,
}

/// A host's addresses: A first, then AAAA, deduplicated. `cname` is the
/// canonical name when `host` was an alias (a CNAME), else `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAnswer {
    pub addrs: Vec<IpAddr>,
    pub cname: Option<String>,
}

struct Inner {
    servers: Vec<SocketAddr>,
    opts: Options,
    cache: RefCell<Cache>,
    rng: transport::Rng,
}

/// The caching stub resolver. Clone it freely: clones share the cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Rc<Inner>,
}

/// Result of one full resolution of (name, type), CNAMEs followed.
type Lookup = Cached;

impl Resolver {
    pub fn new(nameservers: Vec<SocketAddr>, opts: Options) -> Resolver {
        Resolver {
            inner: Rc::new(Inner {
                servers: nameservers,
                cache: RefCell::new(Cache::new(opts.cache_entries)),
                opts,
                rng: transport::Rng::new(),
            }),
        }
    }

    /// The servers asked, in order.
    pub fn nameservers(&self) -> &[SocketAddr] {
        &self.inner.servers
    }

    /// MX records of `domain`. NXDOMAIN is `Err(DnsError::NxDomain)`.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let mut records = Vec::new();
        if let Cached::Positive { records: rs, .. } = self.lookup(domain, wire::TYPE_MX).await? {
            for r in rs.iter() {
                if let RData::Mx(preference, exchange) = r {
                    let mx = Mx {
                        preference: *preference,
                        exchange: exchange.clone(),
                    };
                    if !records.contains(&mx) {
                        records.push(mx);
                    }
                }
            }
        }
        records.sort_by_key(|m| m.preference);
        Ok(MxAnswer {
            records,
            exists: true,
        })
    }

    /// A and AAAA of `host`, asked in parallel. An IP literal (optionally in
    /// brackets) is returned as is. When one of the two fails temporarily
    /// but the other has addresses, those addresses are returned.
    pub async fn ip(&self, host: &str) -> Result<IpAnswer, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(IpAnswer {
                addrs: vec![ip],
                cname: None,
            });
        }
        let (a, aaaa) = futures_lite::future::zip(
            self.lookup(host, wire::TYPE_A),
            self.lookup(host, wire::TYPE_AAAA),
        )
        .await;
        let mut addrs = Vec::new();
        let mut cname = None;
        let mut errors = Vec::new();
        for res in [a, aaaa] {
            match res {
                Ok(Cached::Positive { records, canonical }) => {
                    for r in records.iter() {
                        let ip = match r {
                            RData::A(v4) => IpAddr::V4(*v4),
                            RData::Aaaa(v6) => IpAddr::V6(*v6),
                            _ => continue,
                        };
                        if !addrs.contains(&ip) {
                            addrs.push(ip);
                        }
                    }
                    if cname.is_none() {
                        cname = canonical.map(|c| c.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        if addrs.is_empty() {
            // NXDOMAIN for either means the name is gone; else the first error.
            if errors.contains(&DnsError::NxDomain) {
                return Err(DnsError::NxDomain);
            }
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        }
        Ok(IpAnswer { addrs, cname })
    }

    /// A records only (DNSBL queries: NXDOMAIN = "not listed").
    pub async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        Ok(self
            .records(name, wire::TYPE_A)
            .await?
            .iter()
            .filter_map(|r| match r {
                RData::A(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// TXT records, each one's character-strings joined (RFC 7208 §3.3),
    /// bytes that are not UTF-8 replaced.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .records(name, wire::TYPE_TXT)
            .await?
            .iter()
            .filter_map(|r| match r {
                RData::Txt(t) => Some(t.clone()),
                _ => None,
            })
            .collect())
    }

    /// PTR names of `ip`, lower-case without the trailing dot.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        Ok(self
            .records(&wire::reverse_name(ip), wire::TYPE_PTR)
            .await?
            .iter()
            .filter_map(|r| match r {
                RData::Ptr(p) => Some(p.clone()),
                _ => None,
            })
            .collect())
    }

    /// Records of the wanted type; NODATA is an empty list.
    async fn records(&self, name: &str, qtype: u16) -> Result<Rc<[RData]>, DnsError> {
        match self.lookup(name, qtype).await? {
            Cached::Positive { records, .. } => Ok(records),
            Cached::NoData => Ok(Rc::from(Vec::new())),
            Cached::NxDomain => Err(DnsError::NxDomain),
        }
    }

    /// Full resolution of (name, type) through the cache. A cached or fresh
    /// NXDOMAIN is returned as `Err(DnsError::NxDomain)`, so the `Ok` value
    /// is `Positive` or `NoData`.
    async fn lookup(&self, name: &str, qtype: u16) -> Result<Lookup, DnsError> {
        let name = wire::normalize_name(name)?;
        let cached = self
            .inner
            .cache
            .borrow_mut()
            .get(&name, qtype, Instant::now());
        let result = match cached {
            Some(hit) => hit,
            None => {
                let (value, ttl) = self.resolve(&name, qtype).await?;
                let ttl = match value {
                    Cached::Positive { .. } => ttl.min(self.inner.opts.max_ttl),
                    _ => ttl.min(self.inner.opts.negative_ttl_cap),
                };
                self.inner.cache.borrow_mut().insert(
                    &name,
                    qtype,
                    value.clone(),
                    ttl,
                    Instant::now(),
                );
                value
            }
        };
        match result {
            Cached::NxDomain => Err(DnsError::NxDomain),
            other => Ok(other),
        }
    }

    /// Asks the servers, following CNAMEs across re-queries; returns the
    /// value and its TTL. Negative answers without an SOA get TTL 0 (RFC
    /// 2308 §5: not cached).
    async fn resolve(&self, name: &str, qtype: u16) -> Result<(Lookup, Duration), DnsError> {
        let mut cur = name.to_string();
        let mut hops = 0usize;
        let mut ttl = u32::MAX;
        let mut seen = vec![name.to_string()];
        loop {
            let resp = self.query(&cur, qtype).await?;
            let budget = wire::MAX_CNAME_CHAIN - hops;
            match wire::interpret(&resp, &cur, qtype, budget)? {
                Outcome::Answer {
                    records,
                    canonical,
                    ttl: t,
                } => {
                    let canonical = canonical.or((hops > 0).then_some(cur));
                    let ttl = Duration::from_secs(u64::from(ttl.min(t)));
                    let value = Cached::Positive {
                        records: Rc::from(records),
                        canonical: canonical.map(Rc::from),
                    };
                    return Ok((value, ttl));
                }
                Outcome::Alias {
                    target,
                    hops: h,
                    ttl: t,
                } => {
                    if seen.contains(&target) {
                        return Err(DnsError::Protocol(format!("CNAME loop at {target}")));
                    }
                    hops += h;
                    ttl = ttl.min(t);
                    seen.push(target.clone());
                    cur = target;
                }
                Outcome::NoData { negative_ttl } => {
                    let t = Duration::from_secs(u64::from(negative_ttl.unwrap_or(0)));
                    return Ok((Cached::NoData, t));
                }
                Outcome::NxDomain { negative_ttl } => {
                    let t = Duration::from_secs(u64::from(negative_ttl.unwrap_or(0)));
                    return Ok((Cached::NxDomain, t));
                }
                // query() retries these on other servers and never returns them.
                Outcome::ServFail | Outcome::Refused | Outcome::Truncated => {
                    return Err(DnsError::Protocol("unexpected answer state".into()));
                }
            }
        }
    }

    /// One question to the servers: each server in order, `attempts`
    /// rounds. SERVFAIL, REFUSED, other error codes, timeouts and socket
    /// errors move on to the next server; TC retries the same server over
    /// TCP; FORMERR retries it once without EDNS (RFC 6891 §7, for old
    /// forwarders); a NOERROR or NXDOMAIN answer is final. The error
    /// returned is the last one seen.
    async fn query(&self, name: &str, qtype: u16) -> Result<wire::Response, DnsError> {
        let opts = &self.inner.opts;
        let mut last = DnsError::NoNameservers;
        for _round in 0..opts.attempts.max(1) {
            for &server in &self.inner.servers {
                let mut res = self.ask(server, name, qtype, true).await;
                if matches!(&res, Ok(r) if r.rcode == wire::RCODE_FORMERR) {
                    res = self.ask(server, name, qtype, false).await;
                }
                let err = match res {
                    Ok(resp) => match resp.rcode {
                        wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN if !resp.truncated => {
                            return Ok(resp);
                        }
                        wire::RCODE_SERVFAIL => DnsError::ServFail,
                        wire::RCODE_REFUSED => DnsError::Refused,
                        _ if resp.truncated => {
                            DnsError::Protocol(format!("{server} sent a truncated answer over TCP"))
                        }
                        rcode => DnsError::Protocol(format!(
                            "name server {server} answered with error code {rcode}"
                        )),
                    },
                    Err(e) => e,
                };
                log::debug!("dns: {name} type {qtype} at {server}: {err}");
                last = err;
            }
        }
        Err(last)
    }

    /// One question to one server: UDP, then TCP if the answer was truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: u16,
        edns: bool,
    ) -> Result<wire::Response, DnsError> {
        let timeout = self.inner.opts.timeout;
        let id = self.inner.rng.next_u16();
        let q = wire::build_query(id, name, qtype, edns);
        let res = transport::udp(server, &q, id, name, qtype, timeout).await;
        if matches!(&res, Ok(r) if r.truncated) {
            log::debug!("dns: truncated answer for {name} from {server}, retrying over TCP");
            return transport::tcp(server, &q, id, name, qtype, timeout).await;
        }
        res
    }
}

/// The name servers to use: `configured` (option `resolver`) wins; else
/// every `nameserver` of OpenWrt's /tmp/resolv.conf.d/resolv.conf.auto (the
/// upstream servers netifd learned), else of /etc/resolv.conf.
pub fn system_nameservers(configured: Option<SocketAddr>) -> Result<Vec<SocketAddr>, DnsError> {
    nameservers_from(
        configured,
        &[
            Path::new("/tmp/resolv.conf.d/resolv.conf.auto"),
            Path::new("/etc/resolv.conf"),
        ],
    )
}

/// [`system_nameservers`] with the files as parameters (tests). The first
/// readable file that names at least one usable server wins.
fn nameservers_from(
    configured: Option<SocketAddr>,
    files: &[&Path],
) -> Result<Vec<SocketAddr>, DnsError> {
    if let Some(s) = configured {
        return Ok(vec![s]);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let servers = parse_resolv_conf(&text);
        if !servers.is_empty() {
            return Ok(servers);
        }
    }
    Err(DnsError::NoNameservers)
}

/// `nameserver` lines of a resolv.conf, port 53, duplicates dropped. An
/// IPv6 zone index is kept if numeric (`fe80::1%2`); a named zone
/// (`%eth0`) would need if_nametoindex, so that server is skipped.
fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let (ip, zone) = match addr.split_once('%') {
            Some((ip, zone)) => (ip, Some(zone)),
            None => (addr, None),
        };
        let sa = match (ip.parse::<IpAddr>(), zone) {
            (Ok(ip), None) => SocketAddr::new(ip, 53),
            (Ok(IpAddr::V6(v6)), Some(z)) => match z.parse::<u32>() {
                Ok(scope) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, 53, 0, scope)),
                Err(_) => {
                    log::warn!(
                        "dns: skipping nameserver {addr}: named IPv6 zones are not supported"
                    );
                    continue;
                }
            },
            _ => {
                log::warn!("dns: skipping unparsable nameserver {addr}");
                continue;
            }
        };
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}
