//! The driver around one `smtp::server::Session`: moves bytes between the
//! socket and the state machine, sleeps until the machine's deadline
//! (the timer rules are the machine's), answers the policy events and
//! streams the body into the spool.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::policy;
use crate::compose::received::{ReceivedInfo, received_header};
use crate::config::Config;
use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::smtp::server::{
    BODY_CHUNK, BodyType, DataRefusal, Event, MailFrom, Params, RcptTo, Session,
};
use crate::spool::Destination;
use crate::spool::{self, Envelope, QueueId};
use crate::tls::Stream;

/// Socket read size for commands. Small: the session keeps at most one
/// line besides.
pub const READ_BUF: usize = 4096;
/// Socket read size in DATA: a body chunk, so a large message takes a few
/// reads per chunk, not one per 4 KiB. Back to `READ_BUF` after DATA.
pub const DATA_READ_BUF: usize = BODY_CHUNK;

/// The message being received.
struct Incoming {
    id: QueueId,
    seq: u32,
    size: u64,
    /// Our Received header, sent with the first body chunk.
    header: Option<Vec<u8>>,
    /// The spool refused more bytes (over `max_spool_size`): answer 452.
    over_quota: bool,
    /// The newest chunk, not yet sent: it goes with the commit, so a small
    /// message costs the spool one transaction, not two.
    held: Option<Vec<u8>>,
    /// Bytes already sent with `append` (what an abort gives back).
    appended: u64,
    /// The body had an octet over 127 (declared with BODY=8BITMIME or not).
    eight_bit: bool,
    /// The envelope sender, for the log line of a refusal at the end of
    /// DATA (the machine has reset its transaction by then).
    from: String,
}

enum Io {
    Data(usize),
    Eof,
    /// The session's deadline passed.
    Timeout,
    /// The daemon is stopping.
    Stop,
    Error(std::io::Error),
}

async fn read_until(ctx: &Ctx, stream: &mut Stream, buf: &mut [u8], deadline: Instant) -> Io {
    let stop = async {
        ctx.stopped().await;
        Io::Stop
    };
    let read = futures_lite::future::or(
        async {
            match stream.read(buf).await {
                Ok(0) => Io::Eof,
                Ok(n) => Io::Data(n),
                Err(e) => Io::Error(e),
            }
        },
        async {
            smol::Timer::at(deadline).await;
            Io::Timeout
        },
    );
    futures_lite::future::or(read, stop).await
}

/// Writes with a bound on a stalled socket (the SMTP timers are the
/// machine's; this one is only I/O).
async fn write_timeout(stream: &mut Stream, bytes: &[u8], t: Duration) -> bool {
    if bytes.is_empty() {
        return true;
    }
    futures_lite::future::or(async { stream.write_all(bytes).await.is_ok() }, async {
        smol::Timer::after(t).await;
        false
    })
    .await
}

