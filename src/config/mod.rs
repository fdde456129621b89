//! The configuration: a UCI file (see `uci`) turned into a typed, validated
//! model. Every option of `../shared/CONTRACT.md` is here, plus the
//! documented extras (README "Configuration reference"). Errors name the
//! file and line.

pub mod uci;
mod value;

use value::*;
pub use value::{parse_duration, parse_size};

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: `PATH:LINE: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 0 when the error is not about one line (e.g. the file is unreadable).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// `HOST[:PORT]`: a name or an IP address (IPv6 in brackets), re-resolved at
/// every use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// Parses `host`, `host:port`, `1.2.3.4:25`, `[::1]:25`, `[::1]`.
    /// `default_port` is used when no port is given. Names are lower-cased
    /// and IPv6 addresses written in their canonical form, so equal
    /// destinations compare equal.
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        if s.is_empty() {
            return Err("is empty: expected HOST or HOST:PORT".into());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or("has '[' without ']': write an IPv6 address as [ADDRESS]:PORT")?;
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("'{addr}' in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => default_port,
                _ => match after.strip_prefix(':') {
                    Some(p) => parse_port(p)?,
                    None => return Err("has text after ']' that is not ':PORT'".into()),
                },
            };
            return Ok(HostPort {
                host: ip.to_string(),
                port,
            });
        }
        // A bare IPv6 address cannot carry a port: every ':' is its own.
        if let Ok(ip) = s.parse::<Ipv6Addr>() {
            return Ok(HostPort {
                host: ip.to_string(),
                port: default_port,
            });
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err("is not HOST:PORT (write an IPv6 address as [ADDRESS]:PORT)".into());
                }
                (h, parse_port(p)?)
            }
            None => (s, default_port),
        };
        let host = if host.parse::<Ipv4Addr>().is_ok() {
            host.to_string()
        } else {
            // Single-label names are fine here: a LAN host resolved by dnsmasq.
            domain_name(host, 1)?
        };
        Ok(HostPort { host, port })
    }
}

/// An IPv4 or IPv6 network in CIDR form (`192.0.2.0/24`, `2001:db8::/32`,
/// or a plain address meaning a /32 or /128). Host bits are cleared on
/// parsing, so `192.0.2.7/24` is the network `192.0.2.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address (expected e.g. 192.0.2.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match parse_uint(p) {
                Ok(n) if n <= u64::from(max) => n as u8,
                _ => {
                    return Err(format!(
                        "the prefix length must be a number from 0 to {max}"
                    ));
                }
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Cidr { addr, prefix })
    }
    /// True when `ip` is inside this network (an IPv4-mapped IPv6 address
    /// matches IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask32(self.prefix);
                u32::from(net) & m == u32::from(ip) & m
            }
            (IpAddr::V6(net), ip) => {
                let ip = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let m = mask128(self.prefix);
                u128::from(net) & m == u128::from(ip) & m
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A SpamAssassin score in hundredths of a point (`5`, `5.0`, `-1.25`),
/// so that the model stays `Eq` and thresholds compare exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score(pub i32);

/// Scores beyond this are surely typos (GTUBE scores 1000).
pub const MAX_SCORE: i32 = 100_000;

impl Score {
    /// Parses `[-]DIGITS[.D[D]]`; more decimals than two are refused
    /// rather than rounded, so what is written is what is compared.
    pub fn parse(s: &str) -> Result<Score, String> {
        const WHAT: &str = "must be a score like 5 or 5.0 or -1.25";
        let (neg, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (whole, frac) = rest.split_once('.').unwrap_or((rest, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 2
            || (rest.contains('.') && frac.is_empty())
        {
            return Err(WHAT.into());
        }
        let whole: i64 = whole.parse().map_err(|_| WHAT.to_string())?;
        let frac: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| WHAT.to_string())? * 10,
            _ => frac.parse().map_err(|_| WHAT.to_string())?,
        };
        let v = whole.saturating_mul(100).saturating_add(frac);
        let v = if neg { -v } else { v };
        if v.abs() > i64::from(MAX_SCORE) * 100 {
            return Err(format!("is out of range (at most {MAX_SCORE} either way)"));
        }
        Ok(Score(v as i32))
    }
}

impl fmt::Display for Score {
    /// `5.0`, `-1.25`, `15.2`: one decimal at least, as SpamAssassin prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        let (w, c) = (a / 100, a % 100);
        if c % 10 == 0 {
            write!(f, "{sign}{w}.{}", c / 10)
        } else {
            write!(f, "{sign}{w}.{c:02}")
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

/// One `retry 'INTERVAL SPAN'` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStep {
    pub interval: Duration,
    pub span: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Callahead,
    Users,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTempfail {
    Accept,
    Defer,
}

/// Where a domain's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverTo {
    /// Backup MX: the domain's MX hosts that rank above our hostname.
    Mx,
    /// Relay: always this host and port.
    Relay(HostPort),
}

/// A `config domain` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Line of the `config domain` line.
    pub line: usize,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub deliver_to: DeliverTo,
    /// Port for `mx` deliveries (default 25).
    pub port: u16,
    pub verify: Verify,
    /// Local parts or full addresses in this domain, lower-cased.
    pub users: Vec<String>,
    pub on_tempfail: OnTempfail,
    pub offline_address: Vec<IpAddr>,
    /// Lower-case host name (or an IP address); compare the
    /// greeting's first word case-insensitively.
    pub expect_greeting: Option<String>,
    /// `sha256:BASE64` as written (checked: 32 bytes of base64).
    pub tls_pin: Option<String>,
}

/// `config mxspool` (the one main section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Main {
    pub line: usize,
    /// Lower-case, no trailing dot.
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    /// A spool_dir in RAM (tmpfs, ramfs) is refused unless this is set
    /// (`allow_volatile_spool`, default 0): OpenWrt's /tmp and /var are
    /// RAM, and queued mail there is lost at the next reboot.
    pub allow_volatile_spool: bool,
    /// Program (and arguments, split on white space, no shell) run on
    /// alert events (`alert_command`; see `alert`).
    pub alert_command: Option<Vec<String>>,
    /// A destination unreachable this long is an alert (`alert_after`, 1h).
    pub alert_after: Duration,
    /// Read by the OpenWrt init script, not the daemon: retry queued mail
    /// when the WAN comes up (`flush_on_ifup`, default 1).
    pub flush_on_ifup: bool,
    pub control_socket: PathBuf,
    /// None: read the resolv.conf files named in the contract.
    pub resolver: Option<SocketAddr>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_spool_size: u64,
    pub callahead_timeout: Duration,
    /// How long the primary's 2xx for an address is remembered
    /// (`callahead_positive_ttl`, extra, default 31d; asked again after a
    /// quarter of it).
    pub callahead_positive_ttl: Duration,
    /// How long its 5xx is remembered (`callahead_negative_ttl`, extra,
    /// default 3d; asked again after a 24th of it, 3h by default).
    pub callahead_negative_ttl: Duration,
    /// Call-ahead probes in flight at once (`callahead_max_probes`, extra,
    /// default 8).
    pub callahead_max_probes: usize,
    pub retry: Vec<RetryStep>,
    pub host_check_interval: Duration,
    pub max_hops: usize,
    pub smarthost: Option<HostPort>,
    pub user: Option<String>,
    pub syslog: bool,
    /// `enabled` (extra, default 1): read by the OpenWrt init script, which
    /// starts nothing while it is 0 (the package ships it at 0 until the
    /// owner has set hostname and domains).
    pub enabled: bool,
    pub log_level: log::LevelFilter,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub dnsbl: Vec<String>,
    pub client_allow: Vec<Cidr>,
    pub client_deny: Vec<Cidr>,
    /// Lower-case `domain`, `.domain` (its subdomains) or `local@domain`.
    pub sender_allow: Vec<String>,
    pub sender_deny: Vec<String>,

    // Extras beyond the contract (documented in the README).
    /// redb page cache (`cache_size`, default 4M).
    pub cache_size: u64,
    /// The spool's commit journal (`journal_size`, default 4M; 0: none).
    pub journal_size: u64,
    /// Server: wait for a command (`command_timeout`, default 5m, RFC 5321 4.5.3.2.7).
    pub command_timeout: Duration,
    /// Server: wait for the next block of message text (`data_timeout`, default 3m).
    pub data_timeout: Duration,
    /// Error replies before 421 and close (`max_errors`, default 10).
    pub max_errors: usize,
    /// Parallel connections per destination (`max_destination_connections`, default 2).
    pub max_destination_connections: usize,
    /// Client: TCP connect budget (`connect_timeout`, default 30s).
    pub connect_timeout: Duration,
    /// Client: one whole transaction, MAIL to the reply after the body
    /// (`transaction_timeout`, default 30m): a destination that trickles
    /// a byte every few minutes meets every per-read timeout.
    pub transaction_timeout: Duration,
    /// Jobs (message, destination) waiting in memory for one destination
    /// (`max_destination_queue`, default 128): a slow destination cannot
    /// take every job slot from the others.
    pub max_destination_queue: usize,
    /// Client: how long to wait for the greeting (`greeting_timeout`, default 5m, RFC 5321 4.5.3.2.1).
    pub greeting_timeout: Duration,

    // The relay front door (issue 6; README).
    /// Wait this long before our 220; a client that talks first is refused
    /// (`greet_pause`, default 0s: off).
    pub greet_pause: Duration,
    /// Budget of one DNSBL zone's lookup (`dnsbl_timeout`, default 5s).
    pub dnsbl_timeout: Duration,
    /// SpamAssassin's spamd, SPAMC over TCP (`spamd`, default empty: off).
    pub spamd: Option<HostPort>,
    /// At or above: X-Spam-Flag YES (`spam_tag_score`, default 5.0).
    pub spam_tag_score: Score,
    /// At or above: 554 at end of DATA (`spam_reject_score`, default 10.0).
    pub spam_reject_score: Score,
    /// ClamAV's clamd, INSTREAM over TCP (`clamd`, default empty: off).
    pub clamd: Option<HostPort>,
    /// A scanner down or timed out: 451 instead of accepting unscanned
    /// (`scan_required`, default 0).
    pub scan_required: bool,
    /// The whole exchange with one scanner (`scan_timeout`, default 30s).
    pub scan_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub main: Main,
    pub domains: Vec<Domain>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the configuration: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates UCI text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |line: usize, message: String| ConfigError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let sections = uci::parse(text).map_err(|e| at(e.line, e.message))?;
        let mut main: Option<Main> = None;
        let mut domains: Vec<Domain> = Vec::new();
        let mut names: Vec<(&str, usize)> = Vec::new();
        for section in &sections {
            // uci would silently merge two sections of one name; say so instead.
            if let Some(name) = &section.name {
                if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
                    return Err(at(
                        section.line,
                        format!("section name '{name}' is used twice (first at line {first})"),
                    ));
                }
                names.push((name, section.line));
            }
            match section.kind.as_str() {
                "mxspool" => {
                    if let Some(first) = &main {
                        return Err(at(
                            section.line,
                            format!(
                                "a second 'config mxspool' section (the first is at line {}): \
                                 there must be exactly one",
                                first.line
                            ),
                        ));
                    }
                    let o = Options::new(path, section, MAIN_SINGLE, MAIN_LIST)?;
                    main = Some(parse_main(&o)?);
                }
                "domain" => {
                    let o = Options::new(path, section, DOMAIN_SINGLE, DOMAIN_LIST)?;
                    let domain = parse_domain(&o)?;
                    if let Some(first) = domains.iter().find(|d| d.name == domain.name) {
                        let line = o.get("name").map_or(section.line, |i| i.line);
                        return Err(at(
                            line,
                            format!(
                                "domain '{}' is configured twice (first in the section at line {})",
                                domain.name, first.line
                            ),
                        ));
                    }
                    domains.push(domain);
                }
                other => {
                    return Err(at(
                        section.line,
                        format!("unknown section type '{other}' (expected 'mxspool' or 'domain')"),
                    ));
                }
            }
        }
        // Not about one line; line 1 keeps the contract's PATH:LINE: form.
        let main = main.ok_or_else(|| {
            at(
                1,
                "no 'config mxspool' section: the file needs one, with at least \
                 'option hostname' and 'option spool_dir'"
                    .into(),
            )
        })?;
        let mut main = main;
        // A relative path is relative to the configuration file, never to
        // the working directory (procd starts us in /).
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        for p in [&mut main.spool_dir, &mut main.control_socket] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut main.tls_cert, &mut main.tls_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            main,
            domains,
        })
    }

    /// The domain section for `domain` (lower-case, no trailing dot).
    pub fn domain(&self, domain: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == domain)
    }
}

