//! RFC 5321 paths and mailboxes (section 4.1.2), parsed strictly: this is
//! where relay tricks (source routes, `%` hacks, quoted `@`, several `@`)
//! are recognised, so the policy can refuse them instead of guessing.

use std::fmt;

/// A mailbox `local@domain`. `local` is kept in its wire form (a dot-string,
/// or a quoted-string with its quotes) so it is re-emitted exactly;
/// `domain` is lower-cased, without a trailing dot, and may be an address
/// literal such as `[192.0.2.1]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    /// True when the local part carries routing of its own (`%`, `!`, or an
    /// `@` inside quotes): such an address could make the next hop relay.
    pub fn is_routed(&self) -> bool {
        self.local.contains(['%', '!', '@'])
    }
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
    /// True when the domain is an address literal `[...]`.
    pub fn is_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of MAIL FROM: the null path `<>` or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Why a path did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `<...>`, bad characters, empty parts, several unquoted `@`...
    Syntax(&'static str),
    /// A local part over 64 octets, a domain over 255, a path over 256.
    TooLong,
    /// Non-ASCII where SMTPUTF8 was not given.
    NonAscii,
}

/// A parsed path with what the parser noticed about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub mailbox: Option<Mailbox>, // None only for `<>`
    /// The path carried an RFC 5321 source route (`<@a,@b:user@dom>`),
    /// which was removed from `mailbox`.
    pub source_route: bool,
}

/// Longest local part (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path, brackets included (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Longest DNS label (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;

/// Parses `<...>` as found after `MAIL FROM:` or `RCPT TO:` (the caller has
/// split off ESMTP parameters). `utf8` allows non-ASCII (RFC 6531).
/// `<>` is allowed only when `allow_null`.
pub fn parse_path(s: &str, allow_null: bool, utf8: bool) -> Result<Path, PathError> {
    if s.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(PathError::Syntax("path not in angle brackets"))?;
    if inner.is_empty() {
        return if allow_null {
            Ok(Path {
                mailbox: None,
                source_route: false,
            })
        } else {
            Err(PathError::Syntax("null path not allowed"))
        };
    }
    let (rest, source_route) = match inner.strip_prefix('@') {
        Some(route) => (skip_source_route(route)?, true),
        None => (inner, false),
    };
    let mailbox = parse_mailbox(rest)?;
    // Syntax first, so garbage gets 501 and only a well-formed non-ASCII
    // address gets the SMTPUTF8 refusal.
    if !utf8 && !s.is_ascii() {
        return Err(PathError::NonAscii);
    }
    Ok(Path {
        mailbox: Some(mailbox),
        source_route,
    })
}

/// The length of the path at the start of `s` (`<` to the matching `>`,
/// quotes and escapes honoured), or None when `s` does not start with a
/// complete path. Lets the server split a path from its ESMTP parameters
/// even when a quoted local part contains `>` or a space.
pub fn path_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'>' => return Some(i + 1),
                _ => {}
            }
        }
    }
    None
}

/// Skips `a,@b:` (the leading `@` already gone): RFC 5321 A-d-l, obsolete
/// but still legal; every route domain must be valid. Returns the mailbox.
fn skip_source_route(mut s: &str) -> Result<&str, PathError> {
    loop {
        let end = s
            .find([',', ':'])
            .ok_or(PathError::Syntax("bad source route"))?;
        // An IPv6 literal contains ':': take the whole bracketed literal.
        let end = if s.starts_with('[') {
            let close = s
                .find(']')
                .ok_or(PathError::Syntax("bad address literal"))?;
            if !matches!(s.as_bytes().get(close + 1), Some(b',' | b':')) {
                return Err(PathError::Syntax("bad source route"));
            }
            close + 1
        } else {
            end
        };
        let (domain, rest) = s.split_at(end);
        parse_domain(domain)?;
        if let Some(next) = rest.strip_prefix(",@") {
            s = next;
        } else if let Some(mailbox) = rest.strip_prefix(':') {
            return Ok(mailbox);
        } else {
            return Err(PathError::Syntax("bad source route"));
        }
    }
}

fn parse_mailbox(s: &str) -> Result<Mailbox, PathError> {
    let at = if s.starts_with('"') {
        quoted_string_len(s)?
    } else {
        let at = s.find('@').ok_or(PathError::Syntax("missing @domain"))?;
        check_dot_string(&s[..at])?;
        at
    };
    let (local, domain) = s.split_at(at);
    let domain = domain
        .strip_prefix('@')
        .ok_or(PathError::Syntax("missing @domain"))?;
    if local.len() > MAX_LOCAL {
        return Err(PathError::TooLong);
    }
    Ok(Mailbox {
        local: local.to_string(),
        domain: parse_domain(domain)?,
    })
}

