//! The spool thread: it takes every request waiting in its queue and
//! applies them in one write transaction (group commit), then answers.
//! When a batch is durable, and how, is in docs/spool-format.md.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use redb::{Database, Durability, ReadableTable};
use smol::channel::{Receiver, Sender, bounded};

use super::handle::Shared;
use super::open::{open_db, replay_journal};
use super::ops::*;
use super::schema::{CHUNKS, INCOMING, META};
use super::*;

/// A message at the end of DATA, to commit.
pub(super) struct NewMessage {
    pub(super) id: QueueId,
    pub(super) envelope: Envelope,
    pub(super) chunks: u32,
    pub(super) size: u64,
    /// The last chunk (seq, bytes), when the session held it back.
    pub(super) last: Option<(u32, Vec<u8>)>,
}

pub(super) enum Request {
    Append {
        id: QueueId,
        seq: u32,
        data: Vec<u8>,
    },
    Commit {
        message: NewMessage,
        reply: Sender<Result<(), SpoolError>>,
    },
    Abort {
        id: QueueId,
    },
    Finish {
        id: QueueId,
        report: AttemptReport,
        policy: ReturnPolicy,
        reply: Sender<Result<Finished, SpoolError>>,
    },
    /// Move the next attempt of matching messages to `now` and reset their
    /// back-off. `domain`: only messages with a pending recipient there.
    /// One batch (see `QUEUE_WIDE_BATCH`) from message id `from` on.
    Reschedule {
        filter: Filter,
        now: u64,
        from: QueueId,
        reply: Sender<Result<Batch, SpoolError>>,
    },
    Delete {
        id: QueueId,
        reply: Sender<Result<(), SpoolError>>,
    },
    /// Answered once every request queued before it has been applied (the
    /// body chunks of a message are then readable, e.g. for scanning).
    Barrier {
        /// Also make everything before it durable (shutdown).
        durable: bool,
        reply: Sender<Result<(), SpoolError>>,
    },
    /// Replace one body chunk of a message still being received (adds
    /// header lines such as X-Spam-* before the commit).
    ReplaceChunk {
        id: QueueId,
        seq: u32,
        data: Vec<u8>,
    },
    /// Remember a call-ahead answer (not durable: it can be learned again).
    CachePut {
        address: String,
        entry: CacheEntry,
        reply: Sender<Result<(), SpoolError>>,
    },
    /// Point the pending recipients of `domain` at `dest` and retry now.
    /// One batch from message id `from` on, like `Reschedule`.
    Retag {
        domain: String,
        dest: Destination,
        now: u64,
        from: QueueId,
        reply: Sender<Result<Batch, SpoolError>>,
    },
}

/// Replies owed after the batch's commit.
enum PendingReply {
    Unit(Sender<Result<(), SpoolError>>, Result<(), SpoolError>),
    Finished(
        Sender<Result<Finished, SpoolError>>,
        Result<Finished, SpoolError>,
    ),
    Batch(Sender<Result<Batch, SpoolError>>, Result<Batch, SpoolError>),
}

impl PendingReply {
    fn fail(self, e: &SpoolError) {
        match self {
            PendingReply::Unit(s, _) => drop(s.try_send(Err(e.clone()))),
            PendingReply::Finished(s, _) => drop(s.try_send(Err(e.clone()))),
            PendingReply::Batch(s, _) => drop(s.try_send(Err(e.clone()))),
        }
    }
    fn send(self) {
        match self {
            PendingReply::Unit(s, r) => drop(s.try_send(r)),
            PendingReply::Finished(s, r) => drop(s.try_send(r)),
            PendingReply::Batch(s, r) => drop(s.try_send(r)),
        }
    }
}

pub(super) struct ThreadState {
    pub(super) shared: Arc<Shared>,
    pub(super) journal: Option<journal::Journal>,
    /// Bookkeeping committed without fsync since then.
    pub(super) unsynced_since: Option<std::time::Instant>,
    /// Messages whose chunks failed to be written: their commit must fail.
    pub(super) broken: HashSet<QueueId>,
    /// Messages being received: from their first chunk to their commit or
    /// abort. A reopen returns the database to its last durable state, which
    /// may lack chunks that earlier batches committed without a sync: every
    /// one of these is broken then, not only those of the failing batch.
    pub(super) receiving: HashSet<QueueId>,
    /// Size deltas applied to the shared counters once the commit is done.
    pub(super) bytes_delta: i64,
    pub(super) messages_delta: i64,
    pub(super) wake: bool,
    /// The write transaction left open by batches of body chunks alone,
    /// and the messages with chunks in it. Chunks need no commit of their
    /// own (they count only once their message commits), and a commit per
    /// batch of chunks cost more than the chunks' inserts.
    pub(super) open: Option<redb::WriteTransaction>,
    pub(super) open_ids: Vec<QueueId>,
    /// The spool time and offset last written to `meta` (see `record_clock`).
    pub(super) clock_saved: Option<(u64, i64)>,
}