/// Runs one session. Returns the stream when it should be closed with a
/// linger (after a final reply), which the caller does once the session's
/// connection slot is free again.
pub async fn serve(
    ctx: Rc<Ctx>,
    tcp: async_net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Option<Stream> {
    let _ = local;
    let mut d = Driver::open(ctx, tcp, peer).await?;
    d.run().await;
    d.finish().await
}

/// One session: the machine, its socket, and what the driver keeps for
/// the open transaction. A method per event of the machine.
struct Driver {
    ctx: Rc<Ctx>,
    cfg: Arc<Config>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stream: Stream,
    ip: IpAddr,
    s: Session,
    buf: Vec<u8>,
    dnsbl: super::dnsbl::Check,
    prober: super::callahead::Prober,
    /// Where each accepted recipient's mail goes, in RCPT order.
    dests: Vec<Destination>,
    msg: Option<Incoming>,
    /// `shutdown` was given to the machine.
    shut: bool,
    /// Close with a linger: the final reply is out.
    linger: bool,
}

impl Driver {
    /// Connect-time policy and the greeting pause; None when the client
    /// left (or was dropped) before the greeting.
    async fn open(ctx: Rc<Ctx>, tcp: async_net::TcpStream, peer: SocketAddr) -> Option<Driver> {
        let mut stream = Stream::Plain(tcp);
        let cfg = ctx.config();
        let tls = ctx.tls_server.borrow().clone();
        let m = &cfg.main;
        let ip = peer.ip();
        log::info!("id=NOQUEUE event=connect client=[{ip}]:{}", peer.port());
        let mut s = Session::new(Params {
            hostname: m.hostname.clone(),
            max_message_size: m.max_message_size,
            max_recipients: m.max_recipients,
            max_errors: m.max_errors,
            max_hops: m.max_hops,
            starttls: tls.is_some(),
            command_timeout: m.command_timeout,
            data_timeout: m.data_timeout,
        });
        let mut dnsbl = super::dnsbl::Check::default();
        if let Err((reason, reply)) = policy::connect(&cfg, ip) {
            log::info!(
                "id=NOQUEUE event=reject stage=connect client=[{ip}] reason={reason} reply=\"{}\"",
                reply.one_line()
            );
            ctx.stats.borrow_mut().reject(reason);
            s.refuse_connection(reply);
        } else {
            // The DNSBL lookups run during the greeting pause and EHLO.
            dnsbl = super::dnsbl::Check::start(&ctx, ip);
            if !super::pregreet::wait(&ctx, &mut stream, ip).await {
                return None;
            }
            s.greeting();
        }
        Some(Driver {
            ctx,
            cfg,
            tls,
            stream,
            ip,
            s,
            buf: vec![0u8; READ_BUF],
            dnsbl,
            prober: super::callahead::Prober::default(),
            dests: vec![],
            msg: None,
            shut: false,
            linger: false,
        })
    }

    /// Writes, answers events and reads until the session is over.
    async fn run(&mut self) {
        loop {
            if !self.write_out().await {
                break;
            }
            if self.ctx.stopping.get() && !self.shut {
                self.stop();
            }
            let go = match self.s.poll_event() {
                None => self.read().await,
                Some(ev) => self.on_event(ev).await,
            };
            if !go {
                break;
            }
        }
    }

    /// Gives back what a vanished client left behind; the stream when it
    /// should be closed with a linger.
    async fn finish(mut self) -> Option<Stream> {
        self.prober.close().await;
        if let Some(inc) = self.msg.take() {
            // The client vanished mid-DATA: nothing was acknowledged.
            self.ctx.spool.abort(inc.id, inc.appended).await;
        }
        log::debug!("id=NOQUEUE event=disconnect client=[{}]", self.ip);
        self.linger.then_some(self.stream)
    }

    async fn write_out(&mut self) -> bool {
        let out = self.s.take_output();
        write_timeout(&mut self.stream, &out, self.cfg.main.command_timeout).await
    }

    fn stop(&mut self) {
        self.shut = true;
        self.s.shutdown();
    }

    /// Reads once, until the machine's deadline. False: the session is
    /// over.
    async fn read(&mut self) -> bool {
        if !self.s.wants_input() {
            // Nothing to read and nothing to do: the session is over.
            return false;
        }
        if self.shut {
            // Stopping and the session still wants input: it owes
            // nothing; its 421 is out, close.
            return false;
        }
        let size = if self.s.in_data() {
            DATA_READ_BUF
        } else {
            READ_BUF
        };
        if self.buf.len() != size {
            self.buf.resize(size, 0);
            self.buf.shrink_to_fit();
        }
        let room = self.s.input_room().clamp(1, size);
        self.s.waiting(Instant::now());
        let Some(deadline) = self.s.poll_timeout() else {
            return false;
        };
        let ip = self.ip;
        match read_until(&self.ctx, &mut self.stream, &mut self.buf[..room], deadline).await {
            Io::Stop => {}
            Io::Data(n) => {
                // Data that won the race against a stop is new (a
                // command, the rest of a message): it gets the 421,
                // never executed.
                if self.ctx.stopping.get() && !self.shut {
                    self.stop();
                }
                self.s.receive(&self.buf[..n])
            }
            Io::Timeout => {
                if self.s.handle_timeout(Instant::now()) {
                    log::info!("id=NOQUEUE event=timeout client=[{ip}]");
                }
            }
            Io::Eof => return false,
            Io::Error(e) => {
                log::debug!("id=NOQUEUE event=read_error client=[{ip}] error=\"{e}\"");
                return false;
            }
        }
        true
    }

    /// Answers one event. False: the session is over.
    async fn on_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::Mail(mail) => self.on_mail(mail).await,
            Event::Rcpt(rcpt) => self.on_rcpt(rcpt).await,
            Event::DataStart => self.on_data_start().await,
            Event::Body(chunk) => self.on_body(chunk).await,
            Event::DataEnd => self.on_data_end().await,
            Event::DataRefused(why) => self.on_data_refused(why).await,
            Event::Reset => self.on_reset().await,
            Event::StartTls => return self.on_starttls().await,
            Event::Close => {
                self.linger = self.write_out().await;
                return false;
            }
        }
        true
    }

    fn sender(&self) -> String {
        self.s
            .mail_from()
            .map(|f| f.from.to_string())
            .unwrap_or_default()
    }

    async fn on_mail(&mut self, mail: MailFrom) {
        self.dests.clear();
        let (cfg, ip) = (&self.cfg, self.ip);
        let from = mail.from.to_string();
        let r = match self.dnsbl.at_mail(cfg, ip, &from).await {
            Ok(()) => policy::mail(cfg, ip, &mail, &self.ctx.spool),
            Err(r) => Err(r),
        };
        let answer = refusal(&self.ctx, r, ip, "MAIL", &from, "");
        self.s.answer_mail(answer);
    }

    async fn on_rcpt(&mut self, rcpt: RcptTo) {
        match self.rcpt_verdict(&rcpt).await {
            Ok(ok) => {
                self.dests.push(ok.destination);
                self.s.answer_rcpt(Ok(()));
            }
            Err(r) => {
                let (from, to) = (self.sender(), rcpt.to.to_string());
                let answer = refusal(&self.ctx, Err(r), self.ip, "RCPT", &from, &to);
                self.s.answer_rcpt(answer);
            }
        }
    }

    /// Policy, then the MX route, then (when asked for) the call-ahead.
    async fn rcpt_verdict(&mut self, rcpt: &RcptTo) -> Result<policy::RcptOk, policy::Refusal> {
        let cfg = &self.cfg;
        let mut verdict = policy::rcpt(cfg, rcpt);
        if let Ok(ok) = &verdict
            && matches!(ok.destination, Destination::Mx { .. })
            && let Some(d) = cfg.domain(&rcpt.to.domain)
        {
            let resolver = self.ctx.resolver.borrow().clone();
            if let Err(r) = policy::mx_route(&resolver, d, &cfg.main.hostname).await {
                verdict = Err(r);
            }
        }
        match verdict {
            Ok(ok) if ok.callahead => {
                let addr = rcpt.to.to_string().to_lowercase();
                match cfg.domain(&rcpt.to.domain) {
                    Some(d) => {
                        let p = &mut self.prober;
                        super::callahead::verify(&self.ctx, p, d, &ok.destination, &addr)
                            .await
                            .map(|()| ok)
                    }
                    None => Ok(ok),
                }
            }
            other => other,
        }
    }

    async fn on_data_start(&mut self) {
        self.prober.close().await;
        let from = self.sender();
        match policy::data(&self.cfg, &self.ctx.spool) {
            Ok(()) => {
                let id = self.ctx.spool.new_id(crate::clock::now());
                let header = self.received(id);
                self.msg = Some(Incoming {
                    id,
                    seq: 0,
                    size: 0,
                    header: Some(header),
                    over_quota: false,
                    held: None,
                    appended: 0,
                    eight_bit: false,
                    from,
                });
                self.s.answer_data(Ok(()));
            }
            Err(r) => {
                let answer = refusal(&self.ctx, Err(r), self.ip, "DATA", &from, "");
                self.s.answer_data(answer);
            }
        }
    }

    /// Our Received header for message `id`.
    fn received(&self, id: QueueId) -> Vec<u8> {
        let s = &self.s;
        let qid = spool::format_id(id);
        let rcpts = s.recipients();
        let one = (rcpts.len() == 1).then(|| rcpts[0].to_string());
        let utf8 = s.mail_from().is_some_and(|f| f.smtputf8);
        // RFC 3848 / RFC 6531 protocol names.
        let with = match (utf8, s.esmtp(), self.stream.is_tls()) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
            (false, false, false) => "SMTP",
            (false, false, true) => "SMTPS",
        };
        received_header(&ReceivedInfo {
            helo: s.helo(),
            peer: self.ip,
            by: &self.cfg.main.hostname,
            with,
            queue_id: &qid,
            for_rcpt: one.as_deref(),
            date: crate::time::now_unix(),
        })
    }

    async fn on_body(&mut self, chunk: Vec<u8>) {
        if let Some(inc) = self.msg.as_mut() {
            append(&self.ctx, inc, chunk).await;
        }
    }

    async fn on_data_end(&mut self) {
        let Some(mut inc) = self.msg.take() else {
            let r = Reply::enh(451, (4, 3, 0), "Internal error: no message");
            return self.s.answer_data_end(r);
        };
        let (ctx, ip) = (&self.ctx, self.ip);
        if let Some(h) = inc.header.take() {
            // An empty body: the message is our header alone.
            push_chunk(ctx, &mut inc, h).await;
        }
        let reply = if inc.over_quota {
            ctx.spool.abort(inc.id, inc.appended).await;
            ctx.stats.borrow_mut().reject("spool_full");
            log::warn!(
                "id={} event=reject stage=DATA client=[{ip}] reason=spool_full",
                spool::format_id(inc.id)
            );
            policy::storage_full().1
        } else {
            // Content scanners see the spooled message before the 250.
            if super::scan::enabled(ctx) {
                flush_held(ctx, &mut inc).await;
            }
            match super::scan::check(ctx, inc.id, inc.seq, inc.size, ip).await {
                Ok(grew) => {
                    inc.size = inc.size.saturating_add_signed(grew);
                    commit(ctx, &self.s, &self.dests, inc, ip).await
                }
                Err(reply) => {
                    ctx.spool.abort(inc.id, inc.appended).await;
                    reply
                }
            }
        };
        self.dests.clear();
        self.s.answer_data_end(reply);
    }

    async fn on_data_refused(&mut self, why: DataRefusal) {
        let mut from = self.sender();
        if let Some(inc) = self.msg.take() {
            self.ctx.spool.abort(inc.id, inc.appended).await;
            from = inc.from;
        }
        let reason = match why {
            DataRefusal::BareNewline => "bare_newline",
            DataRefusal::TooBig => "size",
            DataRefusal::LineTooLong => "line_too_long",
            DataRefusal::TooManyHops => "hops",
        };
        self.ctx.stats.borrow_mut().reject(reason);
        log::info!(
            "id=NOQUEUE event=reject stage=DATA client=[{}] from=<{from}> reason={reason}",
            self.ip
        );
        self.dests.clear();
    }

    async fn on_reset(&mut self) {
        self.prober.close().await;
        if let Some(inc) = self.msg.take() {
            self.ctx.spool.abort(inc.id, inc.appended).await;
        }
        self.dests.clear();
    }

    /// Sends the 220 and does the handshake. False: the session is over.
    async fn on_starttls(&mut self) -> bool {
        // The 220 goes out in plaintext; the session has already thrown
        // away anything the client sent behind STARTTLS.
        if !self.write_out().await {
            return false;
        }
        let Some(tls) = self.tls.clone() else {
            return false;
        };
        let ip = self.ip;
        self.s.waiting(Instant::now());
        let Some(deadline) = self.s.poll_timeout() else {
            return false;
        };
        let stream = &mut self.stream;
        let hs = futures_lite::future::or(async { Some(stream.accept_tls(tls).await) }, async {
            smol::Timer::at(deadline).await;
            None
        })
        .await;
        match hs {
            Some(Ok(())) => {
                log::info!(
                    "id=NOQUEUE event=starttls client=[{ip}] tls=\"{}\"",
                    self.stream.tls_info().unwrap_or_default()
                );
                self.s.tls_started();
                true
            }
            Some(Err(e)) => {
                log::info!("id=NOQUEUE event=tls_failed client=[{ip}] error=\"{e}\"");
                false
            }
            None => {
                self.s.handle_timeout(Instant::now());
                log::info!(
                    "id=NOQUEUE event=tls_failed client=[{ip}] error=\"handshake timed out\""
                );
                false
            }
        }
    }
}

