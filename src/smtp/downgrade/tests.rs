//! The downgrade against hand-written messages and random MIME trees: any
//! split converts like the whole, the result is 7-bit with short lines,
//! its size is the plan's, and every leaf decodes to its original octets.

use super::*;
use crate::smtp::qp;

/// Scans and converts `msg`, each in one piece.
fn convert(msg: &[u8]) -> (Plan, Vec<u8>) {
    let mut s = Scanner::new();
    s.feed(msg);
    let plan = s.finish();
    let mut c = Converter::new(plan.clone());
    let mut out = Vec::new();
    c.feed(msg, &mut out).expect("converts");
    c.finish(&mut out).expect("converts");
    (plan, out)
}

/// The same, fed in pieces ending at `cuts` (scan and convert alike).
fn convert_split(msg: &[u8], cuts: &[usize]) -> (Plan, Vec<u8>) {
    let pieces = split_at(msg, cuts);
    let mut s = Scanner::new();
    for p in &pieces {
        s.feed(p);
    }
    let plan = s.finish();
    let mut c = Converter::new(plan.clone());
    let mut out = Vec::new();
    for p in &pieces {
        c.feed(p, &mut out).expect("converts");
    }
    c.finish(&mut out).expect("converts");
    (plan, out)
}

fn split_at<'a>(msg: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut v = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, msg.len());
        v.push(&msg[at..c]);
        at = c;
    }
    v.push(&msg[at..]);
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// 7-bit octets only, CRLF line ends, no line over 998 octets.
fn assert_7bit(out: &[u8]) {
    assert!(out.is_ascii(), "{}", String::from_utf8_lossy(out));
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for l in out.split(|&b| b == b'\n') {
        assert!(l.len() <= 999, "line of {} octets", l.len());
    }
}

#[test]
fn plain_8bit_message_becomes_quoted_printable() {
    let msg = "From: a@b\r\nSubject: x\r\n\r\ncaf\u{e9} = ok \r\n.\r\n".as_bytes();
    let (plan, out) = convert(msg);
    assert!(plan.eight_bit && !plan.eight_bit_header);
    assert_eq!(plan.unconvertible, None);
    assert_eq!(plan.size, out.len() as u64);
    assert_7bit(&out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text,
        "From: a@b\r\nSubject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         caf=C3=A9 =3D ok=20\r\n.\r\n"
    );
}

#[test]
fn declared_encoding_is_replaced_and_invalid_utf8_labelled_unknown() {
    let msg = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=latin1\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\nna\xefve\r\n";
    let (_, out) = convert(msg);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nna=EFve\r\n"));
    assert_eq!(text.matches("Content-Transfer-Encoding").count(), 1);
    assert_eq!(text.matches("MIME-Version").count(), 1);

    let (_, out) = convert(b"Subject: x\r\n\r\nna\xefve\r\n");
    assert!(contains(
        &out,
        b"Content-Type: text/plain; charset=unknown-8bit\r\n"
    ));
}

#[test]
fn all_7bit_message_needs_nothing() {
    let msg = b"Content-Transfer-Encoding: 8bit\r\n\r\nplain\r\n";
    let (plan, out) = convert(msg);
    assert!(!plan.eight_bit);
    // Were it converted anyway, only the label would change.
    assert_eq!(out, b"Content-Transfer-Encoding: 7bit\r\n\r\nplain\r\n");
}

const MULTI: &[u8] = b"MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n\tboundary=\"b1\"\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
pre \xe9\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
gr\xc3\xbc\xc3\x9f\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
seven = bit\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Subject: inner\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
\r\n\
inner \xe2\x82\xac\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
ascii only\r\n\
--b1--\r\n\
epi \xff\r\n";

#[test]
fn multipart_converts_only_8bit_leaves() {
    let (plan, out) = convert(MULTI);
    assert_eq!(plan.unconvertible, None);
    assert_eq!(plan.size, out.len() as u64);
    assert_7bit(&out);
    let text = String::from_utf8_lossy(&out).into_owned();
    // Containers relabelled, framing kept.
    assert!(text.starts_with(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary=\"b1\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\npre ?\r\n--b1\r\n"
    ));
    assert!(
        text.contains(
            "Content-Transfer-Encoding: quoted-printable\r\n\r\ngr=C3=BC=C3=9F\r\n--b1\r\n"
        )
    );
    assert!(text.contains("Content-Type: text/plain\r\n\r\nseven = bit\r\n--b1\r\n"));
    assert!(text.contains(
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\n"
    ));
    // The inner message's part has no Content-Type: one is added.
    assert!(text.contains(
        "--b2\r\nContent-Transfer-Encoding: quoted-printable\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\ninner =E2=82=AC\r\n--b2--\r\n"
    ));
    assert!(text.contains("Content-Transfer-Encoding: 7bit\r\n\r\nascii only\r\n--b1--\r\n"));
    assert!(text.ends_with("--b1--\r\nepi ?\r\n"));
}

