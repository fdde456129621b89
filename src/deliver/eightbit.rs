//! Whether a message can go to a server as it is, 7-bit converted, or not
//! at all (RFC 6152 3, RFC 6531 3.4): pure decisions, the driver reads the
//! body when `needs_scan` says so.

use crate::smtp::Reply;
use crate::smtp::client::Extensions;
use crate::smtp::downgrade::Plan;

/// What the message's envelope says.
#[derive(Clone, Copy, Debug)]
pub struct Traits {
    /// Received with `BODY=8BITMIME`.
    pub eightbit: bool,
    /// Received with `SMTPUTF8`.
    pub smtputf8: bool,
    /// The sender or one of these recipients is non-ASCII.
    pub utf8_address: bool,
}

/// How the message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// As spooled.
    AsIs,
    /// Converted to 7-bit on the way.
    Downgrade,
}

/// Before reading the body: refused (UTF-8 addresses to a server without
/// SMTPUTF8), fine as it is, or `Ok(None)`: the body must be scanned.
pub fn before_scan(t: Traits, ext: &Extensions, relay: &str) -> Result<Option<Decision>, Reply> {
    if t.utf8_address && !ext.smtputf8 {
        // No downgrade of UTF-8 addresses: return the mail.
        return Err(no_smtputf8(relay, "these addresses"));
    }
    // An SMTPUTF8 message may carry 8-bit text without BODY=8BITMIME.
    let body_fits = !(t.eightbit || t.smtputf8) || ext.eightbitmime;
    let header_fits = !t.smtputf8 || ext.smtputf8;
    Ok((body_fits && header_fits).then_some(Decision::AsIs))
}

/// After the scan.
pub fn after_scan(
    t: Traits,
    ext: &Extensions,
    plan: &Plan,
    relay: &str,
) -> Result<Decision, Reply> {
    if t.smtputf8 && !ext.smtputf8 && plan.eight_bit_header {
        return Err(no_smtputf8(relay, "its UTF-8 header"));
    }
    if ext.eightbitmime || !plan.eight_bit {
        // All 7-bit despite BODY=8BITMIME (common): goes unchanged.
        return Ok(Decision::AsIs);
    }
    let why = if plan.eight_bit_header && !(t.smtputf8 && ext.smtputf8) {
        // RFC 6152 is about bodies: raw 8-bit header text has no 7-bit
        // form we may choose for the sender.
        Some("8-bit octets in a header".to_string())
    } else {
        plan.unconvertible.map(|u| u.to_string())
    };
    match why {
        Some(why) => Err(Reply::enh(
            554,
            (5, 6, 3),
            format!(
                "Conversion required but not supported: {relay} does not offer 8BITMIME and {why}"
            ),
        )),
        None => Ok(Decision::Downgrade),
    }
}

fn no_smtputf8(relay: &str, what: &str) -> Reply {
    Reply::enh(
        553,
        (5, 6, 7),
        format!("{relay} does not support SMTPUTF8, needed for {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::downgrade::Scanner;

    fn ext(eightbitmime: bool, smtputf8: bool) -> Extensions {
        Extensions {
            eightbitmime,
            smtputf8,
            ..Extensions::default()
        }
    }

    fn traits(eightbit: bool, smtputf8: bool, utf8_address: bool) -> Traits {
        Traits {
            eightbit,
            smtputf8,
            utf8_address,
        }
    }

    fn plan(msg: &[u8]) -> Plan {
        let mut s = Scanner::new();
        s.feed(msg);
        s.finish()
    }

    fn code(r: Result<impl std::fmt::Debug, Reply>) -> String {
        match r {
            Ok(d) => format!("{d:?}"),
            Err(r) => r.one_line()[..9].to_string(),
        }
    }

    #[test]
    fn scan_only_when_the_server_lacks_what_the_message_asked_for() {
        let r = "mx[127.0.0.1]:25";
        assert_eq!(
            code(before_scan(
                traits(false, false, false),
                &ext(false, false),
                r
            )),
            "Some(AsIs)"
        );
        assert_eq!(
            code(before_scan(
                traits(true, false, false),
                &ext(true, false),
                r
            )),
            "Some(AsIs)"
        );
        assert_eq!(
            code(before_scan(traits(true, true, false), &ext(true, true), r)),
            "Some(AsIs)"
        );
        assert_eq!(
            code(before_scan(
                traits(true, false, false),
                &ext(false, true),
                r
            )),
            "None"
        );
        assert_eq!(
            code(before_scan(
                traits(false, true, false),
                &ext(true, false),
                r
            )),
            "None"
        );
        // SMTPUTF8 implies 8-bit text may be there.
        assert_eq!(
            code(before_scan(
                traits(false, true, false),
                &ext(false, true),
                r
            )),
            "None"
        );
        assert_eq!(
            code(before_scan(traits(false, true, true), &ext(true, false), r)),
            "553 5.6.7"
        );
        assert_eq!(
            code(before_scan(traits(false, true, true), &ext(true, true), r)),
            "Some(AsIs)"
        );
    }

    #[test]
    fn after_the_scan() {
        let r = "mx[127.0.0.1]:25";
        let ascii = plan(b"Subject: x\r\n\r\nhello\r\n");
        let body8 = plan("Subject: x\r\n\r\nK\u{f6}ln\r\n".as_bytes());
        let head8 = plan("Subject: K\u{f6}ln\r\n\r\nhello\r\n".as_bytes());
        let binary = plan(b"Content-Transfer-Encoding: binary\r\n\r\n\xff\r\n");
        let plain = traits(true, false, false);
        let utf8 = traits(true, true, false);
        let no8 = ext(false, false);
        assert_eq!(code(after_scan(plain, &no8, &ascii, r)), "AsIs");
        assert_eq!(code(after_scan(plain, &no8, &body8, r)), "Downgrade");
        assert_eq!(code(after_scan(plain, &no8, &head8, r)), "554 5.6.3");
        assert_eq!(code(after_scan(plain, &no8, &binary, r)), "554 5.6.3");
        // SMTPUTF8: a UTF-8 header needs it; an ASCII one goes without.
        assert_eq!(
            code(after_scan(utf8, &ext(true, false), &head8, r)),
            "553 5.6.7"
        );
        assert_eq!(code(after_scan(utf8, &ext(true, false), &body8, r)), "AsIs");
        assert_eq!(code(after_scan(utf8, &no8, &body8, r)), "Downgrade");
        // A server with SMTPUTF8 but no 8BITMIME: the header may stay (the
        // walk changes nothing in an ASCII body).
        assert_eq!(
            code(after_scan(utf8, &ext(false, true), &head8, r)),
            "Downgrade"
        );
        let both = plan("Subject: K\u{f6}ln\r\n\r\nK\u{f6}ln\r\n".as_bytes());
        assert_eq!(
            code(after_scan(utf8, &ext(false, true), &both, r)),
            "Downgrade"
        );
    }
}
