//! The driver around `smtp::client::Client`: connects, applies the guard,
//! and delivers the jobs queued for one destination over one connection,
//! streaming bodies chunk by chunk from the spool (7-bit converted for a
//! server without 8BITMIME: `smtp::downgrade`, decided by `eightbit`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_net::TcpStream;

use crate::tls::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::eightbit::{self, Decision, Traits};
use super::route::{self, RouteError, Target};
use super::{Job, guard, job_done, next_job, record};
use crate::alert::Kind;
use crate::config::{Config, DeliverTo, Domain};
use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::smtp::client::{Client, Envelope, Event, Expired, Extensions, Tally, Timeouts, Verdict};
use crate::smtp::downgrade::{Converter, Plan, Scanner};
use crate::spool::Destination;
use crate::spool::schema::{FLAG_8BITMIME, FLAG_SMTPUTF8, Message, RcptState};
use crate::spool::{AttemptReport, Outcome, RcptResult};

/// Bound on one write to a stalled socket (I/O, not an SMTP timer).
const WRITE_TIMEOUT: Duration = crate::smtp::client::REPLY_TIMEOUT;
/// Socket read size.
pub const READ_BUF: usize = 4096;

/// One connection to a destination host.
pub struct Conn {
    stream: Stream,
    pub client: Client,
    buf: Vec<u8>,
    pub target: Target,
    /// What the server offered in its (last) EHLO reply.
    pub ext: Extensions,
}

/// Why waiting on the server ended without an event.
#[derive(Debug)]
pub enum ConnError {
    /// The socket failed, or a write stalled.
    Io(String),
    /// One of the client's timers.
    Expired(Expired),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => f.write_str(e),
            ConnError::Expired(e) => e.fmt(f),
        }
    }
}

/// The client's timeouts under `cfg`.
pub fn timeouts(cfg: &Config) -> Timeouts {
    Timeouts {
        greeting: cfg.main.greeting_timeout,
        transaction: cfg.main.transaction_timeout,
        ..Timeouts::default()
    }
}

/// Runs `io` until `bound` or the client's deadline, whichever comes
/// first; the client decides whether its deadline expired.
async fn bounded<T>(
    client: &mut Client,
    io: impl std::future::Future<Output = Result<T, String>>,
    bound: Option<Instant>,
    late: &str,
) -> Result<T, ConnError> {
    let until = match (client.poll_timeout(), bound) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let r = match until {
        None => Some(io.await),
        Some(t) => {
            futures_lite::future::or(async { Some(io.await) }, async {
                smol::Timer::at(t).await;
                None
            })
            .await
        }
    };
    match r {
        Some(r) => r.map_err(ConnError::Io),
        None => match client.handle_timeout(Instant::now()) {
            Some(e) => Err(ConnError::Expired(e)),
            None => Err(ConnError::Io(late.to_string())),
        },
    }
}

impl Conn {
    /// `host[ip]:port`, as logs and DSNs name the server.
    pub fn relay(&self) -> String {
        format!(
            "{}[{}]:{}",
            self.target.host,
            self.target.addr.ip(),
            self.target.addr.port()
        )
    }