#[test]
fn a_close_delimiter_without_crlf_at_the_end_is_still_one() {
    let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\xe9\r\n--b--";
    let (plan, out) = convert(msg);
    assert_eq!(plan.size, out.len() as u64);
    assert_eq!(
        out,
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
          Content-Transfer-Encoding: quoted-printable\r\n\
          Content-Type: text/plain; charset=unknown-8bit\r\n\r\n=E9\r\n--b--\r\n"
    );
}

#[test]
fn what_cannot_be_converted() {
    let cases: [(&[u8], Unconvertible); 4] = [
        (
            b"Content-Transfer-Encoding: binary\r\n\r\n\xff\r\n",
            Unconvertible::Binary,
        ),
        (
            b"Content-Transfer-Encoding: base64\r\n\r\n\xff\r\n",
            Unconvertible::EncodedEightBit,
        ),
        (
            b"Content-Type: multipart/mixed\r\n\r\n\xff\r\n",
            Unconvertible::NoBoundary,
        ),
        (
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
              Content-Transfer-Encoding: x-custom\r\n\r\n\xff\r\n--x--\r\n",
            Unconvertible::EncodedEightBit,
        ),
    ];
    for (msg, why) in cases {
        let mut s = Scanner::new();
        s.feed(msg);
        let plan = s.finish();
        assert!(plan.eight_bit);
        assert_eq!(
            plan.unconvertible,
            Some(why),
            "{}",
            String::from_utf8_lossy(msg)
        );
    }
}

