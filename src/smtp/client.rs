//! The SMTP client as a sans-IO state machine, used for delivery (and, in
//! probe mode, for call-ahead). Reply bytes in, command bytes and events
//! out; the deliver driver owns the socket and the spool. Time is an
//! input: the client reads no clock, the driver passes `now`.
//!
//! Call order for the driver:
//! 1. `Client::new(ehlo_name, timeouts)`; read the greeting:
//!    `receive(bytes)`.
//! 2. Loop: call `waiting(now)` when it starts waiting for the next event;
//!    write out `take_output()`; handle `poll_event()`; when the client
//!    `wants_input()`, read and `receive(bytes)`, sleeping no later than
//!    `poll_timeout()`; when that passes, `handle_timeout(now)` says which
//!    timer expired and the connection is done (no QUIT: it is stuck).
//! 3. After `Event::Ready`, start a transaction with `send_mail`; stream the
//!    body with `body()`/`end_body()` after `Event::SendBody`; after the
//!    transaction's outcome, start another or `quit()`. A `Tally` fed the
//!    transaction's events gives each recipient's verdict.
//!
//! The client never emits a bare CR or LF: body bytes are dot-stuffed and
//! any lone CR or LF is written as CRLF.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::dotstuff::DotStuffer;
use super::reply::{Enhanced, Reply};

/// Longest reply line we accept from a server (RFC 5321 says 512; real
/// servers are sloppy, a little slack costs nothing).
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 64;

/// Wait for a reply to a command (RFC 5321 4.5.3.2: MAIL and RCPT 5 min).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for the reply to the final dot (RFC 5321 4.5.3.2.6: 10 min).
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Wait for QUIT to be answered: a courtesy, not worth more.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the client waits for the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Each event while opening: greeting, EHLO/HELO, STARTTLS
    /// (`greeting_timeout`, RFC 5321 4.5.3.2.1).
    pub greeting: Duration,
    /// Each event of a transaction or probe before the body.
    pub reply: Duration,
    /// The reply to the final dot.
    pub data_end: Duration,
    /// The whole of one transaction, body included
    /// (`transaction_timeout`): a server that trickles a byte every few
    /// minutes meets every per-event timeout and would hold the worker
    /// for hours.
    pub transaction: Duration,
    /// From `quit()` to the connection's end.
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            greeting: Duration::from_secs(300),
            reply: REPLY_TIMEOUT,
            data_end: DATA_END_TIMEOUT,
            transaction: Duration::from_secs(1800),
            quit: QUIT_TIMEOUT,
        }
    }
}

/// Which timer `handle_timeout` found expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The wait for one event (greeting, a reply, QUIT).
    Event,
    /// The transaction's deadline (`Timeouts::transaction`).
    Transaction,
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expired::Event => f.write_str("timed out waiting for the server"),
            Expired::Transaction => f.write_str("the transaction took too long"),
        }
    }
}

/// The transaction deadline: armed at the first wait of a transaction
/// (not a probe: call-ahead has its own budget), gone at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnClock {
    Off,
    /// `send_mail` started a transaction; the deadline starts with the
    /// first wait.
    Due,
    Until(Instant),
}

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
    /// MAIL FROM was answered. A refusal (4xx or 5xx) is the answer for
    /// every recipient: no `RcptReply` follows it.
    MailReply(Reply),
    /// RCPT number `index` (into `Envelope::to`) was answered; only after
    /// MAIL was accepted (RFC 2920 3.1: the replies to pipelined RCPTs
    /// behind a refused MAIL, typically 503, answer no recipient).
    RcptReply { index: usize, reply: Reply },
    /// The server answered DATA with 354: stream the body now.
    SendBody,
    /// The transaction ended before the body could be sent: MAIL refused
    /// (its reply), every RCPT refused (the last one), or DATA refused
    /// (`reply`): the outcome for every recipient not refused by its own
    /// `RcptReply`. The client has sent RSET (or will) and is ready for
    /// another `send_mail`.
    TransactionFailed { reply: Reply },
    /// The reply to the end of data: the outcome for every recipient that
    /// got 2xx to RCPT.
    DataReply(Reply),
    /// The server refused the connection (non-220 greeting, EHLO and HELO
    /// refused), closed it, or sent something that is not SMTP. No more
    /// commands; close the socket.
    Failed {
        reply: Option<Reply>,
        reason: String,
    },
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
    timeouts: Timeouts,
    /// The end of the current wait for an event: set by `waiting`, kept
    /// through partial input (a trickled reply cannot stretch it), gone
    /// once an event is polled.
    event_deadline: Option<Instant>,
    txn_clock: TxnClock,
}

impl Client {
    /// `ehlo_name`: our hostname, sent with EHLO.
    pub fn new(ehlo_name: &str, timeouts: Timeouts) -> Client {
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
            timeouts,
            event_deadline: None,
            txn_clock: TxnClock::Off,
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
                        // answer to a command sent under TLS. `feed` stops
                        // at the reply's end, so the parser holds none of
                        // it: dropping `rest` drops it all.
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
        let event = self.events.pop_front();
        if event.is_some() && self.stage != Stage::Quitting {
            // The wait is over; the next one gets its own timeout. QUIT's
            // budget is for the whole goodbye.
            self.event_deadline = None;
        }
        if !matches!(self.stage, Stage::Txn | Stage::Body) {
            self.txn_clock = TxnClock::Off;
        }
        event
    }

    /// The driver starts waiting for the next event at `now`: arms the
    /// timeout of what is outstanding (unless this wait has one already)
    /// and, in a new transaction, its deadline.
    pub fn waiting(&mut self, now: Instant) {
        if self.txn_clock == TxnClock::Due && matches!(self.stage, Stage::Txn | Stage::Body) {
            self.txn_clock = TxnClock::Until(now + self.timeouts.transaction);
        }
        if self.event_deadline.is_some() {
            return;
        }
        let t = match self.stage {
            Stage::Opening => self.timeouts.greeting,
            Stage::Txn if self.expect.contains(&Expect::EndOfData) => self.timeouts.data_end,
            Stage::Txn => self.timeouts.reply,
            // The driver's TLS handshake, bounded like a reply.
            Stage::AwaitTls => self.timeouts.reply,
            Stage::Quitting => self.timeouts.quit,
            // Nothing outstanding, or the driver streams the body (under
            // the transaction's deadline only).
            Stage::Ready | Stage::Body | Stage::Done => return,
        };
        self.event_deadline = Some(now + t);
    }

