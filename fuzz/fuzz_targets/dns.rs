//! The DNS response parser and its interpretation on arbitrary packets.
//! Invariants: no panic, no unbounded loop (compression pointer loops),
//! at most MAX_RECORDS answers, names bounded (255 wire octets, each shown
//! as at most 4 characters: `\DDD` escapes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxspool::dns::wire::{self, MAX_RECORDS, RData};

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = wire::parse_response(data) else {
        return;
    };
    assert!(resp.answers.len() <= MAX_RECORDS);
    for r in &resp.answers {
        assert!(r.name.len() <= 4 * 255, "name of {} chars", r.name.len());
        if let RData::Cname(n) | RData::Mx(_, n) | RData::Ptr(n) = &r.data {
            assert!(n.len() <= 4 * 255, "target of {} chars", n.len());
        }
    }
    if let Some((name, qtype, _)) = resp.question.clone() {
        let _ = wire::matches(&resp, resp.id, &name, qtype);
        for budget in [0, 8] {
            let _ = wire::interpret(&resp, &name, qtype, budget);
            let _ = wire::interpret(&resp, &name, 15, budget);
        }
    }
    let _ = wire::normalize_name(&String::from_utf8_lossy(data));
});