/// `mxspool check` prints this: every effective setting, defaults included,
/// in UCI form. It parses back to an equal `Config` (line numbers aside).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.main;
        let opt = |f: &mut fmt::Formatter<'_>, k: &str, v: &dyn fmt::Display| {
            writeln!(f, "\toption {k} {}", quote(&v.to_string()))
        };
        let list = |f: &mut fmt::Formatter<'_>, k: &str, v: &dyn fmt::Display| {
            writeln!(f, "\tlist {k} {}", quote(&v.to_string()))
        };
        let path_or_empty = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        writeln!(f, "config mxspool 'main'")?;
        opt(f, "hostname", &m.hostname)?;
        for l in &m.listen {
            list(f, "listen", l)?;
        }
        opt(f, "spool_dir", &m.spool_dir.display())?;
        opt(
            f,
            "allow_volatile_spool",
            &if m.allow_volatile_spool { "1" } else { "0" },
        )?;
        opt(
            f,
            "alert_command",
            &m.alert_command
                .as_ref()
                .map_or(String::new(), |a| a.join(" ")),
        )?;
        opt(f, "alert_after", &fmt_duration(m.alert_after))?;
        opt(f, "flush_on_ifup", &if m.flush_on_ifup { "1" } else { "0" })?;
        opt(f, "control_socket", &m.control_socket.display())?;
        opt(f, "resolver", &or_empty(m.resolver))?;
        opt(f, "max_message_size", &fmt_size(m.max_message_size))?;
        opt(f, "max_recipients", &m.max_recipients)?;
        opt(f, "max_connections", &m.max_connections)?;
        opt(f, "max_connections_per_ip", &m.max_connections_per_ip)?;
        opt(f, "max_spool_size", &fmt_size(m.max_spool_size))?;
        opt(f, "callahead_timeout", &fmt_duration(m.callahead_timeout))?;
        opt(
            f,
            "callahead_positive_ttl",
            &fmt_duration(m.callahead_positive_ttl),
        )?;
        opt(
            f,
            "callahead_negative_ttl",
            &fmt_duration(m.callahead_negative_ttl),
        )?;
        opt(f, "callahead_max_probes", &m.callahead_max_probes)?;
        for r in &m.retry {
            let step = format!("{} {}", fmt_duration(r.interval), fmt_duration(r.span));
            list(f, "retry", &step)?;
        }
        opt(
            f,
            "host_check_interval",
            &fmt_duration(m.host_check_interval),
        )?;
        opt(f, "max_hops", &m.max_hops)?;
        opt(f, "smarthost", &or_empty(m.smarthost.as_ref()))?;
        opt(f, "user", &or_empty(m.user.as_ref()))?;
        opt(f, "enabled", &if m.enabled { "1" } else { "0" })?;
        opt(f, "syslog", &if m.syslog { "1" } else { "0" })?;
        opt(f, "log_level", &level_name(m.log_level))?;
        opt(f, "tls_cert", &or_empty(path_or_empty(&m.tls_cert)))?;
        opt(f, "tls_key", &or_empty(path_or_empty(&m.tls_key)))?;
        for z in &m.dnsbl {
            list(f, "dnsbl", z)?;
        }
        for c in &m.client_allow {
            list(f, "client_allow", c)?;
        }
        for c in &m.client_deny {
            list(f, "client_deny", c)?;
        }
        for s in &m.sender_allow {
            list(f, "sender_allow", s)?;
        }
        for s in &m.sender_deny {
            list(f, "sender_deny", s)?;
        }
        opt(f, "cache_size", &fmt_size(m.cache_size))?;
        opt(f, "journal_size", &fmt_size(m.journal_size))?;
        opt(f, "command_timeout", &fmt_duration(m.command_timeout))?;
        opt(f, "data_timeout", &fmt_duration(m.data_timeout))?;
        opt(f, "max_errors", &m.max_errors)?;
        opt(
            f,
            "max_destination_connections",
            &m.max_destination_connections,
        )?;
        opt(f, "connect_timeout", &fmt_duration(m.connect_timeout))?;
        opt(
            f,
            "transaction_timeout",
            &fmt_duration(m.transaction_timeout),
        )?;
        opt(f, "max_destination_queue", &m.max_destination_queue)?;
        opt(f, "greeting_timeout", &fmt_duration(m.greeting_timeout))?;
        opt(f, "greet_pause", &fmt_duration(m.greet_pause))?;
        opt(f, "dnsbl_timeout", &fmt_duration(m.dnsbl_timeout))?;
        opt(f, "spamd", &or_empty(m.spamd.as_ref()))?;
        opt(f, "spam_tag_score", &m.spam_tag_score)?;
        opt(f, "spam_reject_score", &m.spam_reject_score)?;
        opt(f, "clamd", &or_empty(m.clamd.as_ref()))?;
        opt(f, "scan_required", &if m.scan_required { "1" } else { "0" })?;
        opt(f, "scan_timeout", &fmt_duration(m.scan_timeout))?;
        for d in &self.domains {
            writeln!(f)?;
            writeln!(f, "config domain")?;
            opt(f, "name", &d.name)?;
            match &d.deliver_to {
                DeliverTo::Mx => {
                    opt(f, "deliver_to", &"mx")?;
                    opt(f, "port", &d.port)?;
                }
                // `port` is refused next to a relay; its port is in deliver_to.
                DeliverTo::Relay(hp) => opt(f, "deliver_to", hp)?,
            }
            let verify = match d.verify {
                Verify::Callahead => "callahead",
                Verify::Users => "users",
                Verify::None => "none",
            };
            opt(f, "verify", &verify)?;
            for u in &d.users {
                list(f, "user", u)?;
            }
            let on_tempfail = match d.on_tempfail {
                OnTempfail::Accept => "accept",
                OnTempfail::Defer => "defer",
            };
            opt(f, "on_tempfail", &on_tempfail)?;
            for a in &d.offline_address {
                list(f, "offline_address", a)?;
            }
            opt(f, "expect_greeting", &or_empty(d.expect_greeting.as_ref()))?;
            opt(f, "tls_pin", &or_empty(d.tls_pin.as_ref()))?;
        }
        Ok(())
    }
}

