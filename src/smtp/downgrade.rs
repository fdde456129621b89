//! The 8BITMIME downgrade (RFC 6152 3; RFC 2045, 2046) as a sans-IO,
//! streaming pair: a `Scanner` reads the spooled body once and makes a
//! `Plan` (is there 8-bit at all, can it be converted, which leaf parts
//! need it, the converted size); a `Converter` replays the same MIME walk
//! with the plan and writes the 7-bit form, piece by piece.
//!
//! Two passes because a part's `Content-Transfer-Encoding` header goes out
//! before its body, and whether the body has 8-bit octets is known only at
//! its end; and because a message that cannot be converted must be
//! refused before MAIL FROM, not by cutting the connection in DATA.
//!
//! Conversion: each leaf part (and a non-MIME message) with 8-bit octets
//! and `7bit`/`8bit`/no encoding becomes quoted-printable; a leaf labelled
//! `8bit` without 8-bit octets is relabelled `7bit`; `multipart/*` and
//! `message/rfc822` are walked (RFC 2046 allows them no other encoding)
//! and an `8bit` label on them becomes `7bit`; everything else passes
//! unchanged. Preamble and epilogue (ignored by readers) have 8-bit octets
//! replaced by `?`. Memory is bounded: one header block (`HEADER_CAP`), one
//! line prefix (`LINE_CAP`), the boundary stack, and one action per leaf.

use super::qp::QpEncoder;

/// The largest header block (of the message or a part) we rewrite.
pub const HEADER_CAP: usize = 64 * 1024;
/// Line prefix kept to recognise delimiters and header lines (SMTP lines
/// are at most 1000 octets; a longer one is passed on in pieces).
const LINE_CAP: usize = 1024;
/// Nesting of multiparts and encapsulated messages.
const MAX_DEPTH: usize = 32;
/// Leaf parts per message (one plan entry each).
const MAX_LEAVES: usize = 10_000;
/// RFC 2046 allows 70; some software writes longer ones.
const MAX_BOUNDARY: usize = 200;
const CRLF: &[u8] = b"\r\n";

/// Why a message with 8-bit content cannot be made 7-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unconvertible {
    /// A header block over `HEADER_CAP`, or a header line over `LINE_CAP`.
    HeaderTooBig,
    /// `Content-Transfer-Encoding: binary` (RFC 3030).
    Binary,
    /// 8-bit octets in a part labelled base64, quoted-printable or an
    /// unknown encoding: already encoded, and broken.
    EncodedEightBit,
    /// A multipart without a usable boundary parameter.
    NoBoundary,
    /// Nested deeper than `MAX_DEPTH`, or more than `MAX_LEAVES` parts.
    TooComplex,
}

impl std::fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unconvertible::HeaderTooBig => "a header block is too large",
            Unconvertible::Binary => "a part has binary transfer encoding",
            Unconvertible::EncodedEightBit => "an encoded part has 8-bit octets",
            Unconvertible::NoBoundary => "a multipart has no usable boundary",
            Unconvertible::TooComplex => "the MIME structure is too deep or has too many parts",
        })
    }
}

/// The converter met something the scan did not: the body changed
/// between the passes, which a spooled body never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch;

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("8-bit conversion: the body differs from its scan")
    }
}

/// What the scan found; `Converter::new` replays it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// An octet over 127 anywhere. Without one the message is sent as is.
    pub eight_bit: bool,
    /// 8-bit octets in a header block (the message's or a part's): only
    /// SMTPUTF8 can carry those (RFC 6532).
    pub eight_bit_header: bool,
    /// Why the message cannot be converted (when it needs to be).
    pub unconvertible: Option<Unconvertible>,
    /// Octets of the converted message (for `SIZE=`).
    pub size: u64,
    leaves: Vec<Action>,
}

/// What becomes of one leaf part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Keep,
    /// `8bit` label, 7-bit content: say `7bit`.
    Relabel,
    /// Quoted-printable.
    Qp,
    /// Quoted-printable, and the missing Content-Type added with this
    /// charset (the default, us-ascii, would be wrong for 8-bit text).
    QpUtf8,
    QpUnknown,
}

const ACTIONS: [Action; 5] = [
    Action::Keep,
    Action::Relabel,
    Action::Qp,
    Action::QpUtf8,
    Action::QpUnknown,
];

