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

use super::reply::Reply;

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

pub struct Client {
    _todo: (),
}

impl Client {
    /// `ehlo_name`: our hostname, sent with EHLO.
    pub fn new(ehlo_name: &str) -> Client {
        let _ = ehlo_name;
        todo!("smtp::client::Client::new")
    }

    pub fn receive(&mut self, input: &[u8]) {
        let _ = input;
        todo!()
    }
    pub fn wants_input(&self) -> bool {
        todo!()
    }
    pub fn take_output(&mut self) -> Vec<u8> {
        todo!()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// After `Ready`, when the server offered STARTTLS: send STARTTLS.
    pub fn starttls(&mut self) {
        todo!()
    }
    /// The handshake succeeded: EHLO again.
    pub fn tls_established(&mut self) {
        todo!()
    }

    /// Starts a transaction (after `Ready`, or after the previous
    /// transaction's outcome). With PIPELINING, MAIL, every RCPT and DATA go
    /// out in one write; without it, one command per reply.
    pub fn send_mail(&mut self, envelope: Envelope) {
        let _ = envelope;
        todo!()
    }

    /// Body bytes (unstuffed, as spooled); dot-stuffed on the way out.
    pub fn body(&mut self, bytes: &[u8]) {
        let _ = bytes;
        todo!()
    }
    /// Ends the body: CRLF (if the body did not end with one), `.` CRLF.
    pub fn end_body(&mut self) {
        todo!()
    }

    /// Call-ahead: MAIL FROM:<from>, RCPT TO for each of `to` (pipelined
    /// when offered), no DATA; `MailReply`, one `RcptReply` each, then
    /// `ProbeDone` (RSET is sent so another probe or QUIT may follow).
    pub fn send_probe(&mut self, from: &str, to: &[String]) {
        let _ = (from, to);
        todo!()
    }

    /// Sends QUIT.
    pub fn quit(&mut self) {
        todo!()
    }

    /// The peer closed the connection (EOF): emits `Failed` unless QUIT
    /// was already sent.
    pub fn eof(&mut self) {
        todo!()
    }
}