/// RFC 5322 atext, plus any non-ASCII character (RFC 6531 extends atext
/// with UTF8-non-ascii; whether it is allowed is decided by the caller).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_dot_string(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Syntax("empty local part"));
    }
    for atom in s.split('.') {
        if atom.is_empty() {
            return Err(PathError::Syntax("empty atom in local part"));
        }
        if !atom.chars().all(is_atext) {
            return Err(PathError::Syntax("bad character in local part"));
        }
    }
    Ok(())
}

/// The length of the quoted string at the start of `s`, quotes included.
fn quoted_string_len(s: &str) -> Result<usize, PathError> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            // quoted-pairSMTP: backslash then any printable ASCII or space.
            if !(' '..='~').contains(&c) {
                return Err(PathError::Syntax("bad quoted pair"));
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            if i == 1 {
                return Err(PathError::Syntax("empty quoted local part"));
            }
            return Ok(i + 1);
        } else if c.is_ascii() && !(' '..='~').contains(&c) {
            // qtextSMTP: printable ASCII and space (non-ASCII under RFC 6531).
            return Err(PathError::Syntax("bad character in quoted local part"));
        }
    }
    Err(PathError::Syntax("unterminated quoted local part"))
}

/// Validates a domain or address literal; returns it normalised
/// (lower case, no trailing dot).
fn parse_domain(s: &str) -> Result<String, PathError> {
    if let Some(lit) = s.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(PathError::Syntax("bad address literal"))?;
        return parse_literal(lit);
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.len() > MAX_DOMAIN {
        return Err(PathError::TooLong);
    }
    if s.is_empty() {
        return Err(PathError::Syntax("empty domain"));
    }
    for label in s.split('.') {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
        if label.is_empty()
            || label.len() > MAX_LABEL
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(ok_char)
        {
            return Err(PathError::Syntax("bad domain"));
        }
    }
    Ok(s.to_lowercase())
}