/// A UCI single-quoted value; `'` is written as uci export does: `'\''`.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

fn or_empty<T: fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn level_name(l: log::LevelFilter) -> &'static str {
    match l {
        log::LevelFilter::Off => "off",
        log::LevelFilter::Error => "error",
        log::LevelFilter::Warn => "warn",
        log::LevelFilter::Info => "info",
        log::LevelFilter::Debug => "debug",
        log::LevelFilter::Trace => "trace",
    }
}

/// In the largest unit that is exact: `15m`, `4d`, `90s`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// In the largest unit that is exact: `10M`, `1536K`, `1000`.
fn fmt_size(n: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    match n {
        0 => "0".into(),
        _ if n.is_multiple_of(G) => format!("{}G", n / G),
        _ if n.is_multiple_of(M) => format!("{}M", n / M),
        _ if n.is_multiple_of(K) => format!("{}K", n / K),
        _ => n.to_string(),
    }
}

/// The longest `greet_pause` accepted.
pub const MAX_GREET_PAUSE: Duration = Duration::from_secs(30);
/// spamd's and clamd's registered ports, for `spamd 'HOST'` and `clamd 'HOST'`.
pub const SPAMD_PORT: u16 = 783;
pub const CLAMD_PORT: u16 = 3310;

const MAIN_SINGLE: &[&str] = &[
    "hostname",
    "spool_dir",
    "allow_volatile_spool",
    "alert_command",
    "alert_after",
    "flush_on_ifup",
    "control_socket",
    "resolver",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "max_connections_per_ip",
    "max_spool_size",
    "callahead_timeout",
    "callahead_positive_ttl",
    "callahead_negative_ttl",
    "callahead_max_probes",
    "host_check_interval",
    "max_hops",
    "smarthost",
    "user",
    "syslog",
    "enabled",
    "log_level",
    "tls_cert",
    "tls_key",
    "cache_size",
    "journal_size",
    "command_timeout",
    "data_timeout",
    "max_errors",
    "max_destination_connections",
    "connect_timeout",
    "transaction_timeout",
    "max_destination_queue",
    "greeting_timeout",
    "greet_pause",
    "dnsbl_timeout",
    "spamd",
    "spam_tag_score",
    "spam_reject_score",
    "clamd",
    "scan_required",
    "scan_timeout",
];
const MAIN_LIST: &[&str] = &[
    "listen",
    "retry",
    "dnsbl",
    "client_allow",
    "client_deny",
    "sender_allow",
    "sender_deny",
];
const DOMAIN_SINGLE: &[&str] = &[
    "name",
    "deliver_to",
    "port",
    "verify",
    "on_tempfail",
    "expect_greeting",
    "tls_pin",
];
const DOMAIN_LIST: &[&str] = &["user", "offline_address"];

