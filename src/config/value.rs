//! Parsers for single option values, and the printers `check` uses for
//! them. Each parser returns the "what is wrong" part of
//! `option 'x': what is wrong (got 'value')`.

use super::RetryStep;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Longest duration accepted (about 136 years): far beyond any sensible
/// setting, and small enough that adding it to a clock never overflows.
pub(super) const MAX_DURATION_SECS: u64 = u32::MAX as u64;

/// Parses `90s`, `15m`, `4h`, `4d` (a unit is required).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let unit = match s.as_bytes().last() {
        None => return Err("is empty: expected a duration like 90s, 15m, 4h or 4d".into()),
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3600,
        Some(b'd') => 86400,
        Some(b) if b.is_ascii_digit() => {
            return Err("needs a unit: s, m, h or d (like 90s, 15m, 4h or 4d)".into());
        }
        Some(_) => {
            return Err(
                "is not a duration: a number with a unit s, m, h or d (like 90s, 15m, 4h or 4d)"
                    .into(),
            );
        }
    };
    // The unit is one ASCII byte, so this slices on a char boundary.
    let too_long = || format!("is too long (at most {}d)", MAX_DURATION_SECS / 86400);
    let n = parse_uint(&s[..s.len() - 1]).map_err(|e| match e {
        UintError::TooLarge => too_long(),
        UintError::NotANumber => {
            "is not a duration: a whole number with a unit s, m, h or d (like 90s, 15m, 4h or 4d)"
                .to_string()
        }
    })?;
    match n.checked_mul(unit) {
        Some(secs) if secs <= MAX_DURATION_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(too_long()),
    }
}

/// Parses `10485760`, `10K`, `10M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n = parse_uint(digits).map_err(|e| match e {
        UintError::TooLarge => "is too large".to_string(),
        UintError::NotANumber => {
            "is not a size: a whole number with an optional K, M or G (like 10M)".to_string()
        }
    })?;
    n.checked_mul(unit)
        .ok_or_else(|| "is too large".to_string())
}

pub(super) enum UintError {
    NotANumber,
    TooLarge,
}

/// Plain digits only: no sign, no spaces, no `0x`.
pub(super) fn parse_uint(s: &str) -> Result<u64, UintError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UintError::NotANumber);
    }
    // Only overflow is left once every byte is a digit.
    s.parse().map_err(|_| UintError::TooLarge)
}

pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    match parse_uint(s) {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!(
            "the port must be a number from 1 to 65535 (not '{s}')"
        )),
    }
}

/// A host or domain name: lower-cased, one trailing dot dropped, checked
/// label by label. `min_labels` 2 demands a full domain (`example.com`).
pub(super) fn domain_name(s: &str, min_labels: usize) -> Result<String, String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("is empty: expected a domain name".into());
    }
    if !s.is_ascii() {
        return Err(
            "is not a plain ASCII name: write an internationalized name in its xn-- form".into(),
        );
    }
    let s = s.to_ascii_lowercase();
    if s.len() > 253 {
        return Err("is not a domain name: longer than 253 characters".into());
    }
    let labels: Vec<&str> = s.split('.').collect();
    for l in &labels {
        if l.is_empty() {
            return Err("is not a domain name: it has an empty label (two dots in a row?)".into());
        }
        if l.len() > 63 {
            return Err("is not a domain name: a label is longer than 63 characters".into());
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(
                "is not a domain name: only letters, digits, '-' and '.' are allowed".into(),
            );
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("is not a domain name: a label starts or ends with '-'".into());
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is not a domain name (nor a valid IPv4 address here)".into());
    }
    if labels.len() < min_labels {
        return Err("is not a full domain name (expected something like example.com)".into());
    }
    Ok(s)
}

/// UCI's way to leave an option unset is an empty value.
pub(super) fn empty_or<T>(
    v: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse(v).map(Some)
    }
}

pub(super) fn count(v: &str) -> Result<usize, String> {
    match parse_uint(v) {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => usize::try_from(n).map_err(|_| "is too large".into()),
        Err(UintError::TooLarge) => Err("is too large".into()),
        Err(UintError::NotANumber) => Err("must be a whole number, like 20".into()),
    }
}

pub(super) fn positive_size(v: &str) -> Result<u64, String> {
    match parse_size(v)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

/// The smallest commit journal worth having (`journal_size`).
pub const MIN_JOURNAL: u64 = 64 * 1024;

/// `journal_size`: 0 (no journal) or 64K to 1G.
pub(super) fn journal_size(v: &str) -> Result<u64, String> {
    match parse_size(v)? {
        0 => Ok(0),
        n if n < MIN_JOURNAL => Err("must be 0 (no journal) or at least 64K".into()),
        n if n > 1 << 30 => Err("must be at most 1G".into()),
        n => Ok(n),
    }
}

pub(super) fn positive_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// `greet_pause`: 0s (off) up to `MAX_GREET_PAUSE`.
pub(super) fn greet_pause(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d > super::MAX_GREET_PAUSE {
        // Senders give up on a greeting after 5 minutes (RFC 5321
        // 4.5.3.2.1) and many far sooner; postscreen uses 6s.
        return Err(format!(
            "must be at most {}s (1-3s is typical)",
            super::MAX_GREET_PAUSE.as_secs()
        ));
    }
    Ok(d)
}

pub(super) fn parse_retry(v: &str) -> Result<RetryStep, String> {
    let mut parts = v.split_whitespace();
    let (Some(interval), Some(span), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(
            "must be 'INTERVAL SPAN' (retry every INTERVAL for SPAN), like '15m 24h'".into(),
        );
    };
    let interval = parse_duration(interval).map_err(|e| format!("the interval {e}"))?;
    let span = parse_duration(span).map_err(|e| format!("the span {e}"))?;
    if interval.is_zero() {
        return Err("the interval must be longer than 0s".into());
    }
    if span < interval {
        return Err("the span must be at least as long as the interval".into());
    }
    Ok(RetryStep { interval, span })
}

/// OpenWrt's `config_get_bool` set.
pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" | "enabled" => Ok(true),
        "0" | "no" | "off" | "false" | "disabled" => Ok(false),
        _ => Err("must be 1 or 0 (or yes/no, on/off, true/false, enabled/disabled)".into()),
    }
}

