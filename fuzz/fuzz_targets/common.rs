//! Shared by the fuzz targets: a tiny deterministic PRNG (seeded from the
//! input, so every run is reproducible from the crash file) and the wire
//! checks.
#![allow(dead_code)]

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: &[u8]) -> Rng {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for &b in seed {
            s = (s ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        Rng(s | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Panics unless every CR is followed by LF and every LF preceded by CR.
pub fn assert_no_bare_newline(what: &str, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(
                bytes.get(i + 1),
                Some(&b'\n'),
                "{what}: bare CR at {i} in {bytes:?}"
            );
        }
        if b == b'\n' {
            assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "{what}: bare LF at {i} in {bytes:?}"
            );
        }
    }
}

/// Panics unless `bytes` is empty or whole CRLF lines, none longer than
/// `max` octets with its CRLF, none with a bare CR or LF.
pub fn assert_whole_lines(what: &str, bytes: &[u8], max: usize) {
    assert_no_bare_newline(what, bytes);
    if bytes.is_empty() {
        return;
    }
    assert!(
        bytes.ends_with(b"\r\n"),
        "{what}: ends inside a line: {bytes:?}"
    );
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() <= max,
            "{what}: line of {} octets (max {max}): {line:?}",
            line.len()
        );
    }
}

/// Splits `data` into pieces of random length (1..=max), as a socket might.
pub fn split<'a>(rng: &mut Rng, mut data: &'a [u8], max: usize) -> Vec<&'a [u8]> {
    let mut v = Vec::new();
    while !data.is_empty() {
        let n = if rng.chance(8) {
            max
        } else {
            1 + rng.below(16)
        };
        let n = n.clamp(1, data.len());
        let (a, b) = data.split_at(n);
        v.push(a);
        data = b;
    }
    v
}