/// One section's items, checked against the keys the section knows.
struct Options<'a> {
    path: &'a Path,
    section: &'a uci::Section,
}

impl<'a> Options<'a> {
    /// Refuses unknown keys, `list` for a single-value key, a single-value
    /// key given twice (uci would keep the last one silently), and values
    /// with line breaks or control characters (none of ours takes them).
    /// `option` for a list key is one entry of that list.
    fn new(
        path: &'a Path,
        section: &'a uci::Section,
        single: &[&str],
        lists: &[&str],
    ) -> Result<Options<'a>, ConfigError> {
        let o = Options { path, section };
        for (i, item) in section.items.iter().enumerate() {
            let is_single = single.contains(&item.name.as_str());
            if !is_single && !lists.contains(&item.name.as_str()) {
                return Err(o.err(
                    item.line,
                    format!(
                        "unknown option '{}' in section '{}'",
                        item.name, section.kind
                    ),
                ));
            }
            if is_single && item.is_list {
                return Err(o.err(
                    item.line,
                    format!(
                        "option '{0}' takes one value: write 'option {0}', not 'list {0}'",
                        item.name
                    ),
                ));
            }
            if is_single
                && let Some(first) = section.items[..i].iter().find(|p| p.name == item.name)
            {
                return Err(o.err(
                    item.line,
                    format!(
                        "option '{}' is set twice (first at line {})",
                        item.name, first.line
                    ),
                ));
            }
            if item.value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(o.bad(item, "contains a line break or a control character"));
            }
        }
        Ok(o)
    }

    fn err(&self, line: usize, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    /// The value error form: `option 'x': what is wrong (got 'value')`.
    fn bad(&self, item: &uci::Item, what: &str) -> ConfigError {
        // Escape control characters so the error stays one line.
        let got: String = item
            .value
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        self.err(
            item.line,
            format!("option '{}': {} (got '{}')", item.name, what, got),
        )
    }

    fn get(&self, key: &str) -> Option<&'a uci::Item> {
        self.section.items.iter().find(|i| i.name == key)
    }

    fn all(&self, key: &'a str) -> impl Iterator<Item = &'a uci::Item> + 'a {
        self.section.items.iter().filter(move |i| i.name == key)
    }

    /// A missing required option names the line of its section.
    fn required(&self, key: &str, what: &str) -> Result<&'a uci::Item, ConfigError> {
        self.get(key).ok_or_else(|| {
            self.err(
                self.section.line,
                format!(
                    "section '{}' needs 'option {key}' ({what})",
                    self.section.kind
                ),
            )
        })
    }

    fn one<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(item) => parse(&item.value).map_err(|m| self.bad(item, &m)),
        }
    }

    fn list<T>(
        &self,
        key: &'a str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        self.all(key)
            .map(|item| parse(&item.value).map_err(|m| self.bad(item, &m)))
            .collect()
    }
}

