//! The 8BITMIME downgrade (smtp::downgrade) on arbitrary bodies, scanned
//! and converted in input-chosen pieces. Invariants: no panic; the plan
//! does not depend on the pieces; a convertible plan converts without
//! error, to the same octets however split, exactly `plan.size` of them,
//! 7-bit unless a header had 8-bit octets; and, for a body of whole CRLF
//! lines under 1000 octets, whole CRLF lines under 1000 octets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxspool::smtp::downgrade::{Converter, Plan, Scanner};

#[path = "common.rs"]
mod common;
use common::*;

fn scan(pieces: &[&[u8]]) -> Plan {
    let mut s = Scanner::new();
    for p in pieces {
        s.feed(p);
    }
    s.finish()
}

fn convert(plan: &Plan, pieces: &[&[u8]]) -> Vec<u8> {
    let mut c = Converter::new(plan.clone());
    let mut out = Vec::new();
    for p in pieces {
        c.feed(p, &mut out).expect("the scanned body converts");
    }
    c.finish(&mut out).expect("the scanned body converts");
    out
}

fn whole_lines(b: &[u8]) -> bool {
    let mut ok = b.is_empty() || b.ends_with(b"\r\n");
    for (i, &c) in b.iter().enumerate() {
        ok &= match c {
            b'\r' => b.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && b[i - 1] == b'\r',
            _ => true,
        };
    }
    ok && b.split_inclusive(|&c| c == b'\n').all(|l| l.len() <= 1000)
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::new(data);
    let whole = [data];
    let pieces = split(&mut rng, data, 4096);
    let plan = scan(&whole);
    assert_eq!(scan(&pieces), plan, "the plan depends on the pieces");
    if plan.unconvertible.is_some() {
        return;
    }
    let out = convert(&plan, &whole);
    assert_eq!(convert(&plan, &pieces), out, "the output depends on the pieces");
    assert_eq!(plan.size, out.len() as u64, "SIZE is not the converted size");
    if !plan.eight_bit_header {
        assert!(out.is_ascii(), "8-bit octets left: {out:?}");
    }
    if whole_lines(data) {
        assert_whole_lines("converted", &out, 1000);
    }
});
