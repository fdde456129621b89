//! What each request does inside the spool thread's write transaction.

use std::collections::HashSet;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::bounce::make_dsn;
use super::retry::Next;
use super::schema::{ATTEMPTS, CALLAHEAD, CALLAHEAD_EXPIRY, CHUNKS, INCOMING, MESSAGES, SCHEDULE};
use super::writer::ThreadState;
use super::*;

/// A queue-wide change (flush, retag, a destination back up) is made in
/// batches, each its own transaction: with a week of mail queued, one
/// transaction over every message held them all decoded in memory and
/// every changed page dirty at once (+46 MiB draining 50,000 messages), and
/// kept the spool thread from everything else meanwhile. A batch changes
/// at most this many messages and looks at most `QUEUE_WIDE_SCAN` of them.
/// (Small in unit tests, so that their few hundred messages cross both
/// limits.)
pub(super) const QUEUE_WIDE_BATCH: usize = if cfg!(test) { 16 } else { 256 };
pub(super) const QUEUE_WIDE_SCAN: usize = if cfg!(test) { 64 } else { 4096 };

/// Whether every chunk `0..chunks` of a message is there: the last check
/// before a 250, so that no storage failure, however it came about, turns
/// into an accepted message with a hole ("chunk N missing" at delivery,
/// then a wrong return).
pub(super) fn body_complete(
    tx: &redb::WriteTransaction,
    id: QueueId,
    chunks: u32,
) -> Result<bool, SpoolError> {
    if chunks == 0 {
        return Ok(true);
    }
    let t = tx.open_table(CHUNKS).map_err(storage)?;
    // Counted entry by entry, stopping at the first error: after a storage
    // error redb's iterator may yield the same error for ever (`count()`
    // counted them: the spool thread spun, found by the power-cut test).
    let mut n = 0usize;
    for e in t.range((id, 0)..(id, chunks)).map_err(storage)? {
        e.map_err(storage)?;
        n += 1;
    }
    Ok(n == chunks as usize)
}

/// The number and total size of the messages in `db`.
pub(super) fn count_queued(db: &Database) -> Result<(u64, u64), SpoolError> {
    let tx = db.begin_read().map_err(storage)?;
    let t = tx.open_table(MESSAGES).map_err(storage)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    for e in t.iter().map_err(storage)? {
        let (_, v) = e.map_err(storage)?;
        if let Ok(m) = schema::decode_message(v.value()) {
            n += 1;
            bytes = bytes.saturating_add(m.size);
        }
    }
    Ok((n, bytes))
}

pub(super) fn remove_body(tx: &redb::WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
    tx.open_table(CHUNKS)
        .map_err(storage)?
        .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
        .map_err(storage)?;
    tx.open_table(INCOMING)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    Ok(())
}

pub(super) fn commit_message(
    tx: &redb::WriteTransaction,
    id: QueueId,
    env: Envelope,
    chunks: u32,
    size: u64,
) -> Result<Vec<u8>, SpoolError> {
    let m = Message {
        sender: env.sender,
        arrival: env.arrival,
        backoff_base: env.arrival,
        size,
        chunks,
        flags: env.flags,
        // A new message is tried at once (the primary may well be up),
        // unless its destination was found down a moment ago.
        next_attempt: env.first_attempt.max(env.arrival),
        attempts: 0,
        last_error: env.note,
        client: env.client,
        recipients: env
            .recipients
            .into_iter()
            .map(|(address, destination)| Recipient {
                address,
                destination,
                state: RcptState::Pending,
                last_reply: String::new(),
                remote: String::new(),
                last_attempt: 0,
            })
            .collect(),
    };
    let encoded = schema::encode_message(&m);
    tx.open_table(MESSAGES)
        .map_err(storage)?
        .insert(id, encoded.as_slice())
        .map_err(storage)?;
    tx.open_table(SCHEDULE)
        .map_err(storage)?
        .insert((m.next_attempt, id), ())
        .map_err(storage)?;
    tx.open_table(INCOMING)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    Ok(encoded)
}

fn load(tx: &redb::WriteTransaction, id: QueueId) -> Result<Message, SpoolError> {
    let t = tx.open_table(MESSAGES).map_err(storage)?;
    let v = t.get(id).map_err(storage)?.ok_or(SpoolError::NotFound)?;
    schema::decode_message(v.value()).map_err(|e| SpoolError::Damaged(e.to_string()))
}