fn parse_main(o: &Options) -> Result<Main, ConfigError> {
    let item = o.required("hostname", "the name of this server, as in the MX records")?;
    let hostname = domain_name(&item.value, 2).map_err(|m| o.bad(item, &m))?;
    let item = o.required("spool_dir", "where the spool lives, on flash or USB")?;
    let spool_dir = abs_path(&item.value).map_err(|m| o.bad(item, &m))?;

    let mut listen: Vec<SocketAddr> = Vec::new();
    for item in o.all("listen") {
        let addr = parse_listen(&item.value).map_err(|m| o.bad(item, &m))?;
        // Binding one address twice would fail at start-up; say it here.
        if listen.contains(&addr) {
            return Err(o.bad(item, "is listed twice"));
        }
        listen.push(addr);
    }
    if listen.is_empty() {
        listen = vec![
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 25)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 25)),
        ];
    }

    // Any `retry` replaces all three default steps.
    let mut retry = o.list("retry", parse_retry)?;
    if retry.is_empty() {
        let step = |i, s| RetryStep {
            interval: Duration::from_secs(i),
            span: Duration::from_secs(s),
        };
        retry = vec![
            step(15 * 60, 86400),
            step(3600, 4 * 86400),
            step(2 * 3600, 5 * 86400),
        ];
    }

    let secs = Duration::from_secs;
    let main = Main {
        line: o.section.line,
        hostname,
        listen,
        spool_dir,
        allow_volatile_spool: o.one("allow_volatile_spool", false, parse_bool)?,
        alert_command: o.one("alert_command", None, alert_command)?,
        alert_after: o.one("alert_after", secs(3600), positive_duration)?,
        flush_on_ifup: o.one("flush_on_ifup", true, parse_bool)?,
        control_socket: o.one(
            "control_socket",
            PathBuf::from("/var/run/mxspool.sock"),
            abs_path,
        )?,
        resolver: o.one("resolver", None, parse_resolver)?,
        max_message_size: o.one("max_message_size", 10 << 20, positive_size)?,
        max_recipients: o.one("max_recipients", 100, count)?,
        max_connections: o.one("max_connections", 20, count)?,
        max_connections_per_ip: o.one("max_connections_per_ip", 5, count)?,
        max_spool_size: o.one("max_spool_size", 64 << 20, positive_size)?,
        callahead_timeout: o.one("callahead_timeout", secs(10), positive_duration)?,
        callahead_positive_ttl: o.one(
            "callahead_positive_ttl",
            secs(31 * 86400),
            positive_duration,
        )?,
        callahead_negative_ttl: o.one(
            "callahead_negative_ttl",
            secs(3 * 86400),
            positive_duration,
        )?,
        callahead_max_probes: o.one("callahead_max_probes", 8, count)?,
        retry,
        host_check_interval: o.one("host_check_interval", secs(60), positive_duration)?,
        max_hops: o.one("max_hops", 30, count)?,
        smarthost: o.one("smarthost", None, |v| {
            empty_or(v, |v| HostPort::parse(v, 25))
        })?,
        user: o.one("user", None, |v| empty_or(v, system_user))?,
        syslog: o.one("syslog", true, parse_bool)?,
        enabled: o.one("enabled", true, parse_bool)?,
        log_level: o.one("log_level", log::LevelFilter::Info, parse_log_level)?,
        tls_cert: o.one("tls_cert", None, |v| empty_or(v, abs_path))?,
        tls_key: o.one("tls_key", None, |v| empty_or(v, abs_path))?,
        dnsbl: o.list("dnsbl", |v| domain_name(v, 2))?,
        client_allow: o.list("client_allow", Cidr::parse)?,
        client_deny: o.list("client_deny", Cidr::parse)?,
        sender_allow: o.list("sender_allow", sender_pattern)?,
        sender_deny: o.list("sender_deny", sender_pattern)?,
        cache_size: o.one("cache_size", 4 << 20, parse_size)?,
        journal_size: o.one("journal_size", 4 << 20, journal_size)?,
        command_timeout: o.one("command_timeout", secs(300), positive_duration)?,
        data_timeout: o.one("data_timeout", secs(180), positive_duration)?,
        max_errors: o.one("max_errors", 10, count)?,
        max_destination_connections: o.one("max_destination_connections", 2, count)?,
        connect_timeout: o.one("connect_timeout", secs(30), positive_duration)?,
        transaction_timeout: o.one("transaction_timeout", secs(30 * 60), positive_duration)?,
        max_destination_queue: o.one("max_destination_queue", 128, count)?,
        greeting_timeout: o.one("greeting_timeout", secs(300), positive_duration)?,
        greet_pause: o.one("greet_pause", secs(0), |v| {
            let d = parse_duration(v)?;
            if d > MAX_GREET_PAUSE {
                // Senders give up on a greeting after 5 minutes (RFC 5321
                // 4.5.3.2.1) and many far sooner; postscreen uses 6s.
                return Err(format!(
                    "must be at most {}s (1-3s is typical)",
                    MAX_GREET_PAUSE.as_secs()
                ));
            }
            Ok(d)
        })?,
        dnsbl_timeout: o.one("dnsbl_timeout", secs(5), positive_duration)?,
        spamd: o.one("spamd", None, |v| {
            empty_or(v, |v| HostPort::parse(v, SPAMD_PORT))
        })?,
        spam_tag_score: o.one("spam_tag_score", Score(500), Score::parse)?,
        spam_reject_score: o.one("spam_reject_score", Score(1000), Score::parse)?,
        clamd: o.one("clamd", None, |v| {
            empty_or(v, |v| HostPort::parse(v, CLAMD_PORT))
        })?,
        scan_required: o.one("scan_required", false, parse_bool)?,
        scan_timeout: o.one("scan_timeout", secs(30), positive_duration)?,
    };
    if main.spam_reject_score < main.spam_tag_score
        && let Some(item) = o
            .get("spam_reject_score")
            .or_else(|| o.get("spam_tag_score"))
    {
        return Err(o.bad(
            item,
            &format!(
                "spam_reject_score {} is below spam_tag_score {}: mail would be refused \
                 before it could ever be tagged",
                main.spam_reject_score, main.spam_tag_score
            ),
        ));
    }

    if main.tls_cert.is_some() != main.tls_key.is_some() {
        let (given, missing) = if main.tls_cert.is_some() {
            ("tls_cert", "tls_key")
        } else {
            ("tls_key", "tls_cert")
        };
        if let Some(item) = o.get(given) {
            return Err(o.bad(
                item,
                &format!("is set but '{missing}' is not; STARTTLS needs both"),
            ));
        }
    }
    if main.max_spool_size < main.max_message_size
        && let Some(item) = o
            .get("max_spool_size")
            .or_else(|| o.get("max_message_size"))
    {
        return Err(o.bad(
            item,
            &format!(
                "max_spool_size {} is smaller than max_message_size {}: \
                 the largest messages could never be queued",
                fmt_size(main.max_spool_size),
                fmt_size(main.max_message_size)
            ),
        ));
    }
    Ok(main)
}

