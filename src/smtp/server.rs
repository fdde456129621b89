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
//! 3. On a timeout call `timeout()`; on shutdown `shutdown()`.

use super::address::{Mailbox, ReversePath};
use super::reply::Reply;

/// Largest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Largest text line in DATA, CRLF included (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
/// Body bytes gathered before a `Event::Body` chunk is handed out.
pub const BODY_CHUNK: usize = 32 * 1024;

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

/// One SMTP server session.
pub struct Session {
    _todo: (),
}

impl Session {
    pub fn new(params: Params) -> Session {
        let _ = params;
        todo!("smtp::server::Session::new")
    }

    /// Queues the `220 hostname ESMTP` greeting.
    pub fn greeting(&mut self) {
        todo!()
    }

    /// Queues `554 5.3.2` (or `421 4.7.0` with `text`) instead of a greeting
    /// and closes: for refusals decided at connect time.
    pub fn refuse_connection(&mut self, reply: Reply) {
        let _ = reply;
        todo!()
    }

    /// True when the session can take more input now (no answer owed, no
    /// undelivered body chunk, not closed, internal buffer not full).
    pub fn wants_input(&self) -> bool {
        todo!()
    }

    /// Feeds bytes read from the socket. The session keeps at most one
    /// partial line (bounded) and processes whole lines as far as it can
    /// without an owed answer.
    pub fn receive(&mut self, input: &[u8]) {
        let _ = input;
        todo!()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// Reply bytes to write to the client (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        todo!()
    }

    /// Ok: `250 2.1.0 Ok`. Err(reply): that reply, transaction not opened.
    pub fn answer_mail(&mut self, result: Result<(), Reply>) {
        let _ = result;
        todo!()
    }

    /// Ok: `250 2.1.5 Ok`, recipient added. Err(reply): not added.
    pub fn answer_rcpt(&mut self, result: Result<(), Reply>) {
        let _ = result;
        todo!()
    }

    /// Ok: `354 End data with <CR><LF>.<CR><LF>`. Err(reply): transaction
    /// stays as it was (RFC 5321: a failed DATA does not reset).
    pub fn answer_data(&mut self, result: Result<(), Reply>) {
        let _ = result;
        todo!()
    }

    /// The reply to the end of data (250 with the queue id, or 4xx/5xx);
    /// the transaction is reset either way.
    pub fn answer_data_end(&mut self, reply: Reply) {
        let _ = reply;
        todo!()
    }

    /// The TLS handshake succeeded: forget EHLO, stop offering STARTTLS.
    pub fn tls_started(&mut self) {
        todo!()
    }

    /// The client was silent too long: queue 421 4.4.2 and close.
    pub fn timeout(&mut self) {
        todo!()
    }

    /// We are stopping: queue 421 4.3.2 and close (when no answer is owed).
    pub fn shutdown(&mut self) {
        todo!()
    }

    /// HELO/EHLO argument, if given.
    pub fn helo(&self) -> Option<&str> {
        todo!()
    }

    /// True after EHLO (ESMTP), false after HELO.
    pub fn esmtp(&self) -> bool {
        todo!()
    }

    /// True while the session is reading message text (the driver uses
    /// the DATA timeout then, the command timeout otherwise).
    pub fn in_data(&self) -> bool {
        todo!()
    }

    /// The accepted recipients of the open transaction.
    pub fn recipients(&self) -> &[Mailbox] {
        todo!()
    }

    /// The MAIL FROM of the open transaction.
    pub fn mail_from(&self) -> Option<&MailFrom> {
        todo!()
    }
}
