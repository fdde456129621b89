//! Delivery status notifications (RFC 3464, RFC 6522): the message we send
//! back to a sender when recipients fail for good or their time runs out;
//! for mail that came with SMTPUTF8, their internationalized form
//! (RFC 6533: `message/global-delivery-status`, `message/global-headers`,
//! `utf-8` address type, UTF-8 text).

use super::{FOLD, MAX_HOST, MAX_LINE, token};
use crate::time::rfc5322;

/// What happened to one recipient, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient address without brackets.
    pub address: String,
    /// `failed` (only failures are reported for now; `delayed` is ready
    /// for a later warning DSN).
    pub action: Action,
    /// RFC 3463 status, e.g. `5.1.1`, or `4.4.7` turned `5.4.7` on expiry.
    pub status: String,
    /// The remote server's last reply as one line (`550 5.1.1 no such
    /// user`), if there was one: becomes `Diagnostic-Code: smtp; ...`.
    pub diagnostic: Option<String>,
    /// `dns; host` of the server that answered, if any: `Remote-MTA`.
    pub remote_mta: Option<String>,
    /// Unix seconds of the last attempt, if any.
    pub last_attempt: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
}

/// Everything the DSN is built from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our hostname: `Reporting-MTA: dns; ...` and the From domain.
    pub reporting_mta: &'a str,
    /// The original sender (non-empty: never a DSN to `<>`).
    pub sender: &'a str,
    /// Queue id of the original message (for the human part).
    pub queue_id: &'a str,
    /// Unix seconds of arrival: `Arrival-Date`.
    pub arrival: u64,
    /// Unix seconds now: the `Date` header.
    pub now: u64,
    pub recipients: &'a [RecipientReport],
    /// The original message's header section (CRLF lines, up to but not
    /// including the empty line), already capped by the caller.
    pub original_headers: &'a [u8],
    /// A Message-ID for the DSN (`<...>`).
    pub message_id: &'a str,
    /// The original message came with SMTPUTF8: use the RFC 6533 types.
    pub utf8: bool,
}

/// Caps for network-derived values, chosen so that even an unfoldable
/// value plus its field name stays under `MAX_LINE`.
const MAX_DIAG: usize = 900;
const MAX_ADDR: usize = 256;