    /// When the driver must call `handle_timeout` at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txn = match self.txn_clock {
            TxnClock::Until(t) if matches!(self.stage, Stage::Txn | Stage::Body) => Some(t),
            _ => None,
        };
        match (self.event_deadline, txn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time has come to `now`. Some: that timer expired, and the client is
    /// done (emits nothing more; the driver closes without QUIT, since
    /// the server is not answering). The transaction deadline wins when
    /// both have passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Expired> {
        let txn_over = matches!(self.txn_clock, TxnClock::Until(t) if now >= t)
            && matches!(self.stage, Stage::Txn | Stage::Body);
        let expired = if txn_over {
            Expired::Transaction
        } else if self.event_deadline.is_some_and(|t| now >= t) {
            Expired::Event
        } else {
            return None;
        };
        self.finish();
        Some(expired)
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
        // The handshake's wait is over; EHLO gets its own.
        self.event_deadline = None;
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
        self.txn_clock = TxnClock::Due;
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
    /// A refused MAIL gives no `RcptReply` (without pipelining no RCPT is
    /// sent); an address with a control character gets a synthesized
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

    /// Sends QUIT; any reply to it (or EOF) gives `Closed`. Called while a
    /// command is still outstanding (an abort), it sends nothing and emits
    /// `Closed` at once: the driver just closes.
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
        self.hello("EHLO ", Expect::Ehlo);
    }

    /// EHLO or HELO with our name.
    fn hello(&mut self, verb: &str, expect: Expect) {
        let name = std::mem::take(&mut self.ehlo_name);
        self.command(&[verb, &name], expect);
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
        self.event_deadline = None;
        self.txn_clock = TxnClock::Off;
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
                5 => self.hello("HELO ", Expect::Helo),
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
                None => self.fail(
                    Some(reply),
                    "internal: transaction reply without transaction",
                ),
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
        // RFC 5321 3.8: 421 to any command means the server is closing; no
        // further reply will come, so say so now rather than at EOF. (At
        // the end of data it is the message's outcome: DataReply.)
        if reply.code == 421 && expect != Expect::EndOfData {
            return self.fail(Some(reply), "server is closing the connection");
        }
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
                // Behind a refused MAIL (only pipelined: otherwise no RCPT
                // is sent) the reply is "503 need MAIL first", an answer
                // for no recipient: reported, it would turn a 4xx MAIL
                // into a permanent failure of every recipient.
                if txn.mail_ok {
                    if class == 2 {
                        txn.rcpts_ok += 1;
                    }
                    txn.last_rcpt = Some(reply.clone());
                    self.events.push_back(Event::RcptReply { index, reply });
                }
                if !txn.pipelined {
                    self.next_rcpt(&txn, index + 1);
                }
            }
            Expect::Data => {
                if !self.on_data_reply(&mut txn, reply, class) {
                    return;
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
            Expect::Rset => return self.on_rset_reply(txn, reply, class),
            _ => return self.fail(Some(reply), "internal: not a transaction reply"),
        }
        self.txn = Some(txn);
    }

    /// The reply to DATA; false when the session failed.
    fn on_data_reply(&mut self, txn: &mut Txn, reply: Reply, class: u16) -> bool {
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
            _ => {
                self.fail(Some(reply), "unexpected reply to DATA");
                return false;
            }
        }
        true
    }

    /// The reply to the RSET that ends a failed transaction or a probe.
    fn on_rset_reply(&mut self, txn: Txn, reply: Reply, class: u16) {
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

/// What became of one recipient of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The end of data got 2xx.
    Delivered,
    /// 4xx, or no answer (connection lost): try again later.
    Deferred,
    /// 5xx: return to the sender.
    Failed,
}

impl Verdict {
    fn of(reply: &Reply) -> Verdict {
        match class(reply) {
            2 => Verdict::Delivered,
            5 => Verdict::Failed,
            _ => Verdict::Deferred,
        }
    }
}

/// Turns a transaction's events into one verdict per recipient, with the
/// reply (or the reason the connection was lost) that decided it:
///
/// - MAIL refused: its reply, for every recipient (RFC 5321 3.3: a 4xx
///   there is about the whole transaction, to be tried again);
/// - MAIL accepted, RCPT refused: that RCPT's reply;
/// - otherwise the transaction's end: the reply to the final dot, or the
///   one that ended it early (DATA refused), or, when the connection broke
///   first, deferred with why.
///
/// The driver feeds every event from `send_mail` on until `event` returns
/// true, and calls `lost` if the connection broke before.
#[derive(Debug)]
pub struct Tally {
    verdicts: Vec<Option<(Verdict, String)>>,
    summary: String,
}

impl Tally {
    /// For a transaction to `recipients` addresses.
    pub fn new(recipients: usize) -> Tally {
        Tally {
            verdicts: vec![None; recipients],
            summary: String::new(),
        }
    }

    /// Takes one event; true once the transaction is over (no more of its
    /// events follow).
    pub fn event(&mut self, event: &Event) -> bool {
        match event {
            Event::MailReply(reply) => {
                if !reply.is_positive() {
                    self.end_with(reply);
                }
                false
            }
            Event::RcptReply { index, reply } => {
                if !reply.is_positive()
                    && let Some(slot @ None) = self.verdicts.get_mut(*index)
                {
                    *slot = Some((Verdict::of(reply), reply.one_line()));
                }
                false
            }
            Event::DataReply(reply) | Event::TransactionFailed { reply } => {
                self.end_with(reply);
                true
            }
            Event::Failed { reply, reason } => {
                match reply {
                    Some(r) => self.lost(&r.one_line()),
                    None => self.lost(reason),
                }
                true
            }
            Event::Closed => {
                self.lost("connection closed");
                true
            }
            Event::Ready { .. } | Event::StartTls | Event::SendBody | Event::ProbeDone => false,
        }
    }

    /// The transaction ended without its outcome (connection lost, timeout,
    /// spool error): every recipient not yet decided is deferred.
    pub fn lost(&mut self, reason: &str) {
        if self.summary.is_empty() {
            self.summary = reason.to_owned();
        }
        self.decide_rest(Verdict::Deferred, reason);
    }

