//! The SMTP server state machine against arbitrary client byte streams,
//! split at arbitrary points, with every event answered Ok or with a
//! refusal picked by the input. Invariants: no panic; the server writes
//! only whole CRLF lines (no bare CR/LF, each a reply line `DDD[ -]...`
//! of at most 512 octets); Body chunks are at most BODY_CHUNK; an accepted
//! message (DataEnd) has no bare CR/LF, ends with CRLF, has no line over
//! 1000 octets and is not over max_message_size; the loop always ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxspool::smtp::reply::Reply;
use mxspool::smtp::server::{BODY_CHUNK, Event, Params, Session};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::*;

const MAX_MESSAGE: u64 = 4096;

fn refusal(rng: &mut Rng) -> Result<(), Reply> {
    match rng.below(4) {
        0 | 1 => Ok(()),
        2 => Err(Reply::enh(550, (5, 7, 1), "Refused")),
        _ => Err(Reply::enh(451, (4, 3, 0), "Try again later")),
    }
}

fn check_output(out: &[u8]) {
    assert_whole_lines("server output", out, 512);
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() >= 5, "short reply line {line:?}");
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "reply line {line:?}"
        );
        assert!(
            matches!(line[3], b' ' | b'-' | b'\r'),
            "reply line {line:?}"
        );
    }
}

fn check_message(body: &[u8]) {
    assert_no_bare_newline("accepted body", body);
    assert!(
        body.is_empty() || body.ends_with(b"\r\n"),
        "body does not end in CRLF"
    );
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= 1000, "body line of {} octets", line.len());
    }
    assert!(
        body.len() as u64 <= MAX_MESSAGE,
        "body of {} over the limit",
        body.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let (head, stream) = data.split_at(data.len().min(3));
    let mut rng = Rng::new(head);
    let flags = head.first().copied().unwrap_or(0);
    let mut s = Session::new(Params {
        hostname: "mx2.example.net".into(),
        max_message_size: if flags & 1 == 0 { MAX_MESSAGE } else { 0 },
        max_recipients: 1 + (flags as usize >> 1 & 7),
        max_errors: 3 + (flags as usize >> 4),
        max_hops: 2,
        starttls: flags & 0x80 != 0,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
    });
    let t0 = Instant::now();
    // With no size limit the body bound is the input length.
    let limit = if flags & 1 == 0 {
        MAX_MESSAGE
    } else {
        u64::MAX
    };
    s.greeting();
    let mut pieces = split(&mut rng, stream, BODY_CHUNK).into_iter();
    let mut body: Vec<u8> = Vec::new();
    let mut closed = false;
    // Each turn either consumes input or handles an event; both are finite.
    for _ in 0..(4 * stream.len() + 64) {
        check_output(&s.take_output());
        if let Some(ev) = s.poll_event() {
            match ev {
                Event::Mail(_) => s.answer_mail(refusal(&mut rng)),
                Event::Rcpt(_) => s.answer_rcpt(refusal(&mut rng)),
                Event::DataStart => {
                    body.clear();
                    s.answer_data(refusal(&mut rng));
                }
                Event::Body(chunk) => {
                    assert!(chunk.len() <= BODY_CHUNK, "chunk of {}", chunk.len());
                    body.extend_from_slice(&chunk);
                    assert!(body.len() as u64 <= limit.saturating_add(BODY_CHUNK as u64));
                }
                Event::DataEnd => {
                    if limit != u64::MAX {
                        check_message(&body);
                    } else {
                        assert_no_bare_newline("accepted body", &body);
                    }
                    body.clear();
                    let r = if rng.chance(3) {
                        Reply::enh(452, (4, 3, 1), "Insufficient system storage")
                    } else {
                        Reply::enh(250, (2, 0, 0), "Ok: queued as 1")
                    };
                    s.answer_data_end(r);
                }
                Event::DataRefused(_) | Event::Reset => body.clear(),
                Event::StartTls => s.tls_started(),
                Event::Close => closed = true,
            }
            continue;
        }
        if closed {
            break;
        }
        if rng.chance(512) {
            if rng.chance(2) {
                s.waiting(t0);
                s.handle_timeout(t0 + Duration::from_secs(300));
            } else {
                s.shutdown();
            }
            continue;
        }
        if !s.wants_input() {
            // No event, no appetite and not closed: a real connection
            // would hang here.
            panic!("session stalls: no event, wants no input, not closed");
        }
        match pieces.next() {
            Some(p) => s.receive(p),
            None => break,
        }
    }
    check_output(&s.take_output());
});
