//! Delivery: the scheduler that sleeps until the next due message, the
//! per-destination queues and workers (bounded connections, connection
//! reuse), the delivery of a job over an `outbound` connection (`client`,
//! with the 8-bit decision in `eightbit`), and the host check.
//!
//! Flow: the scheduler reads due ids from the spool's schedule index,
//! splits each message's pending recipients by destination, and queues one
//! job per (message, destination). Up to `max_destination_connections`
//! workers per destination take jobs from that queue over one connection
//! each; when a destination cannot be reached, the worker defers every job
//! waiting for it at once (one connection attempt, not one per message).

pub mod client;
pub mod eightbit;
pub mod hostcheck;

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use smol::channel::Receiver;

use crate::ctx::Ctx;
use crate::spool::Destination;
use crate::spool::{self, AttemptReport, Outcome, QueueId, ReturnPolicy};

/// Jobs (message, destination) held in memory at most; more due mail waits
/// in the spool's schedule until some finish.
pub const MAX_JOBS: usize = 512;
/// The scheduler re-reads the schedule at least this often, so a wall-clock
/// step (NTP on a router without RTC) cannot make it oversleep.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Parked message ids, all destinations together: past this, more due mail
/// for full destinations stays in the schedule until room frees up.
pub const MAX_PARKED: usize = 20_000;

/// The delivery side's in-memory state.
pub use crate::ctx::{Deliverer, DestQueue, Job};

impl Deliverer {
    fn jobs(&self) -> usize {
        self.in_flight.borrow().values().sum()
    }
}

/// The scheduler task.
pub async fn scheduler(ctx: Rc<Ctx>, wake: Receiver<()>) {
    loop {
        if ctx.stopping.get() {
            return;
        }
        let now = crate::clock::now();
        let room = MAX_JOBS.saturating_sub(ctx.deliverer.jobs());
        let busy: HashSet<QueueId> = {
            let parked = ctx.deliverer.parked.borrow();
            let in_flight = ctx.deliverer.in_flight.borrow();
            in_flight.keys().chain(parked.keys()).copied().collect()
        };
        let sleep = match ctx.spool.due(now, room, &busy) {
            Ok((due, next)) => {
                for id in due {
                    dispatch(&ctx, id);
                }
                match next {
                    Some(t) if t > now => Duration::from_secs(t - now).min(MAX_SLEEP),
                    // More is due but no room: wait for a job to finish.
                    Some(_) => MAX_SLEEP,
                    None => MAX_SLEEP,
                }
            }
            Err(e) => {
                log::error!("event=scheduler_error error=\"{e}\"");
                Duration::from_secs(5)
            }
        };
        futures_lite::future::or(
            async {
                let _ = wake.recv().await;
            },
            async {
                smol::Timer::after(sleep).await;
            },
        )
        .await;
    }
}

/// Queues the jobs of one due message.
fn dispatch(ctx: &Rc<Ctx>, id: QueueId) {
    let m = match ctx.spool.message(id) {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            log::error!(
                "id={} event=spool_error error=\"{e}\"",
                spool::format_id(id)
            );
            return;
        }
    };
    let mut groups: Vec<(Destination, Vec<(usize, String)>)> = vec![];
    for (i, r) in m.pending() {
        let entry = (i, r.address.clone());
        match groups.iter_mut().find(|(d, _)| *d == r.destination) {
            Some((_, v)) => v.push(entry),
            None => groups.push((r.destination.clone(), vec![entry])),
        }
    }
    if groups.is_empty() {
        return;
    }
    let cfg = ctx.config();
    let cap = cfg.main.max_destination_connections.max(1);
    let limit = cfg.main.max_destination_queue.max(1);
    let mut queued = 0;
    for (dest, rcpts) in groups {
        let spawn = {
            let mut qs = ctx.deliverer.queues.borrow_mut();
            let q = qs.entry(dest.clone()).or_default();
            if q.jobs.len() >= limit {
                park(&ctx.deliverer, q, id);
                continue;
            }
            q.jobs.push_back(Job { id, rcpts });
            queued += 1;
            if q.workers < cap && q.jobs.len() > q.workers {
                q.workers += 1;
                true
            } else {
                false
            }
        };
        if spawn {
            ctx.spawn(worker(ctx.clone(), dest));
        }
    }
    if queued > 0 {
        *ctx.deliverer.in_flight.borrow_mut().entry(id).or_insert(0) += queued;
    }
}

/// Parks message `id` at a full destination queue, unless MAX_PARKED ids
/// are parked already (then it stays due in the schedule).
fn park(d: &Deliverer, q: &mut DestQueue, id: QueueId) {
    let mut parked = d.parked.borrow_mut();
    if parked.len() >= MAX_PARKED {
        return;
    }
    q.parked.push_back(id);
    *parked.entry(id).or_insert(0) += 1;
}

fn unpark(d: &Deliverer, id: QueueId) {
    let mut parked = d.parked.borrow_mut();
    if let Some(n) = parked.get_mut(&id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            parked.remove(&id);
        }
    }
}