impl Action {
    fn index(self) -> usize {
        self as usize
    }
    fn is_qp(self) -> bool {
        matches!(self, Action::Qp | Action::QpUtf8 | Action::QpUnknown)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cte {
    /// `7bit` or none.
    SevenBit,
    EightBit,
    Binary,
    /// base64, quoted-printable.
    Encoded,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Leaf,
    Multipart { boundary: Vec<u8>, digest: bool },
    BadMultipart,
    Message,
}

/// What a header block says.
#[derive(Clone, Debug)]
struct Info {
    kind: Kind,
    cte: Cte,
    typed: bool,
    mime_version: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a header block.
    Header,
    /// In a leaf part's body.
    Leaf,
    /// A multipart's preamble or epilogue.
    Filler,
    /// Scan only: the structure cannot be followed; just note 8-bit.
    Opaque,
}

struct Frame {
    boundary: Vec<u8>,
    digest: bool,
    closed: bool,
    depth: usize,
}

/// The leaf part being read.
#[derive(Default)]
struct Leaf {
    cte: Option<Cte>,
    typed: bool,
    eight_bit: bool,
    utf8: Utf8,
    /// Body octets as they are, and quoted-printable.
    raw: u64,
    qp: u64,
    /// Header octets for each `Action`.
    head: [u64; 5],
    action: Option<Action>,
}

impl Leaf {
    /// The action for this leaf; None: 8-bit octets in an encoded part.
    fn decide(&self) -> Option<Action> {
        let plain = matches!(self.cte, Some(Cte::SevenBit | Cte::EightBit));
        Some(match (self.cte, self.eight_bit) {
            (Some(Cte::EightBit), false) => Action::Relabel,
            (_, false) => Action::Keep,
            _ if !plain => return None,
            _ if self.typed => Action::Qp,
            _ if self.utf8.valid() => Action::QpUtf8,
            _ => Action::QpUnknown,
        })
    }
}

/// The MIME walk both passes share.
struct Walker {
    scan: bool,
    plan: Plan,
    next_leaf: usize,
    state: State,
    line: Vec<u8>,
    /// `line` continues a line whose start was already handled.
    continued: bool,
    header: Vec<u8>,
    /// The header block is a message's (top level or message/rfc822).
    message_level: bool,
    default_rfc822: bool,
    frames: Vec<Frame>,
    depth: usize,
    /// A line end held back: content, or the start of a delimiter.
    pending_eol: bool,
    leaf: Leaf,
    qp: QpEncoder,
    scratch: Vec<u8>,
}

/// First pass: `feed` the body in pieces, then `finish` for the plan.
pub struct Scanner(Walker);

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner(Walker::new(true, Plan::default()))
    }

    pub fn feed(&mut self, input: &[u8]) {
        // The scan never fails: problems are noted in the plan.
        let _ = self.0.feed(input, &mut Vec::new());
    }

    pub fn finish(mut self) -> Plan {
        let _ = self.0.finish(&mut Vec::new());
        self.0.plan
    }
}

/// Second pass: the same body, in any pieces, written out 7-bit.
pub struct Converter(Walker);

impl Converter {
    /// `plan` must come from scanning this body and be convertible.
    pub fn new(plan: Plan) -> Converter {
        Converter(Walker::new(false, plan))
    }

    /// Appends the converted form of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.0.feed(input, out)
    }

    /// Appends the rest.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.0.finish(out)
    }
}

