//! The Received header we prepend (RFC 5321 4.4, RFC 5322 3.6.7).

use std::net::IpAddr;

// Our own tokens (hostname, protocol, queue id) come from config and code,
// but they end up in a header line too: keep only atom characters.
use super::{FOLD, MAX_HOST, token};

pub struct ReceivedInfo<'a> {
    /// HELO/EHLO argument as the client gave it (None if it gave none).
    pub helo: Option<&'a str>,
    pub peer: IpAddr,
    /// Our hostname.
    pub by: &'a str,
    /// `ESMTP`, `ESMTPS`, `SMTP`, `UTF8SMTP`, `UTF8SMTPS` (RFC 3848, 6531).
    pub with: &'a str,
    pub queue_id: &'a str,
    /// The single recipient, if there is exactly one (`for <...>`).
    pub for_rcpt: Option<&'a str>,
    /// Unix seconds.
    pub date: u64,
}

/// Longest HELO name we copy (a real one is a hostname or an address literal).
const MAX_HELO: usize = 64;
/// Longest recipient we copy, in octets (RFC 5321 4.5.3.1.3: path ≤ 256).
const MAX_RCPT: usize = 256;
/// Longest `with`/`id` token.
const MAX_TOKEN: usize = 64;

/// `Received: from HELO ([IP]) by HOST with ESMTP id ID for <R>; DATE` +
/// CRLF, folded under 78 columns where it can be, never over 998. Text from
/// the client (the HELO name) is reduced to safe characters.
pub fn received_header(info: &ReceivedInfo<'_>) -> Vec<u8> {
    let helo = info
        .helo
        .map(clean_helo)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let mut out = format!("Received: from {helo} ({})\r\n", ip_literal(info.peer));
    let by = format!(
        "\tby {} with {} id {}",
        token(info.by, MAX_HOST),
        token(info.with, MAX_TOKEN),
        token(info.queue_id, MAX_TOKEN)
    );
    let last = match info.for_rcpt.map(clean_rcpt).filter(|r| !r.is_empty()) {
        Some(rcpt) => {
            out.push_str(&by);
            out.push_str("\r\n");
            format!("\tfor <{rcpt}>;")
        }
        None => format!("{by};"),
    };
    let date = crate::time::rfc5322(info.date);
    out.push_str(&last);
    // The date may start on its own continuation line (FWS before day-of-week).
    if last.len() + 1 + date.len() > FOLD {
        out.push_str("\r\n\t");
    } else {
        out.push(' ');
    }
    out.push_str(&date);
    out.push_str("\r\n");
    out.into_bytes()
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3). IPv4-mapped IPv6
/// peers (a dual-stack `[::]` listener) are shown as the IPv4 they are.
fn ip_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Reduces a client's HELO argument to something that is a valid
/// received-token and cannot inject lines: an address literal keeps its
/// brackets with only `alnum . : -` inside; anything else becomes a
/// dot-atom of `alnum . - _`, other characters turned into `_`.
fn clean_helo(helo: &str) -> String {
    let helo = helo.trim();
    if let Some(inner) = helo.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let inner: String = inner
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
            .take(MAX_HELO - 2)
            .collect();
        if inner.is_empty() {
            return String::new();
        }
        return format!("[{inner}]");
    }
    helo.chars()
        .take(MAX_HELO)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The recipient between `<` and `>`: no control characters (CR/LF),