fn parse_domain(o: &Options) -> Result<Domain, ConfigError> {
    let item = o.required("name", "the domain this section accepts mail for")?;
    let name = domain_name(&item.value, 2).map_err(|m| o.bad(item, &m))?;
    let deliver_to = o.one("deliver_to", DeliverTo::Mx, |v| {
        if v.eq_ignore_ascii_case("mx") {
            Ok(DeliverTo::Mx)
        } else {
            HostPort::parse(v, 25)
                .map(DeliverTo::Relay)
                .map_err(|e| format!("must be 'mx' or HOST[:PORT]: {e}"))
        }
    })?;
    let port = o.one("port", 25, parse_port)?;
    if let (DeliverTo::Relay(_), Some(item)) = (&deliver_to, o.get("port")) {
        return Err(o.bad(
            item,
            "applies only to deliver_to 'mx'; give a relay's port in deliver_to as HOST:PORT",
        ));
    }
    let verify = o.one("verify", Verify::Callahead, |v| match v {
        "callahead" => Ok(Verify::Callahead),
        "users" => Ok(Verify::Users),
        "none" => Ok(Verify::None),
        _ => Err("must be 'callahead', 'users' or 'none'".into()),
    })?;
    let mut users = Vec::new();
    for item in o.all("user") {
        let user = domain_user(&item.value).map_err(|m| o.bad(item, &m))?;
        if let Some((_, d)) = user.rsplit_once('@')
            && d != name
        {
            return Err(o.bad(item, &format!("is not an address in '{name}'")));
        }
        users.push(user);
    }
    if verify == Verify::Users
        && users.is_empty()
        && let Some(item) = o.get("verify")
    {
        return Err(o.bad(
            item,
            "needs at least one 'list user' in this section, or every recipient is refused",
        ));
    }
    Ok(Domain {
        line: o.section.line,
        name,
        deliver_to,
        port,
        verify,
        users,
        on_tempfail: o.one("on_tempfail", OnTempfail::Accept, |v| match v {
            "accept" => Ok(OnTempfail::Accept),
            "defer" => Ok(OnTempfail::Defer),
            _ => Err("must be 'accept' or 'defer'".into()),
        })?,
        offline_address: o.list("offline_address", |v| {
            v.parse::<IpAddr>()
                .map_err(|_| "is not an IP address".to_string())
        })?,
        expect_greeting: o.one("expect_greeting", None, |v| {
            empty_or(v, |v| match v.parse::<IpAddr>() {
                Ok(ip) => Ok(ip.to_string()),
                Err(_) => domain_name(v, 1),
            })
        })?,
        tls_pin: o.one("tls_pin", None, |v| empty_or(v, tls_pin))?,
    })
}
