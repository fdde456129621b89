//! The SMTP client as a sans-IO state machine, used for delivery (and, in
//! probe mode, for call-ahead). Reply bytes in, command bytes and events
//! out; the deliver driver owns the socket, the timers and the spool.
//!
//! Call order for the driver:
//! 1. `Client::new(ehlo_name)`; read the greeting: `receive(bytes)`.
//! 2. Loop: write out `take_output()`; handle `poll_event()`; when the
//!    client `wants_input()`, read and `receive(bytes)`.
//! 3. After `Event::Ready`, start a transaction with `send_mail`; stream the
//!    body with `body()`/`end_body()` after `Event::SendBody`; after the
//!    transaction's outcome, start another or `quit()`.
//!
//! The client never emits a bare CR or LF: body bytes are dot-stuffed and
//! any lone CR or LF is written as CRLF.

use std::collections::VecDeque;

use super::reply::{Enhanced, Reply};
use super::stuff::DotStuffer;

/// Longest reply line we accept from a server (RFC 5321 says 512; real
/// servers are sloppy, a little slack costs nothing).
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 64;

/// What the server's EHLO reply offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub esmtp: bool,
    pub pipelining: bool,
    /// SIZE limit (0: advertised without a limit); None: not advertised.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
}

/// One transaction to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path without brackets; empty for `<>`.
    pub from: String,
    /// Forward paths without brackets.
    pub to: Vec<String>,
    /// Message size for `SIZE=` (sent when the server offers SIZE).
    pub size: u64,
    /// Add `BODY=8BITMIME` (only when offered; else the driver decides).
    pub eightbit: bool,
    /// Add `SMTPUTF8` (only when offered).
    pub smtputf8: bool,
}

/// Events from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Greeting and EHLO (or HELO fallback) done. `greeting` is the 220
    /// reply (the guard reads its first word), `ehlo` the EHLO reply.
    Ready {
        greeting: Reply,
        ehlo: Reply,
        extensions: Extensions,
    },
    /// The server offered STARTTLS and the driver asked for it with
    /// `starttls()`: its 220 arrived and any bytes behind it were dropped.
    /// Do the handshake, then call `tls_established()`; a new `Ready`
    /// follows after the second EHLO.
    StartTls,
    /// MAIL FROM was answered.
    MailReply(Reply),
    /// RCPT number `index` (into `Envelope::to`) was answered.
    RcptReply { index: usize, reply: Reply },
    /// The server answered DATA with 354: stream the body now.
    SendBody,
    /// The transaction ended before the body could be sent: MAIL refused,
    /// every RCPT refused, or DATA refused (`reply`). The client has sent
    /// RSET (or will) and is ready for another `send_mail`.
    TransactionFailed { reply: Reply },
    /// The reply to the end of data: the outcome for every recipient that
    /// got 2xx to RCPT.
    DataReply(Reply),
    /// The server refused the connection (non-220 greeting, EHLO and HELO
    /// refused), closed it, or sent something that is not SMTP. No more
    /// commands; close the socket.
    Failed { reply: Option<Reply>, reason: String },
    /// A probe (`send_probe`) has all its RCPT replies; RSET was sent.
    ProbeDone,
    /// QUIT was answered (or the driver may just close now).
    Closed,
}

/// How much of an offending line a `Failed` reason quotes.
const EXCERPT: usize = 64;
const CRLF: &[u8] = b"\r\n";

/// What the next reply answers; replies come back in command order
/// (RFC 2920), so a queue of these matches them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    /// The lone `.` we send when DATA got 354 with nothing to deliver.
    DataAbort,
    EndOfData,
    Rset,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Greeting, EHLO or HELO (again after TLS, or STARTTLS) outstanding.
    Opening,
    /// After `Ready`: commands may be issued once no reply is outstanding.
    Ready,
    /// STARTTLS got 220; the driver does the handshake.
    AwaitTls,
    /// A transaction or probe is in progress.
    Txn,
    /// DATA got 354: the driver streams the body.
    Body,
    /// QUIT sent.
    Quitting,
    /// `Failed` or `Closed` was emitted: everything else is ignored.
    Done,
}

