//! The DATA reader: message text in, unstuffed body chunks out, ending only
//! at `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4, 4.5.2). A bare CR or LF is never a
//! line end: it is content, noted, and the message is refused at the real
//! end, so the session stays in sync and nothing can be smuggled past it.

use super::server::{BODY_CHUNK, DataRefusal, MAX_TEXT_LINE};

/// The header field whose occurrences count the hops (RFC 5321 6.3).
const RECEIVED: &[u8] = b"received:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or right after the 354).
    Start,
    /// A `.` at the start of a line: stuffing, or the terminator.
    Dot,
    /// `.` CR at the start of a line: the terminator if LF follows.
    DotCr,
    /// Inside a line.
    Mid,
    /// After a CR inside a line: a line end if LF follows.
    Cr,
}

/// What `feed` stopped at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// All input consumed; the message goes on.
    NeedMore,
    /// A full chunk of `BODY_CHUNK` body bytes.
    Chunk(Vec<u8>),
    /// `<CRLF>.<CRLF>` seen: the last (possibly empty) chunk, or the reason
    /// the message is refused.
    End(Result<Vec<u8>, DataRefusal>),
}

pub(crate) struct DataReader {
    state: State,
    chunk: Vec<u8>,
    /// Unstuffed body octets so far, CRLFs included.
    size: u64,
    /// Octets of the current line, CRLF included, the stuffing dot not
    /// (RFC 5321 4.5.3.1.6).
    line_len: usize,
    in_header: bool,
    /// How much of `Received:` the current header line has matched; None
    /// once it cannot match.
    field_match: Option<usize>,
    hops: usize,
    max_size: u64,
    max_hops: usize,
    bare_newline: bool,
    line_too_long: bool,
    too_big: bool,
}

impl DataReader {
    /// `max_size` 0 means no limit.
    pub(crate) fn new(max_size: u64, max_hops: usize) -> DataReader {
        DataReader {
            state: State::Start,
            chunk: Vec::new(),
            size: 0,
            line_len: 0,
            in_header: true,
            field_match: Some(0),
            hops: 0,
            max_size,
            max_hops,
            bare_newline: false,
            line_too_long: false,
            too_big: false,
        }
    }

    /// The refusal, in priority order: the smuggling signal first, then
    /// the framing limit, then size, then the loop check.
    fn refusal(&self) -> Option<DataRefusal> {
        if self.bare_newline {
            Some(DataRefusal::BareNewline)
        } else if self.line_too_long {
            Some(DataRefusal::LineTooLong)
        } else if self.too_big {
            Some(DataRefusal::TooBig)
        } else if self.hops > self.max_hops {
            Some(DataRefusal::TooManyHops)
        } else {
            None
        }
    }

    /// Consumes message text from `input`; returns how much and why it
    /// stopped. Stops after each full chunk so the body never piles up.
    pub(crate) fn feed(&mut self, input: &[u8]) -> (usize, Step) {
        let mut i = 0;
        while i < input.len() {
            if !self.in_header && self.fast_path_at(input[i]) {
                let n = self.fast_run(input.get(i..).unwrap_or_default());
                if n > 0 {
                    i += n;
                    if self.chunk.len() >= BODY_CHUNK {
                        return (i, Step::Chunk(self.take_chunk()));
                    }
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.byte(b) {
                let end = match self.refusal() {
                    Some(r) => Err(r),
                    None => Ok(self.take_chunk()),
                };
                return (i, Step::End(end));
            }
            if self.chunk.len() >= BODY_CHUNK {
                return (i, Step::Chunk(self.take_chunk()));
            }
        }
        (i, Step::NeedMore)
    }

    /// The fast path through the body: from a point where `fast_path_at`
    /// holds, takes whole CRLF lines for as long as each next line also
    /// qualifies, then the start of a line without its end, up to the
    /// chunk's room; one copy for the whole run. Returns the bytes taken;
    /// what stops it (a dot or a line break at a line start, a bare CR or
    /// LF, a CR at the end of the input) is left to the byte path.
    fn fast_run(&mut self, input: &[u8]) -> usize {
        let room = BODY_CHUNK.saturating_sub(self.chunk.len()).max(1);
        let window = input.get(..room).unwrap_or(input);
        let mut pos = 0;
        let mut line_len = self.line_len;
        let mut at_start = self.state == State::Start;
        while let Some(rest) = window.get(pos..).filter(|r| !r.is_empty()) {
            let Some(k) = find_line_end(rest) else {
                // The line goes on past the window.
                line_len += rest.len();
                pos = window.len();
                at_start = false;
                break;
            };
            if rest.get(k..k + 2) != Some(b"\r\n") {
                // A bare line break, or a CR whose LF is not here yet.
                line_len += k;
                pos += k;
                at_start &= k == 0; // still at a line start if nothing was taken
                break;
            }
            line_len += k + 2;
            pos += k + 2;
            self.line_too_long |= line_len > MAX_TEXT_LINE;
            line_len = 0;
            at_start = true;
            if matches!(window.get(pos), Some(b'.' | b'\r' | b'\n')) {
                break;
            }
        }
        let taken = window.get(..pos).unwrap_or_default();
        self.line_len = line_len;
        self.line_too_long |= line_len > MAX_TEXT_LINE;
        if at_start {
            self.state = State::Start;
            self.field_match = Some(0);
        } else if pos > 0 {
            self.state = State::Mid;
        }
        self.size = self.size.saturating_add(pos as u64);
        self.keep(taken);
        pos
    }

    /// Whether `next` may go through the fast path: inside a line, or at
    /// the start of one that opens with neither a dot nor a line break.
    fn fast_path_at(&self, next: u8) -> bool {
        match self.state {
            State::Mid => true,
            State::Start => !matches!(next, b'.' | b'\r' | b'\n'),
            _ => false,
        }
    }

    fn take_chunk(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.chunk)
    }

    /// One byte of text; true at the end of data.
    fn byte(&mut self, b: u8) -> bool {
        match self.state {
            State::Start if b == b'.' => self.state = State::Dot,
            // The stuffing dot is dropped: `..x` is `.x`, `.x` is `x`.
            State::Start | State::Dot | State::Mid => self.mid(b),
            State::DotCr if b == b'\n' => return true,
            State::DotCr => {
                // `.` CR then not LF: that CR is bare.
                self.bare_newline = true;
                self.push(b'\r');
                self.state = State::Cr;
                self.cr(b);
            }
            State::Cr => self.cr(b),
        }
        false
    }

    fn mid(&mut self, b: u8) {
        if self.state == State::Dot && b == b'\r' {
            self.state = State::DotCr;
            return;
        }
        self.state = State::Mid;
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => self.bare_newline = true,
            _ => {}
        }
        self.push(b);
    }

