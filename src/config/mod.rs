//! The configuration: a UCI file (see `uci`) turned into a typed, validated
//! model. Every option is declared once, in `main_options` or
//! `domain_options` (name, default, parser, printer and the README's text);
//! `spec` holds the loops that read and print them. Errors name the file
//! and line.

mod domain_options;
mod main_options;
mod spec;
pub mod uci;
mod value;

use domain_options::DOMAIN_OPTIONS;
use main_options::MAIN_OPTIONS;
use spec::Options;
use value::*;
pub use value::{MIN_JOURNAL, fmt_duration, parse_duration, parse_size};

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

/// A `config domain` section. Each field is the option of its name (the
/// list `user` is `users`); what it means and its default are in
/// `domain_options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Line of the `config domain` line.
    pub line: usize,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub deliver_to: DeliverTo,
    /// Used for `DeliverTo::Mx` only.
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

/// `config mxspool` (the one main section). Each field is the option of
/// its name; what it means and its default are in `main_options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Main {
    /// Line of the `config mxspool` line.
    pub line: usize,
    /// Lower-case, no trailing dot.
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub allow_volatile_spool: bool,
    /// The program and its arguments; None: no alerts run.
    pub alert_command: Option<Vec<String>>,
    pub alert_after: Duration,
    /// Read by the OpenWrt init script, not the daemon.
    pub flush_on_ifup: bool,
    pub control_socket: PathBuf,
    /// None: the nameserver of the resolv.conf files (see `dns`).
    pub resolver: Option<SocketAddr>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_spool_size: u64,
    pub callahead_timeout: Duration,
    pub callahead_positive_ttl: Duration,
    pub callahead_negative_ttl: Duration,
    pub callahead_max_probes: usize,
    pub retry: Vec<RetryStep>,
    pub host_check_interval: Duration,
    pub max_hops: usize,
    pub smarthost: Option<HostPort>,
    pub user: Option<String>,
    pub syslog: bool,
    /// Read by the OpenWrt init script, not the daemon.
    pub enabled: bool,
    pub log_level: log::LevelFilter,
    /// Both or neither (checked).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub dnsbl: Vec<String>,
    pub client_allow: Vec<Cidr>,
    pub client_deny: Vec<Cidr>,
    /// Lower-case `domain`, `.domain` (its subdomains) or `local@domain`.
    pub sender_allow: Vec<String>,
    pub sender_deny: Vec<String>,
    pub cache_size: u64,
    /// 0: no journal.
    pub journal_size: u64,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: usize,
    pub max_destination_connections: usize,
    pub connect_timeout: Duration,
    pub transaction_timeout: Duration,
    pub max_destination_queue: usize,
    pub greeting_timeout: Duration,
    /// Zero: off.
    pub greet_pause: Duration,
    pub dnsbl_timeout: Duration,
    /// None: no spam check.
    pub spamd: Option<HostPort>,
    pub spam_tag_score: Score,
    /// Not below `spam_tag_score` (checked).
    pub spam_reject_score: Score,
    /// None: no virus scan.
    pub clamd: Option<HostPort>,
    pub scan_required: bool,
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
                    let o = Options::new(path, section, MAIN_OPTIONS)?;
                    main = Some(main_options::parse(&o)?);
                }
                "domain" => {
                    let o = Options::new(path, section, DOMAIN_OPTIONS)?;
                    let domain = domain_options::parse(&o)?;
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
        // Not about one line; line 1 keeps the PATH:LINE: form.
        let main = main.ok_or_else(|| {
            at(
                1,
                "no 'config mxspool' section: the file needs one, with at least \
                 'option hostname' and 'option spool_dir'"
                    .into(),
            )
        })?;
        let mut main = main;
        main.resolve_paths(path);
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

impl Main {
    /// A relative path is relative to the configuration file `config`,
    /// never to the working directory (procd starts us in /).
    fn resolve_paths(&mut self, config: &Path) {
        let base = std::path::absolute(config)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        for p in [&mut self.spool_dir, &mut self.control_socket] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut self.tls_cert, &mut self.tls_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// `mxspool check` prints this: every effective setting, defaults included,
/// in UCI form. It parses back to an equal `Config` (line numbers aside).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config mxspool 'main'")?;
        spec::print_section(f, MAIN_OPTIONS, &self.main)?;
        for d in &self.domains {
            writeln!(f)?;
            writeln!(f, "config domain")?;
            spec::print_section(f, DOMAIN_OPTIONS, d)?;
        }
        Ok(())
    }
}

/// The longest `greet_pause` accepted.
pub const MAX_GREET_PAUSE: Duration = Duration::from_secs(30);
/// spamd's and clamd's registered ports, for `spamd 'HOST'` and `clamd 'HOST'`.
pub const SPAMD_PORT: u16 = 783;
pub const CLAMD_PORT: u16 = 3310;