/// The transaction (or probe) in progress.
struct Txn {
    probe: bool,
    pipelined: bool,
    to: Vec<String>,
    mail_ok: bool,
    mail_reply: Option<Reply>,
    rcpts_ok: usize,
    last_rcpt: Option<Reply>,
    /// What `TransactionFailed` reports once RSET is answered.
    failure: Option<Reply>,
}

pub struct Client {
    ehlo_name: String,
    parser: ReplyParser,
    out: Vec<u8>,
    events: VecDeque<Event>,
    expect: VecDeque<Expect>,
    stage: Stage,
    greeting: Option<Reply>,
    extensions: Extensions,
    tls: bool,
    txn: Option<Txn>,
    stuffer: DotStuffer,
}

impl Client {
    /// `ehlo_name`: our hostname, sent with EHLO.
    pub fn new(ehlo_name: &str) -> Client {
        Client {
            ehlo_name: ehlo_name.to_owned(),
            parser: ReplyParser::default(),
            out: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            stage: Stage::Opening,
            greeting: None,
            extensions: Extensions::default(),
            tls: false,
            txn: None,
            stuffer: DotStuffer::new(),
        }
    }

    pub fn receive(&mut self, input: &[u8]) {
        let mut rest = input;
        while !rest.is_empty() {
            match self.stage {
                Stage::Done => return,
                Stage::AwaitTls => {
                    return self.fail(None, "server sent plaintext during the TLS handshake");
                }
                _ => {}
            }
            if self.expect.is_empty() {
                let reason = format!("unsolicited data from server: \"{}\"", excerpt(rest));
                return self.fail(None, reason);
            }
            let (used, result) = self.parser.feed(rest);
            rest = rest.get(used..).unwrap_or_default();
            match result {
                Err(reason) => return self.fail(None, reason),
                Ok(None) => {}
                Ok(Some(reply)) => {
                    self.on_reply(reply);
                    if self.stage == Stage::AwaitTls {
                        // Response-injection defence (RFC 3207 4; the
                        // CVE-2011-0411 class): whatever followed the 220
                        // came in plaintext and must never be read as an
                        // answer to a command sent under TLS.
                        self.parser = ReplyParser::default();
                        return;
                    }
                }
            }
        }
    }