fn parse_literal(lit: &str) -> Result<String, PathError> {
    if let Some(v6) = lit
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
        .and_then(|_| lit.get(5..))
    {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(format!("[IPv6:{}]", v6.to_ascii_lowercase())),
            Err(_) => Err(PathError::Syntax("bad IPv6 address literal")),
        };
    }
    // std's parser is strict: exactly four decimal octets, no leading zeros.
    match lit.parse::<std::net::Ipv4Addr>() {
        Ok(_) => Ok(format!("[{lit}]")),
        Err(_) => Err(PathError::Syntax("bad address literal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(s: &str) -> Mailbox {
        match parse_path(s, false, false) {
            Ok(Path {
                mailbox: Some(m), ..
            }) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn err(s: &str, utf8: bool) -> PathError {
        match parse_path(s, true, utf8) {
            Err(e) => e,
            Ok(p) => panic!("{s} parsed as {p:?}"),
        }
    }

    #[test]
    fn plain_mailbox_domain_normalised() {
        let m = mbox("<John.Doe@Example.COM.>");
        assert_eq!(
            (m.local.as_str(), m.domain.as_str()),
            ("John.Doe", "example.com")
        );
        assert_eq!(m.to_string(), "John.Doe@example.com");
        assert!(!m.is_routed());
    }

    #[test]
    fn null_path_only_where_allowed() {
        let null = Path {
            mailbox: None,
            source_route: false,
        };
        assert_eq!(parse_path("<>", true, false), Ok(null));
        assert!(matches!(
            parse_path("<>", false, false),
            Err(PathError::Syntax(_))
        ));
    }

    #[test]
    fn source_route_is_stripped_and_flagged() {
        for s in [
            "<@a.test,@[192.0.2.1]:u@d.test>",
            "<@a.test:u@d.test>",
            "<@[IPv6:::1]:u@d.test>",
        ] {
            let p = parse_path(s, false, false).unwrap_or_else(|e| panic!("{s}: {e:?}"));
            assert!(p.source_route, "{s}");
            assert_eq!(
                p.mailbox.map(|m| m.to_string()).as_deref(),
                Some("u@d.test")
            );
        }
        for bad in [
            "<@a.test>",
            "<@a.test,u@d.test>",
            "<@-a:u@d>",
            "<@a.test,:u@d>",
            "<@:u@d>",
        ] {
            assert!(matches!(err(bad, false), PathError::Syntax(_)), "{bad}");
        }
    }

    #[test]
    fn relay_tricks_are_recognised() {
        // `%` and `!` are legal atext: parsed, and flagged as routed.
        assert!(mbox("<u%other.test@d.test>").is_routed());
        assert!(mbox("<host!u@d.test>").is_routed());
        // A quoted `@` stays in the local part; the domain is the last one.
        let m = mbox("<\"u@other.test\"@d.test>");
        assert_eq!(m.local, "\"u@other.test\"");
        assert_eq!(m.domain, "d.test");
        assert!(m.is_routed());
        // Several unquoted `@` is never guessed at.
        assert!(matches!(
            err("<u@other.test@d.test>", false),
            PathError::Syntax(_)
        ));
        assert!(matches!(err("<@d.test@x>", false), PathError::Syntax(_)));
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(mbox("<\"a b\\\"c\"@d>").local, "\"a b\\\"c\"");
        for bad in ["<\"\"@d>", "<\"abc@d>", "<\"a\"b@d>", "<\"a\tb\"@d>"] {
            assert!(matches!(err(bad, false), PathError::Syntax(_)), "{bad}");
        }
    }

    #[test]
    fn address_literals_are_validated() {
        assert_eq!(mbox("<u@[192.0.2.1]>").domain, "[192.0.2.1]");
        let m = mbox("<u@[ipv6:2001:DB8::1]>");
        assert_eq!(m.domain, "[IPv6:2001:db8::1]");
        assert!(m.is_literal());
        for bad in [
            "<u@[192.0.2.256]>",
            "<u@[192.0.2]>",
            "<u@[010.0.0.1]>",
            "<u@[IPv6:zz::1]>",
            "<u@[2001:db8::1]>",
            "<u@[x-tag:foo]>",
            "<u@[192.0.2.1>",
        ] {
            assert!(matches!(err(bad, false), PathError::Syntax(_)), "{bad}");
        }
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "u@d",
            "<u@d",
            "u@d>",
            "<u>",
            "<Postmaster>",
            "<@>",
            "<u@>",
            "<@d>",
            "<.u@d>",
            "<u.@d>",
            "<u..v@d>",
            "<u v@d>",
            "< u@d>",
            "<u@d >",
            "<u@d..test>",
            "<u@-d.test>",
            "<u@d-.test>",
            "<u@d_x.test>",
            "<u@.>",
            "<u(c)@d>",
        ] {
            assert!(matches!(err(bad, true), PathError::Syntax(_)), "{bad}");
        }
    }

    #[test]
    fn non_ascii_only_with_utf8() {
        assert_eq!(err("<jösé@exämple.test>", false), PathError::NonAscii);
        let p = parse_path("<jösé@EXÄMPLE.test>", false, true).map(|p| p.mailbox);
        let m = p.ok().flatten().map(|m| (m.local, m.domain));
        assert_eq!(m, Some(("jösé".into(), "exämple.test".into())));
        // Syntax comes first: broken non-ASCII is a syntax error.
        assert!(matches!(err("<jö sé@d>", false), PathError::Syntax(_)));
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(64);
        assert_eq!(mbox(&format!("<{local}@d>")).local, local);
        assert_eq!(err(&format!("<{local}a@d>"), false), PathError::TooLong);
        let label = "b".repeat(63);
        let domain = [label.as_str(); 4].join("."); // 255 octets
        assert_eq!(parse_domain(&domain), Ok(domain.clone()));
        assert_eq!(parse_domain(&format!("{domain}.")), Ok(domain.clone()));
        assert_eq!(parse_domain(&format!("x{domain}")), Err(PathError::TooLong));
        assert!(matches!(
            err(&format!("<u@{label}x.d>"), false),
            PathError::Syntax(_)
        ));
        // 256 including brackets is the path limit.
        let domain = format!("{label}.{label}.{}", "c".repeat(61));
        let path = format!("<{local}@{domain}>");
        assert_eq!(path.len(), 256);
        assert!(parse_path(&path, false, false).is_ok());
        let longer = path.replace("@", "@c");
        assert_eq!(err(&longer, false), PathError::TooLong);
    }

    #[test]
    fn path_len_honours_quotes() {
        assert_eq!(path_len("<a@b> SIZE=1"), Some(5));
        assert_eq!(path_len("<\"a> b\"@c> X"), Some(10));
        assert_eq!(path_len("<\"a\\\">\"@c>"), Some(10));
        assert_eq!(path_len("a@b"), None);
        assert_eq!(path_len("<a@b"), None);
    }
}