    async fn connect(
        target: Target,
        timeout: Duration,
        ehlo: &str,
        timeouts: Timeouts,
    ) -> Result<Conn, String> {
        let addr = target.addr;
        let stream = futures_lite::future::or(
            async {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))
            },
            async {
                smol::Timer::after(timeout).await;
                Err(format!("connect to {addr}: timed out"))
            },
        )
        .await?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream: Stream::Plain(stream),
            client: Client::new(ehlo, timeouts),
            buf: vec![0u8; READ_BUF],
            target,
            ext: Extensions::default(),
        })
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        let out = self.client.take_output();
        if out.is_empty() {
            return Ok(());
        }
        let w = self.stream.write_all(&out);
        let io = async { w.await.map_err(|e| format!("write: {e}")) };
        let bound = Some(Instant::now() + WRITE_TIMEOUT);
        bounded(&mut self.client, io, bound, "write: timed out").await
    }

    /// The next client event, reading as needed. The client's timers
    /// bound the whole wait, not each read: a reply trickled a byte at a
    /// time cannot stretch it.
    pub async fn event(&mut self) -> Result<Event, ConnError> {
        self.client.waiting(Instant::now());
        loop {
            self.flush().await?;
            if let Some(e) = self.client.poll_event() {
                return Ok(e);
            }
            if !self.client.wants_input() {
                return Err(ConnError::Io("client state machine stalled".into()));
            }
            let stream = &mut self.stream;
            let buf = &mut self.buf;
            let io = async { stream.read(buf).await.map_err(|e| format!("read: {e}")) };
            let n = bounded(
                &mut self.client,
                io,
                None,
                "timed out waiting for the server",
            )
            .await?;
            if n == 0 {
                self.client.eof();
            } else {
                self.client.receive(&self.buf[..n]);
            }
        }
    }

    /// QUIT, within the client's quit timeout.
    pub async fn quit(mut self) {
        self.client.quit();
        loop {
            match self.event().await {
                Ok(Event::Closed) | Ok(Event::Failed { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The domain section whose mail goes to `dest` (for the guard settings).
fn domain_for<'a>(cfg: &'a Config, dest: &Destination) -> Option<&'a Domain> {
    cfg.domains.iter().find(|d| match (&d.deliver_to, dest) {
        (DeliverTo::Relay(hp), Destination::Relay { host, port }) => {
            hp.host == *host && hp.port == *port
        }
        (DeliverTo::Mx, Destination::Mx { domain, .. }) => d.name == *domain,
        _ => false,
    })
}

/// Delivers every job queued for `dest`, reconnecting while jobs remain.
pub async fn run_worker(ctx: &Rc<Ctx>, dest: &Destination) {
    loop {
        if !has_jobs(ctx, dest) {
            return;
        }
        let cfg = ctx.config();
        let mut conn = match connect(ctx, &cfg, dest).await {
            Ok(c) => {
                ctx.deliverer.down.borrow_mut().clear(dest);
                ctx.alerts.reachable(&dest.to_string());
                c
            }
            Err(ConnectError { reason, permanent }) => {
                if !permanent {
                    let now = crate::clock::now();
                    ctx.deliverer.down.borrow_mut().mark(dest, &reason, now);
                    note_unreachable(ctx, dest, &reason, now);
                }
                defer_all(ctx, dest, &reason, "", permanent).await;
                return;
            }
        };
        let mut alive = true;
        while alive {
            let Some(job) = next_job(ctx, dest) else {
                break;
            };
            alive = deliver_job(ctx, &mut conn, dest, job).await;
        }
        if alive {
            conn.quit().await;
        }
    }
}

/// Why no connection to a destination could be made.
pub struct ConnectError {
    pub reason: String,
    /// The destination cannot work (null MX, a loop): return the mail.
    pub permanent: bool,
}

/// Resolves `dest` and connects to the first address that passes the
/// guard, answers, and (when pinned) proves its key. Used by delivery and
/// call-ahead alike.
pub async fn connect(ctx: &Ctx, cfg: &Config, dest: &Destination) -> Result<Conn, ConnectError> {
    let resolver = ctx.resolver.borrow().clone();
    let targets = match route::resolve(&resolver, &cfg.main.hostname, dest).await {
        Ok(t) => t,
        Err(e) => {
            return Err(ConnectError {
                permanent: matches!(e, RouteError::Permanent(_)),
                reason: e.to_string(),
            });
        }
    };
    super::hostcheck::seen(ctx, dest, &targets);
    let domain = domain_for(cfg, dest);
    let own = ctx.listeners.local_addrs();
    let mut errors: Vec<String> = vec![];
    for t in targets {
        if let Err(why) = guard::check_address(domain, t.addr, &own) {
            guard_refusal(ctx, dest, &t, &why);
            errors.push(format!("guard: {why}"));
            continue;
        }
        let pinned = domain.is_some_and(|d| d.tls_pin.is_some());
        let mut result = open(ctx, cfg, t.clone(), domain, true).await;
        if let Err(OpenError::Tls(e)) = &result
            && !pinned
        {
            // Opportunistic TLS (RFC 7435): a broken TLS stack at the
            // primary must not hold its mail hostage; try in the clear.
            log::warn!(
                "id=NOQUEUE event=tls_failed destination={dest} error=\"{e}\" action=plaintext"
            );
            result = open(ctx, cfg, t.clone(), domain, false).await;
        }
        match result {
            Ok(c) => return Ok(c),
            Err(OpenError::Guard(t, why)) => {
                guard_refusal(ctx, dest, &t, &why);
                errors.push(format!("guard: {why}"));
            }
            Err(OpenError::Tls(e)) => {
                if pinned {
                    guard_refusal(ctx, dest, &t, &e);
                    errors.push(format!("guard: {e}"));
                } else {
                    errors.push(e);
                }
            }
            Err(OpenError::Other(e)) => errors.push(e),
        }
    }
    Err(ConnectError {
        reason: if errors.is_empty() {
            "no address to try".to_string()
        } else {
            errors.join("; ")
        },
        permanent: false,
    })
}

fn has_jobs(ctx: &Ctx, dest: &Destination) -> bool {
    ctx.deliverer
        .queues
        .borrow()
        .get(dest)
        .is_some_and(|q| !q.jobs.is_empty())
}

fn guard_refusal(ctx: &Ctx, dest: &Destination, t: &Target, why: &str) {
    ctx.stats.borrow_mut().guard_refusals += 1;
    log::warn!(
        "id=NOQUEUE event=guard_refusal destination={dest} address={} reason=\"{why}\"",
        t.addr
    );
    ctx.alert(
        Kind::GuardRefusal,
        &format!("mail for {dest} was not handed to {}: {why}", t.addr),
        &[
            ("destination", dest.to_string()),
            ("address", t.addr.to_string()),
        ],
    );
}

/// A connection to `dest` failed at `now`: an alert once the outage is
/// `alert_after` old.
fn note_unreachable(ctx: &Ctx, dest: &Destination, reason: &str, now: u64) {
    let name = dest.to_string();
    let since = ctx.alerts.unreachable(&name, now);
    let after = ctx.config().main.alert_after;
    if now.saturating_sub(since) >= after.as_secs() {
        let text = format!(
            "{name} has been unreachable for {}: {reason}",
            crate::config::fmt_duration(Duration::from_secs(now.saturating_sub(since)))
        );
        ctx.alert(
            Kind::DestinationUnreachable,
            &text,
            &[("destination", name), ("reason", reason.to_string())],
        );
    }
}

enum OpenError {
    Guard(Target, String),
    /// STARTTLS was offered but failed: worth one plaintext try (unless pinned).
    Tls(String),
    Other(String),
}

/// Connects, reads the greeting, says EHLO, upgrades to TLS when offered,
/// and applies the guard (greeting and EHLO names, certificate pin).
async fn open(
    ctx: &Ctx,
    cfg: &Config,
    t: Target,
    domain: Option<&Domain>,
    use_tls: bool,
) -> Result<Conn, OpenError> {
    let mut c = Conn::connect(
        t.clone(),
        cfg.main.connect_timeout,
        &cfg.main.hostname,
        timeouts(cfg),
    )
    .await
    .map_err(OpenError::Other)?;
    let relay = c.relay();
    let mut asked_tls = false;
    loop {
        match c.event().await {
            Ok(Event::Ready {
                greeting,
                ehlo,
                extensions,
            }) => {
                c.ext = extensions;
                match on_ready(&c, cfg, domain, use_tls, &greeting, &ehlo) {
                    Ok(Opened::Ready) => return Ok(c),
                    Ok(Opened::StartTls) => {
                        asked_tls = true;
                        c.client.starttls();
                    }
                    Err(why) => {
                        c.quit().await;
                        return Err(OpenError::Guard(t, why));
                    }
                }
            }
            Ok(Event::StartTls) => handshake(ctx, &mut c, &relay).await?,
            Ok(Event::Failed { reply, reason }) => {
                let r = reply.map(|r| r.one_line()).unwrap_or(reason);
                if asked_tls && !c.stream.is_tls() {
                    return Err(OpenError::Tls(format!("{relay}: STARTTLS: {r}")));
                }
                return Err(OpenError::Other(format!("{relay}: {r}")));
            }
            Ok(_) => {}
            Err(e) => return Err(OpenError::Other(format!("{relay}: {e}"))),
        }
    }
}

/// What `open` does after `Ready`.
enum Opened {
    /// The connection is ready for mail.
    Ready,
    /// Ask for STARTTLS first.
    StartTls,
}

/// The guard's checks after `Ready`: the greeting and EHLO names in the
/// clear, then STARTTLS when offered, the pin under TLS. Err: the guard's
/// reason (the caller says QUIT).
fn on_ready(
    c: &Conn,
    cfg: &Config,
    domain: Option<&Domain>,
    use_tls: bool,
    greeting: &Reply,
    ehlo: &Reply,
) -> Result<Opened, String> {
    let pin = domain.and_then(|d| d.tls_pin.as_deref());
    if !c.stream.is_tls() {
        let g = greeting.lines.first().cloned().unwrap_or_default();
        let e = ehlo.lines.first().cloned().unwrap_or_default();
        guard::check_greeting(domain, &cfg.main.hostname, &g)
            .and_then(|()| guard::check_greeting(domain, &cfg.main.hostname, &e))?;
        if use_tls && c.ext.starttls {
            return Ok(Opened::StartTls);
        }
        if pin.is_some() {
            return Err("tls_pin is set but the server did not offer STARTTLS".into());
        }
        return Ok(Opened::Ready);
    }
    if let Some(p) = pin {
        let got = c
            .stream
            .peer_certificate()
            .and_then(|d| crate::tls::pin_of(&d));
        if got.as_deref() != Some(p) {
            return Err(format!(
                "certificate key {} does not match tls_pin",
                got.unwrap_or_else(|| "(none)".into())
            ));
        }
    }
    Ok(Opened::Ready)
}

/// The TLS handshake after STARTTLS's 220, bounded by the client's timer.
async fn handshake(ctx: &Ctx, c: &mut Conn, relay: &str) -> Result<(), OpenError> {
    let name = crate::tls::server_name(&c.target.host, c.target.addr.ip());
    c.client.waiting(Instant::now());
    let stream = &mut c.stream;
    let io = async {
        stream
            .connect_tls(ctx.tls_client.clone(), name)
            .await
            .map_err(|e| format!("{relay}: TLS: {e}"))
    };
    let late = format!("{relay}: TLS handshake timed out");
    match bounded(&mut c.client, io, None, &late).await {
        Ok(()) => {
            c.client.tls_established();
            Ok(())
        }
        Err(ConnError::Io(e)) => Err(OpenError::Tls(e)),
        Err(ConnError::Expired(_)) => Err(OpenError::Tls(late)),
    }
}

/// Defers (or fails) every job queued for `dest`: the destination could not
/// be reached, so each waiting message gets the same answer now.
async fn defer_all(ctx: &Ctx, dest: &Destination, reason: &str, relay: &str, permanent: bool) {
    let outcome = if permanent {
        Outcome::Failed
    } else {
        Outcome::Deferred
    };
    loop {
        let jobs: Vec<Job> = std::iter::from_fn(|| next_job(ctx, dest))
            .take(crate::spool::MAX_BATCH)
            .collect();
        if jobs.is_empty() {
            return;
        }
        // Recorded side by side, the spool thread applies a whole batch in
        // one transaction instead of one transaction per message.
        let records = jobs.into_iter().map(|job| async move {
            let arrival = ctx
                .spool
                .message(job.id)
                .ok()
                .flatten()
                .map_or(0, |m| m.arrival);
            let report = AttemptReport {
                time: crate::clock::now(),
                destination: dest.clone(),
                relay: relay.to_string(),
                summary: reason.to_string(),
                results: job
                    .rcpts
                    .iter()
                    .map(|(i, _)| RcptResult {
                        index: *i,
                        outcome,
                        reply: reason.to_string(),
                        remote: relay.to_string(),
                    })
                    .collect(),
            };
            record(ctx, &job, report, arrival).await;
            job_done(ctx, job.id);
        });
        join_all(records.collect()).await;
    }
}

/// Runs `futs` side by side until all are done.
async fn join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    futures_lite::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

fn outcome_of(v: Verdict) -> Outcome {
    match v {
        Verdict::Delivered => Outcome::Delivered,
        Verdict::Deferred => Outcome::Deferred,
        Verdict::Failed => Outcome::Failed,
    }
}

/// Sends one message to the recipients of `job`. Returns whether the
/// connection can carry another message.
async fn deliver_job(ctx: &Ctx, conn: &mut Conn, dest: &Destination, job: Job) -> bool {
    let Some((m, rcpts)) = pending(ctx, &job) else {
        job_done(ctx, job.id);
        return true;
    };
    let relay = conn.relay();
    let mut tally = Tally::new(rcpts.len());
    let alive = match prepare(ctx, job.id, &m, &rcpts, &conn.ext, &relay).await {
        Err(reply) => {
            tally.event(&Event::TransactionFailed { reply });
            true
        }
        Ok(body) => {
            let env = envelope(&m, &rcpts, &body);
            let mut attempt = Attempt {
                ctx,
                conn,
                m: &m,
                id: job.id,
                relay: relay.clone(),
                tally: &mut tally,
                body: Some(body),
            };
            attempt.run(env).await
        }
    };
    let report = AttemptReport {
        time: crate::clock::now(),
        destination: dest.clone(),
        relay: relay.clone(),
        summary: tally.summary().to_owned(),
        results: rcpts
            .iter()
            .zip(tally.verdicts())
            .map(|((i, _), (verdict, reply))| RcptResult {
                index: *i,
                outcome: outcome_of(verdict),
                reply,
                remote: relay.clone(),
            })
            .collect(),
    };
    let job = Job { id: job.id, rcpts };
    record(ctx, &job, report, m.arrival).await;
    job_done(ctx, job.id);
    alive
}

/// The spooled message of `job` and its recipients still pending (a
/// flush may have raced a delivery); None when there is nothing to send.
fn pending(ctx: &Ctx, job: &Job) -> Option<(Message, Vec<(usize, String)>)> {
    let m = ctx.spool.message(job.id).ok().flatten()?;
    let rcpts: Vec<(usize, String)> = job
        .rcpts
        .iter()
        .filter(|(i, _)| {
            m.recipients
                .get(*i)
                .is_some_and(|r| r.state == RcptState::Pending)
        })
        .cloned()
        .collect();
    (!rcpts.is_empty()).then_some((m, rcpts))
}

/// The envelope for `m` sent as `body` says (a downgraded body is 7-bit
/// and has its converted size).
fn envelope(m: &Message, rcpts: &[(usize, String)], body: &Body) -> Envelope {
    let (eightbit, size) = match body {
        Body::Downgraded(plan) => (false, plan.size),
        Body::AsIs => (m.flags & FLAG_8BITMIME != 0, m.size),
    };
    Envelope {
        from: m.sender.clone(),
        to: rcpts.iter().map(|(_, a)| a.clone()).collect(),
        size,
        eightbit,
        smtputf8: m.flags & FLAG_SMTPUTF8 != 0,
    }
}

/// One transaction on an open connection, its events fed to `tally`.
struct Attempt<'a> {
    ctx: &'a Ctx,
    conn: &'a mut Conn,
    m: &'a Message,
    id: u64,
    relay: String,
    tally: &'a mut Tally,
    /// Taken when the server asks for it.
    body: Option<Body>,
}

impl Attempt<'_> {
    /// Sends the transaction. Returns whether the connection can carry
    /// another message.
    async fn run(&mut self, env: Envelope) -> bool {
        let mut alive = true;
        // The client times each reply and the whole transaction.
        self.conn.client.send_mail(env);
        // Until the transaction's last event: leaving one unread would
        // hand it to the next message on this connection.
        loop {
            let ev = match self.conn.event().await {
                Ok(ev) => ev,
                Err(e) => {
                    let why = self.lost(e, true);
                    self.tally.lost(&why);
                    return false;
                }
            };
            match &ev {
                Event::SendBody => {
                    if let Err(e) = self.on_send_body().await {
                        let why = self.lost(e, false);
                        self.tally.lost(&why);
                        return false;
                    }
                }
                Event::Failed { .. } | Event::Closed => alive = false,
                _ => {}
            }
            if self.tally.event(&ev) {
                return alive;
            }
        }
    }

    /// DATA got 354: the body, as spooled or converted.
    async fn on_send_body(&mut self) -> Result<(), ConnError> {
        let conv = match self.body.take() {
            Some(Body::Downgraded(plan)) => Some(Converter::new(plan)),
            _ => None,
        };
        stream_body(self.ctx, self.conn, self.id, self.m.chunks, conv).await
    }

    /// Every recipient's answer when the transaction broke off; `waiting`:
    /// it broke while waiting for a reply (not while sending the body).
    fn lost(&self, e: ConnError, waiting: bool) -> String {
        match e {
            ConnError::Expired(Expired::Transaction) => format!(
                "{} took longer than {} for one message: given up",
                self.relay,
                crate::config::fmt_duration(self.ctx.config().main.transaction_timeout)
            ),
            e if waiting => format!("lost connection with {}: {e}", self.relay),
            e => e.to_string(),
        }
    }
}

/// How a message goes to this connection's server.
enum Body {
    /// As spooled.
    AsIs,
    /// Converted to 7-bit on the way (RFC 6152 3).
    Downgraded(Plan),
}

/// Decides how `m` can go to a server offering `ext`: as spooled, 7-bit
/// converted, or not at all (the reply is every recipient's answer).
/// Only a message with 8-bit or UTF-8 that the server cannot take is read
/// (once, chunk by chunk) to find out.
async fn prepare(
    ctx: &Ctx,
    id: u64,
    m: &Message,
    rcpts: &[(usize, String)],
    ext: &Extensions,
    relay: &str,
) -> Result<Body, Reply> {
    let traits = Traits {
        eightbit: m.flags & FLAG_8BITMIME != 0,
        smtputf8: m.flags & FLAG_SMTPUTF8 != 0,
        utf8_address: !m.sender.is_ascii() || rcpts.iter().any(|(_, a)| !a.is_ascii()),
    };
    if let Some(Decision::AsIs) = eightbit::before_scan(traits, ext, relay)? {
        return Ok(Body::AsIs);
    }
    let plan = scan(ctx, id, m.chunks).await?;
    Ok(match eightbit::after_scan(traits, ext, &plan, relay)? {
        Decision::AsIs => Body::AsIs,
        Decision::Downgrade => Body::Downgraded(plan),
    })
}

/// The downgrade plan of a spooled body (one chunk in memory at a time).
async fn scan(ctx: &Ctx, id: u64, chunks: u32) -> Result<Plan, Reply> {
    let mut s = Scanner::new();
    for seq in 0..chunks {
        let chunk = read_chunk(ctx, id, seq).map_err(|e| Reply::enh(451, (4, 3, 0), e))?;
        s.feed(&chunk);
        // A 10 MB body is many chunks: let the other sessions run.
        futures_lite::future::yield_now().await;
    }
    Ok(s.finish())
}

fn read_chunk(ctx: &Ctx, id: u64, seq: u32) -> Result<Vec<u8>, String> {
    match ctx.spool.chunk(id, seq) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(format!("spool: chunk {seq} of the body is missing")),
        Err(e) => Err(format!("spool: {e}")),
    }
}

/// Streams the spooled body, through `conv` when converting: one chunk
/// (and its converted form) in memory at a time.
async fn stream_body(
    ctx: &Ctx,
    conn: &mut Conn,
    id: u64,
    chunks: u32,
    mut conv: Option<Converter>,
) -> Result<(), ConnError> {
    let mut out = Vec::new();
    for seq in 0..chunks {
        let chunk = read_chunk(ctx, id, seq).map_err(ConnError::Io)?;
        match conv.as_mut() {
            Some(c) => {
                out.clear();
                c.feed(&chunk, &mut out)
                    .map_err(|e| ConnError::Io(e.to_string()))?;
                conn.client.body(&out);
            }
            None => conn.client.body(&chunk),
        }
        conn.flush().await?;
    }
    if let Some(c) = conv {
        out.clear();
        c.finish(&mut out)
            .map_err(|e| ConnError::Io(e.to_string()))?;
        conn.client.body(&out);
    }
    conn.client.end_body();
    conn.flush().await
}
