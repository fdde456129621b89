//! The SMTP client state machine against arbitrary server replies, split at
//! arbitrary points, sending a body and addresses taken from the input.
//! Invariants: no panic; every byte the client writes is whole CRLF lines
//! with no bare CR or LF (so no peer can be made to see a line end or an
//! end of data we did not mean); the body on the wire is dot-stuffed: its
//! only `.` line is the final one, and unstuffed it is the body we gave
//! with every line end made CRLF; the loop always ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxspool::smtp::client::{Client, Envelope, Event, Timeouts};

#[path = "common.rs"]
mod common;
use common::*;

/// The body as the receiver must recover it: any CR, LF or CRLF is a CRLF,
/// and the last line is terminated.
fn normalise(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                v.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => v.extend_from_slice(b"\r\n"),
            _ => v.push(b),
        }
        i += 1;
    }
    if !v.is_empty() && !v.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn check_body_wire(wire: &[u8], body: &[u8]) {
    assert_whole_lines("body on the wire", wire, usize::MAX);
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    let (last, text) = lines.split_last().expect("no end of data");
    assert_eq!(
        *last, b".\r\n",
        "body does not end with the end-of-data line"
    );
    let mut unstuffed = Vec::new();
    for l in text {
        assert_ne!(*l, b".\r\n", "an end-of-data line inside the body");
        match l.strip_prefix(b".") {
            Some(rest) => {
                assert!(rest.starts_with(b"."), "unstuffed leading dot: {l:?}");
                unstuffed.extend_from_slice(rest);
            }
            None => unstuffed.extend_from_slice(l),
        }
    }
    assert_eq!(unstuffed, normalise(body), "body changed in transit");
}

fn take(data: &mut &[u8], n: usize) -> Vec<u8> {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let head = take(&mut data, 4);
    let mut rng = Rng::new(&head);
    let flags = head.first().copied().unwrap_or(0);
    let body_len = usize::from(head.get(1).copied().unwrap_or(0)) * 8;
    let to_len = usize::from(head.get(2).copied().unwrap_or(0) & 31);
    let body = take(&mut data, body_len);
    let odd_to = String::from_utf8_lossy(&take(&mut data, to_len)).into_owned();
    let server = data;

    let mut c = Client::new("mx2.example.net", Timeouts::default());
    let mut wire: Vec<u8> = Vec::new();
    let mut pieces = split(&mut rng, server, 512).into_iter();
    let mut sent = 0;
    let mut done = false;
    for _ in 0..(4 * server.len() + 64) {
        let out = c.take_output();
        assert_whole_lines("client output", &out, usize::MAX);
        wire.extend_from_slice(&out);
        if let Some(ev) = c.poll_event() {
            match ev {
                Event::Ready { extensions, .. } => {
                    if extensions.starttls && flags & 1 != 0 && rng.chance(2) {
                        c.starttls();
                    } else {
                        let mut to = vec!["alice@example.com".to_string()];
                        if flags & 2 != 0 {
                            to.push(odd_to.clone());
                        }
                        c.send_mail(Envelope {
                            from: if flags & 4 != 0 {
                                String::new()
                            } else {
                                "s@example.org".into()
                            },
                            to,
                            size: body.len() as u64,
                            eightbit: flags & 8 != 0,
                            smtputf8: flags & 16 != 0,
                        });
                    }
                }
                Event::StartTls => c.tls_established(),
                Event::SendBody => {
                    assert_whole_lines("client output", &c.take_output(), usize::MAX);
                    let mut pieces = split(&mut rng, &body, 4096);
                    pieces.retain(|p| !p.is_empty());
                    for p in pieces {
                        c.body(p);
                    }
                    c.end_body();
                    let bw = c.take_output();
                    // Empty: the client had already stopped (the server
                    // sent garbage behind its 354 in the same read).
                    if !bw.is_empty() {
                        check_body_wire(&bw, &body);
                    }
                    wire.extend_from_slice(&bw);
                }
                Event::TransactionFailed { .. } | Event::DataReply(_) | Event::ProbeDone => {
                    sent += 1;
                    if sent < 3 && rng.chance(2) {
                        if rng.chance(2) {
                            c.send_probe("", &["bob@example.com".into(), odd_to.clone()]);
                        } else {
                            c.send_mail(Envelope {
                                from: "s@example.org".into(),
                                to: vec!["bob@example.com".into()],
                                size: 10,
                                eightbit: false,
                                smtputf8: false,
                            });
                        }
                    } else {
                        c.quit();
                    }
                }
                Event::MailReply(_) | Event::RcptReply { .. } => {}
                Event::Failed { .. } | Event::Closed => done = true,
            }
            continue;
        }
        if done {
            break;
        }
        if !c.wants_input() {
            break;
        }
        match pieces.next() {
            Some(p) => c.receive(p),
            None => {
                c.eof();
            }
        }
    }
    let out = c.take_output();
    wire.extend_from_slice(&out);
    assert_whole_lines("client output", &wire, usize::MAX);
});