    pub fn wants_input(&self) -> bool {
        !matches!(self.stage, Stage::Done | Stage::AwaitTls) && !self.expect.is_empty()
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// After `Ready`, when the server offered STARTTLS: send STARTTLS.
    /// A refusal (non-220) ends the connection with `Failed{reply}`; whether
    /// to go on without TLS (on a new connection) is the driver's policy.
    pub fn starttls(&mut self) {
        if !self.idle() || self.tls {
            return self.misuse("starttls");
        }
        self.stage = Stage::Opening;
        self.command(&["STARTTLS"], Expect::StartTls);
    }

    /// The handshake succeeded: EHLO again.
    pub fn tls_established(&mut self) {
        if self.stage != Stage::AwaitTls {
            return self.misuse("tls_established");
        }
        // RFC 3207 4.2: forget what the plaintext EHLO said.
        self.tls = true;
        self.extensions = Extensions::default();
        self.stage = Stage::Opening;
        self.send_ehlo();
    }

    /// Starts a transaction (after `Ready`, or after the previous
    /// transaction's outcome). With PIPELINING, MAIL, every RCPT and DATA go
    /// out in one write; without it, one command per reply.
    ///
    /// Without sending anything, emits `TransactionFailed` with a
    /// synthesized reply when the message is over the server's SIZE
    /// (`552 5.3.4`), when there is no recipient (`554 5.5.1`), or when an
    /// address holds a control character (`501 5.1.3`: never written, as
    /// it could inject a command).
    pub fn send_mail(&mut self, envelope: Envelope) {
        if !self.idle() {
            return self.misuse("send_mail");
        }
        if let Some(limit) = self.extensions.size
            && limit != 0
            && envelope.size > limit
        {
            let text = format!("Message too big for the destination (limit {limit})");
            let reply = Reply::enh(552, (5, 3, 4), text);
            self.events.push_back(Event::TransactionFailed { reply });
            return;
        }
        if envelope.to.is_empty() {
            let reply = Reply::enh(554, (5, 5, 1), "No recipients (not sent)");
            self.events.push_back(Event::TransactionFailed { reply });
            return;
        }
        if let Some(reply) = check_paths(&envelope.from, &envelope.to) {
            self.events.push_back(Event::TransactionFailed { reply });
            return;
        }
        let ext = &self.extensions;
        let size = ext.size.map(|_| format!(" SIZE={}", envelope.size));
        let mut params = [size.as_deref().unwrap_or(""), "", ""];
        if envelope.eightbit && ext.eightbitmime {
            params[1] = " BODY=8BITMIME";
        }
        if envelope.smtputf8 && ext.smtputf8 {
            params[2] = " SMTPUTF8";
        }
        let pipelined = ext.pipelining;
        let from = envelope.from.as_str();
        self.command(
            &["MAIL FROM:<", from, ">", params[0], params[1], params[2]],
            Expect::Mail,
        );
        if pipelined {
            for (i, to) in envelope.to.iter().enumerate() {
                self.command(&["RCPT TO:<", to, ">"], Expect::Rcpt(i));
            }
            self.command(&["DATA"], Expect::Data);
        }
        self.start_txn(false, pipelined, envelope.to);
    }

    /// Body bytes (unstuffed, as spooled); dot-stuffed on the way out.
    pub fn body(&mut self, bytes: &[u8]) {
        if self.stage != Stage::Body {
            return self.misuse("body");
        }
        self.stuffer.encode(bytes, &mut self.out);
    }

    /// Ends the body: CRLF (if the body did not end with one), `.` CRLF.
    pub fn end_body(&mut self) {
        if self.stage != Stage::Body {
            return self.misuse("end_body");
        }
        self.stuffer.finish(&mut self.out);
        self.expect.push_back(Expect::EndOfData);
        self.stage = Stage::Txn;
    }

    /// Call-ahead: MAIL FROM:<from>, RCPT TO for each of `to` (pipelined
    /// when offered), no DATA; `MailReply`, one `RcptReply` each, then
    /// `ProbeDone` (RSET is sent so another probe or QUIT may follow).
    /// Without pipelining, a refused MAIL stops the probe (no RCPT is sent);
    /// an address with a control character gets a synthesized
    /// `501 5.1.3` `MailReply` and nothing is sent.
    pub fn send_probe(&mut self, from: &str, to: &[String]) {
        if !self.idle() {
            return self.misuse("send_probe");
        }
        if let Some(reply) = check_paths(from, to) {
            self.events.push_back(Event::MailReply(reply));
            self.events.push_back(Event::ProbeDone);
            return;
        }
        let pipelined = self.extensions.pipelining;
        self.command(&["MAIL FROM:<", from, ">"], Expect::Mail);
        if pipelined {
            for (i, to) in to.iter().enumerate() {
                self.command(&["RCPT TO:<", to, ">"], Expect::Rcpt(i));
            }
            self.command(&["RSET"], Expect::Rset);
        }
        self.start_txn(true, pipelined, to.to_vec());
    }

    /// Sends QUIT. Called while a command is still outstanding (an abort),
    /// it sends nothing and emits `Closed` at once: the driver just closes.
    pub fn quit(&mut self) {
        match self.stage {
            Stage::Done | Stage::Quitting => {}
            _ if self.idle() => {
                self.stage = Stage::Quitting;
                self.command(&["QUIT"], Expect::Quit);
            }
            _ => self.close(),
        }
    }

    /// The peer closed the connection (EOF): emits `Failed` unless QUIT
    /// was already sent.
    pub fn eof(&mut self) {
        match self.stage {
            Stage::Done => {}
            Stage::Quitting => self.close(),
            _ => self.fail(None, "connection closed by server"),
        }
    }

    fn idle(&self) -> bool {
        self.stage == Stage::Ready && self.expect.is_empty()
    }

    /// Writes one command line (the concatenation of `parts`) and notes
    /// which reply answers it.
    fn command(&mut self, parts: &[&str], expect: Expect) {
        for p in parts {
            self.out.extend_from_slice(p.as_bytes());
        }
        self.out.extend_from_slice(CRLF);
        self.expect.push_back(expect);
    }

    fn send_ehlo(&mut self) {
        let name = std::mem::take(&mut self.ehlo_name);
        self.command(&["EHLO ", &name], Expect::Ehlo);
        self.ehlo_name = name;
    }

    fn start_txn(&mut self, probe: bool, pipelined: bool, to: Vec<String>) {
        self.stage = Stage::Txn;
        self.txn = Some(Txn {
            probe,
            pipelined,
            to,
            mail_ok: false,
            mail_reply: None,
            rcpts_ok: 0,
            last_rcpt: None,
            failure: None,
        });
    }

    fn fail(&mut self, reply: Option<Reply>, reason: impl Into<String>) {
        self.events.push_back(Event::Failed {
            reply,
            reason: reason.into(),
        });
        self.finish();
    }

    /// The server said no where the session cannot go on: say goodbye
    /// politely (no reply awaited), then `Failed`.
    fn refuse(&mut self, reply: Reply, reason: &str) {
        self.out.extend_from_slice(b"QUIT\r\n");
        self.fail(Some(reply), reason);
    }

    fn close(&mut self) {
        self.events.push_back(Event::Closed);
        self.finish();
    }

    fn finish(&mut self) {
        self.stage = Stage::Done;
        self.expect.clear();
        self.txn = None;
    }

    /// A driver bug (a call out of order): never a panic, never a command
    /// the server does not expect.
    fn misuse(&mut self, call: &str) {
        if self.stage != Stage::Done {
            let reason = format!("internal: {call}() called in state {:?}", self.stage);
            self.fail(None, reason);
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.pop_front() else {
            return self.fail(Some(reply), "reply when none was expected");
        };
        match expect {
            Expect::Greeting if class(&reply) == 2 => {
                self.greeting = Some(reply);
                self.send_ehlo();
            }
            Expect::Greeting => self.refuse(reply, "greeting refused"),
            Expect::Ehlo => match class(&reply) {
                2 => {
                    self.extensions = parse_extensions(&reply, self.tls);
                    self.ready(reply);
                }
                // Not an ESMTP server (RFC 5321 3.2): try plain HELO.
                5 => {
                    let name = std::mem::take(&mut self.ehlo_name);
                    self.command(&["HELO ", &name], Expect::Helo);
                    self.ehlo_name = name;
                }
                _ => self.refuse(reply, "EHLO refused"),
            },
            Expect::Helo if class(&reply) == 2 => {
                self.extensions = Extensions::default();
                self.ready(reply);
            }
            Expect::Helo => self.refuse(reply, "HELO refused"),
            Expect::StartTls if reply.code == 220 => {
                self.stage = Stage::AwaitTls;
                self.events.push_back(Event::StartTls);
            }
            Expect::StartTls => self.refuse(reply, "STARTTLS refused"),
            Expect::Quit => self.close(),
            Expect::Mail
            | Expect::Rcpt(_)
            | Expect::Data
            | Expect::DataAbort
            | Expect::EndOfData
            | Expect::Rset => match self.txn.take() {
                Some(txn) => self.on_txn_reply(txn, expect, reply),
                None => self.fail(Some(reply), "internal: transaction reply without transaction"),
            },
        }
    }

    fn ready(&mut self, ehlo: Reply) {
        let Some(greeting) = self.greeting.clone() else {
            return self.fail(Some(ehlo), "internal: ready without greeting");
        };
        self.stage = Stage::Ready;
        self.events.push_back(Event::Ready {
            greeting,
            ehlo,
            extensions: self.extensions.clone(),
        });
    }

    /// One reply within a transaction or probe; `txn` is put back unless
    /// the transaction ended.
    fn on_txn_reply(&mut self, mut txn: Txn, expect: Expect, reply: Reply) {
        let class = class(&reply);
        match expect {
            Expect::Mail => {
                if !matches!(class, 2 | 4 | 5) {
                    return self.fail(Some(reply), "unexpected reply to MAIL FROM");
                }
                txn.mail_ok = class == 2;
                txn.mail_reply = Some(reply.clone());
                self.events.push_back(Event::MailReply(reply));
                if !txn.pipelined {
                    if txn.mail_ok {
                        self.next_rcpt(&txn, 0);
                    } else {
                        self.command(&["RSET"], Expect::Rset);
                    }
                }
            }
            Expect::Rcpt(index) => {
                if !matches!(class, 2 | 4 | 5) {
                    return self.fail(Some(reply), "unexpected reply to RCPT TO");
                }
                if class == 2 {
                    txn.rcpts_ok += 1;
                }
                txn.last_rcpt = Some(reply.clone());
                self.events.push_back(Event::RcptReply { index, reply });
                if !txn.pipelined {
                    self.next_rcpt(&txn, index + 1);
                }
            }
            Expect::Data => {
                let deliverable = txn.mail_ok && txn.rcpts_ok > 0;
                match (deliverable, reply.code, class) {
                    (true, 354, _) => {
                        self.stage = Stage::Body;
                        self.events.push_back(Event::SendBody);
                    }
                    (true, _, 4 | 5) => {
                        txn.failure = Some(reply);
                        self.command(&["RSET"], Expect::Rset);
                    }
                    // RFC 2920 3.1: DATA may be accepted even though no
                    // RCPT was; end the empty message with a lone dot.
                    (false, 354, _) => {
                        self.out.extend_from_slice(b".\r\n");
                        self.expect.push_back(Expect::DataAbort);
                    }
                    (false, _, 4 | 5) => self.command(&["RSET"], Expect::Rset),
                    _ => return self.fail(Some(reply), "unexpected reply to DATA"),
                }
            }
            // Whatever the server made of the empty message, it is over.
            Expect::DataAbort => self.command(&["RSET"], Expect::Rset),
            Expect::EndOfData => {
                if !matches!(class, 2 | 4 | 5) {
                    return self.fail(Some(reply), "unexpected reply to end of data");
                }
                self.stage = Stage::Ready;
                self.events.push_back(Event::DataReply(reply));
                return;
            }
            Expect::Rset => {
                self.stage = Stage::Ready;
                if txn.probe {
                    self.events.push_back(Event::ProbeDone);
                } else {
                    // MAIL refused, or else the last RCPT (none accepted),
                    // unless DATA itself was refused.
                    let failure = txn.failure.or(if txn.mail_ok {
                        txn.last_rcpt
                    } else {
                        txn.mail_reply
                    });
                    match failure {
                        Some(reply) => self.events.push_back(Event::TransactionFailed { reply }),
                        None => return self.fail(Some(reply), "internal: RSET without failure"),
                    }
                }
                if class != 2 {
                    self.fail(Some(reply), "RSET refused");
                }
                return;
            }
            _ => return self.fail(Some(reply), "internal: not a transaction reply"),
        }
        self.txn = Some(txn);
    }

    /// Without pipelining: the RCPT for `index`, or what follows the last
    /// one (DATA if any was accepted, RSET otherwise or for a probe).
    fn next_rcpt(&mut self, txn: &Txn, index: usize) {
        match txn.to.get(index) {
            Some(to) => self.command(&["RCPT TO:<", to, ">"], Expect::Rcpt(index)),
            None if !txn.probe && txn.rcpts_ok > 0 => self.command(&["DATA"], Expect::Data),
            None => self.command(&["RSET"], Expect::Rset),
        }
    }
}

fn class(reply: &Reply) -> u16 {
    reply.code / 100
}

/// A control character (CR, LF, NUL, ...) in a path could inject a command;
/// such a path is never written.
fn check_paths(from: &str, to: &[String]) -> Option<Reply> {
    let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control());
    if bad(from) || to.iter().any(|t| bad(t)) {
        return Some(Reply::enh(
            501,
            (5, 1, 3),
            "Address contains a control character (not sent)",
        ));
    }
    None
}

/// The EHLO reply's keywords (RFC 5321 4.1.1.1: case-insensitive), one per
/// line after the first.
fn parse_extensions(reply: &Reply, tls: bool) -> Extensions {
    let mut ext = Extensions {
        esmtp: true,
        ..Extensions::default()
    };
    for line in reply.lines.iter().skip(1) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let is = |k: &str| keyword.eq_ignore_ascii_case(k);
        if is("PIPELINING") {
            ext.pipelining = true;
        } else if is("SIZE") {
            // RFC 1870: no number (or one we cannot read) means no fixed
            // limit; the server still enforces its own.
            ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
        } else if is("8BITMIME") {
            ext.eightbitmime = true;
        } else if is("SMTPUTF8") {
            ext.smtputf8 = true;
        } else if is("STARTTLS") {
            // RFC 3207 4.2: not offered again under TLS; ignore it if it is.
            ext.starttls = !tls;
        } else if is("ENHANCEDSTATUSCODES") {
            ext.enhanced_status_codes = true;
        }
    }
    ext
}