    /// The line that sums up the attempt: the reply that ended the
    /// transaction, or why it was lost.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// One verdict per recipient, in `Envelope::to` order.
    pub fn verdicts(self) -> Vec<(Verdict, String)> {
        let summary = self.summary;
        self.verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| (Verdict::Deferred, summary.clone())))
            .collect()
    }

    fn end_with(&mut self, reply: &Reply) {
        let line = reply.one_line();
        self.decide_rest(Verdict::of(reply), &line);
        self.summary = line;
    }

    fn decide_rest(&mut self, verdict: Verdict, text: &str) {
        for slot in self.verdicts.iter_mut().filter(|s| s.is_none()) {
            *slot = Some((verdict, text.to_owned()));
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
        if line.len() > MAX_REPLY_LINE {
            return Err(format!(
                "reply line longer than {MAX_REPLY_LINE} bytes: \"{}\"",
                excerpt(&line)
            ));
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
        // Reply text goes to logs and DSNs: no control characters from a
        // remote server (an inner CR, an escape sequence) survive.
        let text: String = String::from_utf8_lossy(text)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = match Enhanced::parse_prefix(&text) {
            Some((enhanced, rest)) => {
                self.enhanced.get_or_insert(enhanced);
                rest.to_owned()
            }
            None => text,
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

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "mx2.example.net";
    const EHLO_PIPE: &[u8] = b"250-mx.example.com hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
    const EHLO_PLAIN: &[u8] = b"250-mx.example.com hello\r\n250 SIZE\r\n";

    fn events(c: &mut Client) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn out(c: &mut Client) -> String {
        String::from_utf8(c.take_output()).unwrap()
    }

    fn r(code: u16, enh: Option<(u8, u16, u16)>, lines: &[&str]) -> Reply {
        Reply {
            code,
            enhanced: enh.map(|(a, b, c)| Enhanced(a, b, c)),
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn env(to: &[&str]) -> Envelope {
        Envelope {
            from: "a@x.org".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            size: 100,
            eightbit: false,
            smtputf8: false,
        }
    }

    /// Greeting and EHLO with `ehlo` as the reply; returns the client at Ready.
    fn open(ehlo: &[u8]) -> (Client, Extensions) {
        let mut c = Client::new(NAME, Timeouts::default());
        assert!(c.wants_input());
        assert_eq!(out(&mut c), "");
        c.receive(b"220 mx.example.com ESMTP\r\n");
        assert_eq!(out(&mut c), "EHLO mx2.example.net\r\n");
        c.receive(ehlo);
        let ev = events(&mut c);
        let [Event::Ready { extensions, .. }] = &ev[..] else {
            panic!("expected Ready, got {ev:?}")
        };
        assert!(!c.wants_input());
        (c, extensions.clone())
    }

    fn failed_reason(ev: &[Event]) -> String {
        match ev.last() {
            Some(Event::Failed { reason, .. }) => reason.clone(),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    /// Exact bytes of a pipelined session: one batch for MAIL/RCPT/DATA,
    /// per-recipient replies, the stuffed body, a second transaction on the
    /// same connection, QUIT.
    #[test]
    fn pipelined_session_exact_bytes_and_two_transactions() {
        let (mut c, ext) = open(EHLO_PIPE);
        assert!(ext.pipelining && ext.esmtp);
        let mut e = env(&["b@y.org", "c@y.org", "d@y.org"]);
        e.eightbit = true;
        e.smtputf8 = true;
        c.send_mail(e);
        assert_eq!(
            out(&mut c),
            "MAIL FROM:<a@x.org> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n\
             RCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nRCPT TO:<d@y.org>\r\nDATA\r\n"
        );
        assert!(c.wants_input());
        c.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.3.0 later\r\n550 5.1.1 no such user\r\n354 go\r\n");
        assert_eq!(
            events(&mut c),
            vec![
                Event::MailReply(r(250, Some((2, 1, 0)), &["ok"])),
                Event::RcptReply {
                    index: 0,
                    reply: r(250, Some((2, 1, 5)), &["ok"])
                },
                Event::RcptReply {
                    index: 1,
                    reply: r(451, Some((4, 3, 0)), &["later"])
                },
                Event::RcptReply {
                    index: 2,
                    reply: r(550, Some((5, 1, 1)), &["no such user"])
                },
                Event::SendBody,
            ]
        );
        assert_eq!(out(&mut c), "");
        assert!(!c.wants_input());
        c.body(b"Subject: x\n\n.hi\r");
        c.body(b"\n.");
        c.end_body();
        assert_eq!(out(&mut c), "Subject: x\r\n\r\n..hi\r\n..\r\n.\r\n");
        assert!(c.wants_input());
        c.receive(b"250 2.0.0 queued as 1\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::DataReply(r(250, Some((2, 0, 0)), &["queued as 1"]))]
        );
        // Second transaction on the same connection; no 8BITMIME asked.
        c.send_mail(env(&["e@y.org"]));
        assert_eq!(
            out(&mut c),
            "MAIL FROM:<a@x.org> SIZE=100\r\nRCPT TO:<e@y.org>\r\nDATA\r\n"
        );
        c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(events(&mut c).last(), Some(&Event::SendBody));
        c.body(b"x\r\n");
        c.end_body();
        assert_eq!(out(&mut c), "x\r\n.\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::DataReply(r(250, None, &["ok"]))]
        );
        c.quit();
        assert_eq!(out(&mut c), "QUIT\r\n");
        c.receive(b"221 bye\r\n");
        assert_eq!(events(&mut c), vec![Event::Closed]);
        assert!(!c.wants_input());
    }

    /// Without PIPELINING: one command per reply; RCPTs go on after a
    /// refused RCPT; DATA only once the last RCPT is answered.
    #[test]
    fn unpipelined_session_one_command_per_reply() {
        let (mut c, ext) = open(EHLO_PLAIN);
        assert!(!ext.pipelining);
        assert_eq!(ext.size, Some(0));
        let mut e = env(&["b@y.org", "c@y.org"]);
        e.eightbit = true; // not offered: no BODY=
        c.send_mail(e);
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.org> SIZE=100\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<b@y.org>\r\n");
        c.receive(b"550 no\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<c@y.org>\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(out(&mut c), "DATA\r\n");
        c.receive(b"354 go\r\n");
        let ev = events(&mut c);
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert_eq!(ev[0], Event::MailReply(r(250, None, &["ok"])));
        assert!(matches!(&ev[1], Event::RcptReply { index: 0, reply } if reply.code == 550));
        assert!(matches!(&ev[2], Event::RcptReply { index: 1, reply } if reply.code == 250));
        assert_eq!(ev[3], Event::SendBody);
        c.end_body();
        assert_eq!(out(&mut c), ".\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::DataReply(r(250, None, &["ok"]))]
        );
    }

    /// Keywords are case-insensitive; the EHLO reply is kept whole.
    #[test]
    fn multiline_ehlo_extensions_case_insensitive() {
        let (mut c, ext) = open(
            b"250-mx.example.com greets you\r\n250-pipelining\r\n250-Size 52428800\r\n\
250-8bitmime\r\n250-smtputf8\r\n250-StartTLS\r\n250-AUTH PLAIN\r\n250 enhancedstatuscodes\r\n",
        );
        assert_eq!(
            ext,
            Extensions {
                esmtp: true,
                pipelining: true,
                size: Some(52428800),
                eightbitmime: true,
                smtputf8: true,
                starttls: true,
                enhanced_status_codes: true,
            }
        );
        assert_eq!(events(&mut c), vec![]);
        // A server offering nothing: ESMTP, but no extension.
        let (_, ext) = open(b"250 mx.example.com\r\n");
        assert_eq!(
            ext,
            Extensions {
                esmtp: true,
                ..Extensions::default()
            }
        );
    }

    /// Ready carries the greeting (the guard reads its first word) and the
    /// EHLO reply.
    #[test]
    fn ready_carries_greeting_and_ehlo_reply() {
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(b"220-mx.example.com ESMTP\r\n220 second line\r\n");
        c.receive(b"250-mx.example.com hi\r\n250 PIPELINING\r\n");
        let ev = events(&mut c);
        let [Event::Ready { greeting, ehlo, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            greeting,
            &r(220, None, &["mx.example.com ESMTP", "second line"])
        );
        assert_eq!(ehlo, &r(250, None, &["mx.example.com hi", "PIPELINING"]));
    }

    /// A 5xx to EHLO falls back to HELO: Ready without ESMTP, and MAIL then
    /// carries no parameters.
    #[test]
    fn helo_fallback() {
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(b"220 old.example.com\r\n");
        assert_eq!(out(&mut c), "EHLO mx2.example.net\r\n");
        c.receive(b"502 5.5.2 what\r\n");
        assert_eq!(out(&mut c), "HELO mx2.example.net\r\n");
        assert_eq!(events(&mut c), vec![]);
        c.receive(b"250 old.example.com\r\n");
        let ev = events(&mut c);
        let [
            Event::Ready {
                extensions, ehlo, ..
            },
        ] = &ev[..]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(extensions, &Extensions::default());
        assert_eq!(ehlo.code, 250);
        let mut e = env(&["b@y.org"]);
        e.eightbit = true;
        e.smtputf8 = true;
        c.send_mail(e);
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.org>\r\n");
    }

    /// Refusals at the opening: QUIT and Failed with the server's reply.
    #[test]
    fn refused_greeting_ehlo_and_helo() {
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(b"554 5.7.1 go away\r\n");
        assert_eq!(out(&mut c), "QUIT\r\n");
        let ev = events(&mut c);
        assert!(
            matches!(&ev[..], [Event::Failed { reply: Some(r), .. }] if r.code == 554),
            "{ev:?}"
        );
        assert!(!c.wants_input());

        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(b"220 ok\r\n");
        c.take_output();
        c.receive(b"421 4.3.2 busy\r\n");
        assert_eq!(out(&mut c), "QUIT\r\n");
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Failed { reply: Some(r), .. }] if r.code == 421
        ));

        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(b"220 ok\r\n500 no\r\n");
        assert_eq!(
            out(&mut c),
            "EHLO mx2.example.net\r\nHELO mx2.example.net\r\n"
        );
        c.receive(b"550 no\r\n");
        assert_eq!(out(&mut c), "QUIT\r\n");
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Failed { reply: Some(r), .. }] if r.code == 550
        ));
    }

    /// SIZE: over the server's limit nothing is sent and a synthesized
    /// 552 5.3.4 names the limit; at the limit, and with SIZE 0, it goes.
    #[test]
    fn size_limit_respected() {
        let (mut c, _) = open(b"250-mx\r\n250 SIZE 1000\r\n");
        let mut e = env(&["b@y.org"]);
        e.size = 1001;
        c.send_mail(e.clone());
        assert_eq!(out(&mut c), "");
        let ev = events(&mut c);
        let [Event::TransactionFailed { reply }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(reply.code, 552);
        assert_eq!(reply.enhanced, Some(Enhanced(5, 3, 4)));
        assert!(reply.text().contains("limit 1000"), "{reply}");
        assert!(!c.wants_input());
        e.size = 1000;
        c.send_mail(e.clone());
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.org> SIZE=1000\r\n");

        let (mut c, _) = open(b"250-mx\r\n250 SIZE 0\r\n");
        e.size = u64::MAX;
        c.send_mail(e);
        assert_eq!(
            out(&mut c),
            format!("MAIL FROM:<a@x.org> SIZE={}\r\n", u64::MAX)
        );
    }

    /// Pipelined, every RCPT refused: DATA's reply is consumed, RSET sent,
    /// TransactionFailed carries the last RCPT reply; the connection is
    /// reusable.
    #[test]
    fn all_recipients_refused_pipelined() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        c.take_output();
        c.receive(b"250 ok\r\n550 5.1.1 no\r\n450 4.2.0 full\r\n554 5.5.1 no valid recipients\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        assert!(c.wants_input());
        let ev = events(&mut c);
        assert_eq!(ev.len(), 3, "{ev:?}");
        c.receive(b"250 2.0.0 reset\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::TransactionFailed {
                reply: r(450, Some((4, 2, 0)), &["full"])
            }]
        );
        c.send_mail(env(&["d@y.org"]));
        assert!(out(&mut c).starts_with("MAIL FROM:<a@x.org>"));
    }

    /// Without pipelining, every RCPT refused: no DATA, RSET instead.
    #[test]
    fn all_recipients_refused_unpipelined() {
        let (mut c, _) = open(EHLO_PLAIN);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.receive(b"250 ok\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<b@y.org>\r\n");
        c.receive(b"550 no\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c).last(),
            Some(&Event::TransactionFailed {
                reply: r(550, None, &["no"])
            })
        );
    }

    /// MAIL refused: pipelined, the RCPT and DATA replies (503) are still
    /// consumed but not reported (they answer no recipient) and the MAIL
    /// reply is the outcome; unpipelined, no RCPT.
    #[test]
    fn mail_refused() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.receive(b"550 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no valid rcpt\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        let refused = r(550, Some((5, 7, 1)), &["sender refused"]);
        assert_eq!(
            events(&mut c),
            vec![
                Event::MailReply(refused.clone()),
                Event::TransactionFailed { reply: refused }
            ]
        );

        let (mut c, _) = open(EHLO_PLAIN);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.receive(b"451 later\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![
                Event::MailReply(r(451, None, &["later"])),
                Event::TransactionFailed {
                    reply: r(451, None, &["later"])
                }
            ]
        );
    }

    /// DATA refused: RSET, TransactionFailed with the DATA reply.
    #[test]
    fn data_refused() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.receive(b"250 ok\r\n250 ok\r\n554 5.7.0 no data for you\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c).last(),
            Some(&Event::TransactionFailed {
                reply: r(554, Some((5, 7, 0)), &["no data for you"])
            })
        );
    }

    /// RFC 2920 3.1: DATA accepted though every RCPT was refused: end the
    /// empty message with a lone dot, then RSET; still TransactionFailed.
    #[test]
    fn data_accepted_without_recipients_is_ended_with_dot() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.receive(b"250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(out(&mut c), ".\r\n");
        assert!(!events(&mut c).contains(&Event::SendBody));
        c.receive(b"554 no recipients\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::TransactionFailed {
                reply: r(550, None, &["no"])
            }]
        );
    }

    /// The transaction's replies split at every byte position (CRLF and
    /// bare-LF variants) give the same events as one read.
    #[test]
    fn replies_split_at_every_position() {
        let crlf: &[u8] = b"250 2.1.0 ok\r\n250-2.1.5 a\r\n250 2.1.5 b\r\n\
550-5.1.1 no\r\n550 5.1.1 such user\r\n354 go\r\n";
        let lf: Vec<u8> = crlf.iter().copied().filter(|&b| b != b'\r').collect();
        let run = |chunks: &[&[u8]]| {
            let (mut c, _) = open(EHLO_PIPE);
            c.send_mail(env(&["b@y.org", "c@y.org"]));
            c.take_output();
            for ch in chunks {
                c.receive(ch);
            }
            events(&mut c)
        };
        let want = run(&[crlf]);
        assert_eq!(want.len(), 4, "{want:?}");
        assert_eq!(
            want[1],
            Event::RcptReply {
                index: 0,
                reply: r(250, Some((2, 1, 5)), &["a", "b"])
            }
        );
        assert_eq!(
            want[2],
            Event::RcptReply {
                index: 1,
                reply: r(550, Some((5, 1, 1)), &["no", "such user"])
            }
        );
        for input in [crlf, &lf[..]] {
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(run(&[a, b]), want, "split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&bytes), want, "byte at a time");
        }
    }

    /// Enhanced codes: parsed from each line, stored once, stripped; absent
    /// when the text does not start with one; a bare code line is fine.
    #[test]
    fn enhanced_codes_and_bare_code_lines() {
        let mut p = ReplyParser::default();
        let (n, res) = p.feed(b"550-5.1.1 first\r\n550 5.1.1 second\r\n250 x\r\n");
        assert_eq!(n, b"550-5.1.1 first\r\n550 5.1.1 second\r\n".len());
        assert_eq!(res, Ok(Some(r(550, Some((5, 1, 1)), &["first", "second"]))));
        assert_eq!(p.feed(b"250 ok\r\n").1, Ok(Some(r(250, None, &["ok"]))));
        assert_eq!(p.feed(b"250\r\n").1, Ok(Some(r(250, None, &[""]))));
        assert_eq!(
            p.feed(b"250 2.0.0\r\n").1,
            Ok(Some(r(250, Some((2, 0, 0)), &[""])))
        );
        // Not an enhanced code: kept as text.
        assert_eq!(
            p.feed(b"220 10.0.0.1 ESMTP\r\n").1,
            Ok(Some(r(220, None, &["10.0.0.1 ESMTP"])))
        );
        // Control characters from the server never reach logs or DSNs.
        assert_eq!(
            p.feed(b"550 5.7.1 a\rb\x1b[2Jc\r\n").1,
            Ok(Some(r(550, Some((5, 7, 1)), &["a b [2Jc"])))
        );
    }

    /// Malformed input ends the session with a reason, never a panic.
    #[test]
    fn garbage_and_limits_fail_cleanly() {
        let bad: [&[u8]; 7] = [
            b"hello\r\n",
            b"25\r\n",
            b"2500 x\r\n",
            b"120 x\r\n",
            b"220-a\r\n221 b\r\n",
            b"\r\n",
            b"\xff\xfe\r\n",
        ];
        for input in bad {
            let mut c = Client::new(NAME, Timeouts::default());
            c.receive(input);
            let ev = events(&mut c);
            assert!(
                matches!(&ev[..], [Event::Failed { reply: None, .. }]),
                "{input:?}: {ev:?}"
            );
            assert!(!c.wants_input());
            c.receive(b"220 ok\r\n"); // ignored after Failed
            assert_eq!(events(&mut c), vec![]);
            assert_eq!(out(&mut c), "");
        }
        // Longest allowed line passes, one more byte fails.
        let mut line = b"220 ".to_vec();
        line.resize(MAX_REPLY_LINE, b'a');
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(&line);
        c.receive(b"\r\n");
        assert_eq!(out(&mut c), "EHLO mx2.example.net\r\n");
        line.push(b'a');
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(&line);
        c.receive(b"\n");
        assert!(failed_reason(&events(&mut c)).contains("longer than"));
        // Without a line end the buffer is still bounded: fails as it grows.
        line.push(b'a');
        let mut c = Client::new(NAME, Timeouts::default());
        c.receive(&line);
        assert!(failed_reason(&events(&mut c)).contains("longer than"));
        // Too many lines in one reply.
        let mut c = Client::new(NAME, Timeouts::default());
        for _ in 0..MAX_REPLY_LINES {
            c.receive(b"220-x\r\n");
        }
        assert_eq!(events(&mut c), vec![]);
        c.receive(b"220 x\r\n");
        assert!(failed_reason(&events(&mut c)).contains("lines"));
    }

    /// A reply when none is outstanding (unsolicited, or a server that
    /// answers twice) ends the session.
    #[test]
    fn unsolicited_reply_fails() {
        let (mut c, _) = open(EHLO_PIPE);
        c.receive(b"250 surprise\r\n");
        assert!(failed_reason(&events(&mut c)).contains("unsolicited"));
        // Extra reply behind the pipelined batch's last one.
        let (mut c, _) = open(EHLO_PIPE);
        c.send_probe("", &["b@y.org".to_string()]);
        c.take_output();
        c.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n250 extra\r\n");
        let ev = events(&mut c);
        assert_eq!(ev[2], Event::ProbeDone);
        assert!(failed_reason(&ev).contains("unsolicited"));
    }

    /// A code that makes no sense for the command ends the session.
    #[test]
    fn unexpected_codes_fail() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.receive(b"354 what\r\n");
        assert!(failed_reason(&events(&mut c)).contains("MAIL"));

        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n");
        assert!(failed_reason(&events(&mut c)).contains("DATA"));
    }

    /// STARTTLS: bytes behind the 220 (a full injected reply and a partial
    /// line) are dropped; after the handshake EHLO again, and STARTTLS is
    /// not offered again even if the server lists it.
    #[test]
    fn starttls_discards_injected_bytes_and_re_ehlos() {
        let (mut c, ext) = open(b"250-mx\r\n250-STARTTLS\r\n250 SIZE 10\r\n");
        assert!(ext.starttls);
        c.starttls();
        assert_eq!(out(&mut c), "STARTTLS\r\n");
        c.receive(b"220 2.0.0 go ahead\r\n250-fake\r\n250 PIPELINING\r\n25");
        assert_eq!(events(&mut c), vec![Event::StartTls]);
        assert!(!c.wants_input());
        assert_eq!(out(&mut c), "");
        c.tls_established();
        assert_eq!(out(&mut c), "EHLO mx2.example.net\r\n");
        assert!(c.wants_input());
        c.receive(b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
        let ev = events(&mut c);
        let [Event::Ready { extensions, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            extensions,
            &Extensions {
                esmtp: true,
                eightbitmime: true,
                ..Extensions::default()
            }
        );
        // Under TLS, a second STARTTLS is a driver bug, not a command.
        c.starttls();
        assert_eq!(out(&mut c), "");
        assert!(failed_reason(&events(&mut c)).contains("starttls"));
    }

    /// STARTTLS refused: QUIT and Failed with the reply (policy is the
    /// driver's); plaintext arriving while the handshake is due fails.
    #[test]
    fn starttls_refused_or_plaintext_during_handshake() {
        let (mut c, _) = open(b"250-mx\r\n250 STARTTLS\r\n");
        c.starttls();
        c.take_output();
        c.receive(b"454 4.7.0 TLS not available\r\n");
        assert_eq!(out(&mut c), "QUIT\r\n");
        assert!(matches!(
            &events(&mut c)[..],
            [Event::Failed { reply: Some(r), .. }] if r.code == 454
        ));

        let (mut c, _) = open(b"250-mx\r\n250 STARTTLS\r\n");
        c.starttls();
        c.receive(b"220 go\r\n");
        assert_eq!(events(&mut c), vec![Event::StartTls]);
        c.receive(b"250 injected later\r\n");
        assert!(failed_reason(&events(&mut c)).contains("plaintext"));
    }

    /// Pipelined probe: MAIL, RCPTs and RSET in one batch; ProbeDone after
    /// RSET's reply; then QUIT.
    #[test]
    fn probe_pipelined() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_probe("", &["b@y.org".to_string(), "c@y.org".to_string()]);
        assert_eq!(
            out(&mut c),
            "MAIL FROM:<>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nRSET\r\n"
        );
        c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![
                Event::MailReply(r(250, None, &["ok"])),
                Event::RcptReply {
                    index: 0,
                    reply: r(250, None, &["ok"])
                },
                Event::RcptReply {
                    index: 1,
                    reply: r(550, Some((5, 1, 1)), &["unknown"])
                },
                Event::ProbeDone,
            ]
        );
        assert_eq!(out(&mut c), "");
        c.quit();
        assert_eq!(out(&mut c), "QUIT\r\n");
        c.eof(); // server closes without answering QUIT
        assert_eq!(events(&mut c), vec![Event::Closed]);
    }

    /// Pipelined probe with MAIL refused (5xx or 4xx): every RCPT reply
    /// (503) is consumed but none is reported, so a 4xx at MAIL can never
    /// pass for "no such user"; the connection serves the next probe.
    #[test]
    fn probe_mail_refused_consumes_rcpt_replies() {
        for mail in ["550 no", "452 4.3.1 Insufficient system storage"] {
            let (mut c, _) = open(EHLO_PIPE);
            c.send_probe("", &["b@y.org".to_string(), "c@y.org".to_string()]);
            c.take_output();
            c.receive(format!("{mail}\r\n503 5.5.1 Error: need MAIL command\r\n").as_bytes());
            c.receive(b"503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n");
            let ev = events(&mut c);
            assert!(
                matches!(&ev[..], [Event::MailReply(m), Event::ProbeDone] if m.one_line() == mail),
                "{ev:?}"
            );
            assert!(!c.wants_input());
            c.send_probe("", &["b@y.org".to_string()]);
            assert_eq!(out(&mut c), "MAIL FROM:<>\r\nRCPT TO:<b@y.org>\r\nRSET\r\n");
            c.receive(b"250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n");
            let ev = events(&mut c);
            assert!(
                matches!(&ev[1], Event::RcptReply { index: 0, reply } if reply.code == 550),
                "{ev:?}"
            );
        }
    }

    /// Unpipelined probe: MAIL, each RCPT, RSET, one per reply; a refused
    /// MAIL goes straight to RSET.
    #[test]
    fn probe_unpipelined() {
        let (mut c, _) = open(EHLO_PLAIN);
        c.send_probe("p@x.org", &["b@y.org".to_string(), "c@y.org".to_string()]);
        assert_eq!(out(&mut c), "MAIL FROM:<p@x.org>\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<b@y.org>\r\n");
        c.receive(b"450 later\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<c@y.org>\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(events(&mut c).len(), 4);
        c.send_probe("", &["b@y.org".to_string()]);
        assert_eq!(out(&mut c), "MAIL FROM:<>\r\n");
        c.receive(b"550 no\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(
            events(&mut c),
            vec![Event::MailReply(r(550, None, &["no"])), Event::ProbeDone]
        );
    }

    /// EOF: Failed unless QUIT was sent; nothing more after that.
    #[test]
    fn eof_handling() {
        let mut c = Client::new(NAME, Timeouts::default());
        c.eof();
        assert_eq!(
            events(&mut c),
            vec![Event::Failed {
                reply: None,
                reason: "connection closed by server".into()
            }]
        );
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.receive(b"250 ok\r\n25");
        c.eof();
        assert!(failed_reason(&events(&mut c)).contains("closed"));
        c.eof();
        assert_eq!(events(&mut c), vec![]);

        let (mut c, _) = open(EHLO_PIPE);
        c.quit();
        c.receive(b"221 bye\r\n");
        c.eof();
        assert_eq!(events(&mut c), vec![Event::Closed]);
    }

    /// Calls out of order are reported, never panics or stray commands.
    #[test]
    fn misuse_is_reported_not_sent() {
        let mut c = Client::new(NAME, Timeouts::default());
        c.send_mail(env(&["b@y.org"]));
        assert_eq!(out(&mut c), "");
        assert!(failed_reason(&events(&mut c)).contains("send_mail"));

        let (mut c, _) = open(EHLO_PIPE);
        c.body(b"x");
        assert_eq!(out(&mut c), "");
        assert!(failed_reason(&events(&mut c)).contains("body"));

        // quit() with a command outstanding aborts: Closed, nothing sent.
        let (mut c, _) = open(EHLO_PLAIN);
        c.send_mail(env(&["b@y.org"]));
        c.take_output();
        c.quit();
        assert_eq!(out(&mut c), "");
        assert_eq!(events(&mut c), vec![Event::Closed]);
    }

    /// A CR or LF in an address is never written (command injection);
    /// an empty recipient list sends nothing either.
    #[test]
    fn control_characters_in_paths_are_not_sent() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org>\r\nRCPT TO:<evil@z.org"]));
        assert_eq!(out(&mut c), "");
        assert!(matches!(
            &events(&mut c)[..],
            [Event::TransactionFailed { reply }] if reply.code == 501
        ));
        c.send_probe("x\n@y", &[]);
        assert_eq!(out(&mut c), "");
        assert_eq!(events(&mut c).last(), Some(&Event::ProbeDone));
        c.send_mail(env(&[]));
        assert_eq!(out(&mut c), "");
        assert!(matches!(
            &events(&mut c)[..],
            [Event::TransactionFailed { reply }] if reply.code == 554
        ));
        // Still usable.
        c.send_mail(env(&["b@y.org"]));
        assert!(out(&mut c).starts_with("MAIL FROM:"));
    }

    /// 421 in the middle of a transaction: Failed with that reply at once,
    /// not a refusal followed by an RSET to a closing server.
    #[test]
    fn reply_421_mid_transaction_fails_with_reply() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        c.take_output();
        c.receive(b"250 ok\r\n421 4.3.2 shutting down\r\n");
        assert_eq!(out(&mut c), "");
        let ev = events(&mut c);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(&ev[1], Event::Failed { reply: Some(r), .. } if r.code == 421));
        assert!(!c.wants_input());
    }

    /// RSET refused after a failed transaction: the outcome is still
    /// reported, then the connection is given up.
    #[test]
    fn rset_refused_reports_outcome_then_fails() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        c.receive(b"250 ok\r\n550 no\r\n554 no\r\n500 what\r\n");
        let ev = events(&mut c);
        let n = ev.len();
        assert!(matches!(&ev[n - 2], Event::TransactionFailed { reply } if reply.code == 550));
        assert!(failed_reason(&ev).contains("RSET"));
    }

    /// Every event until the transaction is over, through a `Tally`.
    fn tally(c: &mut Client, t: &mut Tally) -> bool {
        events(c).iter().any(|e| t.event(e))
    }

    fn all(n: usize, v: Verdict, text: &str) -> Vec<(Verdict, String)> {
        vec![(v, text.to_string()); n]
    }

    const STORAGE: &str = "452 4.3.1 Insufficient system storage";

    /// The field bug: Postfix answers MAIL 452 and then every pipelined
    /// RCPT (and DATA) with 503. Every recipient is deferred with the 452,
    /// none bounced with a 503; after RSET the same connection delivers
    /// the next transaction.
    #[test]
    fn pipelined_mail_4xx_defers_every_recipient_not_the_503s() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org", "d@y.org"]));
        c.take_output();
        let mut t = Tally::new(3);
        c.receive(format!("{STORAGE}\r\n").as_bytes());
        c.receive(
            b"503 5.5.1 Error: need MAIL command\r\n"
                .repeat(3)
                .as_slice(),
        );
        c.receive(b"503 5.5.1 Error: need RCPT command\r\n");
        assert_eq!(out(&mut c), "RSET\r\n");
        assert!(!tally(&mut c, &mut t));
        c.receive(b"250 2.0.0 Ok\r\n");
        assert!(tally(&mut c, &mut t));
        assert_eq!(t.summary(), STORAGE);
        assert_eq!(t.verdicts(), all(3, Verdict::Deferred, STORAGE));

        // The next message on this connection goes through.
        c.send_mail(env(&["e@y.org", "f@y.org"]));
        assert_eq!(
            out(&mut c),
            "MAIL FROM:<a@x.org> SIZE=100\r\nRCPT TO:<e@y.org>\r\nRCPT TO:<f@y.org>\r\nDATA\r\n"
        );
        let mut t = Tally::new(2);
        c.receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
        assert!(!tally(&mut c, &mut t));
        c.body(b"x\r\n");
        c.end_body();
        assert_eq!(out(&mut c), "x\r\n.\r\n");
        c.receive(b"250 2.0.0 Ok: queued\r\n");
        assert!(tally(&mut c, &mut t));
        assert_eq!(
            t.verdicts(),
            all(2, Verdict::Delivered, "250 2.0.0 Ok: queued")
        );
    }

    /// Greylisting at MAIL (450), and a server that closes right after its
    /// 4xx: still deferred with the MAIL reply, never the 503s.
    #[test]
    fn pipelined_mail_4xx_then_close_defers_with_mail_reply() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        c.receive(b"450 4.7.1 Greylisted, try again later\r\n503 5.5.1 need MAIL\r\n");
        c.eof();
        assert!(tally(&mut c, &mut t));
        assert_eq!(t.summary(), "450 4.7.1 Greylisted, try again later");
        assert_eq!(
            t.verdicts(),
            all(
                2,
                Verdict::Deferred,
                "450 4.7.1 Greylisted, try again later"
            )
        );
    }

    /// MAIL 5xx: every recipient failed with MAIL's reply, not the 503s
    /// (and not a later connection loss).
    #[test]
    fn pipelined_mail_5xx_fails_every_recipient_with_mail_reply() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        c.receive(b"550 5.7.1 Sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
        c.receive(b"503 5.5.1 need RCPT\r\n250 2.0.0 Ok\r\n");
        assert!(tally(&mut c, &mut t));
        assert_eq!(
            t.verdicts(),
            all(2, Verdict::Failed, "550 5.7.1 Sender refused")
        );

        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        c.receive(b"550 5.7.1 Sender refused\r\n");
        c.eof();
        assert!(tally(&mut c, &mut t));
        assert_eq!(
            t.verdicts(),
            all(2, Verdict::Failed, "550 5.7.1 Sender refused")
        );
    }

    /// Without PIPELINING, MAIL 4xx or 5xx: no RCPT is sent, RSET instead;
    /// the same per-recipient outcome; the connection stays usable.
    #[test]
    fn unpipelined_mail_refused_sends_no_rcpt() {
        for (mail, verdict) in [
            ("450 4.7.1 Greylisted", Verdict::Deferred),
            ("553 5.7.1 Sender refused", Verdict::Failed),
        ] {
            let (mut c, _) = open(EHLO_PLAIN);
            c.send_mail(env(&["b@y.org", "c@y.org"]));
            assert_eq!(out(&mut c), "MAIL FROM:<a@x.org> SIZE=100\r\n");
            let mut t = Tally::new(2);
            c.receive(format!("{mail}\r\n").as_bytes());
            assert_eq!(out(&mut c), "RSET\r\n");
            c.receive(b"250 ok\r\n");
            assert_eq!(out(&mut c), "");
            assert!(tally(&mut c, &mut t));
            assert_eq!(t.verdicts(), all(2, verdict, mail));
            c.send_mail(env(&["b@y.org"]));
            assert_eq!(out(&mut c), "MAIL FROM:<a@x.org> SIZE=100\r\n");
            c.receive(b"250 ok\r\n");
            assert_eq!(out(&mut c), "RCPT TO:<b@y.org>\r\n");
        }
    }

    /// RCPT accepted, DATA refused (at 354 time or after the dot): those
    /// recipients get DATA's reply; a recipient refused at RCPT keeps its
    /// own (MAIL was accepted, so that answer counts).
    #[test]
    fn data_refused_decides_for_accepted_recipients() {
        let cases: [(&[u8], &[u8], Verdict, &str); 4] = [
            (
                b"451 4.3.0 Try later\r\n",
                b"",
                Verdict::Deferred,
                "451 4.3.0 Try later",
            ),
            (b"554 5.7.0 No\r\n", b"", Verdict::Failed, "554 5.7.0 No"),
            (
                b"354 go\r\n",
                b"451 4.3.0 Queue full\r\n",
                Verdict::Deferred,
                "451 4.3.0 Queue full",
            ),
            (
                b"354 go\r\n",
                b"554 5.6.0 Bad body\r\n",
                Verdict::Failed,
                "554 5.6.0 Bad body",
            ),
        ];
        for (data, dot, verdict, text) in cases {
            let (mut c, _) = open(EHLO_PIPE);
            c.send_mail(env(&["b@y.org", "c@y.org", "d@y.org"]));
            let mut t = Tally::new(3);
            c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 No such user\r\n250 ok\r\n");
            c.receive(data);
            if dot.is_empty() {
                c.receive(b"250 ok\r\n"); // RSET
            } else {
                assert!(!tally(&mut c, &mut t));
                c.end_body();
                c.receive(dot);
            }
            assert!(tally(&mut c, &mut t));
            assert_eq!(
                t.verdicts(),
                vec![
                    (verdict, text.to_string()),
                    (Verdict::Failed, "550 5.1.1 No such user".to_string()),
                    (verdict, text.to_string()),
                ]
            );
        }
    }

    /// The connection lost (EOF, 421, or the driver's timeout) after MAIL,
    /// or before the reply to the dot: every recipient not refused at RCPT
    /// is deferred with why.
    #[test]
    fn connection_lost_defers() {
        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        c.receive(b"250 2.1.0 ok\r\n");
        c.eof();
        assert!(tally(&mut c, &mut t));
        assert_eq!(
            t.verdicts(),
            all(2, Verdict::Deferred, "connection closed by server")
        );

        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        c.receive(b"250 ok\r\n550 5.1.1 No such user\r\n421 4.3.2 Shutting down\r\n");
        assert!(tally(&mut c, &mut t));
        assert_eq!(
            t.verdicts(),
            vec![
                (Verdict::Failed, "550 5.1.1 No such user".to_string()),
                (Verdict::Deferred, "421 4.3.2 Shutting down".to_string()),
            ]
        );

        let (mut c, _) = open(EHLO_PIPE);
        c.send_mail(env(&["b@y.org"]));
        let mut t = Tally::new(1);
        c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert!(!tally(&mut c, &mut t));
        c.end_body();
        t.lost("lost connection with mx: timed out waiting for the server");
        assert_eq!(
            t.summary(),
            "lost connection with mx: timed out waiting for the server"
        );
        assert_eq!(
            t.verdicts(),
            all(
                1,
                Verdict::Deferred,
                "lost connection with mx: timed out waiting for the server"
            )
        );
    }

    /// Refused before anything is sent (SIZE): that reply for everyone.
    #[test]
    fn synthesized_refusal_decides_for_everyone() {
        let (mut c, _) = open(b"250-mx\r\n250 SIZE 10\r\n");
        c.send_mail(env(&["b@y.org", "c@y.org"]));
        let mut t = Tally::new(2);
        assert!(tally(&mut c, &mut t));
        let v = t.verdicts();
        assert!(
            v.iter()
                .all(|(v, text)| *v == Verdict::Failed && text.starts_with("552 5.3.4")),
            "{v:?}"
        );
    }

    fn secs(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_secs(n)
    }

    #[test]
    fn greeting_wait_is_one_deadline_a_trickle_cannot_stretch() {
        let t = Timeouts {
            greeting: Duration::from_secs(60),
            ..Timeouts::default()
        };
        let mut c = Client::new(NAME, t);
        let t0 = Instant::now();
        assert_eq!(c.poll_timeout(), None, "armed by the driver's wait");
        c.waiting(t0);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 60)));
        // A byte every 7 s: the wait keeps its deadline.
        for (i, b) in b"220 slow".iter().enumerate() {
            let now = secs(t0, 7 * i as u64);
            assert_eq!(c.handle_timeout(now), None);
            c.receive(&[*b]);
            c.waiting(now);
            assert_eq!(c.poll_timeout(), Some(secs(t0, 60)));
        }
        assert_eq!(c.handle_timeout(secs(t0, 60)), Some(Expired::Event));
        assert!(!c.wants_input(), "done: the driver closes");
        assert_eq!(out(&mut c), "", "no QUIT to a server that does not answer");
        assert_eq!(events(&mut c), vec![]);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(
            Expired::Event.to_string(),
            "timed out waiting for the server"
        );
    }

    #[test]
    fn each_reply_gets_its_own_timeout_after_an_event() {
        let (mut c, _) = open(EHLO_PLAIN);
        let t0 = Instant::now();
        c.send_mail(env(&["b@y.org"]));
        c.waiting(t0);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 300)));
        c.receive(b"250 ok\r\n");
        assert!(matches!(c.poll_event(), Some(Event::MailReply(_))));
        // The next wait starts when the driver waits again.
        c.waiting(secs(t0, 200));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 500)));
        assert_eq!(c.handle_timeout(secs(t0, 499)), None);
        assert_eq!(c.handle_timeout(secs(t0, 500)), Some(Expired::Event));
    }

    /// A server that answers each command just before its reply timeout
    /// meets every per-reply timeout; the transaction's deadline ends it.
    #[test]
    fn slow_server_hits_the_transaction_deadline() {
        let (mut c, _) = open(EHLO_PLAIN);
        let t0 = Instant::now();
        let to = ["b@y.org"; 8];
        c.send_mail(env(&to));
        let mut now = t0;
        let mut answered = 0;
        loop {
            c.take_output();
            c.waiting(now);
            now += Duration::from_secs(299);
            if now >= secs(t0, 1800) {
                assert_eq!(c.poll_timeout(), Some(secs(t0, 1800)));
                assert_eq!(c.handle_timeout(now), Some(Expired::Transaction));
                break;
            }
            assert_eq!(c.handle_timeout(now), None);
            c.receive(b"250 ok\r\n");
            while c.poll_event().is_some() {}
            answered += 1;
        }
        assert_eq!(answered, 6);
        assert!(!c.wants_input());
    }

    /// Within one reply a trickle does not help either: the wait for it
    /// is one deadline.
    #[test]
    fn trickled_reply_hits_the_reply_timeout() {
        let (mut c, _) = open(EHLO_PLAIN);
        let t0 = Instant::now();
        c.send_mail(env(&["b@y.org"]));
        c.waiting(t0);
        let mut now = t0;
        for b in b"250 o" {
            now += Duration::from_secs(59);
            assert_eq!(c.handle_timeout(now), None);
            c.receive(&[*b]);
            c.waiting(now);
        }
        assert_eq!(c.poll_timeout(), Some(secs(t0, 300)));
        assert_eq!(c.handle_timeout(secs(t0, 300)), Some(Expired::Event));
    }

    #[test]
    fn body_is_under_the_transaction_deadline_and_dot_has_ten_minutes() {
        let (mut c, _) = open(EHLO_PIPE);
        let t0 = Instant::now();
        c.send_mail(env(&["b@y.org"]));
        c.waiting(t0);
        c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        let ev = events(&mut c);
        assert_eq!(ev.last(), Some(&Event::SendBody));
        // Streaming: only the transaction's deadline runs.
        assert_eq!(c.poll_timeout(), Some(secs(t0, 1800)));
        c.body(b"x\r\n");
        c.end_body();
        c.waiting(secs(t0, 100));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 700)));
        // Streaming that ran long: the deadline cuts the wait for the dot.
        let mut c2 = open(EHLO_PIPE).0;
        c2.send_mail(env(&["b@y.org"]));
        c2.waiting(t0);
        c2.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        events(&mut c2);
        assert_eq!(c2.handle_timeout(secs(t0, 1799)), None);
        assert_eq!(
            c2.handle_timeout(secs(t0, 1800)),
            Some(Expired::Transaction)
        );
        assert!(!c2.wants_input());
    }

    #[test]
    fn deadline_ends_with_the_transaction_probes_have_none() {
        let (mut c, _) = open(EHLO_PIPE);
        let t0 = Instant::now();
        c.send_mail(env(&["b@y.org"]));
        c.waiting(t0);
        c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        events(&mut c);
        c.body(b"x\r\n");
        c.end_body();
        c.take_output();
        c.waiting(secs(t0, 10));
        c.receive(b"250 queued\r\n");
        assert!(matches!(c.poll_event(), Some(Event::DataReply(_))));
        assert_eq!(c.poll_timeout(), None, "idle between transactions");
        c.send_probe("", &["b@y.org".to_string()]);
        c.waiting(secs(t0, 5000));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 5300)));
    }

    #[test]
    fn quit_has_one_short_budget() {
        let (mut c, _) = open(EHLO_PLAIN);
        let t0 = Instant::now();
        c.quit();
        assert_eq!(out(&mut c), "QUIT\r\n");
        c.waiting(t0);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 10)));
        c.receive(b"22");
        c.waiting(secs(t0, 9));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 10)));
        assert_eq!(c.handle_timeout(secs(t0, 10)), Some(Expired::Event));
    }

    #[test]
    fn tls_handshake_is_bounded_like_a_reply_and_ehlo_starts_afresh() {
        let (mut c, ext) = open(b"250-mx.example.com\r\n250 STARTTLS\r\n");
        assert!(ext.starttls);
        let t0 = Instant::now();
        c.starttls();
        c.take_output();
        c.waiting(t0);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 300)));
        c.receive(b"220 go\r\n");
        assert_eq!(c.poll_event(), Some(Event::StartTls));
        c.waiting(secs(t0, 1));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 301)), "the handshake");
        c.tls_established();
        c.waiting(secs(t0, 2));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 302)), "EHLO's own wait");
    }
}
