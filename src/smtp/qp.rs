//! A streaming quoted-printable encoder (RFC 2045 6.7) for the 8BITMIME
//! downgrade: content bytes in any pieces, hard line breaks given
//! separately, output lines of at most 76 characters (soft breaks `=`).

/// Longest encoded line, the soft-break `=` included (RFC 2045 6.7 (5)).
const MAX_LINE: usize = 76;
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes one body; holds back at most one space or tab, which must be
/// encoded if a line break or the end follows it (rule 3).
#[derive(Clone, Debug, Default)]
pub struct QpEncoder {
    /// Characters on the current output line.
    col: usize,
    /// A space or tab not yet written.
    pending_ws: Option<u8>,
}

impl QpEncoder {
    pub fn new() -> QpEncoder {
        QpEncoder::default()
    }

    /// Encodes content octets (a line break is `line_break`, never CRLF here:
    /// any CR or LF passed is content and comes out as `=0D` / `=0A`).
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if let Some(ws) = self.pending_ws.take() {
                self.put(&[ws], out);
            }
            match b {
                b' ' | b'\t' => self.pending_ws = Some(b),
                b'!'..=b'<' | b'>'..=b'~' => self.put(&[b], out),
                _ => self.put(&hex(b), out),
            }
        }
    }

    /// A hard line break (a CRLF of the canonical content).
    pub fn line_break(&mut self, out: &mut Vec<u8>) {
        self.flush_ws(out);
        out.extend_from_slice(b"\r\n");
        self.col = 0;
    }

    /// The end of the content (no line break follows); resets the encoder.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_ws(out);
        *self = QpEncoder::new();
    }

    /// A trailing space or tab would be lost by transports: encode it.
    fn flush_ws(&mut self, out: &mut Vec<u8>) {
        if let Some(ws) = self.pending_ws.take() {
            self.put(&hex(ws), out);
        }
    }

    /// Writes one token (never split), soft-breaking first when it would
    /// leave no room for a final `=` on the line.
    fn put(&mut self, token: &[u8], out: &mut Vec<u8>) {
        if self.col + token.len() > MAX_LINE - 1 {
            out.extend_from_slice(b"=\r\n");
            self.col = 0;
        }
        out.extend_from_slice(token);
        self.col += token.len();
    }
}

/// `=XX`.
fn hex(b: u8) -> [u8; 3] {
    [b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// Decodes quoted-printable text (CRLF lines) back to octets: the test
/// oracle for the encoder and the downgrade.
#[cfg(test)]
pub fn decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    for (n, raw) in lines.iter().enumerate() {
        let last = n + 1 == lines.len();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (body, soft) = match line.strip_suffix(b"=") {
            Some(b) => (b, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'=' {
                let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
                let hi = body.get(i + 1).copied().and_then(hex);
                let lo = body.get(i + 2).copied().and_then(hex);
                if let (Some(h), Some(l)) = (hi, lo) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(body[i]);
            i += 1;
        }
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `lines` (content split at hard breaks) in one go.
    fn enc(content: &[u8]) -> Vec<u8> {
        let mut e = QpEncoder::new();
        let mut out = Vec::new();
        let mut first = true;
        for line in content.split(|&b| b == b'\n') {
            if !first {
                e.line_break(&mut out);
            }
            first = false;
            e.encode(line.strip_suffix(b"\r").unwrap_or(line), &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn encodes_eight_bit_equals_and_trailing_space() {
        assert_eq!(
            enc("caf\u{e9} = 1 \r\nx\t".as_bytes()),
            b"caf=C3=A9 =3D 1=20\r\nx=09"
        );
        assert_eq!(enc(b"a  b"), b"a  b");
        assert_eq!(enc(b""), b"");
    }

    #[test]
    fn soft_breaks_keep_lines_short_and_tokens_whole() {
        let long = [b'z'; 200];
        let out = enc(&long);
        for l in out.split(|&b| b == b'\n') {
            assert!(l.len() <= MAX_LINE + 1, "{}", l.len());
        }
        assert_eq!(decode(&out), long);
        let e8 = [0xe2u8; 100];
        let out = enc(&e8);
        assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE + 1));
        assert_eq!(decode(&out), e8);
    }

    #[test]
    fn pieces_encode_like_the_whole() {
        let text = "abc \u{20ac} = x \t".repeat(20);
        let whole = enc(text.as_bytes());
        for cut in 0..text.len() {
            let mut e = QpEncoder::new();
            let mut out = Vec::new();
            e.encode(&text.as_bytes()[..cut], &mut out);
            e.encode(&text.as_bytes()[cut..], &mut out);
            e.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }
}