impl Walker {
    fn new(scan: bool, plan: Plan) -> Walker {
        Walker {
            scan,
            plan,
            next_leaf: 0,
            state: State::Header,
            line: Vec::new(),
            continued: false,
            header: Vec::new(),
            message_level: true,
            default_rfc822: false,
            frames: Vec::new(),
            depth: 0,
            pending_eol: false,
            leaf: Leaf::default(),
            qp: QpEncoder::new(),
            scratch: Vec::new(),
        }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Mismatch> {
        if self.scan && has_8bit(input) {
            self.plan.eight_bit = true;
        }
        while !input.is_empty() {
            if self.state == State::Opaque {
                // Conservative: 8-bit we cannot place may be in a header.
                self.plan.eight_bit_header |= has_8bit(input);
                return Ok(());
            }
            let room = LINE_CAP.saturating_sub(self.line.len()).max(1);
            let window = &input[..input.len().min(room)];
            if let Some(p) = memchr::memchr(b'\n', window) {
                self.line.extend_from_slice(&window[..=p]);
                input = &input[p + 1..];
                self.end_of_line(out)?;
            } else {
                self.line.extend_from_slice(window);
                input = &input[window.len()..];
                if self.line.len() >= LINE_CAP {
                    self.overflow(out)?;
                }
            }
        }
        Ok(())
    }

    /// A whole line (with its LF) is in `line`.
    fn end_of_line(&mut self, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let line = std::mem::take(&mut self.line);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let first = !std::mem::replace(&mut self.continued, false);
        let r = self.piece(text, first, true, out);
        self.line = line;
        self.line.clear();
        r
    }

    /// `line` is full without a line end: pass it on (keeping a final CR,
    /// which may start the CRLF).
    fn overflow(&mut self, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let line = std::mem::take(&mut self.line);
        let cut = line.len() - usize::from(line.ends_with(b"\r"));
        let first = !std::mem::replace(&mut self.continued, true);
        let r = self.piece(&line[..cut], first, false, out);
        self.line = line;
        self.line.drain(..cut);
        r
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        if !self.line.is_empty() && self.state != State::Opaque {
            if self.state == State::Header {
                // A last header line without CRLF: as if it had one.
                self.line.push(b'\n');
                self.end_of_line(out)?;
            } else {
                // A last line without CRLF: content, or a close delimiter.
                let line = std::mem::take(&mut self.line);
                let first = !self.continued;
                match self.delimiter(&line) {
                    Some(d) if first => self.on_delimiter(d, &line, out)?,
                    _ => self.piece(&line, first, false, out)?,
                }
            }
        }
        while self.state == State::Header {
            self.end_header(false, out)?;
        }
        match self.state {
            State::Leaf => {
                if std::mem::take(&mut self.pending_eol) {
                    self.content_eol(out)?;
                }
                self.end_leaf(out)
            }
            State::Filler if self.pending_eol => {
                self.emit(CRLF, out);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One line, or a piece of one (`ended` false: more of it follows).
    fn piece(&mut self, text: &[u8], first: bool, ended: bool, out: &mut Vec<u8>) -> Res {
        match self.state {
            State::Header => self.header_line(text, ended, out),
            State::Leaf | State::Filler => self.body_piece(text, first, ended, out),
            State::Opaque => Ok(()),
        }
    }

    fn header_line(&mut self, text: &[u8], ended: bool, out: &mut Vec<u8>) -> Res {
        if !ended || self.header.len() + text.len() + 2 > HEADER_CAP {
            return self.problem(Unconvertible::HeaderTooBig);
        }
        if text.is_empty() {
            return self.end_header(true, out);
        }
        if let Some(d) = self.delimiter(text) {
            // A part that ends inside its header: pass the header on.
            self.note_header();
            let header = std::mem::take(&mut self.header);
            self.emit(&header, out);
            self.header = header;
            self.header.clear();
            return self.on_delimiter(d, text, out);
        }
        let continuation = matches!(text.first(), Some(b' ' | b'\t'));
        if continuation || is_field(text) {
            self.header.extend_from_slice(text);
            self.header.extend_from_slice(CRLF);
            return Ok(());
        }
        // Not a header line: the header block ended without its empty
        // line and this line is the body's first.
        self.end_header(false, out)?;
        self.piece(text, true, true, out)
    }

    fn note_header(&mut self) {
        if self.scan && has_8bit(&self.header) {
            self.plan.eight_bit_header = true;
        }
    }

    /// The header block is complete (`blank`: with its empty line).
    fn end_header(&mut self, blank: bool, out: &mut Vec<u8>) -> Res {
        self.note_header();
        let info = parse_header(&self.header, self.default_rfc822);
        let container = matches!(info.kind, Kind::Multipart { .. } | Kind::Message);
        if info.cte == Cte::Binary {
            return self.problem(Unconvertible::Binary);
        }
        if container && self.depth >= MAX_DEPTH {
            return self.problem(Unconvertible::TooComplex);
        }
        if !container {
            return match info.kind {
                Kind::BadMultipart => self.problem(Unconvertible::NoBoundary),
                _ => self.start_leaf(&info, blank, out),
            };
        }
        let relabel = (info.cte == Cte::EightBit).then_some("7bit");
        let edit = Edit {
            cte: relabel,
            ..Edit::default()
        };
        self.emit_header(blank, &edit, out);
        self.pending_eol = false;
        if let Kind::Multipart { boundary, digest } = info.kind {
            self.frames.push(Frame {
                boundary,
                digest,
                closed: false,
                depth: self.depth,
            });
            self.depth += 1;
            self.state = State::Filler;
        } else {
            // message/rfc822: the encapsulated message's header follows.
            self.depth += 1;
            self.message_level = true;
            self.default_rfc822 = false;
        }
        Ok(())
    }

    fn start_leaf(&mut self, info: &Info, blank: bool, out: &mut Vec<u8>) -> Res {
        self.leaf = Leaf {
            cte: Some(info.cte),
            typed: info.typed,
            ..Leaf::default()
        };
        if self.scan {
            for a in ACTIONS {
                let edit = self.edit_for(a, info);
                let mut tmp = std::mem::take(&mut self.scratch);
                write_header(&self.header, blank, &edit, &mut tmp);
                self.leaf.head[a.index()] = tmp.len() as u64;
                tmp.clear();
                self.scratch = tmp;
            }
        } else {
            let Some(&a) = self.plan.leaves.get(self.next_leaf) else {
                return Err(Mismatch);
            };
            self.next_leaf += 1;
            self.leaf.action = Some(a);
            let edit = self.edit_for(a, info);
            write_header(&self.header, blank, &edit, out);
        }
        self.header.clear();
        self.pending_eol = false;
        self.state = State::Leaf;
        Ok(())
    }

    fn edit_for(&self, a: Action, info: &Info) -> Edit {
        let mut e = Edit::default();
        match a {
            Action::Keep => {}
            Action::Relabel => e.cte = Some("7bit"),
            Action::Qp | Action::QpUtf8 | Action::QpUnknown => {
                e.cte = Some("quoted-printable");
                e.mime_version = self.message_level && !info.mime_version;
            }
        }
        e.content_type = match a {
            Action::QpUtf8 => Some("text/plain; charset=utf-8"),
            Action::QpUnknown => Some("text/plain; charset=unknown-8bit"),
            _ => None,
        };
        e
    }

    /// Decides (scan) or closes (convert) the leaf part's encoding.
    fn end_leaf(&mut self, out: &mut Vec<u8>) -> Res {
        self.state = State::Filler;
        if !self.scan {
            if self.leaf.action.is_some_and(Action::is_qp) {
                self.qp.finish(out);
            }
            return Ok(());
        }
        let mut tmp = std::mem::take(&mut self.scratch);
        self.qp.finish(&mut tmp);
        self.leaf.qp += tmp.len() as u64;
        tmp.clear();
        self.scratch = tmp;
        let Some(action) = self.leaf.decide() else {
            return self.problem(Unconvertible::EncodedEightBit);
        };
        if self.plan.leaves.len() >= MAX_LEAVES {
            return self.problem(Unconvertible::TooComplex);
        }
        let leaf = &self.leaf;
        let body = if action.is_qp() { leaf.qp } else { leaf.raw };
        self.plan.size += leaf.head[action.index()] + body;
        self.plan.leaves.push(action);
        Ok(())
    }

    fn body_piece(&mut self, text: &[u8], first: bool, ended: bool, out: &mut Vec<u8>) -> Res {
        if first
            && ended
            && let Some(d) = self.delimiter(text)
        {
            return self.on_delimiter(d, text, out);
        }
        if first && std::mem::take(&mut self.pending_eol) {
            self.content_eol(out)?;
        }
        self.content(text, out)?;
        self.pending_eol = ended;
        Ok(())
    }

    /// Which open multipart `text` delimits (innermost first), and whether
    /// it is the close delimiter (RFC 2046 5.1.1; padding allowed).
    fn delimiter(&self, text: &[u8]) -> Option<(usize, bool)> {
        let rest = text.strip_prefix(b"--")?;
        self.frames.iter().enumerate().rev().find_map(|(i, f)| {
            let after = rest.strip_prefix(f.boundary.as_slice())?;
            let (close, pad) = match after.strip_prefix(b"--") {
                Some(p) => (true, p),
                None => (false, after),
            };
            let blank = pad.iter().all(|&b| b == b' ' || b == b'\t');
            (!f.closed && blank).then_some((i, close))
        })
    }

    fn on_delimiter(&mut self, (i, close): (usize, bool), text: &[u8], out: &mut Vec<u8>) -> Res {
        if self.state == State::Leaf {
            self.end_leaf(out)?;
            if self.state == State::Opaque {
                return Ok(());
            }
        }
        // A delimiter of an outer multipart ends the inner ones too.
        self.frames.truncate(i + 1);
        if std::mem::take(&mut self.pending_eol) {
            self.emit(CRLF, out);
        }
        self.emit(text, out);
        self.emit(CRLF, out);
        let Some(f) = self.frames.get_mut(i) else {
            return Err(Mismatch);
        };
        if close {
            f.closed = true;
            self.depth = f.depth;
            self.state = State::Filler;
        } else {
            self.depth = f.depth + 1;
            self.default_rfc822 = f.digest;
            self.message_level = false;
            self.header.clear();
            self.state = State::Header;
        }
        Ok(())
    }

    /// Content octets of the current leaf or filler.
    fn content(&mut self, text: &[u8], out: &mut Vec<u8>) -> Res {
        if self.state == State::Filler {
            // Preamble and epilogue have no encoding to declare.
            if self.scan {
                self.plan.size += text.len() as u64;
            } else {
                out.extend(text.iter().map(|&b| if b < 128 { b } else { b'?' }));
            }
            return Ok(());
        }
        if self.scan {
            let leaf = &mut self.leaf;
            leaf.eight_bit |= has_8bit(text);
            leaf.utf8.feed(text);
            leaf.raw += text.len() as u64;
            self.qp.encode(text, &mut self.scratch);
            leaf.qp += self.scratch.len() as u64;
            self.scratch.clear();
            return Ok(());
        }
        match self.leaf.action {
            Some(a) if a.is_qp() => self.qp.encode(text, out),
            _ if has_8bit(text) => return Err(Mismatch),
            _ => out.extend_from_slice(text),
        }
        Ok(())
    }

    /// A line end inside the current leaf or filler.
    fn content_eol(&mut self, out: &mut Vec<u8>) -> Res {
        if self.state == State::Leaf {
            if self.scan {
                self.leaf.raw += 2;
                self.leaf.utf8.feed(CRLF);
                self.qp.line_break(&mut self.scratch);
                self.leaf.qp += self.scratch.len() as u64;
                self.scratch.clear();
                return Ok(());
            }
            if self.leaf.action.is_some_and(Action::is_qp) {
                self.qp.line_break(out);
                return Ok(());
            }
        }
        self.emit(CRLF, out);
        Ok(())
    }

    /// The header block as it goes out (scan: its size).
    fn emit_header(&mut self, blank: bool, edit: &Edit, out: &mut Vec<u8>) {
        let header = std::mem::take(&mut self.header);
        if self.scan {
            let mut tmp = std::mem::take(&mut self.scratch);
            write_header(&header, blank, edit, &mut tmp);
            self.plan.size += tmp.len() as u64;
            tmp.clear();
            self.scratch = tmp;
        } else {
            write_header(&header, blank, edit, out);
        }
        self.header = header;
        self.header.clear();
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.scan {
            self.plan.size += bytes.len() as u64;
        } else {
            out.extend_from_slice(bytes);
        }
    }

    /// The scan gives up on the structure; the converter never should.
    fn problem(&mut self, why: Unconvertible) -> Res {
        if !self.scan {
            return Err(Mismatch);
        }
        self.plan.unconvertible.get_or_insert(why);
        self.state = State::Opaque;
        self.plan.eight_bit_header |= has_8bit(&self.header) || has_8bit(&self.line);
        Ok(())
    }
}

type Res = Result<(), Mismatch>;

fn has_8bit(b: &[u8]) -> bool {
    !b.is_ascii()
}

/// `name:` with a printable, colon-free name (RFC 5322 2.2).
fn is_field(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(n) => n > 0 && line[..n].iter().all(|&b| (33..=126).contains(&b)),
        None => false,
    }
}

/// Changes to a header block on its way out.
#[derive(Default)]
struct Edit {
    /// Replace (or add) Content-Transfer-Encoding with this value.
    cte: Option<&'static str>,
    mime_version: bool,
    content_type: Option<&'static str>,
}

/// `block` (CRLF lines) with `edit` applied; the empty line if `blank`.
fn write_header(block: &[u8], blank: bool, edit: &Edit, out: &mut Vec<u8>) {
    let mut seen_cte = false;
    let mut skipping = false;
    for line in block.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = edit.cte.is_some() && field_name_is(line, b"content-transfer-encoding");
            if let (true, Some(v), false) = (skipping, edit.cte, seen_cte) {
                push_field(out, "Content-Transfer-Encoding", v);
                seen_cte = true;
            }
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    if let (Some(v), false) = (edit.cte, seen_cte) {
        push_field(out, "Content-Transfer-Encoding", v);
    }
    if edit.mime_version {
        push_field(out, "MIME-Version", "1.0");
    }
    if let Some(v) = edit.content_type {
        push_field(out, "Content-Type", v);
    }
    if blank {
        out.extend_from_slice(CRLF);
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    for part in [name.as_bytes(), b": ", value.as_bytes(), CRLF] {
        out.extend_from_slice(part);
    }
}

fn field_name_is(line: &[u8], name: &[u8]) -> bool {
    line.iter()
        .position(|&b| b == b':')
        .is_some_and(|n| line[..n].trim_ascii_end().eq_ignore_ascii_case(name))
}

/// The unfolded value of the first `name` field of a header block.
fn field_value(block: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut lines = block.split(|&b| b == b'\n').map(|l| l.trim_ascii_end());
    let first = lines.find(|l| field_name_is(l, name))?;
    let colon = first.iter().position(|&b| b == b':')?;
    let mut v = first[colon + 1..].to_vec();
    for l in lines.take_while(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
        v.push(b' ');
        v.extend_from_slice(l.trim_ascii());
    }
    Some(v)
}

fn parse_header(block: &[u8], default_rfc822: bool) -> Info {
    let cte = match field_value(block, b"content-transfer-encoding") {
        None => Cte::SevenBit,
        Some(v) => match token(&v).to_ascii_lowercase().as_slice() {
            b"7bit" | b"" => Cte::SevenBit,
            b"8bit" => Cte::EightBit,
            b"binary" => Cte::Binary,
            b"base64" | b"quoted-printable" => Cte::Encoded,
            _ => Cte::Other,
        },
    };
    let ct = field_value(block, b"content-type");
    let kind = match &ct {
        None if default_rfc822 => Kind::Message,
        None => Kind::Leaf,
        Some(v) => kind_of(v),
    };
    // RFC 2046 5.1, 5.2.1: an encoded container cannot be walked.
    let kind = match (kind, cte) {
        (Kind::Multipart { .. } | Kind::Message, Cte::Encoded | Cte::Other) => Kind::Leaf,
        (k, _) => k,
    };
    Info {
        kind,
        cte,
        typed: ct.is_some(),
        mime_version: field_value(block, b"mime-version").is_some(),
    }
}

/// The first token of a field value (up to space, `;` or a comment).
fn token(v: &[u8]) -> Vec<u8> {
    let v = v.trim_ascii_start();
    let end = v
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b';' | b'('))
        .unwrap_or(v.len());
    v[..end].to_vec()
}

fn kind_of(ct: &[u8]) -> Kind {
    let ty = token(ct).to_ascii_lowercase();
    if ty.starts_with(b"multipart/") {
        return match param(ct, b"boundary") {
            Some(b) if !b.is_empty() && b.len() <= MAX_BOUNDARY => Kind::Multipart {
                boundary: b,
                digest: ty == b"multipart/digest",
            },
            _ => Kind::BadMultipart,
        };
    }
    if ty == b"message/rfc822" {
        Kind::Message
    } else {
        Kind::Leaf
    }
}

/// A Content-Type parameter's value (token or quoted string, RFC 2045 5.1).
fn param(ct: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut rest = ct;
    loop {
        let semi = next_semicolon(rest)?;
        rest = &rest[semi + 1..];
        let eq = rest.iter().position(|&b| b == b'=')?;
        let value = rest[eq + 1..].trim_ascii_start();
        if rest[..eq].trim_ascii().eq_ignore_ascii_case(name) {
            return Some(match value.strip_prefix(b"\"") {
                Some(q) => unquote(q),
                None => token(value),
            });
        }
        rest = &rest[eq + 1..];
    }
}

/// The next `;` outside a quoted string.
fn next_semicolon(s: &[u8]) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// A quoted string's content after its opening quote.
fn unquote(q: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut escaped = false;
    for &b in q {
        match b {
            _ if escaped => {
                v.push(b);
                escaped = false;
            }
            b'\\' => escaped = true,
            b'"' => break,
            _ => v.push(b),
        }
    }
    v
}

/// Incremental UTF-8 well-formedness (structure only: enough to choose
/// a charset label).
#[derive(Default)]
struct Utf8 {
    need: u8,
    bad: bool,
}

impl Utf8 {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.need > 0 {
                if b & 0xC0 == 0x80 {
                    self.need -= 1;
                    continue;
                }
                self.bad = true;
                self.need = 0;
            }
            self.need = match b {
                0x00..=0x7F => 0,
                0xC2..=0xDF => 1,
                0xE0..=0xEF => 2,
                0xF0..=0xF4 => 3,
                _ => {
                    self.bad = true;
                    0
                }
            };
        }
    }

    fn valid(&self) -> bool {
        !self.bad && self.need == 0
    }
}

#[cfg(test)]
mod tests;
