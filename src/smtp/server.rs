//! The SMTP server session as a sans-IO state machine: bytes in, reply bytes
//! and events out; no socket, clock or spool inside. The receive driver
//! feeds it what the socket read, writes out what it produced, and answers
//! the events that need a policy decision (MAIL, RCPT, DATA, end of data).
//!
//! Why not the `smtp-proto` crate: its receiver takes a bare LF as a line
//! end, caps lines at 4096 instead of RFC 5321's 512/1000, and does not
//! report bare CR/LF inside DATA. Strict framing is the whole of the
//! smuggling defence, so the framing, command grammar and DATA reader live
//! here, small and fuzzable.
//!
//! Call order for the driver:
//! 1. `Session::new`, then `greeting()` once (queues the 220).
//! 2. Loop: write out `take_output()`; if `poll_event()` yields an event that
//!    needs an answer, answer it with the matching `answer_*` method (the
//!    session consumes no input while an answer is owed, so pipelined
//!    replies stay in order); otherwise, when `wants_input()`, read from the
//!    socket and call `receive(bytes)`.
//! 3. Before waiting on the socket for input, call `waiting(now)`; sleep
//!    no later than `poll_timeout()`, and when it passes call
//!    `handle_timeout(now)` (it queues the 421 and closes). On shutdown
//!    call `shutdown()`.
//!
//! Time is an input: the machine reads no clock, the driver passes `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::address::{self, Mailbox, PathError, ReversePath};
use super::data::{DataReader, Step};
use super::reply::Reply;

/// Largest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Largest text line in DATA, CRLF included (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
/// RCPTs over `max_recipients` a session may send before each further one
/// counts as an error (Postfix's smtpd_recipient_overshoot_limit).
pub const RECIPIENT_OVERSHOOT: usize = 1000;
/// Body bytes gathered before a `Event::Body` chunk is handed out.
///
/// Just under 32 KiB on purpose: the spool stores each chunk as one redb
/// value, and redb gives a value the next power-of-two run of pages with
/// its key and leaf header. A full 32 KiB chunk took a 64 KiB allocation,
/// doubling the bytes written, fsynced and kept on flash
/// (`spool::tests::a_full_chunk_fits_one_page` holds this).
pub const BODY_CHUNK: usize = 32 * 1024 - 64;

/// What the session needs to know that is not protocol.
#[derive(Clone, Debug)]
pub struct Params {
    /// Our name: in the greeting and the EHLO reply.
    pub hostname: String,
    /// The SIZE limit; 0 means none.
    pub max_message_size: u64,
    /// RCPTs accepted per transaction; the next gets 452 4.5.3.
    pub max_recipients: usize,
    /// Error replies per session before 421 and close.
    pub max_errors: usize,
    /// Received headers a message may already carry (more: 554 5.4.6).
    pub max_hops: usize,
    /// Offer STARTTLS (a certificate is configured and TLS is not active).
    pub starttls: bool,
    /// Wait for the next command line, per read (RFC 5321 4.5.3.2.7).
    pub command_timeout: Duration,
    /// Wait for the next block of message text, per read (4.5.3.2.5).
    pub data_timeout: Duration,
}

/// `BODY=` of MAIL FROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    pub from: ReversePath,
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    pub to: Mailbox,
    /// The path had a source route (stripped from `to`).
    pub source_route: bool,
}

/// Why a message was refused by the session itself during DATA. The
/// session has already queued the reply; the driver discards what it
/// spooled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRefusal {
    /// A bare CR or LF in the body (smuggling defence): 550 5.5.2.
    BareNewline,
    /// Over `max_message_size`: 552 5.3.4.
    TooBig,
    /// A text line over 1000 octets: 500 5.5.2.
    LineTooLong,
    /// More than `max_hops` Received headers: 554 5.4.6.
    TooManyHops,
}

/// What the session tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// MAIL FROM parsed and in sequence. Answer with `answer_mail`.
    Mail(MailFrom),
    /// RCPT TO parsed and in sequence (and under `max_recipients`).
    /// Answer with `answer_rcpt`.
    Rcpt(RcptTo),
    /// DATA with at least one accepted recipient. Answer with
    /// `answer_data` (Ok queues the 354).
    DataStart,
    /// Unstuffed body bytes (at most `BODY_CHUNK`), in order. No answer.
    Body(Vec<u8>),
    /// `<CRLF>.<CRLF>` seen and the body passed the session's own checks.
    /// Answer with `answer_data_end` after the message is durable.
    DataEnd,
    /// The body was refused by the session; its reply is already queued.
    DataRefused(DataRefusal),
    /// The open transaction (if any) ended without a message: RSET, EHLO,
    /// HELO, or a new session state. The driver drops any partial spool.
    Reset,
    /// STARTTLS accepted: the 220 is queued and all buffered plaintext is
    /// gone. Write out the output, do the handshake, then call
    /// `tls_started`.
    StartTls,
    /// The session is over (QUIT, too many errors, timeout, shutdown):
    /// write out the output and close.
    Close,
}

/// Bytes the session holds unprocessed at most. It only holds more than a
/// partial command line while an answer is owed or a chunk is undelivered,
/// and then `wants_input` is false; the driver reads at most `BODY_CHUNK`
/// per `receive`, so this is only reached if the driver ignores
/// `wants_input` (then: 421 and close, never unbounded memory).
pub const MAX_BUFFERED: usize = 2 * BODY_CHUNK;

/// The answer the driver owes for the event it was given.
#[derive(Debug)]
enum Owed {
    Mail(MailFrom),
    Rcpt(Mailbox),
    Data,
    DataEnd,
}

/// Where the session is. Each phase holds only what is valid in it, so
/// that, say, an owed answer during DATA cannot be written down.
enum Phase {
    /// Reading command lines.
    Command {
        /// The answer the driver owes for the event it was given; no input
        /// is processed until it comes.
        owed: Option<Owed>,
        /// Inside an over-long command line: dropping bytes up to its CRLF.
        discarding: bool,
        /// `shutdown` came while an answer was owed: the 421 follows it.
        shutdown_pending: bool,
    },
    /// Reading message text.
    Data(DataReader),
    /// STARTTLS answered: no input until `tls_started`.
    AwaitingTls,
    /// The last reply is queued; nothing more is read or written.
    Closed,
}

impl Phase {
    /// Reading commands, nothing owed.
    fn command() -> Phase {
        Phase::Command {
            owed: None,
            discarding: false,
            shutdown_pending: false,
        }
    }
}

/// The client's HELO/EHLO.
struct Helo {
    name: String,
    /// EHLO (ESMTP), not HELO.
    esmtp: bool,
}

/// The open mail transaction: MAIL accepted, recipients so far.
struct Transaction {
    mail: MailFrom,
    rcpts: Vec<Mailbox>,
}

/// One SMTP server session.
pub struct Session {
    params: Params,
    /// Received bytes not yet processed (a partial line, or what follows a
    /// command whose answer is owed).
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<Event>,
    phase: Phase,
    helo: Option<Helo>,
    tls: bool,
    transaction: Option<Transaction>,
    errors: usize,
    /// RCPTs answered 452 for being over `max_recipients`.
    overshoot: usize,
    /// When the read the driver is waiting on times out. Each read gets
    /// the whole timeout (like Postfix's smtpd): `receive` disarms it.
    deadline: Option<Instant>,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::enh(code, enhanced, text)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// The position of the first CRLF in `s`.
fn find_crlf(s: &[u8]) -> Option<usize> {
    memchr::memmem::find(s, b"\r\n")
}

impl Session {
    pub fn new(params: Params) -> Session {
        Session {
            params,
            input: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            phase: Phase::command(),
            helo: None,
            tls: false,
            transaction: None,
            errors: 0,
            overshoot: 0,
            deadline: None,
        }
    }

