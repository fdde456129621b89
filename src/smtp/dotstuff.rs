//! The DATA body encoder: dot-stuffing (RFC 5321 4.5.2) and line-end
//! normalisation, streaming across chunk boundaries.
//!
//! Strict in what we send: any lone CR or LF in the spooled body is written
//! as CRLF, so no peer can be made to see a line end (or an end of data)
//! that the next hop would read differently (SMTP smuggling).

const CRLF: &[u8] = b"\r\n";
/// The end-of-data line that follows the body's last CRLF.
const END_OF_DATA: &[u8] = b".\r\n";

/// Encodes one message body; reusable after `finish`.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    /// The next byte starts a line (a leading `.` must be doubled).
    line_start: bool,
    /// The previous chunk ended in CR: an LF at the start of the next one
    /// completes it, anything else makes it a lone CR.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the encoded form of `input` to `out`.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        while let Some((&b, rest)) = input.split_first() {
            if self.pending_cr {
                // CR LF, or a lone CR: either way one CRLF on the wire.
                self.pending_cr = false;
                out.extend_from_slice(CRLF);
                self.line_start = true;
                if b == b'\n' {
                    input = rest;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    input = rest;
                }
                b'\n' => {
                    out.extend_from_slice(CRLF);
                    self.line_start = true;
                    input = rest;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    self.line_start = false;
                    // Copy the run of ordinary bytes in one go (b is one).
                    let n = input
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(input.len());
                    let (run, tail) = input.split_at(n);
                    out.extend_from_slice(run);
                    input = tail;
                }
            }
        }
    }

    /// Ends the body: CRLF unless it ended with a line end, then `.` CRLF.
    /// Resets the encoder for the next message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(CRLF);
        }
        out.extend_from_slice(END_OF_DATA);
        *self = DotStuffer::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for c in chunks {
            s.encode(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    /// Reference semantics, byte by byte: what the receiver must recover.
    fn normalise(body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0;
        while let Some(&b) = body.get(i) {
            match b {
                b'\r' if body.get(i + 1) == Some(&b'\n') => {
                    v.extend_from_slice(CRLF);
                    i += 1;
                }
                b'\r' | b'\n' => v.extend_from_slice(CRLF),
                _ => v.push(b),
            }
            i += 1;
        }
        v
    }

    /// Checks the wire invariants and returns the unstuffed body.
    fn check_wire(wire: &[u8]) -> Vec<u8> {
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR in {wire:?}");
            }
            if b == b'\n' {
                assert!(i > 0 && wire[i - 1] == b'\r', "bare LF in {wire:?}");
            }
        }
        let body = wire
            .strip_suffix(END_OF_DATA)
            .expect("ends with the end-of-data line");
        assert!(body.is_empty() || body.ends_with(CRLF), "{wire:?}");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert_ne!(line, b".\r\n", "early end of data in {wire:?}");
            // Unstuffing as the receiver does it.
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            if line.starts_with(b".") {
                assert!(line.starts_with(b".."), "unstuffed dot in {wire:?}");
            }
        }
        out
    }

    #[test]
    fn tricky_body_is_stuffed_and_normalised() {
        let body = b".a\r\n..b\nc\r.d\r\r\n.\r\n\n.\rx";
        let want: &[u8] = b"..a\r\n...b\r\nc\r\n..d\r\n\r\n..\r\n\r\n..\r\nx\r\n.\r\n";
        assert_eq!(encode_chunks(&[body]), want);
    }

    #[test]
    fn tricky_body_same_for_every_two_and_three_way_split() {
        let body: &[u8] = b".a\r\n..b\nc\r.d\r\r\n.\r\n\n.\rx";
        let whole = encode_chunks(&[body]);
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(encode_chunks(&[a, b]), whole, "split at {i}");
            for j in i..=body.len() {
                let (b1, b2) = body[i..].split_at(j - i);
                assert_eq!(encode_chunks(&[a, b1, b2]), whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn cr_then_lf_across_chunks_is_one_crlf() {
        assert_eq!(encode_chunks(&[b"a\r", b"\nb"]), b"a\r\nb\r\n.\r\n");
        // A lone CR at the end of a chunk, then a dot: the dot starts a line.
        assert_eq!(encode_chunks(&[b"a\r", b".b"]), b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn end_of_body_handling() {
        // Empty body: just the end-of-data line.
        assert_eq!(encode_chunks(&[]), b".\r\n");
        // Body ending in CRLF gets no extra line.
        assert_eq!(encode_chunks(&[b"x\r\n"]), b"x\r\n.\r\n");
        // Body ending in a lone CR (pending) or LF: one CRLF, not two.
        assert_eq!(encode_chunks(&[b"x\r"]), b"x\r\n.\r\n");
        assert_eq!(encode_chunks(&[b"x\n"]), b"x\r\n.\r\n");
        // Body ending in a lone dot line: stuffed.
        assert_eq!(encode_chunks(&[b"x\r\n."]), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn encoder_resets_after_finish() {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.encode(b"abc\r", &mut out);
        s.finish(&mut out);
        out.clear();
        s.encode(b".x", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"..x\r\n.\r\n");
    }

    /// Every body up to 6 bytes over the alphabet that matters, split at
    /// every point: never a bare CR/LF, never an early end of data, and the
    /// receiver recovers the body with normalised line ends.
    #[test]
    fn exhaustive_small_bodies_round_trip() {
        const ALPHABET: [u8; 4] = [b'.', b'\r', b'\n', b'a'];
        for len in 0..=6u32 {
            for mut k in 0..4usize.pow(len) {
                let mut body = Vec::new();
                for _ in 0..len {
                    body.push(ALPHABET[k % 4]);
                    k /= 4;
                }
                let mut want = normalise(&body);
                if !want.is_empty() && !want.ends_with(CRLF) {
                    want.extend_from_slice(CRLF);
                }
                for i in 0..=body.len() {
                    let (a, b) = body.split_at(i);
                    let wire = encode_chunks(&[a, b]);
                    assert_eq!(check_wire(&wire), want, "body {body:?} split {i}");
                }
            }
        }
    }
}