fn refusal(
    ctx: &Ctx,
    r: Result<(), policy::Refusal>,
    ip: std::net::IpAddr,
    stage: &str,
    from: &str,
    to: &str,
) -> Result<(), Reply> {
    r.map_err(|(reason, reply)| {
        ctx.stats.borrow_mut().reject(reason);
        log::info!(
            "id=NOQUEUE event=reject stage={stage} client=[{ip}] from=<{from}> to=<{to}> reason={reason} reply=\"{}\"",
            reply.one_line()
        );
        reply
    })
}

async fn append(ctx: &Ctx, inc: &mut Incoming, chunk: Vec<u8>) {
    // Clients that send 8-bit text without BODY=8BITMIME are common (RFC
    // 6152 forbids it): the message is 8-bit all the same, so that it is
    // converted, not sent raw, to a server without 8BITMIME (as Postfix
    // decides by content too).
    inc.eight_bit = inc.eight_bit || !chunk.is_ascii();
    let chunk = match inc.header.take() {
        // A small message is one chunk, our Received header first.
        Some(mut h) if h.len() + chunk.len() <= BODY_CHUNK => {
            h.extend_from_slice(&chunk);
            h
        }
        // A full chunk stays page-sized: the header goes alone before it.
        Some(h) => {
            push_chunk(ctx, inc, h).await;
            chunk
        }
        None => chunk,
    };
    push_chunk(ctx, inc, chunk).await;
}