/// Builds the whole DSN message (headers and body, CRLF line ends, every
/// line under 1000 octets, 7-bit unless UTF-8 addresses or 8-bit original
/// headers need 8-bit; the original headers are passed on unchanged).
///
/// Structure: top-level headers, `multipart/report;
/// report-type=delivery-status`, parts (1) `text/plain` explanation,
/// (2) `message/delivery-status`, (3) `text/rfc822-headers` (left out when
/// there are no original headers); with `utf8`, (2) and (3) are
/// `message/global-delivery-status` and `message/global-headers`.
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let all_delayed = !input.recipients.is_empty()
        && input.recipients.iter().all(|r| r.action == Action::Delayed);
    let host = token(input.reporting_mta, MAX_HOST);
    let human = human_part(input, &host, all_delayed);
    let status = status_part(input, &host);
    let headers = original_headers(input.original_headers);
    // Addresses may be UTF-8 (SMTPUTF8); everything else we write is ASCII.
    let eight_bit = !human.is_ascii() || !status.is_ascii() || !headers.is_ascii();
    let (status_type, headers_type) = if input.utf8 {
        ("message/global-delivery-status", "message/global-headers")
    } else {
        ("message/delivery-status", "text/rfc822-headers")
    };
    let boundary = pick_boundary(
        input,
        &[human.as_bytes(), status.as_bytes(), headers.as_slice()],
    );

    let mut out = Vec::with_capacity(2048 + headers.len());
    let subject = if all_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    let mut head = String::new();
    head.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
    ));
    head.push_str(&format!("To: <{}>\r\n", address(input.sender)));
    head.push_str(&format!("Subject: {subject}\r\n"));
    head.push_str(&format!("Date: {}\r\n", rfc5322(input.now)));
    head.push_str(&format!(
        "Message-ID: {}\r\n",
        clean(input.message_id, MAX_LINE - 12).replace(' ', "")
    ));
    // RFC 3834: automatic replies must not trigger further ones.
    head.push_str("Auto-Submitted: auto-replied\r\n");
    head.push_str("MIME-Version: 1.0\r\n");
    head.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    if eight_bit {
        head.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    head.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    head.push_str(&format!("--{boundary}\r\n"));
    head.push_str("Content-Description: Notification\r\n");
    if human.is_ascii() {
        head.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    } else {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        head.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    }
    head.push_str(&human);

    head.push_str(&format!("\r\n--{boundary}\r\n"));
    head.push_str("Content-Description: Delivery report\r\n");
    head.push_str(&format!("Content-Type: {status_type}\r\n"));
    if !status.is_ascii() {
        head.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&status);
    out.extend_from_slice(head.as_bytes());

    if !headers.is_empty() {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        out.extend_from_slice(b"Content-Description: Undelivered Message Headers\r\n");
        out.extend_from_slice(format!("Content-Type: {headers_type}\r\n").as_bytes());
        if !headers.is_ascii() {
            out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&headers);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Part 1: the explanation a person reads. ASCII (UTF-8 addresses shown as
/// they are in the RFC 6533 form), lines ≤ 78 where the words allow,
/// CRLF-terminated.
fn human_part(input: &DsnInput<'_>, host: &str, all_delayed: bool) -> String {
    let mut t = String::new();
    line(&mut t, &format!("This is the mail system at {host}."));
    line(&mut t, "");
    if all_delayed {
        wrap(
            &mut t,
            "",
            "Your message has not yet been delivered to the recipients below. \
             It is still being retried; you do not need to send it again.",
            "",
        );
    } else {
        wrap(
            &mut t,
            "",
            "Your message could not be delivered to one or more recipients below. \
             It will not be retried for them.",
            "",
        );
    }
    line(&mut t, "");
    line(&mut t, &format!("Queue ID: {}", token(input.queue_id, 64)));
    line(&mut t, &format!("Received: {}", rfc5322(input.arrival)));
    line(
        &mut t,
        &format!(
            "Tried for: {}",
            duration(input.now.saturating_sub(input.arrival))
        ),
    );
    for r in input.recipients {
        line(&mut t, "");
        let what = match r.action {
            Action::Failed => "delivery failed",
            Action::Delayed => "delivery delayed, still being retried",
        };
        let addr = address(&r.address);
        let addr = if input.utf8 { addr } else { ascii(&addr) };
        wrap(
            &mut t,
            "",
            &format!("<{addr}>: {what} (status {})", status_code(r)),
            "    ",
        );
        if let Some(mta) = &r.remote_mta {
            let name = mta.split_once(';').map_or(mta.as_str(), |(_, n)| n);
            wrap(
                &mut t,
                "    Remote server:",
                &ascii(&clean(name, MAX_HOST)),
                "    ",
            );
        }
        if let Some(d) = &r.diagnostic {
            wrap(&mut t, "    It said:", &ascii(&clean(d, MAX_DIAG)), "    ");
        }
        if let Some(at) = r.last_attempt {
            line(&mut t, &format!("    Last attempt: {}", rfc5322(at)));
        }
    }
    t
}

/// Part 2: the machine-readable report (RFC 3464 section 2): per-message
/// fields, then one block per recipient, blocks separated by empty lines.
fn status_part(input: &DsnInput<'_>, host: &str) -> String {
    let mut s = String::new();
    field(&mut s, "Reporting-MTA", &format!("dns; {host}"));
    field(&mut s, "X-Mxspool-Queue-ID", &token(input.queue_id, 64));
    field(&mut s, "Arrival-Date", &rfc5322(input.arrival));
    for r in input.recipients {
        s.push_str("\r\n");
        field(&mut s, "Final-Recipient", &final_recipient(r, input.utf8));
        let action = match r.action {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        };
        field(&mut s, "Action", action);
        field(&mut s, "Status", status_code(r));
        if let Some(mta) = &r.remote_mta {
            let mta = ascii(&clean(mta, MAX_HOST));
            // The field wants `type; name`; accept a bare host name too.
            let mta = if mta.contains(';') {
                mta
            } else {
                format!("dns; {mta}")
            };
            field(&mut s, "Remote-MTA", &mta);
        }
        if let Some(d) = &r.diagnostic {
            let d = ascii(&clean(d, MAX_DIAG));
            if !d.is_empty() {
                field(&mut s, "Diagnostic-Code", &format!("smtp; {d}"));
            }
        }
        if let Some(at) = r.last_attempt {
            field(&mut s, "Last-Attempt-Date", &rfc5322(at));
        }
    }
    s
}

/// `rfc822; ADDR`, or for a UTF-8 address in the RFC 6533 form
/// `utf-8; ADDR` (unencoded UTF-8 is allowed in
/// message/global-delivery-status, section 3).
fn final_recipient(r: &RecipientReport, utf8: bool) -> String {
    let a = address(&r.address);
    if utf8 && !a.is_ascii() {
        format!("utf-8; {a}")
    } else {
        format!("rfc822; {a}")
    }
}

/// The recipient's status if it is a well-formed RFC 3463 code of the
/// right class, else the generic code for its action.
fn status_code(r: &RecipientReport) -> &str {
    let ok_class = match r.action {
        Action::Failed => b'5',
        Action::Delayed => b'4',
    };
    let parts: Vec<&str> = r.status.split('.').collect();
    let well_formed = parts.len() == 3
        && parts[0].len() == 1
        && parts[0].as_bytes()[0] == ok_class
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if well_formed {
        &r.status
    } else if r.action == Action::Failed {
        "5.0.0"
    } else {
        "4.0.0"
    }
}

/// Part 3: the original header section, line ends made CRLF (a bare CR or
/// LF becomes a line end), cut at the first empty line, each line capped
/// at 998 octets. Empty input gives an empty result.
fn original_headers(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    let mut i = 0;
    while i < raw.len() {
        let end = raw[i..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(raw.len(), |p| i + p);
        let text = &raw[i..end];
        if text.is_empty() {
            break; // end of the header section
        }
        out.extend_from_slice(&text[..text.len().min(MAX_LINE)]);
        out.extend_from_slice(b"\r\n");
        i = end;
        if raw.get(i) == Some(&b'\r') {
            i += 1;
        }
        if raw.get(i) == Some(&b'\n') {
            i += 1;
        }
    }
    out
}

/// A boundary from the queue id (or the Message-ID) that occurs in none of
/// the parts, so no part line can be taken for a delimiter.
fn pick_boundary(input: &DsnInput<'_>, parts: &[&[u8]]) -> String {
    let mut base = token(input.queue_id, 40);
    if base == "unknown" {
        base = token(input.message_id, 40);
    }
    let base: String = base.chars().filter(char::is_ascii_alphanumeric).collect();
    // Finite input contains finitely many candidates, so this ends.
    let mut n: u64 = 0;
    loop {
        let b = format!("=_mxspool_{base}_{n}");
        let delim = format!("--{b}");
        if !parts.iter().any(|p| contains(p, delim.as_bytes())) {
            return b;
        }
        n += 1;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `Name: value` + CRLF, folded at spaces to keep lines near 78 columns.
fn field(out: &mut String, name: &str, value: &str) {
    wrap(out, &format!("{name}:"), value, " ");
}

/// Text wrapped at 78 columns: the first line starts with `first`, the
/// others with `rest`. A word longer than a line stays whole (values are
/// capped, so the line stays under 998).
fn wrap(out: &mut String, first: &str, text: &str, rest: &str) {
    let mut cur = first.to_string();
    // Never break before the first word: there is nothing to put first.
    let mut any_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if any_word && cur.len() + 1 + word.len() > FOLD {
            line(out, &cur);
            cur = rest.to_string();
        }
        if !cur.is_empty() && !cur.ends_with(' ') {
            cur.push(' ');
        }
        cur.push_str(word);
        any_word = true;
    }
    line(out, &cur);
}

fn line(out: &mut String, s: &str) {
    out.push_str(s);
    out.push_str("\r\n");
}

/// One-line text from the network: control characters (CR, LF, NUL...)
/// become spaces, runs of spaces collapse, at most `max` octets (whole
/// UTF-8 characters).
fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// An address for `<...>` or `rfc822; ...`: no controls, spaces or angle
/// brackets, at most 256 octets.
fn address(s: &str) -> String {
    clean(s, MAX_ADDR)
        .chars()
        .filter(|&c| c != ' ' && c != '<' && c != '>')
        .collect()
}

/// Non-ASCII replaced by `?`, for fields and text declared us-ascii.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// `10 days`, `3 hours 5 minutes`, `42 seconds`.
fn duration(secs: u64) -> String {
    let unit = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => unit(secs, "second"),
        (0, 0, m) => unit(m, "minute"),
        (0, h, 0) => unit(h, "hour"),
        (0, h, m) => format!("{} {}", unit(h, "hour"), unit(m, "minute")),
        (d, 0, _) => unit(d, "day"),
        (d, h, _) => format!("{} {}", unit(d, "day"), unit(h, "hour")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARRIVAL: u64 = 1_795_436_106; // Mon, 23 Nov 2026 12:15:06 +0000
    const NOW: u64 = ARRIVAL + 10 * 86_400 + 3600;
    const ORIG: &[u8] = b"Received: from a.example ([192.0.2.1])\r\n\tby mx2.example.net\r\n\
        From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: hello\r\n";

    fn failed(addr: &str) -> RecipientReport {
        RecipientReport {
            address: addr.into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            diagnostic: Some("550 5.1.1 <alice@example.com>: no such user".into()),
            remote_mta: Some("dns; mail.example.com".into()),
            last_attempt: Some(NOW - 60),
        }
    }

    fn bare(addr: &str, action: Action, status: &str) -> RecipientReport {
        RecipientReport {
            address: addr.into(),
            action,
            status: status.into(),
            diagnostic: None,
            remote_mta: None,
            last_attempt: None,
        }
    }

    fn input<'a>(rcpts: &'a [RecipientReport], orig: &'a [u8]) -> DsnInput<'a> {
        DsnInput {
            reporting_mta: "mx2.example.net",
            sender: "bob@example.org",
            queue_id: "Q1AB2",
            arrival: ARRIVAL,
            now: NOW,
            recipients: rcpts,
            original_headers: orig,
            message_id: "<dsn.Q1AB2@mx2.example.net>",
            utf8: false,
        }
    }

    /// A parsed part: unfolded headers and the raw content.
    struct Part {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Part {
        fn get(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        memchr::memmem::find(hay, needle)
    }

    /// Splits `head CRLF CRLF body` and unfolds the header fields.
    fn parse_entity(raw: &[u8]) -> Part {
        let split = find(raw, b"\r\n\r\n").unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw.get(split + 4..).unwrap_or_default().to_vec();
        Part {
            headers: fields(&head),
            body,
        }
    }

    /// `Name: value` fields of a header block, folds joined.
    fn fields(block: &str) -> Vec<(String, String)> {
        let unfolded = block.replace("\r\n\t", " ").replace("\r\n ", " ");
        unfolded
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.to_string(), v.trim().to_string())
            })
            .collect()
    }

    /// The top-level entity and its MIME parts, checking the multipart
    /// framing (preamble, delimiters, close delimiter) on the way.
    fn parse(msg: &[u8]) -> (Part, Vec<Part>) {
        let top = parse_entity(msg);
        let ct = top.get("Content-Type").unwrap_or_default().to_string();
        assert!(
            ct.starts_with("multipart/report; report-type=delivery-status;"),
            "{ct}"
        );
        let boundary = ct
            .split_once("boundary=\"")
            .and_then(|(_, b)| b.split_once('"'))
            .map(|(b, _)| b.to_string())
            .unwrap_or_default();
        assert!(!boundary.is_empty() && boundary.len() <= 70);
        let delim = format!("\r\n--{boundary}");
        let body = [b"\r\n".as_slice(), &top.body].concat();
        let mut chunks = Vec::new();
        let mut rest = body.as_slice();
        while let Some(p) = find(rest, delim.as_bytes()) {
            chunks.push(&rest[..p]);
            rest = &rest[p + delim.len()..];
        }
        assert_eq!(rest, b"--\r\n", "close delimiter missing or text after it");
        let parts = chunks[1..]
            .iter()
            .map(|c| {
                let c = c.strip_prefix(b"\r\n");
                assert!(c.is_some(), "delimiter line not ended by CRLF");
                parse_entity(c.unwrap_or_default())
            })
            .collect();
        (top, parts)
    }

    /// The delivery-status body as blocks of fields.
    fn status_blocks(part: &Part) -> Vec<Vec<(String, String)>> {
        String::from_utf8_lossy(&part.body)
            .split("\r\n\r\n")
            .map(fields)
            .filter(|b| !b.is_empty())
            .collect()
    }

    fn get<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
        block
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// RFC 5322 2.1.1 / 2.3: CRLF only, every line under 998 octets.
    fn assert_lines_ok(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"));
        for (i, &b) in msg.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        for l in msg.split(|&b| b == b'\n') {
            assert!(l.len() <= MAX_LINE + 1, "line of {} octets", l.len());
        }
    }

    /// The full structure of a failure report: headers, three parts, and
    /// every RFC 3464 field we promise, in the right blocks.
    #[test]
    fn failure_report_structure() {
        let rcpts = [
            failed("alice@example.com"),
            bare("carol@example.com", Action::Failed, "5.4.7"),
        ];
        let msg = build(&input(&rcpts, ORIG));
        assert_lines_ok(&msg);
        assert!(msg.is_ascii());
        let (top, parts) = parse(&msg);
        assert_eq!(
            top.get("From"),
            Some("Mail Delivery System <MAILER-DAEMON@mx2.example.net>")
        );
        assert_eq!(top.get("To"), Some("<bob@example.org>"));
        assert_eq!(
            top.get("Subject"),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(top.get("Date"), Some("Thu, 3 Dec 2026 13:15:06 +0000"));
        assert_eq!(top.get("Message-ID"), Some("<dsn.Q1AB2@mx2.example.net>"));
        assert_eq!(top.get("Auto-Submitted"), Some("auto-replied"));
        assert_eq!(top.get("MIME-Version"), Some("1.0"));
        assert_eq!(top.get("Content-Transfer-Encoding"), None);

        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[0].get("Content-Type"),
            Some("text/plain; charset=us-ascii")
        );
        let text = String::from_utf8_lossy(&parts[0].body);
        for needle in [
            "Q1AB2",
            "<alice@example.com>: delivery failed (status 5.1.1)",
            "It said: 550 5.1.1 <alice@example.com>: no such user",
            "Remote server: mail.example.com",
            "<carol@example.com>: delivery failed (status 5.4.7)",
            "Tried for: 10 days 1 hour",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }

        assert_eq!(
            parts[1].get("Content-Type"),
            Some("message/delivery-status")
        );
        let blocks = status_blocks(&parts[1]);
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            get(&blocks[0], "Reporting-MTA"),
            Some("dns; mx2.example.net")
        );
        assert_eq!(get(&blocks[0], "X-Mxspool-Queue-ID"), Some("Q1AB2"));
        assert_eq!(
            get(&blocks[0], "Arrival-Date"),
            Some("Mon, 23 Nov 2026 12:15:06 +0000")
        );
        let a = &blocks[1];
        assert_eq!(get(a, "Final-Recipient"), Some("rfc822; alice@example.com"));
        assert_eq!(get(a, "Action"), Some("failed"));
        assert_eq!(get(a, "Status"), Some("5.1.1"));
        assert_eq!(get(a, "Remote-MTA"), Some("dns; mail.example.com"));
        assert_eq!(
            get(a, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <alice@example.com>: no such user")
        );
        assert_eq!(
            get(a, "Last-Attempt-Date"),
            Some("Thu, 3 Dec 2026 13:14:06 +0000")
        );
        let c = &blocks[2];
        assert_eq!(get(c, "Final-Recipient"), Some("rfc822; carol@example.com"));
        assert_eq!(get(c, "Status"), Some("5.4.7"));
        // Optional fields are absent, not empty, when there is nothing to say.
        for absent in ["Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"] {
            assert_eq!(get(c, absent), None, "{absent}");
        }

        assert_eq!(parts[2].get("Content-Type"), Some("text/rfc822-headers"));
        assert_eq!(parts[2].body, ORIG);
    }

    /// Only all-delayed reports get the "still being retried" subject;
    /// a mix is still an undelivered-mail report.
    #[test]
    fn subject_and_action_for_delays() {
        let delayed = [bare("a@example.com", Action::Delayed, "4.4.1")];
        let msg = build(&input(&delayed, ORIG));
        let (top, parts) = parse(&msg);
        assert_eq!(
            top.get("Subject"),
            Some("Delayed Mail (still being retried)")
        );
        let blocks = status_blocks(&parts[1]);
        assert_eq!(get(&blocks[1], "Action"), Some("delayed"));
        assert_eq!(get(&blocks[1], "Status"), Some("4.4.1"));
        assert!(String::from_utf8_lossy(&parts[0].body).contains("do not need to send it again"));

        let mixed = [delayed[0].clone(), failed("b@example.com")];
        let (top, _) = parse(&build(&input(&mixed, ORIG)));
        assert_eq!(
            top.get("Subject"),
            Some("Undelivered Mail Returned to Sender")
        );
    }

    /// A status that is not a well-formed code of the right class is
    /// replaced by the generic one, so the report stays machine-readable.
    #[test]
    fn malformed_status_falls_back() {
        let rcpts = [
            bare("a@example.com", Action::Failed, "550"),
            bare("b@example.com", Action::Failed, "4.1.1"),
            bare("c@example.com", Action::Delayed, "4.x.1"),
            bare("d@example.com", Action::Failed, "5.1.1234"),
        ];
        let (_, parts) = parse(&build(&input(&rcpts, ORIG)));
        let got: Vec<_> = status_blocks(&parts[1])[1..]
            .iter()
            .map(|b| get(b, "Status").unwrap_or_default().to_string())
            .collect();
        assert_eq!(got, ["5.0.0", "5.0.0", "4.0.0", "5.0.0"]);
    }

    /// Network text (the remote reply, host, addresses) cannot inject
    /// fields or lines, and a huge reply is folded and capped under 998.
    #[test]
    fn hostile_network_text_is_contained() {
        let mut r = failed("victim@example.com\r\nAction: delivered");
        r.diagnostic = Some(format!(
            "550 bad\r\nFinal-Recipient: rfc822; injected@example.com\n{}\u{0}{}",
            "x".repeat(3000),
            " word".repeat(500)
        ));
        r.remote_mta = Some("mail.example.com\r\nStatus: 2.0.0".into());
        let rcpts = [r];
        let mut inp = input(&rcpts, ORIG);
        inp.sender = "bob@example.org>\r\nBcc: all@example.com";
        let msg = build(&inp);
        assert_lines_ok(&msg);
        let (top, parts) = parse(&msg);
        assert_eq!(top.get("Bcc"), None);
        let blocks = status_blocks(&parts[1]);
        assert_eq!(blocks.len(), 2, "a recipient block was injected");
        let b = &blocks[1];
        let names: Vec<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code",
                "Last-Attempt-Date"
            ]
        );
        assert_eq!(get(b, "Action"), Some("failed"));
        assert_eq!(get(b, "Status"), Some("5.1.1"));
        let diag = get(b, "Diagnostic-Code").unwrap_or_default();
        assert!(diag.starts_with("smtp; 550 bad Final-Recipient: rfc822;"));
        assert!(diag.len() <= "smtp; ".len() + MAX_DIAG, "not capped");
    }

    /// The boundary never occurs in any part, even when the original
    /// headers (or a remote reply) contain our first choice.
    #[test]
    fn boundary_avoids_collisions() {
        let plain = build(&input(&[failed("a@example.com")], ORIG));
        let (top, _) = parse(&plain);
        let first = top.get("Content-Type").unwrap_or_default().to_string();
        assert!(first.contains("boundary=\"=_mxspool_Q1AB2_0\""), "{first}");

        let mut evil = ORIG.to_vec();
        evil.extend_from_slice(b"X-Trap: --=_mxspool_Q1AB2_0\r\n");
        let mut r = failed("a@example.com");
        r.diagnostic = Some("550 --=_mxspool_Q1AB2_1".into());
        let rcpts = [r];
        let msg = build(&input(&rcpts, &evil));
        assert_lines_ok(&msg);
        let (top, parts) = parse(&msg);
        let ct = top.get("Content-Type").unwrap_or_default();
        assert!(ct.contains("boundary=\"=_mxspool_Q1AB2_2\""), "{ct}");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].body, evil);
    }

    /// Original headers: bare LF/CR become CRLF, the section ends at the
    /// first empty line, overlong lines are cut; none at all means no
    /// third part.
    #[test]
    fn original_headers_are_normalised() {
        let raw = format!("A: 1\nB: 2\rC: {}\r\n\r\nbody line\r\n", "y".repeat(2000));
        let msg = build(&input(&[failed("a@example.com")], raw.as_bytes()));
        assert_lines_ok(&msg);
        let (_, parts) = parse(&msg);
        let expect = format!("A: 1\r\nB: 2\r\nC: {}\r\n", "y".repeat(MAX_LINE - 3));
        assert_eq!(String::from_utf8_lossy(&parts[2].body), expect);

        let (_, parts) = parse(&build(&input(&[failed("a@example.com")], b"")));
        assert_eq!(parts.len(), 2);
    }

    /// 8-bit original headers are passed on unchanged and declared 8bit;
    /// 7-bit ones carry no transfer encoding.
    #[test]
    fn eight_bit_headers_declared() {
        let orig = "Subject: gr\u{fc}\u{df}e\r\n".as_bytes();
        let msg = build(&input(&[failed("a@example.com")], orig));
        assert_lines_ok(&msg);
        let (top, parts) = parse(&msg);
        assert_eq!(top.get("Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(parts[2].get("Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(parts[2].body, orig);
        assert_eq!(parts[1].get("Content-Transfer-Encoding"), None);
    }

    /// RFC 6533: for mail that came with SMTPUTF8 the report and header
    /// parts have the global types, a UTF-8 recipient is `utf-8;`, and the
    /// text shows UTF-8 addresses as they are (declared utf-8, 8bit).
    #[test]
    fn smtputf8_report_uses_the_global_types() {
        let rcpts = [
            failed("j\u{f6}rg@b\u{fc}cher.example"),
            failed("ascii@example.com"),
        ];
        let orig = "Subject: gr\u{fc}\u{df}e\r\n".as_bytes();
        let mut inp = input(&rcpts, orig);
        inp.utf8 = true;
        inp.sender = "d\u{ef}ana@example.org";
        let msg = build(&inp);
        assert_lines_ok(&msg);
        let (top, parts) = parse(&msg);
        assert_eq!(top.get("To"), Some("<d\u{ef}ana@example.org>"));
        assert_eq!(top.get("Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(
            parts[0].get("Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        let text = String::from_utf8_lossy(&parts[0].body);
        assert!(text.contains("<j\u{f6}rg@b\u{fc}cher.example>: delivery failed"));
        assert_eq!(
            parts[1].get("Content-Type"),
            Some("message/global-delivery-status")
        );
        assert_eq!(parts[1].get("Content-Transfer-Encoding"), Some("8bit"));
        let blocks = status_blocks(&parts[1]);
        assert_eq!(
            get(&blocks[1], "Final-Recipient"),
            Some("utf-8; j\u{f6}rg@b\u{fc}cher.example")
        );
        assert_eq!(
            get(&blocks[2], "Final-Recipient"),
            Some("rfc822; ascii@example.com")
        );
        assert_eq!(parts[2].get("Content-Type"), Some("message/global-headers"));
        assert_eq!(parts[2].body, orig);

        // All ASCII: the global types still, but nothing declared 8bit.
        let plain = [failed("a@example.com")];
        let mut inp = input(&plain, ORIG);
        inp.utf8 = true;
        let msg = build(&inp);
        assert!(msg.is_ascii());
        let (top, parts) = parse(&msg);
        assert_eq!(top.get("Content-Transfer-Encoding"), None);
        assert_eq!(
            parts[1].get("Content-Type"),
            Some("message/global-delivery-status")
        );
        assert_eq!(parts[2].get("Content-Type"), Some("message/global-headers"));
    }

    /// The human "tried for" wording at unit edges.
    #[test]
    fn duration_wording() {
        assert_eq!(duration(0), "0 seconds");
        assert_eq!(duration(59), "59 seconds");
        assert_eq!(duration(60), "1 minute");
        assert_eq!(duration(3600 + 120), "1 hour 2 minutes");
        assert_eq!(duration(7200), "2 hours");
        assert_eq!(duration(86_400 + 59), "1 day");
        assert_eq!(duration(10 * 86_400 + 3600), "10 days 1 hour");
    }
}
