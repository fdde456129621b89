//! SMTP replies: the three-digit code, the RFC 3463 enhanced status code and
//! the text, shared by the server (which writes them) and the client (which
//! parses them).

use std::fmt;

/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
/// Text a remote server sent is copied into our own replies, the
/// call-ahead cache and the logs: it is cut to these lengths there.
pub const MAX_LINE: usize = 512;
/// Of a reply's text (without code), when it is copied into another line.
pub const MAX_TEXT: usize = 400;

/// `s` cut to at most `max` bytes on a character boundary, `...` marking
/// the cut.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    s
}

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// Parses `2.1.0` at the start of `s`; returns the code and the rest.
    pub fn parse_prefix(s: &str) -> Option<(Enhanced, &str)> {
        let end = s.find(' ').unwrap_or(s.len());
        let mut parts = s[..end].split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((Enhanced(class, subject, detail), s[end..].trim_start()))
    }
}

/// One complete (possibly multi-line) reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// One entry per line, without code, separator or enhanced code.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// Shorthand for the common single-line reply with an enhanced code.
    pub fn enh(code: u16, class_subject_detail: (u8, u16, u16), text: impl Into<String>) -> Reply {
        let (c, s, d) = class_subject_detail;
        Reply::new(code, Some(Enhanced(c, s, d)), text)
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// All lines joined with a space, as logs and DSNs show a reply.
    pub fn text(&self) -> String {
        bounded(self.lines.join(" "), MAX_TEXT)
    }

    /// The reply as one line for logs and spool records: `550 5.1.1 text`.
    pub fn one_line(&self) -> String {
        let s = match self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text()),
            None => format!("{} {}", self.code, self.text()),
        };
        bounded(s, MAX_LINE - 2)
    }

    /// Writes the reply in wire format (CRLF line ends, `-` continuation).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let line = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let s = match self.enhanced {
                // RFC 2034: the enhanced code starts every line of the reply.
                Some(e) => format!("{}{}{} {}", self.code, sep, e, line),
                None => format!("{}{}{}", self.code, sep, line),
            };
            let s = bounded(s, MAX_LINE - 2) + "\r\n";
            out.extend_from_slice(sanitize(&s).as_bytes());
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

/// Never lets a CR or LF from reply text (which may come from a remote
/// server) break the line structure of our own replies.
fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    let body = &s[..s.len() - 2];
    if body.contains(['\r', '\n']) {
        let mut t: String = body.replace(['\r', '\n'], " ");
        t.push_str("\r\n");
        std::borrow::Cow::Owned(t)
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_wire_format_puts_enhanced_code_on_every_line() {
        let r = Reply {
            code: 250,
            enhanced: Some(Enhanced(2, 0, 0)),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_wire(), b"250-2.0.0 a\r\n250 2.0.0 b\r\n");
    }

    /// A remote server's 2 KiB reply line (accepted by the client) is cut
    /// to RFC 5321's 512 octets wherever it is copied: logs and spool
    /// (`one_line`), other replies (`text`), our own wire output.
    #[test]
    fn copied_reply_text_is_bounded() {
        let long = "é".repeat(1000);
        let r = Reply::new(550, Some(Enhanced(5, 1, 1)), long);
        assert!(r.one_line().len() <= MAX_LINE - 2);
        assert!(r.one_line().ends_with("..."));
        assert!(r.text().len() <= MAX_TEXT);
        for line in r.to_wire().split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE, "{} octets", line.len());
        }
        let short = Reply::enh(250, (2, 0, 0), "ok");
        assert_eq!(short.one_line(), "250 2.0.0 ok");
    }

    #[test]
    fn remote_text_cannot_inject_lines() {
        let r = Reply::new(550, None, "bad\r\n250 ok");
        assert_eq!(r.to_wire(), b"550 bad  250 ok\r\n");
    }

    #[test]
    fn parses_enhanced_prefix() {
        assert_eq!(
            Enhanced::parse_prefix("5.1.1 no such user"),
            Some((Enhanced(5, 1, 1), "no such user"))
        );
        assert_eq!(Enhanced::parse_prefix("hello there"), None);
        assert_eq!(Enhanced::parse_prefix("1.2.3 x"), None);
    }
}