async fn push_chunk(ctx: &Ctx, inc: &mut Incoming, chunk: Vec<u8>) {
    if inc.over_quota {
        return;
    }
    let cfg = ctx.config();
    let st = ctx.spool.state();
    let len = chunk.len() as u64;
    if st.bytes + st.incoming_bytes + len > cfg.main.max_spool_size {
        inc.over_quota = true;
        return;
    }
    flush_held(ctx, inc).await;
    if inc.over_quota {
        return;
    }
    inc.held = Some(chunk);
    inc.seq += 1;
    inc.size += len;
}

/// Sends the held chunk (seq `inc.seq - 1`) to the spool now.
async fn flush_held(ctx: &Ctx, inc: &mut Incoming) {
    if let Some(prev) = inc.held.take() {
        let len = prev.len() as u64;
        if ctx
            .spool
            .append(inc.id, inc.seq.saturating_sub(1), prev)
            .await
            .is_err()
        {
            inc.over_quota = true;
            return;
        }
        inc.appended += len;
    }
}

/// Over 80 % of `max_spool_size`: the owner should hear of it before mail
/// is refused with 452.
fn spool_level_alert(ctx: &Ctx) {
    let max = ctx.config().main.max_spool_size;
    let bytes = ctx.spool.state().bytes;
    if max > 0 && bytes.saturating_mul(5) >= max.saturating_mul(4) {
        ctx.alert(
            crate::alert::Kind::SpoolNearlyFull,
            &format!("the spool holds {bytes} bytes of its {max} (max_spool_size)"),
            &[("bytes", bytes.to_string()), ("max", max.to_string())],
        );
    }
}