pub(super) fn parse_log_level(v: &str) -> Result<log::LevelFilter, String> {
    match v.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" | "notice" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err("must be error, warn, info, debug or trace".into()),
    }
}

/// A path; a relative one is made relative to the configuration file's
/// folder by `Config::parse` (procd starts us in `/`, so the working
/// directory means nothing).
pub(super) fn abs_path(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(PathBuf::from(v))
}

/// `alert_command`: an absolute program path and its arguments, split on
/// white space (no shell, so no quoting); empty means none.
pub(super) fn alert_command(v: &str) -> Result<Option<Vec<String>>, String> {
    let argv: Vec<String> = v.split_whitespace().map(str::to_string).collect();
    match argv.first() {
        None => Ok(None),
        Some(p) if !p.starts_with('/') => Err(format!(
            "'{p}' must be an absolute path (the command runs without a shell or PATH)"
        )),
        Some(_) => Ok(Some(argv)),
    }
}

pub(super) fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = v
        .parse()
        .map_err(|_| "must be IP:PORT, like 0.0.0.0:25 or [::]:25".to_string())?;
    if addr.port() == 0 {
        return Err("the port must be a number from 1 to 65535".into());
    }
    Ok(addr)
}

/// `IP[:PORT]`, port 53 by default; IPv6 as `[::1]:53`, `[::1]` or `::1`.
pub(super) fn parse_resolver(v: &str) -> Result<Option<SocketAddr>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let addr = if let Ok(a) = v.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = v.parse::<IpAddr>() {
        SocketAddr::new(ip, 53)
    } else if let Some(ip) = v
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<Ipv6Addr>().ok())
    {
        SocketAddr::from((ip, 53))
    } else {
        return Err(
            "must be an IP address with an optional port, like 127.0.0.1 or [::1]:53".into(),
        );
    };
    if addr.port() == 0 {
        return Err("the port must be a number from 1 to 65535".into());
    }
    Ok(Some(addr))
}

/// A system account name as `useradd` would take it.
pub(super) fn system_user(v: &str) -> Result<String, String> {
    let ok = v.len() <= 32
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("is not a valid user name".into())
    }
}

/// A local part as written in an address: no spaces or angle brackets.
pub(super) fn local_part(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("has an empty local part (before the @)".into());
    }
    if v.chars()
        .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | ',' | '@'))
    {
        return Err("is not an address: no spaces, '<', '>', ',' or extra '@' allowed".into());
    }
    Ok(v.to_lowercase())
}

/// `sender_allow`/`sender_deny`: `domain`, `.domain` (its subdomains) or a
/// full address; lower-cased.
pub(super) fn sender_pattern(v: &str) -> Result<String, String> {
    if let Some((local, domain)) = v.rsplit_once('@') {
        Ok(format!(
            "{}@{}",
            local_part(local)?,
            domain_name(domain, 1)?
        ))
    } else if let Some(rest) = v.strip_prefix('.') {
        Ok(format!(".{}", domain_name(rest, 1)?))
    } else {
        domain_name(v, 1)
    }
}

/// A domain's `user`: a local part or a full address; lower-cased.
pub(super) fn domain_user(v: &str) -> Result<String, String> {
    match v.rsplit_once('@') {
        Some((local, domain)) => Ok(format!(
            "{}@{}",
            local_part(local)?,
            domain_name(domain, 2)?
        )),
        None => local_part(v),
    }
}

/// `sha256:` and the base64 of a 32-byte SHA-256 digest (as `openssl ...
/// | openssl dgst -sha256 -binary | base64` prints it).
pub(super) fn tls_pin(v: &str) -> Result<String, String> {
    let b64 = v.strip_prefix("sha256:").ok_or(
        "must be 'sha256:' followed by the base64 SHA-256 of the certificate's public key",
    )?;
    match crate::base64::decode(b64) {
        Some(d) if d.len() == 32 => Ok(v.to_string()),
        Some(_) => Err("is not a SHA-256 digest: the base64 does not decode to 32 bytes".into()),
        None => Err("has invalid base64 after 'sha256:'".into()),
    }
}

pub(super) fn level_name(l: log::LevelFilter) -> &'static str {
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
pub(super) fn fmt_size(n: u64) -> String {
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
