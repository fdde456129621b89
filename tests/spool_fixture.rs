//! A spool written by an earlier mxspool (schema 1, kept under
//! `tests/fixtures/spool-1/`) must open with this one and read the same:
//! every message, recipient state, attempt, body and counter. The checks
//! go through the spool's API only, so they hold on either byte order
//! (the records are little-endian whatever the host; see
//! docs/spool-format.md).
//!
//! How the fixture was made: a small program against the spool API opened
//! a new spool with `journal_size` 64 KiB, committed the three messages
//! below, reported attempts for two of them (one permanent failure, which
//! queued the DSN), stored two call-ahead answers, synced and stopped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mxspool::spool::Destination;
use mxspool::spool::{
    Attempt, CacheEntry, Message, QueueId, RcptState, Recipient, Spool, SpoolOptions, format_id,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-1");

/// A copy of the fixture in a fresh directory: opening a spool writes to it.
fn copy_fixture(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mxspool-fixture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["spool.redb", "journal"] {
        std::fs::copy(Path::new(FIXTURE).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn relay(port: u16) -> Destination {
    Destination::Relay {
        host: "192.0.2.7".into(),
        port,
    }
}

fn mx(domain: &str) -> Destination {
    Destination::Mx {
        domain: domain.into(),
        port: 25,
    }
}

fn rcpt(
    address: &str,
    destination: Destination,
    state: RcptState,
    last_reply: &str,
    remote: &str,
    last_attempt: u64,
) -> Recipient {
    Recipient {
        address: address.into(),
        destination,
        state,
        last_reply: last_reply.into(),
        remote: remote.into(),
        last_attempt,
    }
}

fn attempt(time: u64, destination: &str, relay: &str, result: &str) -> Attempt {
    Attempt {
        time,
        destination: destination.into(),
        relay: relay.into(),
        result: result.into(),
    }
}

const PENDING: QueueId = 0x6553F10000000;
const UTF8: QueueId = 0x6553F16400000;
const REFUSED: QueueId = 0x6553F22C00000;
const DSN: QueueId = 0x6553F48400000;

const PENDING_BODY: &str = "Received: from client.example (client.example [198.51.100.1])\r\n\tby mx2.example.net with ESMTP id 1; Tue, 14 Nov 2023 22:13:20 +0000\r\nSubject: pending\r\n\r\nfirst line of the body\r\nlast line\r\n";
const UTF8_BODY: &str = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n";
const REFUSED_BODY: &str = "Subject: refused\r\nMessage-ID: <x@example.com>\r\n\r\nbody\r\n";
const DSN_BODY: &str = "From: Mail Delivery System <MAILER-DAEMON@mx2.example.net>\r\nTo: <frank@example.com>\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: Tue, 14 Nov 2023 22:28:20 +0000\r\nMessage-ID: <6553F48400000.dsn@mx2.example.net>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"=_mxspool_6553F22C00000_0\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--=_mxspool_6553F22C00000_0\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThis is the mail system at mx2.example.net.\r\n\r\nYour message could not be delivered to one or more recipients below. It will\r\nnot be retried for them.\r\n\r\nQueue ID: 6553F22C00000\r\nReceived: Tue, 14 Nov 2023 22:18:20 +0000\r\nTried for: 10 minutes\r\n\r\n<nobody@example.org>: delivery failed (status 5.1.1)\r\n    Remote server: 192.0.2.7\r\n    It said: 550 5.1.1 no such user\r\n    Last attempt: Tue, 14 Nov 2023 22:28:20 +0000\r\n\r\n--=_mxspool_6553F22C00000_0\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx2.example.net\r\nX-Mxspool-Queue-ID: 6553F22C00000\r\nArrival-Date: Tue, 14 Nov 2023 22:18:20 +0000\r\n\r\nFinal-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; 192.0.2.7\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\nLast-Attempt-Date: Tue, 14 Nov 2023 22:28:20 +0000\r\n\r\n--=_mxspool_6553F22C00000_0\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: refused\r\nMessage-ID: <x@example.com>\r\n\r\n--=_mxspool_6553F22C00000_0--\r\n";

fn expected() -> Vec<(QueueId, Message, &'static str, Vec<Attempt>)> {
    let mx1 = "mx1.example.org[203.0.113.5]:25";
    let r25 = "192.0.2.7[192.0.2.7]:25";
    vec![
        (
            PENDING,
            Message {
                sender: "alice@example.com".into(),
                arrival: 1_700_000_000,
                backoff_base: 1_700_000_000,
                size: 188,
                chunks: 3,
                flags: 0,
                next_attempt: 1_700_000_000,
                attempts: 0,
                last_error: String::new(),
                client: "client.example [198.51.100.1]".into(),
                recipients: vec![
                    rcpt("bob@example.org", relay(25), RcptState::Pending, "", "", 0),
                    rcpt(
                        "carol@example.org",
                        relay(2525),
                        RcptState::Pending,
                        "",
                        "",
                        0,
                    ),
                ],
            },
            PENDING_BODY,
            vec![],
        ),
        (
            UTF8,
            Message {
                sender: "j\u{f6}rg@example.com".into(),
                arrival: 1_700_000_100,
                backoff_base: 1_700_000_100,
                size: 29,
                chunks: 1,
                // 8BITMIME | SMTPUTF8
                flags: 3,
                next_attempt: 1_700_000_700,
                attempts: 1,
                last_error: "451 4.2.0 try later".into(),
                client: "utf8.example [2001:db8::1]".into(),
                recipients: vec![
                    rcpt(
                        "dave@example.org",
                        mx("example.org"),
                        RcptState::Delivered,
                        "250 2.0.0 ok",
                        mx1,
                        1_700_000_200,
                    ),
                    rcpt(
                        "eve@example.org",
                        mx("example.org"),
                        RcptState::Pending,
                        "451 4.2.0 try later",
                        mx1,
                        1_700_000_200,
                    ),
                ],
            },
            UTF8_BODY,
            vec![attempt(
                1_700_000_200,
                "mx:example.org:25",
                mx1,
                "250 2.0.0 ok; 451 4.2.0 try later",
            )],
        ),
        (
            REFUSED,
            Message {
                sender: "frank@example.com".into(),
                arrival: 1_700_000_300,
                backoff_base: 1_700_000_300,
                size: 55,
                chunks: 1,
                flags: 0,
                next_attempt: 1_700_002_100,
                attempts: 2,
                last_error: "421 4.3.2 busy".into(),
                client: "c3.example [198.51.100.3]".into(),
                recipients: vec![
                    rcpt(
                        "nobody@example.org",
                        relay(25),
                        RcptState::Failed,
                        "550 5.1.1 no such user",
                        r25,
                        1_700_000_900,
                    ),
                    rcpt(
                        "grace@example.org",
                        relay(25),
                        RcptState::Pending,
                        "421 4.3.2 busy",
                        r25,
                        1_700_001_500,
                    ),
                ],
            },
            REFUSED_BODY,
            vec![
                attempt(1_700_000_900, "192.0.2.7:25", r25, "550 5.1.1 no such user"),
                attempt(1_700_001_500, "192.0.2.7:25", r25, "550 5.1.1 no such user"),
            ],
        ),
        (
            DSN,
            Message {
                sender: String::new(),
                arrival: 1_700_000_900,
                backoff_base: 1_700_000_900,
                size: 1571,
                chunks: 1,
                // A DSN of ours
                flags: 4,
                next_attempt: 1_700_000_900,
                attempts: 0,
                last_error: String::new(),
                client: "mxspool (delivery status notification)".into(),
                recipients: vec![rcpt(
                    "frank@example.com",
                    mx("example.com"),
                    RcptState::Pending,
                    "",
                    "",
                    0,
                )],
            },
            DSN_BODY,
            vec![],
        ),
    ]
}

fn body(spool: &Spool, id: QueueId, chunks: u32) -> String {
    let mut out = vec![];
    for seq in 0..chunks {
        let c = spool.chunk(id, seq).unwrap();
        out.extend(c.unwrap_or_else(|| panic!("{} chunk {seq} missing", format_id(id))));
    }
    assert_eq!(
        spool.chunk(id, chunks).unwrap(),
        None,
        "no chunk past the end"
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn a_schema_1_spool_opens_and_reads_the_same() {
    let dir = copy_fixture("schema-1");
    let opts = SpoolOptions {
        cache_size: 1 << 20,
        journal_size: 64 * 1024,
    };
    smol::block_on(async {
        let (wake, _w) = smol::channel::bounded(1);
        let (spool, thread, rec) = Spool::open(&dir, opts, wake).unwrap();
        let want = expected();
        let total: u64 = want.iter().map(|(_, m, _, _)| m.size).sum();
        assert_eq!((rec.messages, rec.bytes), (4, total));
        assert_eq!((rec.leftovers, rec.replayed), (0, 0));
        let state = spool.state();
        assert_eq!(
            (state.messages, state.bytes, state.incoming_bytes),
            (4, total, 0)
        );

        let listed = spool.list().unwrap();
        let ids: Vec<QueueId> = listed.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, want.iter().map(|w| w.0).collect::<Vec<_>>());
        for ((id, got), (want_id, message, text, attempts)) in listed.into_iter().zip(want) {
            assert_eq!(id, want_id);
            assert_eq!(got.unwrap(), message, "{}", format_id(id));
            assert_eq!(body(&spool, id, message.chunks), text, "{}", format_id(id));
            assert_eq!(body(&spool, id, message.chunks).len() as u64, message.size);
            assert_eq!(spool.attempts(id).unwrap(), attempts, "{}", format_id(id));
        }

        // The schedule index agrees with the records: earliest first.
        let (due, next) = spool.due(u64::MAX, 10, &HashSet::new()).unwrap();
        assert_eq!(due, vec![PENDING, UTF8, DSN, REFUSED]);
        assert_eq!(next, None);
        let (due, next) = spool.due(1_700_000_000, 10, &HashSet::new()).unwrap();
        assert_eq!((due, next), (vec![PENDING], Some(1_700_000_700)));
        assert_eq!(spool.oldest_arrival().unwrap(), Some(1_700_000_000));
        let dests = spool.pending_destinations().unwrap();
        let want_dests = [relay(25), relay(2525), mx("example.org"), mx("example.com")];
        assert_eq!(dests, want_dests.into_iter().collect());

        assert_eq!(
            spool.cache_get("someone@example.org").unwrap(),
            Some(CacheEntry {
                positive: true,
                refresh: 1_700_003_600,
                expire: 1_700_086_400,
                reply: "250 2.1.5 ok".into(),
            })
        );
        assert_eq!(
            spool.cache_get("nobody@example.org").unwrap(),
            Some(CacheEntry {
                positive: false,
                refresh: 1_700_001_800,
                expire: 1_700_003_600,
                reply: "550 5.1.1 no such user".into(),
            })
        );
        assert_eq!(spool.cache_get("other@example.org").unwrap(), None);

        // And it goes on working: a delete is applied and survives a reopen.
        spool.delete(DSN).await.unwrap();
        spool.sync().await.unwrap();
        drop(spool);
        thread.join();
        let (wake, _w) = smol::channel::bounded(1);
        let (spool, thread, rec) = Spool::open(&dir, opts, wake).unwrap();
        assert_eq!(rec.messages, 3);
        assert_eq!(spool.message(DSN).unwrap(), None);
        assert_eq!(
            spool.message(UTF8).unwrap().map(|m| m.flags),
            Some(3),
            "the others are untouched"
        );
        drop(spool);
        thread.join();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