async fn commit(
    ctx: &Ctx,
    s: &Session,
    dests: &[Destination],
    inc: Incoming,
    ip: std::net::IpAddr,
) -> Reply {
    let mail = s.mail_from();
    let sender = mail.map(|f| f.from.to_string()).unwrap_or_default();
    let mut flags = 0;
    if inc.eight_bit || mail.is_some_and(|f| f.body == BodyType::EightBitMime) {
        flags |= spool::schema::FLAG_8BITMIME;
    }
    if mail.is_some_and(|f| f.smtputf8) {
        flags |= spool::schema::FLAG_SMTPUTF8;
    }
    let rcpts: Vec<(String, Destination)> = s
        .recipients()
        .iter()
        .zip(dests.iter())
        .map(|(r, d)| (r.to_string(), d.clone()))
        .collect();
    let nrcpt = rcpts.len();
    let qid = spool::format_id(inc.id);
    let arrival = crate::clock::now();
    let (first_attempt, note) = ctx
        .deliverer
        .down
        .borrow()
        .first_attempt(rcpts.iter().map(|(_, d)| d), arrival);
    let env = Envelope {
        sender: sender.clone(),
        recipients: rcpts,
        flags,
        client: format!("{} [{ip}]", s.helo().unwrap_or("unknown")),
        arrival,
        first_attempt,
        note,
    };
    let last = inc.held.map(|c| (inc.seq.saturating_sub(1), c));
    match ctx.spool.commit(inc.id, env, inc.seq, inc.size, last).await {
        Ok(()) => {
            ctx.stats.borrow_mut().accepted += 1;
            spool_level_alert(ctx);
            log::info!(
                "id={qid} event=accept client=[{ip}] from=<{sender}> size={} nrcpt={nrcpt}",
                inc.size
            );
            Reply::enh(250, (2, 0, 0), format!("Ok: queued as {qid}"))
        }
        Err(e) => {
            ctx.stats.borrow_mut().reject("spool_error");
            log::error!(
                "id={qid} event=reject stage=DATA client=[{ip}] reason=spool_error error=\"{e}\""
            );
            policy::storage_full().1
        }
    }
}