    /// Queues the `220 hostname ESMTP` greeting.
    pub fn greeting(&mut self) {
        let text = format!("{} ESMTP mxspool", self.params.hostname);
        // RFC 2034: no enhanced code in the greeting.
        self.send(Reply::new(220, None, text));
    }

    /// Queues `554 5.3.2` (or `421 4.7.0` with `text`) instead of a greeting
    /// and closes: for refusals decided at connect time.
    pub fn refuse_connection(&mut self, reply: Reply) {
        if !self.closed() {
            reply.write_to(&mut self.output);
            self.close();
        }
    }

    /// True when the session can take more input now (no answer owed, no
    /// undelivered body chunk, not closed, internal buffer not full).
    pub fn wants_input(&self) -> bool {
        self.can_process() && self.input.len() < MAX_BUFFERED
    }

    /// How many bytes `receive` takes now without overflowing its buffer.
    pub fn input_room(&self) -> usize {
        MAX_BUFFERED.saturating_sub(self.input.len())
    }

    /// Feeds bytes read from the socket. The session keeps at most one
    /// partial line (bounded) and processes whole lines as far as it can
    /// without an owed answer.
    pub fn receive(&mut self, input: &[u8]) {
        // Plaintext that arrives after STARTTLS is never executed.
        self.deadline = None;
        if matches!(self.phase, Phase::Closed | Phase::AwaitingTls) {
            return;
        }
        if self.input.len() + input.len() > MAX_BUFFERED {
            self.send(reply(
                421,
                (4, 7, 0),
                &self.closing("Error: too much pipelined input"),
            ));
            return;
        }
        self.input.extend_from_slice(input);
        self.process();
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        // Go on at once, so that output and the next event are ready when
        // this call returns (the driver writes before it reads again).
        self.process();
        event
    }

    /// Reply bytes to write to the client (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Takes the owed answer if it is the expected kind.
    fn take_owed(&mut self, want: fn(&Owed) -> bool) -> Option<Owed> {
        let Phase::Command { owed, .. } = &mut self.phase else {
            return None;
        };
        match owed.take() {
            Some(o) if want(&o) => Some(o),
            other => {
                // An answer out of turn (a driver bug) is ignored.
                *owed = other;
                None
            }
        }
    }