    fn cr(&mut self, b: u8) {
        if b == b'\n' {
            self.push(b);
            self.end_line();
        } else {
            // The CR before `b` was bare; `b` itself is ordinary content.
            self.bare_newline = true;
            self.state = State::Mid;
            self.mid(b);
        }
    }

    fn end_line(&mut self) {
        if self.line_len == 2 {
            // The empty line ends the header section (RFC 5322 2.1).
            self.in_header = false;
        }
        self.line_len = 0;
        self.field_match = Some(0);
        self.state = State::Start;
    }

    fn push(&mut self, b: u8) {
        if self.in_header {
            self.field_match = match self.field_match {
                Some(k) if k == RECEIVED.len() => Some(k),
                Some(k) if RECEIVED.get(k) == Some(&b.to_ascii_lowercase()) => {
                    if k + 1 == RECEIVED.len() {
                        self.hops = self.hops.saturating_add(1);
                    }
                    Some(k + 1)
                }
                _ => None,
            };
        }
        self.line_len = self.line_len.saturating_add(1);
        self.size = self.size.saturating_add(1);
        self.line_too_long |= self.line_len > MAX_TEXT_LINE;
        self.keep(&[b]);
    }

    /// Adds body bytes already counted in `size` and `line_len` to the
    /// chunk, unless the message is refused by now.
    fn keep(&mut self, bytes: &[u8]) {
        if self.max_size > 0 && self.size > self.max_size {
            self.too_big = true;
        }
        if self.refusal().is_some() {
            // Refused: nothing more is handed out, nothing is kept.
            self.chunk = Vec::new();
        } else {
            if self.chunk.capacity() == 0 {
                self.chunk.reserve(BODY_CHUNK);
            }
            self.chunk.extend_from_slice(bytes);
        }
    }
}