/// The start of `bytes`, printable, for a `Failed` reason.
fn excerpt(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(EXCERPT)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect()
}

/// Reassembles replies from arbitrary splits of the input.
#[derive(Default)]
struct ReplyParser {
    /// The current line so far, without its LF.
    line: Vec<u8>,
    /// The code of the reply's first line (0: no line yet).
    code: u16,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Consumes `input` up to the end of the first complete reply; returns
    /// the bytes used and the reply, if one completed.
    fn feed(&mut self, input: &[u8]) -> (usize, Result<Option<Reply>, String>) {
        let mut used = 0;
        while let Some(rest) = input.get(used..)
            && !rest.is_empty()
        {
            let end = rest.iter().position(|&b| b == b'\n');
            let part = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
            // +1: room for the CR of a CRLF, stripped at the line end.
            if self.line.len() + part.len() > MAX_REPLY_LINE + 1 {
                let reason = format!(
                    "reply line longer than {MAX_REPLY_LINE} bytes: \"{}\"",
                    excerpt(&self.line)
                );
                return (input.len(), Err(reason));
            }
            self.line.extend_from_slice(part);
            used += part.len();
            if end.is_none() {
                break;
            }
            used += 1;
            match self.end_line() {
                Ok(None) => {}
                done => return (used, done),
            }
        }
        (used, Ok(None))
    }

