//! DSN building (compose::dsn::build) and the Received header
//! (compose::received::received_header) with arbitrary original headers,
//! HELO names, addresses and remote replies. Invariants: no panic; output
//! is whole CRLF lines with no bare CR or LF, each under 1000 octets with
//! its CRLF (RFC 5322 2.1.1); the Received header is one header field
//! (continuation lines start with white space).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxspool::compose::dsn::{self, Action, DsnInput, RecipientReport};
use mxspool::compose::received::{ReceivedInfo, received_header};

#[path = "common.rs"]
mod common;
use common::*;

fn field(data: &mut &[u8]) -> String {
    let n = usize::from(data.first().copied().unwrap_or(0));
    let rest = data.get(1..).unwrap_or_default();
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *data = b;
    String::from_utf8_lossy(a).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let helo = field(&mut d);
    let sender = field(&mut d);
    let rcpt = field(&mut d);
    let diag = field(&mut d);
    let mta = field(&mut d);
    let status = field(&mut d);
    let headers = d;

    let peer = "192.0.2.1".parse().expect("literal");
    let r = received_header(&ReceivedInfo {
        helo: Some(&helo),
        peer,
        by: "mx2.example.net",
        with: "ESMTP",
        queue_id: "0123ABCD",
        for_rcpt: Some(&rcpt),
        date: u64::from(headers.first().copied().unwrap_or(0)) << 24,
    });
    assert_whole_lines("Received", &r, 1000);
    assert!(r.starts_with(b"Received: "), "{r:?}");
    for line in r.split_inclusive(|&b| b == b'\n').skip(1) {
        assert!(
            line.starts_with(b"\t") || line.starts_with(b" "),
            "not folded: {line:?}"
        );
    }

    let reports = [
        RecipientReport {
            address: rcpt.clone(),
            action: Action::Failed,
            status: status.clone(),
            diagnostic: Some(diag.clone()),
            remote_mta: Some(mta.clone()),
            last_attempt: Some(1_700_000_000),
        },
        RecipientReport {
            address: diag.clone(),
            action: if status.len() % 2 == 0 {
                Action::Delayed
            } else {
                Action::Failed
            },
            status: "4.4.7".into(),
            diagnostic: None,
            remote_mta: None,
            last_attempt: None,
        },
    ];
    let msg = dsn::build(&DsnInput {
        reporting_mta: &mta,
        sender: &sender,
        queue_id: &helo,
        arrival: 1_700_000_000,
        now: 1_700_086_400,
        recipients: &reports,
        original_headers: headers,
        message_id: &status,
        utf8: sender.len() % 2 == 0,
    });
    assert_whole_lines("DSN", &msg, 1000);
});
