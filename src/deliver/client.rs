//! Delivers the jobs queued for one destination over one connection
//! (`outbound::conn`: routing, the guard, the handshake),
//! streaming bodies chunk by chunk from the spool (7-bit converted for a
//! server without 8BITMIME: `smtp::downgrade`, decided by `eightbit`).

use std::rc::Rc;
use std::time::Duration;

use super::eightbit::{self, Decision, Traits};
use super::{Job, job_done, next_job, record};
use crate::alert::Kind;
use crate::ctx::Ctx;
use crate::outbound::conn::{Conn, ConnError, ConnectError, connect};
use crate::smtp::Reply;
use crate::smtp::client::{Envelope, Event, Expired, Extensions, Tally, Verdict};
use crate::smtp::downgrade::{Converter, Plan, Scanner};
use crate::spool::Destination;
use crate::spool::schema::{FLAG_8BITMIME, FLAG_SMTPUTF8, Message, RcptState};
use crate::spool::{AttemptReport, Outcome, RcptResult};

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

fn has_jobs(ctx: &Ctx, dest: &Destination) -> bool {
    ctx.deliverer
        .queues
        .borrow()
        .get(dest)
        .is_some_and(|q| !q.jobs.is_empty())
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