/// Moves parked messages for `dest` into its queue while there is room:
/// their recipients for `dest` that are still pending become a job.
fn refill(ctx: &Ctx, dest: &Destination) {
    let limit = ctx.config().main.max_destination_queue.max(1);
    loop {
        let id = {
            let mut qs = ctx.deliverer.queues.borrow_mut();
            let Some(q) = qs.get_mut(dest) else { return };
            if q.jobs.len() >= limit {
                return;
            }
            match q.parked.pop_front() {
                Some(id) => id,
                None => return,
            }
        };
        unpark(&ctx.deliverer, id);
        let rcpts: Vec<(usize, String)> = match ctx.spool.message(id) {
            Ok(Some(m)) => m
                .pending()
                .filter(|(_, r)| &r.destination == dest)
                .map(|(i, r)| (i, r.address.clone()))
                .collect(),
            // Gone (delivered, deleted) or unreadable: nothing to send.
            _ => continue,
        };
        if rcpts.is_empty() {
            continue;
        }
        *ctx.deliverer.in_flight.borrow_mut().entry(id).or_insert(0) += 1;
        if let Some(q) = ctx.deliverer.queues.borrow_mut().get_mut(dest) {
            q.jobs.push_back(Job { id, rcpts });
        }
    }
}

/// Takes the next job for `dest`, or None (and the worker ends).
fn next_job(ctx: &Ctx, dest: &Destination) -> Option<Job> {
    refill(ctx, dest);
    let mut qs = ctx.deliverer.queues.borrow_mut();
    let q = qs.get_mut(dest)?;
    q.jobs.pop_front()
}

fn worker_done(ctx: &Ctx, dest: &Destination) {
    let mut qs = ctx.deliverer.queues.borrow_mut();
    if let Some(q) = qs.get_mut(dest) {
        q.workers = q.workers.saturating_sub(1);
        if q.workers == 0 && q.jobs.is_empty() && q.parked.is_empty() {
            qs.remove(dest);
        }
    }
}

/// Marks a job finished; wakes the scheduler (room for more work).
fn job_done(ctx: &Ctx, id: QueueId) {
    let mut f = ctx.deliverer.in_flight.borrow_mut();
    if let Some(n) = f.get_mut(&id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            f.remove(&id);
        }
    }
    drop(f);
    ctx.spool.wake();
}

pub fn return_policy(ctx: &Ctx) -> ReturnPolicy {
    let cfg = ctx.config();
    ReturnPolicy {
        steps: cfg.main.retry.clone(),
        reporting_mta: cfg.main.hostname.clone(),
        smarthost: cfg.main.smarthost.as_ref().map(|h| Destination::Relay {
            host: h.host.clone(),
            port: h.port,
        }),
    }
}

/// Records an attempt's results in the spool and logs each recipient.
pub async fn record(ctx: &Ctx, job: &Job, report: AttemptReport, arrival: u64) {
    let qid = spool::format_id(job.id);
    let delay = report.time.saturating_sub(arrival);
    {
        let mut st = ctx.stats.borrow_mut();
        for r in &report.results {
            let status = match r.outcome {
                Outcome::Delivered => {
                    st.delivered += 1;
                    "sent"
                }
                Outcome::Deferred => {
                    st.deferred += 1;
                    "deferred"
                }
                Outcome::Failed => "bounced",
            };
            log::info!(
                "id={qid} event=delivery to=<{}> relay={} delay={delay}s status={status} reply=\"{}\"",
                job.rcpts
                    .iter()
                    .find(|(i, _)| *i == r.index)
                    .map_or("", |(_, a)| a.as_str()),
                if r.remote.is_empty() {
                    "none"
                } else {
                    &r.remote
                },
                r.reply.replace('"', "'")
            );
        }
    }
    for r in &report.results {
        if r.outcome == Outcome::Deferred
            && let Some((_, a)) = job.rcpts.iter().find(|(i, _)| *i == r.index)
        {
            let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
            note_deferral(ctx, domain, &r.reply);
        }
    }
    match ctx.spool.finish(job.id, report, return_policy(ctx)).await {
        Ok(f) => {
            if !f.failed.is_empty() {
                ctx.stats.borrow_mut().bounced += f.failed.len() as u64;
            }
            if let Some(dsn) = f.dsn {
                log::info!(
                    "id={qid} event=bounce dsn={} failed={}",
                    spool::format_id(dsn),
                    f.failed.join(",")
                );
                ctx.alert(
                    crate::alert::Kind::Returned,
                    &format!(
                        "message {qid} was returned to its sender for {}",
                        f.failed.join(", ")
                    ),
                    &[
                        ("queue_id", qid.clone()),
                        ("recipients", f.failed.join(",")),
                    ],
                );
            }
            if f.dropped {
                log::warn!(
                    "id={qid} event=drop reason=\"undeliverable mail from <> is not returned\" failed={}",
                    f.failed.join(",")
                );
            }
            if f.removed {
                log::info!("id={qid} event=removed");
            } else if let Some(t) = f.next_attempt {
                log::debug!(
                    "id={qid} event=scheduled next_attempt={}",
                    crate::clock::to_unix(t)
                );
            }
        }
        Err(e) => log::error!("id={qid} event=spool_error error=\"{e}\""),
    }
}

/// One worker: connects to `dest` and delivers queued jobs over that
/// connection until the queue is empty.
async fn worker(ctx: Rc<Ctx>, dest: Destination) {
    client::run_worker(&ctx, &dest).await;
    worker_done(&ctx, &dest);
}

/// Deliveries call this on a 4xx: a primary that greylists its own backup
/// delays every message a retry interval.
pub fn note_deferral(ctx: &Ctx, domain: &str, reply: &str) {
    let l = reply.to_ascii_lowercase();
    if l.contains("greylist") || l.contains("graylist") || l.contains("greylisted") {
        ctx.primary_warning(
            domain,
            "greylist",
            "the primary greylists mail from its backup MX; whitelist the backup's address in its greylisting",
        );
    }
}