fn store(
    tx: &redb::WriteTransaction,
    id: QueueId,
    old_next: u64,
    m: &Message,
) -> Result<(), SpoolError> {
    tx.open_table(MESSAGES)
        .map_err(storage)?
        .insert(id, schema::encode_message(m).as_slice())
        .map_err(storage)?;
    let mut s = tx.open_table(SCHEDULE).map_err(storage)?;
    s.remove((old_next, id)).map_err(storage)?;
    if m.has_pending() {
        s.insert((m.next_attempt, id), ()).map_err(storage)?;
    }
    Ok(())
}

pub(super) fn delete_message(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    id: QueueId,
) -> Result<(), SpoolError> {
    let m = load(tx, id)?;
    tx.open_table(MESSAGES)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    tx.open_table(SCHEDULE)
        .map_err(storage)?
        .remove((m.next_attempt, id))
        .map_err(storage)?;
    tx.open_table(CHUNKS)
        .map_err(storage)?
        .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
        .map_err(storage)?;
    tx.open_table(ATTEMPTS)
        .map_err(storage)?
        .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
        .map_err(storage)?;
    st.bytes_delta -= m.size as i64;
    st.messages_delta -= 1;
    Ok(())
}

fn record_attempt(
    tx: &redb::WriteTransaction,
    id: QueueId,
    n: u32,
    a: &Attempt,
) -> Result<(), SpoolError> {
    let mut t = tx.open_table(ATTEMPTS).map_err(storage)?;
    t.insert((id, n), schema::encode_attempt(a).as_slice())
        .map_err(storage)?;
    if n >= schema::MAX_ATTEMPT_RECORDS {
        t.remove((id, n - schema::MAX_ATTEMPT_RECORDS))
            .map_err(storage)?;
    }
    Ok(())
}

/// Applies an attempt's results: marks recipients, returns the failed ones
/// with a DSN, removes the message when nothing is pending, reschedules it
/// otherwise.
pub(super) fn finish(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    id: QueueId,
    report: AttemptReport,
    policy: &ReturnPolicy,
) -> Result<Finished, SpoolError> {
    let mut m = load(tx, id)?;
    let old_next = m.next_attempt;
    let now = report.time;
    let mut out = Finished::default();
    let newly_failed = apply_results(&mut m, &report, now);
    record_attempt(
        tx,
        id,
        m.attempts,
        &Attempt {
            time: now,
            destination: report.destination.to_string(),
            relay: report.relay.clone(),
            result: report.summary.clone(),
        },
    )?;
    m.attempts = m.attempts.saturating_add(1);
    let expired = if m.has_pending() {
        schedule_next(&mut m, &report, policy, now)
    } else {
        vec![]
    };
    if !newly_failed.is_empty() || !expired.is_empty() {
        out.failed = newly_failed
            .iter()
            .chain(expired.iter())
            .filter_map(|&i| m.recipients.get(i).map(|r| r.address.clone()))
            .collect();
        if m.sender.is_empty() || m.flags & schema::FLAG_DSN != 0 {
            // Never a DSN to <> (RFC 5321 6.1): the drop is logged by the caller.
            out.dropped = true;
        } else {
            let dsn_id = make_dsn(tx, st, id, &m, &newly_failed, &expired, policy, now)?;
            out.dsn = Some(dsn_id);
        }
    }
    if m.has_pending() {
        store(tx, id, old_next, &m)?;
        out.next_attempt = Some(m.next_attempt);
    } else {
        store(tx, id, old_next, &m)?;
        delete_message(tx, st, id)?;
        out.removed = true;
    }
    Ok(out)
}

/// Marks each pending recipient of the report with its outcome; returns
/// those refused for good.
fn apply_results(m: &mut Message, report: &AttemptReport, now: u64) -> Vec<usize> {
    let mut newly_failed = vec![];
    for r in &report.results {
        let Some(rcpt) = m.recipients.get_mut(r.index) else {
            continue;
        };
        if rcpt.state != RcptState::Pending {
            continue;
        }
        rcpt.last_reply = r.reply.clone();
        rcpt.remote = r.remote.clone();
        rcpt.last_attempt = now;
        match r.outcome {
            Outcome::Delivered => rcpt.state = RcptState::Delivered,
            Outcome::Deferred => m.last_error = r.reply.clone(),
            Outcome::Failed => {
                rcpt.state = RcptState::Failed;
                m.last_error = r.reply.clone();
                newly_failed.push(r.index);
            }
        }
    }
    newly_failed
}