pub(super) fn spool_thread(
    shared: Arc<Shared>,
    journal: Option<journal::Journal>,
    rx: Receiver<Request>,
    wake: Sender<()>,
) {
    let mut st = ThreadState {
        shared: shared.clone(),
        journal,
        unsynced_since: None,
        broken: HashSet::new(),
        receiving: HashSet::new(),
        bytes_delta: 0,
        messages_delta: 0,
        wake: false,
        open: None,
        open_ids: vec![],
        clock_saved: None,
    };
    loop {
        let first = match st.unsynced_since {
            None => match rx.recv_blocking() {
                Ok(r) => r,
                Err(_) => break,
            },
            // Bookkeeping waits for a sync: wake up for it even when idle.
            Some(t) => {
                let left = BOOKKEEPING_SYNC.saturating_sub(t.elapsed());
                // futures-lite's block_on only parks this thread; smol's
                // would make it a second driver of the executor thread's
                // reactor, and every socket event would then cost the
                // sessions a thread hop.
                let got = futures_lite::future::block_on(futures_lite::future::or(
                    async { Some(rx.recv().await) },
                    async {
                        smol::Timer::after(left).await;
                        None
                    },
                ));
                match got {
                    Some(Ok(r)) => r,
                    Some(Err(_)) => break,
                    None => {
                        let (reply, _rx) = bounded(1);
                        Request::Barrier {
                            durable: true,
                            reply,
                        }
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        run_batch(&shared, &mut st, batch);
        if st.wake {
            st.wake = false;
            let _ = wake.try_send(());
        }
    }
    if st.unsynced_since.is_some() {
        let (reply, _rx) = bounded(1);
        run_batch(
            &shared,
            &mut st,
            vec![Request::Barrier {
                durable: true,
                reply,
            }],
        );
    }
}

/// How a batch is committed, decided from its requests before any is
/// applied (see docs/spool-format.md, "Commit protocol").
struct Plan {
    /// Holds delivery bookkeeping or cache answers: if not durable now,
    /// it must be synced within `BOOKKEEPING_SYNC`.
    bookkeeping: bool,
    /// Commit with an fsync.
    durable: bool,
    /// New messages are made durable by the journal instead.
    journaled: bool,
    /// Chunks alone: the transaction stays open for the next batch.
    keep_open: bool,
}

impl Plan {
    fn of(batch: &[Request], st: &ThreadState) -> Plan {
        // Messages, deletions and queue-wide changes are made durable at once;
        // delivery bookkeeping (Finish) and cache answers ride along with the
        // next durable commit or are synced within BOOKKEEPING_SYNC: a crash
        // in between redelivers (at-least-once), it never loses a message.
        let bookkeeping = batch
            .iter()
            .any(|r| matches!(r, Request::Finish { .. } | Request::CachePut { .. }));
        let must_sync = batch.iter().any(|r| {
            matches!(
                r,
                Request::Delete { .. }
                    | Request::Retag { .. }
                    | Request::Reschedule { .. }
                    | Request::Barrier { durable: true, .. }
            )
        }) || st
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= BOOKKEEPING_SYNC);
        let commits = batch.iter().any(|r| matches!(r, Request::Commit { .. }));
        // New messages whose whole body rides with the commit are made durable
        // by the journal; redb catches up with a durable commit within
        // BOOKKEEPING_SYNC (or sooner: a large message, a full journal).
        let journaled = commits
            && !must_sync
            && st.journal.is_some()
            && batch.iter().all(|r| match r {
                Request::Commit { message, .. } => {
                    message.chunks == 1 && matches!(message.last, Some((0, _)))
                }
                _ => true,
            });
        let durable = must_sync || (commits && !journaled);
        // Chunks alone stay in the open transaction, unless a sync is due.
        let keep_open = !durable && batch.iter().all(|r| matches!(r, Request::Append { .. }));
        Plan {
            bookkeeping,
            durable,
            journaled,
            keep_open,
        }
    }
}

/// One batch being applied: its plan, the messages with chunks in it, and
/// the replies owed once it is committed.
struct Applying {
    plan: Plan,
    appended: Vec<QueueId>,
    owed: Vec<PendingReply>,
}

fn run_batch(shared: &Shared, st: &mut ThreadState, batch: Vec<Request>) {
    let Some(db) = current_db(shared, st) else {
        fail_batch(st, batch, &SpoolError::Storage("spool unavailable".into()));
        return;
    };
    let mut run = Applying {
        plan: Plan::of(&batch, st),
        appended: std::mem::take(&mut st.open_ids),
        owed: vec![],
    };
    let open = st.open.take();
    st.bytes_delta = 0;
    st.messages_delta = 0;
    match apply_batch(&db, st, open, batch, &mut run) {
        Ok(Some(open)) => {
            st.open = Some(open);
            st.open_ids = run.appended;
        }
        Ok(None) => committed(shared, st, run),
        Err(e) => {
            log::error!("event=spool_error error=\"{e}\"");
            if let Some(j) = st.journal.as_mut() {
                j.discard();
            }
            // Every message with a chunk in this batch has a hole now, and
            // so may every message being received (see `receiving`).
            st.broken.extend(run.appended);
            st.broken.extend(st.receiving.iter().copied());
            st.wake = false;
            for o in run.owed {
                o.fail(&e);
            }
            drop(db);
            reopen(shared, st.journal.as_mut());
        }
    }
}

/// The database, reopened first if a failed write closed it; None if it
/// cannot be.
fn current_db(shared: &Shared, st: &mut ThreadState) -> Option<Arc<Database>> {
    // The read guard must be gone before `reopen` takes the write lock: a
    // guard in the `match` scrutinee would live through the whole match and
    // deadlock the spool thread after one failed reopen.
    let current = read_lock(&shared.db).clone();
    if current.is_some() {
        return current;
    }
    st.open = None;
    reopen(shared, st.journal.as_mut());
    read_lock(&shared.db).clone()
}

/// Applies every request of the batch in one write transaction and commits
/// it, or returns it still open (chunks alone).
fn apply_batch(
    db: &Database,
    st: &mut ThreadState,
    open: Option<redb::WriteTransaction>,
    batch: Vec<Request>,
    run: &mut Applying,
) -> Result<Option<redb::WriteTransaction>, SpoolError> {
    let mut tx = match open {
        Some(tx) => tx,
        None => db.begin_write().map_err(storage)?,
    };
    tx.set_durability(if run.plan.durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(storage)?;
    for req in batch {
        apply(&mut tx, st, run, req)?;
    }
    if run.plan.keep_open {
        return Ok(Some(tx));
    }
    commit_batch(db, st, tx, &mut run.plan)?;
    Ok(None)
}

/// Applies one request. An Err is a storage error: it fails the batch.
fn apply(
    tx: &mut redb::WriteTransaction,
    st: &mut ThreadState,
    run: &mut Applying,
    req: Request,
) -> Result<(), SpoolError> {
    match req {
        Request::Append { id, seq, data } => {
            if !run.appended.contains(&id) {
                run.appended.push(id);
            }
            apply_chunk(tx, st, id, seq, &data, true)?;
        }
        Request::ReplaceChunk { id, seq, data } => {
            run.appended.push(id);
            apply_chunk(tx, st, id, seq, &data, false)?;
        }
        Request::Commit { message, reply } => {
            let r = apply_commit(tx, st, &mut run.plan, message)?;
            run.owed.push(PendingReply::Unit(reply, r));
        }
        Request::Abort { id } => {
            st.broken.remove(&id);
            st.receiving.remove(&id);
            remove_body(tx, id)?;
        }
        Request::Finish {
            id,
            report,
            policy,
            reply,
        } => {
            let r = per_request(finish(tx, st, id, report, &policy))?;
            run.owed.push(PendingReply::Finished(reply, r));
        }
        Request::Reschedule {
            filter,
            now,
            from,
            reply,
        } => {
            let b = reschedule(tx, &filter, now, from)?;
            st.wake |= b.changed > 0;
            run.owed.push(PendingReply::Batch(reply, Ok(b)));
        }
        Request::Retag {
            domain,
            dest,
            now,
            from,
            reply,
        } => {
            let b = retag(tx, &domain, &dest, now, from)?;
            st.wake |= b.changed > 0;
            run.owed.push(PendingReply::Batch(reply, Ok(b)));
        }
        Request::CachePut {
            address,
            entry,
            reply,
        } => {
            cache_put(tx, &address, &entry)?;
            run.owed.push(PendingReply::Unit(reply, Ok(())));
        }
        Request::Barrier { reply, .. } => run.owed.push(PendingReply::Unit(reply, Ok(()))),
        Request::Delete { id, reply } => {
            let r = per_request(delete_message(tx, st, id))?;
            run.owed.push(PendingReply::Unit(reply, r));
        }
    }
    Ok(())
}

/// A storage error fails the whole batch; any other error (no such
/// message, a damaged record) is this request's answer only.
fn per_request<T>(r: Result<T, SpoolError>) -> Result<Result<T, SpoolError>, SpoolError> {
    match r {
        Err(SpoolError::Storage(e)) => Err(SpoolError::Storage(e)),
        other => Ok(other),
    }
}

/// Stores a body chunk of a message being received: a new one (`new`), or
/// one replaced before the commit. A new first chunk lists the message in
/// `incoming`.
fn apply_chunk(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    id: QueueId,
    seq: u32,
    data: &[u8],
    new: bool,
) -> Result<(), SpoolError> {
    st.receiving.insert(id);
    if st.broken.contains(&id) {
        return Ok(());
    }
    if new && seq == 0 {
        tx.open_table(INCOMING)
            .map_err(storage)?
            .insert(id, crate::clock::now())
            .map_err(storage)?;
    }
    tx.open_table(CHUNKS)
        .map_err(storage)?
        .insert((id, seq), data)
        .map_err(storage)?;
    Ok(())
}

/// Commits a new message: its last chunk, its records, and a journal
/// frame when the batch is journaled. The inner result is the client's
/// answer (a message with a hole is refused).
fn apply_commit(
    tx: &mut redb::WriteTransaction,
    st: &mut ThreadState,
    plan: &mut Plan,
    message: NewMessage,
) -> Result<Result<(), SpoolError>, SpoolError> {
    let NewMessage {
        id,
        envelope,
        chunks,
        size,
        last,
    } = message;
    if let Some((seq, data)) = &last
        && !st.broken.contains(&id)
    {
        tx.open_table(CHUNKS)
            .map_err(storage)?
            .insert((id, *seq), data.as_slice())
            .map_err(storage)?;
    }
    st.receiving.remove(&id);
    if st.broken.remove(&id) || !body_complete(tx, id, chunks)? {
        remove_body(tx, id)?;
        return Ok(Err(SpoolError::Storage(
            "a part of the message could not be written".into(),
        )));
    }
    let encoded = commit_message(tx, id, envelope, chunks, size)?;
    if plan.journaled
        && let Some(j) = st.journal.as_mut()
    {
        let chunk = last.as_ref().map_or(&[][..], |(_, d)| d.as_slice());
        let record = journal::Record {
            id,
            message: &encoded,
            chunk,
        };
        if !j.add(record) {
            // No room before the next durable commit: this one is it.
            j.discard();
            plan.journaled = false;
            plan.durable = true;
            tx.set_durability(Durability::Immediate).map_err(storage)?;
        }
    }
    st.bytes_delta += size as i64;
    st.messages_delta += 1;
    st.wake = true;
    Ok(Ok(()))
}

/// Commits the batch's transaction, then writes its journal frame when it
/// was journaled (journal first, then the answers: see docs/spool-format.md).
fn commit_batch(
    db: &Database,
    st: &mut ThreadState,
    tx: redb::WriteTransaction,
    plan: &mut Plan,
) -> Result<(), SpoolError> {
    if plan.durable
        && let Some(j) = st.journal.as_ref()
    {
        // Everything journaled so far is in this transaction's state.
        record_journal_gen(&tx, j.last_gen())?;
    }
    if plan.durable {
        record_clock(&tx, &mut st.clock_saved)?;
    }
    tx.commit().map_err(storage)?;
    if plan.journaled
        && let Some(j) = st.journal.as_mut()
        && j.pending()
        && let Err(e) = j.write()
    {
        // The messages are in redb already (not durably): one durable
        // commit keeps the promise instead.
        log::warn!("event=journal_error error=\"{e}\"");
        let tx = db.begin_write().map_err(storage)?;
        record_journal_gen(&tx, j.last_gen())?;
        tx.commit().map_err(storage)?;
        plan.durable = true;
    }
    Ok(())
}

/// After a batch's commit: note what still waits for a sync, apply the
/// counters, answer.
fn committed(shared: &Shared, st: &mut ThreadState, run: Applying) {
    if run.plan.durable {
        st.unsynced_since = None;
        if let Some(j) = st.journal.as_mut() {
            j.reset();
        }
    } else if run.plan.bookkeeping || run.plan.journaled {
        st.unsynced_since
            .get_or_insert_with(std::time::Instant::now);
    }
    {
        let mut s = lock(&shared.state);
        s.bytes = s.bytes.saturating_add_signed(st.bytes_delta);
        s.messages = s.messages.saturating_add_signed(st.messages_delta);
    }
    for o in run.owed {
        o.send();
    }
}

fn fail_batch(st: &mut ThreadState, batch: Vec<Request>, e: &SpoolError) {
    st.broken.extend(st.receiving.iter().copied());
    for req in batch {
        match req {
            Request::Append { id, .. } => {
                st.broken.insert(id);
            }
            Request::Commit { reply, .. }
            | Request::Delete { reply, .. }
            | Request::Barrier { reply, .. } => {
                let _ = reply.try_send(Err(e.clone()));
            }
            Request::Finish { reply, .. } => {
                let _ = reply.try_send(Err(e.clone()));
            }
            Request::Reschedule { reply, .. } | Request::Retag { reply, .. } => {
                let _ = reply.try_send(Err(e.clone()));
            }
            Request::CachePut { reply, .. } => {
                let _ = reply.try_send(Err(e.clone()));
            }
            Request::Abort { .. } => {}
            Request::ReplaceChunk { id, .. } => {
                st.broken.insert(id);
            }
        }
    }
}

/// After a failed write (a full disk), redb refuses every later operation
/// until the database is reopened. Wait for readers to let go of the old
/// handle, then open the file again; what was committed before is intact.
fn reopen(shared: &Shared, journal: Option<&mut journal::Journal>) {
    let old = shared
        .db
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(mut old) = old {
        for _ in 0..500 {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(still_shared) => {
                    old = still_shared;
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    // The reopened database is its last durable commit: the journal puts
    // back the messages acknowledged since.
    let opened = open_db(&shared.path, shared.cache_size, shared.backend.as_ref()).and_then(|db| {
        match journal {
            Some(j) => replay_journal(&db, j).map(|r| {
                if let Err(e) = r {
                    log::error!("event=journal_unreadable error=\"{e}\"");
                }
                db
            }),
            None => Ok(db),
        }
    });
    match opened {
        Ok(db) => {
            log::warn!("event=spool_reopened path={}", shared.path.display());
            // The counters followed commits that the reopen may have undone.
            match count_queued(&db) {
                Ok((messages, bytes)) => {
                    let mut s = lock(&shared.state);
                    s.messages = messages;
                    s.bytes = bytes;
                }
                Err(e) => log::error!("event=spool_count_failed error=\"{e}\""),
            }
            *shared
                .db
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
        }
        Err(e) => log::error!("event=spool_reopen_failed error=\"{e}\""),
    }
}

/// Records spool time and its offset from the wall clock in `meta` when
/// either moved enough since the last record (a step of the wall clock,
/// or CLOCK_RECORD_EVERY seconds), riding on a durable commit made anyway.
/// If the commit then fails, `saved` names a record that is not there; the
/// next one follows within CLOCK_RECORD_EVERY, and the arrivals and
/// attempts scanned at start bound the loss meanwhile.
fn record_clock(
    tx: &redb::WriteTransaction,
    saved: &mut Option<(u64, i64)>,
) -> Result<(), SpoolError> {
    let now = crate::clock::now();
    let offset = crate::clock::offset();
    let due = match *saved {
        None => true,
        Some((t, o)) => now >= t.saturating_add(CLOCK_RECORD_EVERY) || offset.abs_diff(o) > 2,
    };
    if due {
        let mut meta = tx.open_table(META).map_err(storage)?;
        meta.insert(CLOCK_HWM, now).map_err(storage)?;
        meta.insert(CLOCK_OFFSET, offset as u64).map_err(storage)?;
        *saved = Some((now, offset));
    }
    Ok(())
}

/// Records in `meta` that the database's state includes every journal
/// frame up to `gen_` (a no-op write is skipped: it would cost a page).
pub(super) fn record_journal_gen(tx: &redb::WriteTransaction, gen_: u64) -> Result<(), SpoolError> {
    let mut meta = tx.open_table(META).map_err(storage)?;
    if meta.get(JOURNAL_GEN).map_err(storage)?.map(|v| v.value()) != Some(gen_) {
        meta.insert(JOURNAL_GEN, gen_).map_err(storage)?;
    }
    Ok(())
}