#[test]
fn header_over_the_cap_cannot_be_converted() {
    let mut msg = Vec::new();
    while msg.len() <= HEADER_CAP {
        msg.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    msg.extend_from_slice(b"\r\n\xe9\r\n");
    let mut s = Scanner::new();
    for c in msg.chunks(1000) {
        s.feed(c);
    }
    assert_eq!(s.finish().unconvertible, Some(Unconvertible::HeaderTooBig));
}

#[test]
fn eight_bit_headers_are_noted_at_any_level() {
    let mut s = Scanner::new();
    s.feed("Subject: gr\u{fc}\u{df}e\r\n\r\nbody\r\n".as_bytes());
    let p = s.finish();
    assert!(p.eight_bit && p.eight_bit_header);

    let nested = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
        Content-Disposition: attachment; filename=\"\xc3\xa9.txt\"\r\n\r\nhi\r\n--x--\r\n";
    let mut s = Scanner::new();
    s.feed(nested);
    assert!(s.finish().eight_bit_header);

    let mut s = Scanner::new();
    s.feed("Subject: x\r\n\r\nK\u{f6}ln\r\n".as_bytes());
    assert!(!s.finish().eight_bit_header);
}

#[test]
fn converter_refuses_a_body_that_is_not_the_scanned_one() {
    let mut s = Scanner::new();
    s.feed(b"Subject: x\r\n\r\nascii\r\n");
    let plan = s.finish();
    let mut c = Converter::new(plan);
    let mut out = Vec::new();
    c.feed(b"Subject: x\r\n\r\n\xe9\r\n", &mut out)
        .and_then(|()| c.finish(&mut out))
        .expect_err("8-bit where the scan saw none");
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Random MIME messages; the leaf bodies, in order, are the oracle.
struct Gen {
    rng: Rng,
    boundaries: usize,
    leaves: Vec<Vec<u8>>,
}

impl Gen {
    /// A body line: never starts a delimiter (no `-`), never over 998.
    fn line(&mut self, eight_bit: bool) -> Vec<u8> {
        let len = if self.rng.one_in(10) {
            self.rng.below(999)
        } else {
            self.rng.below(90)
        };
        let palette: &[&[u8]] = if eight_bit {
            &[
                b"a",
                b"Z",
                b" ",
                b"\t",
                b"=",
                b".",
                b"\xc3\xa9",
                b"\xe2\x82\xac",
                b"\xff",
                b"0",
            ]
        } else {
            &[b"a", b"Z", b" ", b"\t", b"=", b".", b"0", b"~"]
        };
        let mut l = Vec::new();
        while l.len() < len {
            let p = palette[self.rng.below(palette.len())];
            if l.len() + p.len() > len {
                break;
            }
            l.extend_from_slice(p);
        }
        l
    }

    fn leaf_body(&mut self, eight_bit: bool) -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..self.rng.below(8) {
            if i > 0 {
                b.extend_from_slice(b"\r\n");
            }
            b.extend(self.line(eight_bit));
        }
        if self.rng.one_in(2) {
            b.extend_from_slice(b"\r\n");
        }
        b
    }

    fn entity(&mut self, depth: usize, out: &mut Vec<u8>) {
        let pick = self.rng.below(6);
        if depth < 3 && pick == 0 {
            return self.multipart(depth, out);
        }
        if depth < 3 && pick == 1 {
            out.extend_from_slice(b"Content-Type: message/rfc822\r\n");
            if self.rng.one_in(2) {
                out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
            }
            out.extend_from_slice(b"\r\nSubject: inner\r\n");
            return self.entity(depth + 1, out);
        }
        let eight_bit = self.rng.one_in(2);
        if self.rng.one_in(2) {
            out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
        }
        let ctes: &[&[u8]] = &[b"", b"7bit", b"8bit", b"8BIT (comment)"];
        let cte = ctes[self.rng.below(ctes.len())];
        if !cte.is_empty() {
            out.extend_from_slice(b"Content-Transfer-Encoding: ");
            out.extend_from_slice(cte);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let body = self.leaf_body(eight_bit);
        out.extend_from_slice(&body);
        self.leaves.push(body);
    }

    fn multipart(&mut self, depth: usize, out: &mut Vec<u8>) {
        self.boundaries += 1;
        let b = format!("=_b{}", self.boundaries);
        out.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n").as_bytes(),
        );
        if self.rng.one_in(2) {
            out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.rng.one_in(2) {
            out.extend_from_slice(b"preamble \xe9\r\n");
        }
        for _ in 0..1 + self.rng.below(3) {
            out.extend_from_slice(format!("--{b}\r\n").as_bytes());
            self.entity(depth + 1, out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        if self.rng.one_in(2) {
            out.extend_from_slice(b"epilogue \xff\r\n");
        }
    }
}

/// The test's own reading of a converted entity: its leaves, decoded.
fn leaves_of(entity: &[u8], out: &mut Vec<Vec<u8>>) {
    let (head, body) = match entity.strip_prefix(b"\r\n") {
        Some(body) => (&b""[..], body),
        None => {
            let p = find(entity, b"\r\n\r\n").expect("header end");
            (&entity[..p + 2], &entity[p + 4..])
        }
    };
    let head = String::from_utf8_lossy(head).replace("\r\n\t", " ");
    let field = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name))
            .map(str::to_string)
    };
    let ct = field("Content-Type: ").unwrap_or_default();
    if let Some((_, rest)) = ct.split_once("boundary=\"") {
        let b = rest.split('"').next().unwrap_or_default();
        let framed = [b"\r\n".as_slice(), body].concat();
        let delim = format!("\r\n--{b}");
        let mut pieces = Vec::new();
        let mut rest = framed.as_slice();
        while let Some(p) = find(rest, delim.as_bytes()) {
            pieces.push(&rest[..p]);
            rest = &rest[p + delim.len()..];
        }
        pieces.push(rest);
        for p in &pieces[1..] {
            if let Some(part) = p.strip_prefix(b"\r\n") {
                leaves_of(part, out);
            }
        }
    } else if ct.starts_with("message/rfc822") {
        leaves_of(body, out);
    } else if field("Content-Transfer-Encoding: ").as_deref() == Some("quoted-printable") {
        out.push(qp::decode(body));
    } else {
        out.push(body.to_vec());
    }
}

#[test]
fn random_messages_convert_split_or_whole_and_decode_back() {
    // How many outputs show each feature: the generator must reach them all.
    let features: [&[u8]; 5] = [
        b"quoted-printable",
        b"multipart/mixed",
        b"message/rfc822",
        b"Encoding: 7bit",
        b"charset=unknown-8bit",
    ];
    let mut seen = [0usize; 5];
    for seed in 1..=400u64 {
        let mut g = Gen {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            boundaries: 0,
            leaves: Vec::new(),
        };
        let mut msg = b"From: a@example.org\r\nSubject: random\r\n".to_vec();
        if g.rng.one_in(2) {
            msg.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        g.entity(0, &mut msg);
        let (plan, whole) = convert(&msg);
        assert_eq!(plan.unconvertible, None, "seed {seed}");
        assert_eq!(plan.size, whole.len() as u64, "seed {seed}");
        assert_7bit(&whole);
        let mut got = Vec::new();
        leaves_of(&whole, &mut got);
        assert_eq!(got, g.leaves, "seed {seed}");
        for _ in 0..4 {
            let mut cuts: Vec<usize> = (0..g.rng.below(12))
                .map(|_| g.rng.below(msg.len() + 1))
                .collect();
            cuts.sort_unstable();
            let (p, split) = convert_split(&msg, &cuts);
            assert_eq!(p, plan, "seed {seed} cuts {cuts:?}");
            assert_eq!(split, whole, "seed {seed} cuts {cuts:?}");
        }
        let bytewise: Vec<usize> = (1..msg.len().min(3000)).collect();
        assert_eq!(convert_split(&msg, &bytewise).1, whole, "seed {seed}");
        for (n, f) in seen.iter_mut().zip(features) {
            *n += usize::from(contains(&whole, f));
        }
    }
    assert!(seen.iter().all(|&n| n >= 10), "{seen:?}");
}