/// Sets the next attempt of a message with pending recipients by the
/// retry rule; once it has expired, fails this attempt's recipients and
/// returns them.
fn schedule_next(
    m: &mut Message,
    report: &AttemptReport,
    policy: &ReturnPolicy,
    now: u64,
) -> Vec<usize> {
    let mut expired = vec![];
    match retry::next_attempt(&policy.steps, m.arrival, m.backoff_base, now) {
        Next::At(t) => m.next_attempt = t,
        Next::Expired => {
            // Only this attempt's recipients: another destination's job
            // may be delivering the others right now (they expire when
            // their own attempt reports, at once: see below).
            let ours: HashSet<usize> = report.results.iter().map(|r| r.index).collect();
            for (i, r) in m.recipients.iter_mut().enumerate() {
                if r.state == RcptState::Pending && ours.contains(&i) {
                    r.state = RcptState::Failed;
                    expired.push(i);
                }
            }
            // What is left belongs to other destinations: their last
            // attempt is due now.
            m.next_attempt = now;
        }
    }
    expired
}

pub(super) fn cache_put(
    tx: &redb::WriteTransaction,
    address: &str,
    entry: &CacheEntry,
) -> Result<(), SpoolError> {
    let mut t = tx.open_table(CALLAHEAD).map_err(storage)?;
    let mut x = tx.open_table(CALLAHEAD_EXPIRY).map_err(storage)?;
    let old = t
        .get(address)
        .map_err(storage)?
        .and_then(|v| schema::decode_cache(v.value()).ok());
    if let Some(old) = old {
        x.remove((old.expire, address)).map_err(storage)?;
    }
    t.insert(address, schema::encode_cache(entry).as_slice())
        .map_err(storage)?;
    x.insert((entry.expire, address), ()).map_err(storage)?;
    // Bounded: a dictionary attack must not grow the cache without end.
    while t.len().map_err(storage)? > CALLAHEAD_CACHE_MAX {
        let first = x.first().map_err(storage)?.map(|(k, _)| {
            let (e, a) = k.value();
            (e, a.to_string())
        });
        let Some((e, a)) = first else {
            break;
        };
        x.remove((e, a.as_str())).map_err(storage)?;
        t.remove(a.as_str()).map_err(storage)?;
    }
    Ok(())
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

pub(super) fn retag(
    tx: &redb::WriteTransaction,
    domain: &str,
    dest: &Destination,
    now: u64,
    from: QueueId,
) -> Result<Batch, SpoolError> {
    change_batch(tx, from, now, |m| {
        let mut hit = false;
        for r in m.recipients.iter_mut() {
            if r.state == RcptState::Pending && domain_of(&r.address).eq_ignore_ascii_case(domain) {
                r.destination = dest.clone();
                hit = true;
            }
        }
        hit
    })
}

pub(super) fn reschedule(
    tx: &redb::WriteTransaction,
    filter: &Filter,
    now: u64,
    from: QueueId,
) -> Result<Batch, SpoolError> {
    change_batch(tx, from, now, |m| {
        m.pending().any(|(_, r)| match filter {
            Filter::All => true,
            Filter::Domain(d) => domain_of(&r.address).eq_ignore_ascii_case(d),
            Filter::Destination(d) => &r.destination == d,
        })
    })
}

/// One batch of a queue-wide change: from message id `from` on, `change`
/// edits each message and says whether it applies; those it applies to are
/// due `now` with their back-off reset. Stops after `QUEUE_WIDE_BATCH`
/// changes or `QUEUE_WIDE_SCAN` messages looked at.
fn change_batch(
    tx: &redb::WriteTransaction,
    from: QueueId,
    now: u64,
    mut change: impl FnMut(&mut Message) -> bool,
) -> Result<Batch, SpoolError> {
    let mut changed: Vec<(QueueId, u64, Message)> = vec![];
    let mut resume = None;
    {
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        for (scanned, e) in t.range(from..).map_err(storage)?.enumerate() {
            let (k, v) = e.map_err(storage)?;
            if scanned == QUEUE_WIDE_SCAN || changed.len() == QUEUE_WIDE_BATCH {
                resume = Some(k.value());
                break;
            }
            let Ok(mut m) = schema::decode_message(v.value()) else {
                continue;
            };
            let old_next = m.next_attempt;
            if change(&mut m) {
                m.next_attempt = now;
                m.backoff_base = now;
                changed.push((k.value(), old_next, m));
            }
        }
    }
    let n = changed.len();
    for (id, old_next, m) in changed {
        store(tx, id, old_next, &m)?;
    }
    Ok(Batch { changed: n, resume })
}