    /// True while processing is held up for a shutdown's 421.
    fn shutdown_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::Command {
                shutdown_pending: true,
                ..
            }
        )
    }

    fn closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Input can be processed: no answer owed, no event unpolled, not
    /// waiting for TLS, not closed.
    fn can_process(&self) -> bool {
        let ready = match &self.phase {
            Phase::Command { owed, .. } => owed.is_none(),
            Phase::Data(_) => true,
            Phase::AwaitingTls | Phase::Closed => false,
        };
        ready && self.events.is_empty()
    }

    /// Ok: `250 2.1.0 Ok`. Err(reply): that reply, transaction not opened.
    pub fn answer_mail(&mut self, result: Result<(), Reply>) {
        let Some(Owed::Mail(mail)) = self.take_owed(|o| matches!(o, Owed::Mail(_))) else {
            return;
        };
        match result {
            Ok(()) => {
                self.transaction = Some(Transaction {
                    mail,
                    rcpts: Vec::new(),
                });
                self.send(reply(250, (2, 1, 0), "Ok"));
            }
            Err(r) => self.send(r),
        }
        self.answered();
    }

    /// Ok: `250 2.1.5 Ok`, recipient added. Err(reply): not added.
    pub fn answer_rcpt(&mut self, result: Result<(), Reply>) {
        let Some(Owed::Rcpt(rcpt)) = self.take_owed(|o| matches!(o, Owed::Rcpt(_))) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(t) = self.transaction.as_mut() {
                    t.rcpts.push(rcpt);
                }
                self.send(reply(250, (2, 1, 5), "Ok"));
            }
            Err(r) => self.send(r),
        }
        self.answered();
    }

    /// Ok: `354 End data with <CR><LF>.<CR><LF>`. Err(reply): transaction
    /// stays as it was (RFC 5321: a failed DATA does not reset).
    pub fn answer_data(&mut self, result: Result<(), Reply>) {
        if self.take_owed(|o| matches!(o, Owed::Data)).is_none() {
            return;
        }
        match result {
            // Stopping: a 421 instead of inviting a message we would cut.
            Ok(()) if self.shutdown_pending() => {}
            Ok(()) => {
                self.phase = Phase::Data(DataReader::new(
                    self.params.max_message_size,
                    self.params.max_hops,
                ));
                self.send(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
            }
            Err(r) => self.send(r),
        }
        self.answered();
    }

    /// The reply to the end of data (250 with the queue id, or 4xx/5xx);
    /// the transaction is reset either way.
    pub fn answer_data_end(&mut self, reply: Reply) {
        if self.take_owed(|o| matches!(o, Owed::DataEnd)).is_none() {
            return;
        }
        self.end_transaction();
        self.send(reply);
        self.answered();
    }

    fn answered(&mut self) {
        if matches!(
            self.phase,
            Phase::Command {
                owed: None,
                shutdown_pending: true,
                ..
            }
        ) {
            self.shutdown();
        }
        self.process();
    }

    /// The TLS handshake succeeded: forget EHLO, stop offering STARTTLS.
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::AwaitingTls) {
            return;
        }
        // RFC 3207 4.2: discard all knowledge not from the TLS negotiation.
        self.phase = Phase::command();
        self.deadline = None;
        self.tls = true;
        self.helo = None;
        self.input.clear();
    }

    /// The driver starts waiting on the client at `now`: arms the DATA
    /// timeout while reading message text, the command timeout for a
    /// command or the TLS handshake (none while an answer is owed or the
    /// session is closed).
    pub fn waiting(&mut self, now: Instant) {
        let t = match self.phase {
            Phase::AwaitingTls => self.params.command_timeout,
            _ if !self.wants_input() => {
                self.deadline = None;
                return;
            }
            Phase::Data(_) => self.params.data_timeout,
            _ => self.params.command_timeout,
        };
        self.deadline = Some(now + t);
    }

    /// When the driver must call `handle_timeout` at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time has come to `now`. True when the client was silent too long:
    /// 421 4.4.2 is queued and the session closes (in the TLS handshake
    /// it just closes: no plaintext reply can go out then).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if now >= d => {
                self.deadline = None;
                if matches!(self.phase, Phase::AwaitingTls) {
                    self.close();
                } else {
                    self.timeout();
                }
                true
            }
            _ => false,
        }
    }

    /// The client was silent too long: queue 421 4.4.2 and close.
    fn timeout(&mut self) {
        if !self.closed() {
            let text = self.closing("Error: timeout exceeded");
            self.send(reply(421, (4, 4, 2), &text));
        }
    }

    /// We are stopping: queue 421 4.3.2 and close (when no answer is owed).
    pub fn shutdown(&mut self) {
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Command {
                owed: Some(_),
                shutdown_pending,
                ..
            } => *shutdown_pending = true,
            _ => {
                let text = self.closing("Service shutting down");
                self.send(reply(421, (4, 3, 2), &text));
            }
        }
    }

    /// HELO/EHLO argument, if given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// True after EHLO (ESMTP), false after HELO.
    pub fn esmtp(&self) -> bool {
        self.helo.as_ref().is_some_and(|h| h.esmtp)
    }

    /// True while the session is reading message text (the driver reads
    /// in larger pieces then).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// The accepted recipients of the open transaction.
    pub fn recipients(&self) -> &[Mailbox] {
        self.transaction.as_ref().map_or(&[], |t| &t.rcpts)
    }

    /// The MAIL FROM of the open transaction.
    pub fn mail_from(&self) -> Option<&MailFrom> {
        self.transaction.as_ref().map(|t| &t.mail)
    }

    /// `hostname text`: RFC 5321 4.2.3 puts our name in a 421.
    fn closing(&self, text: &str) -> String {
        format!("{} {}", self.params.hostname, text)
    }

    /// Writes a reply. Every 4xx/5xx counts towards `max_errors`; a 421
    /// always closes (RFC 5321 3.8).
    fn send(&mut self, r: Reply) {
        if self.closed() {
            return;
        }
        r.write_to(&mut self.output);
        if r.code == 421 {
            self.close();
        } else if r.code >= 400 {
            self.errors = self.errors.saturating_add(1);
            if self.errors > self.params.max_errors {
                let text = self.closing("Error: too many errors");
                self.send(reply(421, (4, 7, 0), &text));
            }
        }
    }

    fn close(&mut self) {
        if self.closed() {
            return;
        }
        self.phase = Phase::Closed;
        self.deadline = None;
        self.input = Vec::new();
        self.events.push_back(Event::Close);
    }

    /// Ends the open transaction; true if there was one.
    fn end_transaction(&mut self) -> bool {
        self.transaction.take().is_some()
    }

    /// Ends the open transaction and tells the driver, if there was one.
    fn reset(&mut self) {
        if self.end_transaction() {
            self.events.push_back(Event::Reset);
        }
    }

    /// Hands out an event that needs `owed` as its answer. Only called
    /// while processing input, so no other answer or shutdown is pending.
    fn emit(&mut self, event: Event, owed: Owed) {
        self.events.push_back(event);
        self.phase = Phase::Command {
            owed: Some(owed),
            discarding: false,
            shutdown_pending: false,
        };
    }

    /// Processes buffered input as far as possible: until an answer is
    /// owed, an event is waiting to be polled, or input runs out.
    fn process(&mut self) {
        let input = std::mem::take(&mut self.input);
        let mut pos = 0;
        while self.can_process() && pos < input.len() {
            let rest = input.get(pos..).unwrap_or_default();
            let used = if self.in_data() {
                self.data_step(rest)
            } else {
                self.command_step(rest)
            };
            if used == 0 {
                break; // a partial line: wait for more
            }
            pos += used;
        }
        if !matches!(self.phase, Phase::Closed | Phase::AwaitingTls) {
            // STARTTLS and close discard what is buffered: keep nothing.
            self.input = input;
            self.input.drain(..pos.min(self.input.len()));
        }
    }

    fn data_step(&mut self, rest: &[u8]) -> usize {
        let Phase::Data(reader) = &mut self.phase else {
            return 0;
        };
        let (used, step) = reader.feed(rest);
        match step {
            Step::NeedMore => {}
            Step::Chunk(chunk) => self.events.push_back(Event::Body(chunk)),
            Step::End(Ok(chunk)) => {
                if !chunk.is_empty() {
                    self.events.push_back(Event::Body(chunk));
                }
                self.emit(Event::DataEnd, Owed::DataEnd);
            }
            Step::End(Err(refusal)) => {
                self.phase = Phase::command();
                self.end_transaction();
                self.events.push_back(Event::DataRefused(refusal));
                self.send(match refusal {
                    DataRefusal::BareNewline => {
                        reply(550, (5, 5, 2), "Message contains bare CR or LF")
                    }
                    DataRefusal::LineTooLong => reply(500, (5, 5, 2), "Line too long"),
                    DataRefusal::TooBig => reply(552, (5, 3, 4), "Message too big"),
                    DataRefusal::TooManyHops => {
                        reply(554, (5, 4, 6), "Too many Received headers: mail loop?")
                    }
                });
            }
        }
        used
    }

    /// Handles at most one command line at the start of `rest`; returns
    /// the bytes consumed (0: the line is incomplete).
    fn command_step(&mut self, rest: &[u8]) -> usize {
        if let Phase::Command {
            discarding: discarding @ true,
            ..
        } = &mut self.phase
        {
            return match find_crlf(rest) {
                Some(i) => {
                    *discarding = false;
                    self.send(reply(500, (5, 5, 2), "Line too long"));
                    i + 2
                }
                // Keep a trailing CR: its LF may come in the next read.
                None if rest.last() == Some(&b'\r') => rest.len() - 1,
                None => rest.len(),
            };
        }
        let window = rest.get(..MAX_COMMAND_LINE).unwrap_or(rest);
        match find_crlf(window) {
            Some(i) => {
                self.command_line(window.get(..i).unwrap_or_default());
                i + 2
            }
            None if rest.len() >= MAX_COMMAND_LINE => {
                // Too long: drop it up to its CRLF, never buffer it.
                if let Phase::Command { discarding, .. } = &mut self.phase {
                    *discarding = true;
                    self.command_step(rest)
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    fn command_line(&mut self, line: &[u8]) {
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return self.send(reply(500, (5, 5, 2), "Bare CR or LF not allowed"));
        }
        if line.iter().any(|&b| b < b' ' || b == 0x7f) {
            return self.send(reply(500, (5, 5, 2), "Invalid character in command"));
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return self.send(reply(500, (5, 5, 2), "Invalid UTF-8 in command"));
        };
        if line.is_empty() {
            return self.send(reply(500, (5, 5, 2), "Empty command"));
        }
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.cmd_helo(arg, true),
            "HELO" => self.cmd_helo(arg, false),
            "MAIL" => self.cmd_mail(arg),
            "RCPT" => self.cmd_rcpt(arg),
            "DATA" => self.cmd_data(arg),
            "RSET" if !arg.trim().is_empty() => self.syntax("Syntax: RSET"),
            "RSET" => {
                self.send(reply(250, (2, 0, 0), "Ok"));
                self.reset();
            }
            "NOOP" => self.send(reply(250, (2, 0, 0), "Ok")),
            "QUIT" => {
                self.send(reply(221, (2, 0, 0), "Bye"));
                self.close();
            }
            "VRFY" => self.send(reply(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message",
            )),
            "EXPN" => self.send(reply(502, (5, 5, 1), "Error: command not implemented")),
            "HELP" => self.send(reply(214, (2, 0, 0), "See RFC 5321")),
            "STARTTLS" => self.cmd_starttls(arg),
            _ => self.send(reply(500, (5, 5, 1), "Error: command not recognized")),
        }
    }

    fn syntax(&mut self, text: &str) {
        self.send(reply(501, (5, 5, 4), text));
    }

    fn cmd_helo(&mut self, arg: &str, ehlo: bool) {
        let arg = arg.trim();
        if arg.is_empty() {
            return self.syntax(if ehlo {
                "Syntax: EHLO hostname"
            } else {
                "Syntax: HELO hostname"
            });
        }
        self.helo = Some(Helo {
            name: arg.to_string(),
            esmtp: ehlo,
        });
        let host = self.params.hostname.clone();
        // RFC 2034: no enhanced codes in the HELO/EHLO reply.
        let r = if ehlo {
            let mut lines = vec![
                host,
                "PIPELINING".to_string(),
                format!("SIZE {}", self.params.max_message_size),
                "8BITMIME".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
                "SMTPUTF8".to_string(),
            ];
            if self.params.starttls && !self.tls {
                lines.push("STARTTLS".to_string());
            }
            Reply {
                code: 250,
                enhanced: None,
                lines,
            }
        } else {
            Reply::new(250, None, host)
        };
        self.send(r);
        self.reset();
    }

    fn cmd_mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.send(reply(503, (5, 5, 1), "Error: send HELO/EHLO first"));
        }
        if self.transaction.is_some() {
            return self.send(reply(503, (5, 5, 1), "Error: nested MAIL command"));
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.syntax("Syntax: MAIL FROM:<address>");
        };
        let bad_sender =
            |s: &mut Session| s.send(reply(501, (5, 1, 7), "Bad sender address syntax"));
        let Some((path, params)) = split_path(rest) else {
            return bad_sender(self);
        };
        let mut size = None;
        let mut body = None;
        let mut smtputf8 = false;
        for param in params.split(' ').filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            if key.eq_ignore_ascii_case("SIZE") && size.is_none() {
                match value.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())) {
                    Some(v) => match v.parse::<u64>() {
                        Ok(n) => size = Some(n),
                        // More digits than u64 holds: surely over any limit.
                        Err(_) => size = Some(u64::MAX),
                    },
                    None => return self.syntax("Bad SIZE parameter"),
                }
            } else if key.eq_ignore_ascii_case("BODY") && body.is_none() {
                body = match value {
                    Some(v) if v.eq_ignore_ascii_case("7BIT") => Some(BodyType::SevenBit),
                    Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Some(BodyType::EightBitMime),
                    _ => return self.syntax("Bad BODY parameter"),
                };
            } else if key.eq_ignore_ascii_case("SMTPUTF8") && !smtputf8 {
                if value.is_some() {
                    return self.syntax("Bad SMTPUTF8 parameter");
                }
                smtputf8 = true;
            } else if ["SIZE", "BODY", "SMTPUTF8"]
                .iter()
                .any(|k| key.eq_ignore_ascii_case(k))
            {
                return self.syntax("Duplicate parameter");
            } else {
                return self.send(reply(555, (5, 5, 4), "Unsupported parameter"));
            }
        }
        let from = match address::parse_path(path, true, smtputf8) {
            Ok(p) => match p.mailbox {
                Some(m) => ReversePath::Mailbox(m),
                None => ReversePath::Null,
            },
            Err(PathError::NonAscii) => return self.non_ascii(),
            Err(PathError::TooLong) => {
                return self.send(reply(501, (5, 1, 7), "Sender address too long"));
            }
            Err(PathError::Syntax(_)) => return bad_sender(self),
        };
        let max = self.params.max_message_size;
        if max > 0 && size.is_some_and(|n| n > max) {
            return self.send(reply(552, (5, 3, 4), "Message size exceeds fixed limit"));
        }
        let mail = MailFrom {
            from,
            size,
            body: body.unwrap_or(BodyType::SevenBit),
            smtputf8,
        };
        self.emit(Event::Mail(mail.clone()), Owed::Mail(mail));
    }

    fn non_ascii(&mut self) {
        self.send(reply(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
    }

    fn cmd_rcpt(&mut self, arg: &str) {
        let Some(smtputf8) = self.mail_from().map(|m| m.smtputf8) else {
            return self.send(reply(503, (5, 5, 1), "Error: need MAIL command"));
        };
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.syntax("Syntax: RCPT TO:<address>");
        };
        let bad_rcpt =
            |s: &mut Session| s.send(reply(501, (5, 1, 3), "Bad recipient address syntax"));
        let Some((path, params)) = split_path(rest) else {
            return bad_rcpt(self);
        };
        if !params.trim_start_matches(' ').is_empty() {
            return self.send(reply(555, (5, 5, 4), "Unsupported parameter"));
        }
        let path = match address::parse_path(path, false, smtputf8) {
            Ok(p) => p,
            Err(PathError::NonAscii) => return self.non_ascii(),
            Err(PathError::TooLong) => {
                return self.send(reply(501, (5, 1, 3), "Recipient address too long"));
            }
            Err(PathError::Syntax(_)) => return bad_rcpt(self),
        };
        let Some(to) = path.mailbox else {
            return bad_rcpt(self);
        };
        if self.recipients().len() >= self.params.max_recipients {
            // RFC 5321 4.5.3.1.10: a client may send more RCPTs than we
            // take, and retries the rest later. Like Postfix's
            // smtpd_recipient_overshoot_limit, these 452s are not errors
            // (a pipelined batch must not cost the session) up to a bound.
            self.overshoot = self.overshoot.saturating_add(1);
            let r = reply(452, (4, 5, 3), "Too many recipients");
            if self.overshoot <= RECIPIENT_OVERSHOOT {
                r.write_to(&mut self.output);
                return;
            }
            return self.send(r);
        }
        let rcpt = RcptTo {
            to: to.clone(),
            source_route: path.source_route,
        };
        self.emit(Event::Rcpt(rcpt), Owed::Rcpt(to));
    }

    fn cmd_data(&mut self, arg: &str) {
        if !arg.trim().is_empty() {
            return self.syntax("Syntax: DATA");
        }
        if self.transaction.is_none() {
            return self.send(reply(503, (5, 5, 1), "Error: need MAIL command"));
        }
        if self.recipients().is_empty() {
            return self.send(reply(554, (5, 5, 1), "Error: no valid recipients"));
        }
        self.emit(Event::DataStart, Owed::Data);
    }

    fn cmd_starttls(&mut self, arg: &str) {
        if !arg.trim().is_empty() {
            return self.syntax("Syntax: STARTTLS");
        }
        if !self.params.starttls {
            return self.send(reply(502, (5, 5, 1), "Error: command not implemented"));
        }
        if self.tls {
            return self.send(reply(503, (5, 5, 1), "Error: TLS already active"));
        }
        if self.transaction.is_some() {
            return self.send(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
        }
        self.send(reply(220, (2, 0, 0), "Ready to start TLS"));
        // From here on no plaintext byte is processed: `process` drops the
        // buffer and `receive` ignores input until `tls_started`.
        self.phase = Phase::AwaitingTls;
        self.events.push_back(Event::StartTls);
    }
}

/// Splits `<path> params` after `FROM:`/`TO:` (a space before the path is
/// allowed, leniently like Postfix: `MAIL FROM: <a@b>`); None when the path
/// does not end properly or runs into the parameters.
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ');
    let (path, params) = rest.split_at(address::path_len(rest)?);
    (params.is_empty() || params.starts_with(' ')).then_some((path, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            hostname: "mx.test".into(),
            max_message_size: 10_000,
            max_recipients: 3,
            max_errors: 50,
            max_hops: 5,
            starttls: true,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }

    /// What a driver run produced.
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        lines: Vec<String>,
        events: Vec<Event>,
    }

    impl Run {
        fn has(&self, line: &str) -> bool {
            self.lines.iter().any(|l| l == line)
        }
        fn body(&self) -> Vec<u8> {
            let mut b = Vec::new();
            for e in &self.events {
                if let Event::Body(c) = e {
                    b.extend_from_slice(c);
                }
            }
            b
        }
        fn mails(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, Event::Mail(_)))
                .count()
        }
    }

    /// Drives a session as the receive driver does: writes output, answers
    /// events (recipients with local part `bad` are refused), and feeds the
    /// next piece of input only when the session wants input.
    fn drive(p: Params, pieces: &[&[u8]]) -> Run {
        let mut s = Session::new(p);
        s.greeting();
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut pieces = pieces.iter();
        loop {
            out.extend(s.take_output());
            if let Some(e) = s.poll_event() {
                match &e {
                    Event::Mail(_) => s.answer_mail(Ok(())),
                    Event::Rcpt(r) if r.to.local == "bad" => {
                        s.answer_rcpt(Err(Reply::enh(550, (5, 1, 1), "No such user")))
                    }
                    Event::Rcpt(_) => s.answer_rcpt(Ok(())),
                    Event::DataStart => s.answer_data(Ok(())),
                    Event::DataEnd => s.answer_data_end(Reply::enh(250, (2, 0, 0), "Ok: queued")),
                    Event::StartTls => s.tls_started(),
                    _ => {}
                }
                events.push(e);
                continue;
            }
            if events.last() == Some(&Event::Close) {
                break;
            }
            assert!(s.wants_input(), "session stuck without an event");
            match pieces.next() {
                Some(piece) => s.receive(piece),
                None => break,
            }
        }
        let text = String::from_utf8(out).expect("replies are UTF-8");
        Run {
            lines: text.split_terminator("\r\n").map(str::to_string).collect(),
            events,
        }
    }

    fn whole(input: &[u8]) -> Run {
        drive(params(), &[input])
    }

    /// The same input one byte at a time.
    fn bytewise(input: &[u8]) -> Run {
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        drive(params(), &pieces)
    }

    /// Runs `input` whole and byte by byte and checks both agree.
    fn both(input: &[u8]) -> Run {
        let a = whole(input);
        assert_eq!(a, bytewise(input), "split changed the outcome");
        a
    }

    const TX: &str = "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n";

    #[test]
    fn full_session() {
        // The whole happy path, reply by reply.
        let r = both(
            b"EHLO client.test\r\nMAIL FROM:<a@b.test> SIZE=20 BODY=8BITMIME\r\n\
              RCPT TO:<c@D.Test>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(
            r.lines,
            [
                "220 mx.test ESMTP mxspool",
                "250-mx.test",
                "250-PIPELINING",
                "250-SIZE 10000",
                "250-8BITMIME",
                "250-ENHANCEDSTATUSCODES",
                "250-SMTPUTF8",
                "250 STARTTLS",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued",
                "221 2.0.0 Bye",
            ]
        );
        let mbox = |l: &str, d: &str| Mailbox {
            local: l.into(),
            domain: d.into(),
        };
        assert_eq!(
            r.events,
            [
                Event::Mail(MailFrom {
                    from: ReversePath::Mailbox(mbox("a", "b.test")),
                    size: Some(20),
                    body: BodyType::EightBitMime,
                    smtputf8: false,
                }),
                Event::Rcpt(RcptTo {
                    to: mbox("c", "d.test"),
                    source_route: false,
                }),
                Event::DataStart,
                Event::Body(b"Subject: x\r\n\r\nhello\r\n".to_vec()),
                Event::DataEnd,
                Event::Close,
            ]
        );
    }

    #[test]
    fn pipelined_batch_answers_in_order() {
        // RFC 2920: one write, events one at a time, replies in order, a
        // refused recipient in the middle does not disturb the others.
        let r = both(
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<bad@d.test>\r\n\
              RCPT TO:<y@d.test>\r\nDATA\r\n.\r\nRSET\r\nNOOP\r\n",
        );
        let codes: Vec<&str> = r.lines.iter().map(|l| &l[..4]).collect();
        assert_eq!(
            codes[8..],
            [
                "250 ", "250 ", "550 ", "250 ", "354 ", "250 ", "250 ", "250 "
            ]
        );
        assert_eq!(r.lines[10], "550 5.1.1 No such user");
        assert_eq!(r.mails(), 1);
        assert!(r.events.contains(&Event::DataEnd));
        assert!(
            !r.events.contains(&Event::Reset),
            "RSET after DATA end: nothing open"
        );
    }

    #[test]
    fn random_splits_give_identical_output() {
        // Any segmentation of the stream must give the same session.
        let mut script = Vec::new();
        script.extend_from_slice(TX.as_bytes());
        script.extend_from_slice(
            b"a\r\n..b\r\n\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n",
        );
        script.extend_from_slice(b"DATA\r\nx\n.\ny\r\n.\r\nNOOP\r\nFOO\r\n");
        script.extend(vec![b'z'; 600]);
        script.extend_from_slice(b"\r\nRSET\r\nQUIT\r\n");
        let expected = whole(&script);
        assert!(expected.has("221 2.0.0 Bye"));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut pieces = Vec::new();
            let mut rest = &script[..];
            while !rest.is_empty() {
                // xorshift64: deterministic, no dependency.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 40 + 1) as usize;
                let (a, b) = rest.split_at(n.min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            assert_eq!(drive(params(), &pieces), expected);
        }
    }

    #[test]
    fn bad_sequences_get_503() {
        let r = both(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<a@b>\r\nDATA\r\nEHLO c\r\nRCPT TO:<a@b>\r\nDATA\r\n\
                      MAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\n",
        );
        assert_eq!(r.lines[1], "503 5.5.1 Error: send HELO/EHLO first");
        assert_eq!(r.lines[2], "503 5.5.1 Error: need MAIL command");
        assert_eq!(r.lines[3], "503 5.5.1 Error: need MAIL command");
        let tail = &r.lines[r.lines.len() - 5..];
        assert_eq!(
            tail,
            [
                "503 5.5.1 Error: need MAIL command",
                "503 5.5.1 Error: need MAIL command",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: nested MAIL command",
                "554 5.5.1 Error: no valid recipients",
            ]
        );
        assert_eq!(r.mails(), 1);
    }

    #[test]
    fn data_with_only_refused_recipients_is_554() {
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bad@d>\r\nDATA\r\n");
        assert_eq!(
            r.lines.last().map(String::as_str),
            Some("554 5.5.1 Error: no valid recipients")
        );
        assert!(!r.events.contains(&Event::DataStart));
    }

    #[test]
    fn syntax_errors() {
        let cases: &[(&str, &str)] = &[
            ("EHLO", "501 5.5.4 Syntax: EHLO hostname"),
            ("HELO ", "501 5.5.4 Syntax: HELO hostname"),
            ("MAIL TO:<a@b>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
            ("MAIL FROM:a@b", "501 5.1.7 Bad sender address syntax"),
            ("MAIL FROM:<a b@c>", "501 5.1.7 Bad sender address syntax"),
            (
                "MAIL FROM:<a@b>SIZE=1",
                "501 5.1.7 Bad sender address syntax",
            ),
            ("MAIL FROM:<a@b> SIZE=x", "501 5.5.4 Bad SIZE parameter"),
            ("MAIL FROM:<a@b> SIZE=", "501 5.5.4 Bad SIZE parameter"),
            (
                "MAIL FROM:<a@b> BODY=BINARYMIME",
                "501 5.5.4 Bad BODY parameter",
            ),
            (
                "MAIL FROM:<a@b> SMTPUTF8=yes",
                "501 5.5.4 Bad SMTPUTF8 parameter",
            ),
            (
                "MAIL FROM:<a@b> SIZE=1 SIZE=2",
                "501 5.5.4 Duplicate parameter",
            ),
            (
                "MAIL FROM:<a@b> RET=FULL",
                "555 5.5.4 Unsupported parameter",
            ),
            ("DATA now", "501 5.5.4 Syntax: DATA"),
            ("RSET x", "501 5.5.4 Syntax: RSET"),
            ("FOO", "500 5.5.1 Error: command not recognized"),
            ("EXPN list", "502 5.5.1 Error: command not implemented"),
            ("", "500 5.5.2 Empty command"),
            ("NO\rOP", "500 5.5.2 Bare CR or LF not allowed"),
            ("NO\nOP", "500 5.5.2 Bare CR or LF not allowed"),
            ("NO\0OP", "500 5.5.2 Invalid character in command"),
            ("STARTTLS now", "501 5.5.4 Syntax: STARTTLS"),
        ];
        for (cmd, want) in cases {
            let input = format!("EHLO c\r\n{cmd}\r\nNOOP\r\n");
            let r = both(input.as_bytes());
            let n = r.lines.len();
            assert_eq!(r.lines[n - 2], *want, "{cmd:?}");
            assert_eq!(r.lines[n - 1], "250 2.0.0 Ok", "in sync after {cmd:?}");
            assert_eq!(r.mails(), 0, "{cmd:?}");
        }
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\nRCPT TO:<a@b> NOTIFY=NEVER\r\nRCPT TO:Postmaster\r\n");
        assert_eq!(
            r.lines[r.lines.len() - 3..],
            [
                "501 5.1.3 Bad recipient address syntax",
                "555 5.5.4 Unsupported parameter",
                "501 5.1.3 Bad recipient address syntax",
            ]
        );
    }

    #[test]
    fn commands_are_case_insensitive_and_lenient_after_colon() {
        let r = both(b"ehlo c\r\nmail from: <A@B.TEST> smtputf8\r\nrcpt to:<x@y>\r\nnoop\r\nvrfy x\r\nhelp\r\n");
        assert!(r.has("250 2.1.0 Ok") && r.has("250 2.1.5 Ok"));
        assert!(r.has("252 2.5.0 Cannot VRFY user, but will accept message"));
        assert!(r.has("214 2.0.0 See RFC 5321"));
        assert!(matches!(&r.events[0], Event::Mail(m) if m.smtputf8
            && m.from == ReversePath::Mailbox(Mailbox { local: "A".into(), domain: "b.test".into() })));
    }

    #[test]
    fn command_line_limit_is_512_with_crlf() {
        // 510 octets + CRLF is the longest legal command line.
        let ok = format!("NOOP {}\r\n", "x".repeat(510 - 5));
        let long = format!("NOOP {}\r\n", "x".repeat(511 - 5));
        let huge = format!("NOOP {}\r\n", "x\n".repeat(5000));
        let input = format!("{ok}{long}{huge}NOOP\r\n");
        let r = both(input.as_bytes());
        assert_eq!(
            r.lines[1..],
            [
                "250 2.0.0 Ok",
                "500 5.5.2 Line too long",
                "500 5.5.2 Line too long",
                "250 2.0.0 Ok",
            ]
        );
    }

    #[test]
    fn overlong_command_is_not_buffered() {
        // The session keeps at most a partial line, whatever arrives.
        let mut s = Session::new(params());
        for _ in 0..100 {
            s.receive(&[b'x'; 1000]);
            assert!(s.input.len() < MAX_COMMAND_LINE);
        }
        s.receive(b"\r\n");
        assert_eq!(s.take_output(), b"500 5.5.2 Line too long\r\n");
    }

    #[test]
    fn a_pipelined_burst_over_the_recipient_limit_is_not_an_error() {
        // 250 RCPTs in one write with max_recipients 3 and max_errors 10:
        // 247 get 452, the session stays open and DATA still works.
        let mut p = params();
        p.max_errors = 10;
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\n".to_vec();
        for i in 0..250 {
            input.extend_from_slice(format!("RCPT TO:<{i}@d>\r\n").as_bytes());
        }
        input.extend_from_slice(b"DATA\r\n");
        let r = drive(p, &[&input]);
        assert_eq!(
            r.lines
                .iter()
                .filter(|l| l.starts_with("452 4.5.3"))
                .count(),
            247
        );
        assert!(!r.lines.iter().any(|l| l.starts_with("421")));
        assert!(r.has("354 End data with <CR><LF>.<CR><LF>"));
    }

    #[test]
    fn too_many_recipients_is_452_without_event() {
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\nRCPT TO:<4@d>\r\n");
        assert_eq!(
            r.lines.last().map(String::as_str),
            Some("452 4.5.3 Too many recipients")
        );
        let rcpts = r
            .events
            .iter()
            .filter(|e| matches!(e, Event::Rcpt(_)))
            .count();
        assert_eq!(rcpts, 3);
    }

    #[test]
    fn size_parameter_over_limit_is_552() {
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b> SIZE=10001\r\nMAIL FROM:<a@b> SIZE=99999999999999999999999\r\nMAIL FROM:<a@b> SIZE=10000\r\n");
        let n = r.lines.len();
        assert_eq!(r.lines[n - 3], "552 5.3.4 Message size exceeds fixed limit");
        assert_eq!(r.lines[n - 2], "552 5.3.4 Message size exceeds fixed limit");
        assert_eq!(r.lines[n - 1], "250 2.1.0 Ok");
        // No limit configured: any SIZE goes.
        let p = Params {
            max_message_size: 0,
            ..params()
        };
        let r = drive(p, &[b"EHLO c\r\nMAIL FROM:<a@b> SIZE=99999999\r\n"]);
        assert!(r.has("250-SIZE 0") && r.has("250 2.1.0 Ok"));
    }

    #[test]
    fn body_over_limit_is_552_at_end() {
        let mut input = TX.as_bytes().to_vec();
        input.extend(b"0123456789\r\n".repeat(900));
        input.extend_from_slice(b".\r\nNOOP\r\n");
        let r = both(&input);
        let n = r.lines.len();
        assert_eq!(r.lines[n - 2], "552 5.3.4 Message too big");
        assert_eq!(r.lines[n - 1], "250 2.0.0 Ok");
        assert!(r.events.contains(&Event::DataRefused(DataRefusal::TooBig)));
        assert!(!r.events.contains(&Event::DataEnd));
    }

    #[test]
    fn text_line_over_1000_is_refused_at_end() {
        let input = format!("{TX}{}\r\n.\r\nNOOP\r\n", "a".repeat(999));
        let r = both(input.as_bytes());
        let n = r.lines.len();
        assert_eq!(r.lines[n - 2], "500 5.5.2 Line too long");
        assert_eq!(r.lines[n - 1], "250 2.0.0 Ok");
        assert!(
            r.events
                .contains(&Event::DataRefused(DataRefusal::LineTooLong))
        );
    }

    #[test]
    fn too_many_received_headers_is_554() {
        let input = format!("{TX}{}\r\nbody\r\n.\r\n", "Received: x\r\n".repeat(6));
        let r = both(input.as_bytes());
        assert_eq!(
            r.lines.last().map(String::as_str),
            Some("554 5.4.6 Too many Received headers: mail loop?")
        );
        let input = format!("{TX}{}\r\nbody\r\n.\r\n", "Received: x\r\n".repeat(5));
        assert!(both(input.as_bytes()).events.contains(&Event::DataEnd));
    }

    #[test]
    fn bare_newlines_in_data_never_end_it() {
        // Smuggling defence: each arrangement stays inside DATA, the message
        // is refused at the real end, and the session is in sync after it.
        for bad in [
            "\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r.\r\n", "a\rb", "a\nb",
        ] {
            let input = format!(
                "{TX}x{bad}MAIL FROM:<evil@x>\r\nRCPT TO:<v@d>\r\nDATA\r\n\r\n.\r\nMAIL FROM:<a@b>\r\n"
            );
            let r = both(input.as_bytes());
            let n = r.lines.len();
            assert_eq!(
                r.lines[n - 2],
                "550 5.5.2 Message contains bare CR or LF",
                "{bad:?}"
            );
            assert_eq!(r.lines[n - 1], "250 2.1.0 Ok", "{bad:?}");
            assert_eq!(r.mails(), 2, "no smuggled MAIL for {bad:?}");
            assert!(!r.events.contains(&Event::DataEnd), "{bad:?}");
            assert!(
                r.events
                    .contains(&Event::DataRefused(DataRefusal::BareNewline))
            );
            assert!(
                r.body().is_empty(),
                "nothing of a refused message is spooled"
            );
        }
    }

    #[test]
    fn smuggled_command_after_lf_dot_lf_is_not_executed() {
        let input = format!(
            "{TX}Subject: hi\r\n\r\nhello\n.\nMAIL FROM:<x@evil>\r\nRCPT TO:<y@d>\r\nDATA\r\nspoof\r\n.\r\nQUIT\r\n"
        );
        let r = both(input.as_bytes());
        assert_eq!(r.mails(), 1);
        assert!(
            !r.events
                .iter()
                .any(|e| matches!(e, Event::Mail(m) if m.from.to_string() == "x@evil"))
        );
        assert!(r.has("221 2.0.0 Bye"));
    }

    #[test]
    fn dot_unstuffing_and_empty_message() {
        let input = format!(
            "{TX}..a\r\n.b\r\n...\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n"
        );
        let r = both(input.as_bytes());
        assert_eq!(r.body(), b".a\r\nb\r\n..\r\n");
        let ends = r.events.iter().filter(|e| **e == Event::DataEnd).count();
        assert_eq!(ends, 2, "the empty message ends too");
        assert_eq!(
            r.lines.last().map(String::as_str),
            Some("250 2.0.0 Ok: queued")
        );
    }

    #[test]
    fn starttls_discards_pipelined_plaintext() {
        // CVE-2011-0411 class: NOOP sent with STARTTLS is never answered.
        let r = drive(
            params(),
            &[
                b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n",
                b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n",
            ],
        );
        assert!(r.has("220 2.0.0 Ready to start TLS"));
        assert_eq!(
            r.lines
                .iter()
                .filter(|l| l.starts_with("250 2.0.0"))
                .count(),
            0
        );
        // After TLS: EHLO forgotten, STARTTLS no longer offered or allowed.
        let n = r.lines.len();
        assert_eq!(r.lines[n - 8], "503 5.5.1 Error: send HELO/EHLO first");
        assert_eq!(r.lines[n - 2], "250 SMTPUTF8");
        assert_eq!(r.lines[n - 1], "503 5.5.1 Error: TLS already active");
        assert_eq!(r.events, [Event::StartTls]);
    }

    #[test]
    fn starttls_discards_plaintext_at_any_split() {
        // Whatever came in the same read as (or after) the STARTTLS line,
        // before the handshake, is dropped; later reads are TLS data.
        let input = b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n";
        for cut in 0..16 {
            let (a, b) = input.split_at(cut);
            let r = drive(params(), &[a, b, b"QUIT\r\n"]);
            assert!(!r.has("250 2.0.0 Ok"), "cut at {cut}");
            assert!(r.has("221 2.0.0 Bye"), "cut at {cut}");
            assert_eq!(r.events, [Event::StartTls, Event::Close], "cut at {cut}");
        }
    }

    #[test]
    fn starttls_refused_when_not_offered_or_in_transaction() {
        let p = Params {
            starttls: false,
            ..params()
        };
        let r = drive(p, &[b"EHLO c\r\nSTARTTLS\r\n"]);
        assert!(!r.has("250 STARTTLS") && !r.has("250-STARTTLS"));
        assert!(r.has("502 5.5.1 Error: command not implemented"));
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\n");
        assert!(r.has("503 5.5.1 Error: MAIL transaction in progress"));
    }

    #[test]
    fn non_ascii_address_needs_smtputf8() {
        let r = both(
            "EHLO c\r\nMAIL FROM:<jösé@b>\r\nMAIL FROM:<jösé@b> SMTPUTF8\r\nRCPT TO:<ü@dömäin>\r\n"
                .as_bytes(),
        );
        let n = r.lines.len();
        assert_eq!(
            r.lines[n - 3],
            "553 5.6.7 Non-ASCII address requires SMTPUTF8"
        );
        assert_eq!(r.lines[n - 2], "250 2.1.0 Ok");
        assert_eq!(r.lines[n - 1], "250 2.1.5 Ok");
        let r = both("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ü@d>\r\n".as_bytes());
        assert_eq!(
            r.lines.last().map(String::as_str),
            Some("553 5.6.7 Non-ASCII address requires SMTPUTF8")
        );
        let r = both(b"EHLO c\r\nNOOP \xff\r\n");
        assert!(r.has("500 5.5.2 Invalid UTF-8 in command"));
    }

    #[test]
    fn ehlo_and_rset_reset_an_open_transaction() {
        let r = both(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRSET\r\nMAIL FROM:<a@b>\r\nHELO d\r\nRSET\r\nMAIL FROM:<a@b>\r\n");
        let resets = r.events.iter().filter(|e| **e == Event::Reset).count();
        assert_eq!(resets, 2, "only when a transaction was open");
        assert!(r.has("250 mx.test"));
        assert_eq!(r.mails(), 3);
    }

    #[test]
    fn too_many_errors_closes_with_421() {
        let p = Params {
            max_errors: 2,
            ..params()
        };
        let r = drive(p, &[b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n"]);
        assert_eq!(
            r.lines[1..],
            [
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        );
        assert_eq!(r.events, [Event::Close]);
    }

    #[test]
    fn timeout_shutdown_and_refusal_close() {
        let mut s = Session::new(params());
        s.greeting();
        let t0 = Instant::now();
        s.waiting(t0);
        assert!(s.handle_timeout(t0 + Duration::from_secs(300)));
        assert!(
            s.take_output()
                .ends_with(b"421 4.4.2 mx.test Error: timeout exceeded\r\n")
        );
        assert_eq!(s.poll_event(), Some(Event::Close));
        s.receive(b"NOOP\r\n");
        assert!(s.take_output().is_empty(), "input after close is ignored");
        assert!(!s.wants_input());

        let mut s = Session::new(params());
        s.refuse_connection(Reply::enh(554, (5, 7, 1), "Go away"));
        assert_eq!(s.take_output(), b"554 5.7.1 Go away\r\n");
        assert_eq!(s.poll_event(), Some(Event::Close));
    }

    #[test]
    fn shutdown_waits_for_owed_answer() {
        let mut s = Session::new(params());
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP\r\n");
        s.take_output();
        assert!(matches!(s.poll_event(), Some(Event::Mail(_))));
        s.shutdown();
        assert!(s.take_output().is_empty());
        s.answer_mail(Ok(()));
        assert_eq!(
            s.take_output(),
            b"250 2.1.0 Ok\r\n421 4.3.2 mx.test Service shutting down\r\n"
        );
        assert_eq!(s.poll_event(), Some(Event::Close));
    }

    #[test]
    fn shutdown_during_data_start_sends_no_354() {
        let mut s = Session::new(params());
        s.receive(TX.as_bytes());
        assert!(matches!(s.poll_event(), Some(Event::Mail(_))));
        s.answer_mail(Ok(()));
        assert!(matches!(s.poll_event(), Some(Event::Rcpt(_))));
        s.answer_rcpt(Ok(()));
        assert_eq!(s.poll_event(), Some(Event::DataStart));
        s.take_output();
        s.shutdown();
        s.answer_data(Ok(()));
        assert_eq!(
            s.take_output(),
            b"421 4.3.2 mx.test Service shutting down\r\n"
        );
        assert!(!s.in_data());
        assert_eq!(s.poll_event(), Some(Event::Close));
    }

    #[test]
    fn no_input_taken_while_answer_owed() {
        let mut s = Session::new(params());
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP\r\n");
        assert!(!s.wants_input());
        assert!(matches!(s.poll_event(), Some(Event::Mail(_))));
        assert!(!s.wants_input());
        assert_eq!(s.poll_event(), None);
        s.answer_mail(Err(Reply::enh(451, (4, 3, 0), "Try later")));
        assert!(
            s.take_output()
                .ends_with(b"451 4.3.0 Try later\r\n250 2.0.0 Ok\r\n")
        );
        assert!(s.mail_from().is_none());
        assert!(s.wants_input());
    }

    #[test]
    fn failed_data_keeps_transaction() {
        let mut s = Session::new(params());
        s.receive(TX.as_bytes());
        assert!(matches!(s.poll_event(), Some(Event::Mail(_))));
        s.answer_mail(Ok(()));
        assert!(matches!(s.poll_event(), Some(Event::Rcpt(_))));
        s.answer_rcpt(Ok(()));
        assert_eq!(s.poll_event(), Some(Event::DataStart));
        s.answer_data(Err(Reply::enh(452, (4, 3, 1), "Spool full")));
        assert!(!s.in_data());
        assert_eq!(s.recipients().len(), 1);
        assert!(s.mail_from().is_some());
    }

    /// Feeds `input` at `now` the way the driver does: answers every
    /// event, then waits for input from `now`.
    fn feed_at(s: &mut Session, now: Instant, input: &[u8]) -> String {
        s.receive(input);
        while let Some(e) = s.poll_event() {
            match e {
                Event::Mail(_) => s.answer_mail(Ok(())),
                Event::Rcpt(_) => s.answer_rcpt(Ok(())),
                Event::DataStart => s.answer_data(Ok(())),
                Event::DataEnd => s.answer_data_end(Reply::enh(250, (2, 0, 0), "Ok")),
                _ => {}
            }
        }
        s.waiting(now);
        String::from_utf8(s.take_output()).expect("replies are UTF-8")
    }

    #[test]
    fn command_timeout_gives_421_4_4_2_and_closes() {
        let mut s = Session::new(params());
        s.greeting();
        s.take_output();
        let t0 = Instant::now();
        assert_eq!(s.poll_timeout(), None, "no timer before the driver waits");
        s.waiting(t0);
        let due = t0 + Duration::from_secs(300);
        assert_eq!(s.poll_timeout(), Some(due));
        assert!(!s.handle_timeout(due - Duration::from_millis(1)), "early");
        assert!(s.take_output().is_empty());
        assert!(s.handle_timeout(due));
        assert_eq!(
            s.take_output(),
            b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
        );
        assert_eq!(s.poll_event(), Some(Event::Close));
        assert_eq!(s.poll_timeout(), None);
        assert!(
            !s.handle_timeout(due + Duration::from_secs(1)),
            "fires once"
        );
    }

    #[test]
    fn each_read_gets_the_whole_timeout_and_data_has_its_own() {
        let mut s = Session::new(params());
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        s.waiting(t0);
        // A byte just before each command timeout keeps the session (the
        // timeout is per read, as the driver had it).
        for (i, b) in b"EHLO c\r\n".iter().enumerate() {
            let at = secs(299 * (i as u64 + 1));
            assert!(!s.handle_timeout(at));
            feed_at(&mut s, at, &[*b]);
            assert_eq!(s.poll_timeout(), Some(at + Duration::from_secs(300)));
        }
        let t = secs(5000);
        let out = feed_at(&mut s, t, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
        assert!(s.in_data());
        // In DATA the data timeout (180 s here) applies.
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(180)));
        let out = feed_at(&mut s, t, b"x\r\n.\r\n");
        assert!(out.ends_with("250 2.0.0 Ok\r\n"));
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(300)));
        s.receive(b"body\r\n");
        assert_eq!(s.poll_timeout(), None, "input disarms until the next wait");
    }

    #[test]
    fn no_timer_while_an_answer_is_owed_or_after_close() {
        let mut s = Session::new(params());
        let t0 = Instant::now();
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
        assert!(matches!(s.poll_event(), Some(Event::Mail(_))));
        // The driver decides (a DNSBL lookup, say): not the client's time.
        s.waiting(t0);
        assert_eq!(s.poll_timeout(), None);
        s.answer_mail(Ok(()));
        s.waiting(t0);
        assert!(s.poll_timeout().is_some());
        s.receive(b"QUIT\r\n");
        assert_eq!(s.poll_event(), Some(Event::Close));
        s.waiting(t0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn tls_handshake_has_the_command_timeout_and_closes_silently() {
        let mut s = Session::new(params());
        let t0 = Instant::now();
        s.receive(b"EHLO c\r\nSTARTTLS\r\n");
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        s.take_output();
        s.waiting(t0);
        let due = t0 + Duration::from_secs(300);
        assert_eq!(s.poll_timeout(), Some(due));
        assert!(s.handle_timeout(due));
        assert!(s.take_output().is_empty(), "no plaintext mid-handshake");
        assert_eq!(s.poll_event(), Some(Event::Close));

        let mut s = Session::new(params());
        s.receive(b"EHLO c\r\nSTARTTLS\r\n");
        s.poll_event();
        s.waiting(t0);
        s.tls_started();
        assert_eq!(s.poll_timeout(), None, "the handshake's timer ends with it");
    }
}