    fn end_line(&mut self) -> Result<Option<Reply>, String> {
        let mut line = std::mem::take(&mut self.line);
        // Lenient in what we read: a bare LF ends a line too.
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let (code, last, text) = parse_line(&line)
            .ok_or_else(|| format!("malformed reply line: \"{}\"", excerpt(&line)))?;
        if !self.lines.is_empty() && code != self.code {
            return Err(format!(
                "reply lines carry different codes ({} then {code})",
                self.code
            ));
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(format!("reply longer than {MAX_REPLY_LINES} lines"));
        }
        self.code = code;
        let text = String::from_utf8_lossy(text);
        let text = match Enhanced::parse_prefix(&text) {
            Some((enhanced, rest)) => {
                self.enhanced.get_or_insert(enhanced);
                rest.to_owned()
            }
            None => text.into_owned(),
        };
        self.lines.push(text);
        line.clear();
        self.line = line; // keep the allocation
        if !last {
            return Ok(None);
        }
        Ok(Some(Reply {
            code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// `DDD text`, `DDD-text` or `DDD` → (code, is the last line, text).
fn parse_line(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let (digits, rest) = line.split_at_checked(3)?;
    let [d0 @ b'2'..=b'5', d1 @ b'0'..=b'9', d2 @ b'0'..=b'9'] = *digits else {
        return None;
    };
    let code = u16::from(d0 - b'0') * 100 + u16::from(d1 - b'0') * 10 + u16::from(d2 - b'0');
    match rest.split_first() {
        None => Some((code, true, rest)),
        Some((b' ', text)) => Some((code, true, text)),
        Some((b'-', text)) => Some((code, false, text)),
        Some(_) => None,
    }
}
