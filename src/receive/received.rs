//! The Received header we prepend (RFC 5321 4.4, RFC 5322 3.6.7).

use std::net::IpAddr;

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

/// `Received: from HELO ([IP]) by HOST with ESMTP id ID for <R>; DATE` +
/// CRLF, folded under 78 columns where it can be, never over 998. Text from
/// the client (the HELO name) is reduced to safe characters.
pub fn received_header(info: &ReceivedInfo<'_>) -> Vec<u8> {
    let _ = info;
    todo!("receive::received::received_header")
}