/// Index of the first CR or LF in `s`: memchr's SIMD search on x86_64 and
/// aarch64, its word-at-a-time one on MIPS and ARMv7 (a third of the
/// instructions per body byte of our own word-at-a-time loop on x86_64).
fn find_line_end(s: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\r', b'\n', s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `step` bytes; returns the body and the end.
    fn read(text: &[u8], step: usize, max_size: u64, max_hops: usize) -> (Vec<u8>, Step, usize) {
        let mut r = DataReader::new(max_size, max_hops);
        let mut body = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let end = (pos + step).min(text.len());
            let (n, s) = r.feed(&text[pos..end]);
            pos += n;
            match s {
                Step::NeedMore => {}
                Step::Chunk(c) => {
                    assert!(c.len() <= BODY_CHUNK, "chunk of {}", c.len());
                    body.extend(c)
                }
                Step::End(Ok(c)) => {
                    body.extend(c);
                    return (body, Step::End(Ok(Vec::new())), pos);
                }
                end @ Step::End(Err(_)) => return (body, end, pos),
            }
        }
        (body, Step::NeedMore, pos)
    }

    fn ok() -> Step {
        Step::End(Ok(Vec::new()))
    }

    #[test]
    fn unstuffs_and_ends_only_at_crlf_dot_crlf() {
        // Protects transparency (RFC 5321 4.5.2): `..` at a line start is
        // one dot, the final CRLF belongs to the body, `.CRLF` does not.
        let text = b"a\r\n..b\r\n.c\r\n\r\n.\r\nNEXT";
        for step in [1, 2, 3, text.len()] {
            let (body, end, used) = read(text, step, 0, 10);
            assert_eq!(body, b"a\r\n.b\r\nc\r\n\r\n");
            assert_eq!(end, ok());
            assert_eq!(used, text.len() - 4, "stops right after the terminator");
        }
    }

    #[test]
    fn empty_message_ends_at_first_dot_line() {
        // The first line after 354 counts as a line start.
        let (body, end, used) = read(b".\r\n", 1, 0, 10);
        assert!(body.is_empty());
        assert_eq!(end, ok());
        assert_eq!(used, 3);
    }

    #[test]
    fn bare_cr_or_lf_never_ends_data_and_refuses() {
        // The smuggling defence: none of these is an end of data.
        for bad in [
            &b"x\n.\ny"[..],
            b"x\r.\ry",
            b"x\r\n.\ny",
            b"x\n.\r\ny",
            b"x\r.\r\ny",
            b"x\ry",
            b"x\ny",
            b"\n",
            b"\r",
            b".\n",
            b".\rx",
            b".\r.\r",
        ] {
            let mut text = bad.to_vec();
            text.extend_from_slice(b"\r\nMAIL FROM:<x@y>\r\n.\r\n");
            for step in [1, text.len()] {
                let (_, end, used) = read(&text, step, 0, 10);
                assert_eq!(
                    end,
                    Step::End(Err(DataRefusal::BareNewline)),
                    "{:?}",
                    String::from_utf8_lossy(bad)
                );
                assert_eq!(used, text.len(), "{:?}", String::from_utf8_lossy(bad));
            }
        }
    }

    #[test]
    fn refused_message_hands_out_no_more_body() {
        // Once refused nothing more is spooled.
        let mut text = b"a\nb\r\n".to_vec();
        text.extend(vec![b'x'; BODY_CHUNK * 2]);
        text.extend_from_slice(b"\r\n.\r\n");
        let (body, end, _) = read(&text, 4096, 0, 10);
        assert!(body.is_empty());
        assert_eq!(end, Step::End(Err(DataRefusal::BareNewline)));
    }

    #[test]
    fn text_line_limit_is_1000_with_crlf_without_stuffing_dot() {
        let mut ok_line = vec![b'.'];
        ok_line.extend(vec![b'a'; 998]); // 998 + CRLF after unstuffing
        ok_line.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(read(&ok_line, 7, 0, 10).1, ok());
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\nb\r\n.\r\n");
        for step in [1, long.len()] {
            let (_, end, used) = read(&long, step, 0, 10);
            assert_eq!(end, Step::End(Err(DataRefusal::LineTooLong)));
            assert_eq!(used, long.len());
        }
    }

    #[test]
    fn size_limit_counts_unstuffed_bytes() {
        // Exactly at the limit passes, one more octet is refused.
        assert_eq!(read(b"abc\r\n.\r\n", 1, 5, 10).1, ok());
        assert_eq!(read(b"..bc\r\n.\r\n", 1, 5, 10).1, ok());
        assert_eq!(
            read(b"abcd\r\n.\r\n", 1, 5, 10).1,
            Step::End(Err(DataRefusal::TooBig))
        );
    }

    #[test]
    fn counts_received_only_in_header_section() {
        let two = b"Received: a\r\nRECEIVED:b\r\nX-Received: c\r\n\r\nReceived: d\r\n.\r\n";
        for step in [1, two.len()] {
            assert_eq!(read(two, step, 0, 2).1, ok());
            assert_eq!(
                read(two, step, 0, 1).1,
                Step::End(Err(DataRefusal::TooManyHops))
            );
        }
    }

    #[test]
    fn refusal_priority_is_bare_then_long_then_big_then_hops() {
        let mut text = b"Received: a\r\nReceived: b\r\n\r\n".to_vec();
        text.extend(vec![b'y'; 1200]);
        text.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            read(&text, 9, 100, 1).1,
            Step::End(Err(DataRefusal::LineTooLong))
        );
        text.insert(0, b'\n');
        assert_eq!(
            read(&text, 9, 100, 1).1,
            Step::End(Err(DataRefusal::BareNewline))
        );
        assert_eq!(
            read(b"Received: a\r\nReceived: b\r\n\r\nzzzz\r\n.\r\n", 9, 10, 1).1,
            Step::End(Err(DataRefusal::TooBig))
        );
    }

    #[test]
    fn chunks_are_bounded_and_lossless() {
        // In the header section (byte by byte) and in the body (fast path).
        for first in ["", "\r\n"] {
            chunks_are_bounded_and_lossless_from(first);
        }
    }

    fn chunks_are_bounded_and_lossless_from(first: &str) {
        let mut text = first.as_bytes().to_vec();
        for i in 0..(3 * BODY_CHUNK / 50) {
            text.extend_from_slice(format!("line {i:043}\r\n").as_bytes());
        }
        let expected = text.clone();
        text.extend_from_slice(b".\r\n");
        let mut r = DataReader::new(0, 10);
        let (mut pos, mut body, mut chunks) = (0, Vec::new(), 0);
        loop {
            let (n, s) = r.feed(&text[pos..]);
            pos += n;
            match s {
                Step::Chunk(c) => {
                    assert_eq!(c.len(), BODY_CHUNK);
                    chunks += 1;
                    body.extend(c);
                }
                Step::End(Ok(c)) => {
                    assert!(c.len() <= BODY_CHUNK);
                    body.extend(c);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(chunks >= 2);
        assert_eq!(body, expected);
    }

    /// The reader byte by byte, without the fast path: the reference the
    /// fast path must agree with.
    fn read_slow(text: &[u8], max_size: u64, max_hops: usize) -> (Vec<u8>, Step, usize) {
        let mut r = DataReader::new(max_size, max_hops);
        let mut body = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if r.byte(b) {
                return match r.refusal() {
                    Some(e) => (Vec::new(), Step::End(Err(e)), i + 1),
                    None => {
                        body.extend(r.take_chunk());
                        (body, ok(), i + 1)
                    }
                };
            }
            if r.chunk.len() >= BODY_CHUNK {
                body.extend(r.take_chunk());
            }
        }
        (body, Step::NeedMore, text.len())
    }

    #[test]
    fn fast_path_agrees_with_the_byte_by_byte_reader() {
        // Random texts built from the pieces that matter (dots, bare and
        // paired CR/LF, long runs, Received fields), fed in random splits.
        let pieces: [&[u8]; 12] = [
            b"\r\n",
            b".",
            b"..",
            b"\r",
            b"\n",
            b"abc",
            b"Received: x",
            b"\r\n\r\n",
            b"\r\n.\r\n",
            b"0123456789012345678901234567890123456789",
            b"\r\n.",
            b"x\r\n",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut text = Vec::new();
            let len = next() % 60;
            for _ in 0..len {
                text.extend_from_slice(pieces[(next() % 12) as usize]);
                if next() % 50 == 0 {
                    text.extend(vec![b'y'; (next() % 1500) as usize]);
                }
                if next() % 400 == 0 {
                    // Past a chunk boundary, in lines of odd lengths.
                    for k in 0..(BODY_CHUNK / 40) {
                        text.extend(vec![b'z'; k % 77]);
                        text.extend_from_slice(b"\r\n");
                    }
                }
            }
            text.extend_from_slice(b"\r\n.\r\n");
            let max_size = if next() % 4 == 0 { next() % 300 } else { 0 };
            let want = read_slow(&text, max_size, 2);
            let step = 1 + (next() % 64) as usize;
            let got = read(&text, step, max_size, 2);
            let got_all = read(&text, text.len(), max_size, 2);
            let shown = String::from_utf8_lossy(&text).into_owned();
            assert_eq!(got.1, want.1, "{shown:?} step {step}");
            assert_eq!(got.2, want.2, "{shown:?} step {step}");
            if want.1 == ok() {
                assert_eq!(got.0, want.0, "{shown:?} step {step}");
                assert_eq!(got_all.0, want.0, "{shown:?}");
            }
            assert_eq!(got_all.1, want.1, "{shown:?}");
        }
    }

    #[test]
    fn line_end_search_finds_the_first_cr_or_lf() {
        for len in 0..40 {
            for at in 0..=len {
                for end in [b'\r', b'\n'] {
                    let mut s = vec![b'a'; len];
                    if at < len {
                        s[at] = end;
                        // Bytes one off the targets must not count.
                        if at > 0 {
                            s[at - 1] = end + 1;
                        }
                    }
                    let want = (at < len).then_some(at);
                    assert_eq!(find_line_end(&s), want, "len {len} at {at}");
                }
            }
        }
        assert_eq!(
            find_line_end(&[0x8d, 0x0c, 0x0e, 0x8a, 0, 0xff, 0x0b, 0x09, b'\n']),
            Some(8)
        );
    }
}