/// no angle brackets or spaces, at most `MAX_RCPT` octets (UTF-8 kept whole).
fn clean_rcpt(rcpt: &str) -> String {
    let rcpt = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
    let mut out = String::new();
    for c in rcpt.chars() {
        if c.is_control() || c.is_whitespace() || c == '<' || c == '>' {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_RCPT {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const DATE: u64 = 1_795_436_106; // Mon, 23 Nov 2026 12:15:06 +0000

    fn info<'a>(helo: Option<&'a str>, peer: IpAddr, rcpt: Option<&'a str>) -> ReceivedInfo<'a> {
        ReceivedInfo {
            helo,
            peer,
            by: "mx2.example.net",
            with: "ESMTP",
            queue_id: "Q1AB2",
            for_rcpt: rcpt,
            date: DATE,
        }
    }

    /// Every header we emit must be CRLF-terminated, contain no bare CR or
    /// LF, keep every line under 998 octets, and continue only with folds.
    fn assert_well_formed(h: &[u8]) {
        assert!(h.ends_with(b"\r\n"));
        assert!(h.starts_with(b"Received: from "));
        for (i, &b) in h.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(h.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && h[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        let body = &h[..h.len() - 2];
        for (n, line) in body.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() < 998, "line {n} too long");
            if n > 0 {
                assert_eq!(line.first(), Some(&b'\t'), "line {n} is not a fold");
            }
        }
    }

    /// The exact bytes of the ordinary case: one recipient, IPv4 peer.
    #[test]
    fn typical_exact_bytes() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let h = received_header(&info(
            Some("mail.example.com"),
            peer,
            Some("alice@example.com"),
        ));
        assert_eq!(
            String::from_utf8_lossy(&h),
            "Received: from mail.example.com ([192.0.2.1])\r\n\
             \tby mx2.example.net with ESMTP id Q1AB2\r\n\
             \tfor <alice@example.com>; Mon, 23 Nov 2026 12:15:06 +0000\r\n"
        );
        assert_well_formed(&h);
    }

    /// Without a single recipient there is no `for` clause; the date
    /// follows the id on the same line.
    #[test]
    fn no_recipient_no_for() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let h = received_header(&info(Some("a.example"), peer, None));
        assert_eq!(
            String::from_utf8_lossy(&h),
            "Received: from a.example ([192.0.2.1])\r\n\
             \tby mx2.example.net with ESMTP id Q1AB2; Mon, 23 Nov 2026 12:15:06 +0000\r\n"
        );
        assert_well_formed(&h);
    }

    /// IPv6 peers use the RFC 5321 `IPv6:` literal; an IPv4-mapped peer is
    /// shown as plain IPv4; an address-literal HELO is kept.
    #[test]
    fn ipv6_literals() {
        let v6: IpAddr = "2001:db8::1"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let h = received_header(&info(Some("[IPv6:2001:db8::1]"), v6, None));
        assert!(
            h.starts_with(b"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n"),
            "{}",
            String::from_utf8_lossy(&h)
        );
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        let h = received_header(&info(Some("x"), mapped, None));
        assert!(h.starts_with(b"Received: from x ([198.51.100.7])\r\n"));
    }

    /// A HELO carrying CR/LF, spaces and a fake header cannot add a line,
    /// and is capped in length.
    #[test]
    fn hostile_helo_is_neutralised() {
        let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let evil = "evil.example\r\nX-Injected: yes (\u{e9}) ;";
        let h = received_header(&info(Some(evil), peer, Some("bob@example.com")));
        assert_well_formed(&h);
        let s = String::from_utf8_lossy(&h);
        assert!(
            s.starts_with("Received: from evil.example__X-Injected__yes______ ([203.0.113.9])\r\n"),
            "{s}"
        );
        assert!(!s.contains("\nX-Injected"));

        let long = "a".repeat(5000);
        let h = received_header(&info(Some(&long), peer, None));
        assert_well_formed(&h);
        assert!(h.starts_with(format!("Received: from {} (", "a".repeat(MAX_HELO)).as_bytes()));

        // Brackets only survive as a whole literal, never mid-name.
        let h = received_header(&info(Some("[1.2.3.4] ]x["), peer, None));
        assert!(h.starts_with(b"Received: from _1.2.3.4___x_ ("));
    }

    /// No HELO, or one with nothing usable in it, reads `from unknown`.
    #[test]
    fn missing_helo_is_unknown() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for helo in [None, Some(""), Some("   "), Some("[]")] {
            let h = received_header(&info(helo, peer, None));
            assert!(
                h.starts_with(b"Received: from unknown ([192.0.2.1])\r\n"),
                "{helo:?}"
            );
            assert_well_formed(&h);
        }
    }

    /// A hostile or huge recipient cannot break out of `<...>` or the line,
    /// and a long one moves the date to its own fold.
    #[test]
    fn hostile_recipient_is_neutralised() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let h = received_header(&info(None, peer, Some("<a>\r\nBcc: x@y>@example.com")));
        assert_well_formed(&h);
        let s = String::from_utf8_lossy(&h);
        assert!(s.contains("\tfor <aBcc:x@y@example.com>; Mon,"), "{s}");

        let huge = format!("{}@example.com", "\u{e9}".repeat(3000));
        let h = received_header(&info(None, peer, Some(&huge)));
        assert_well_formed(&h);
        let s = String::from_utf8_lossy(&h);
        assert!(
            s.ends_with(";\r\n\tMon, 23 Nov 2026 12:15:06 +0000\r\n"),
            "{s}"
        );
        let for_line = s.lines().find(|l| l.starts_with("\tfor <")).unwrap_or("");
        assert!(for_line.len() <= "\tfor <>;".len() + MAX_RCPT);
    }
}
