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

/// Parses `<...>` as found after `MAIL FROM:` or `RCPT TO:` (the caller has
/// split off ESMTP parameters). `utf8` allows non-ASCII (RFC 6531).
/// `<>` is allowed only when `allow_null`.
pub fn parse_path(s: &str, allow_null: bool, utf8: bool) -> Result<Path, PathError> {
    let _ = (s, allow_null, utf8);
    todo!("smtp::address::parse_path")
}
