//! The spool: messages, their bodies and their delivery state in one redb
//! file, written by one dedicated spool thread.
//!
//! Why one thread: redb has one writer at a time, and a commit is an fsync
//! that must not stall the executor thread that runs every SMTP session.
//! The thread takes every request waiting in its (bounded) queue and applies
//! them in one write transaction: messages finishing DATA at about the same
//! moment share one fsync (group commit), and each client gets its 250 only
//! after the commit that holds its message returned.
//!
//! Bodies arrive as chunks while the client sends them and go into a write
//! transaction that stays open between batches of chunks (no commit of
//! their own); the durable commit at the end of DATA makes them durable
//! together with the envelope. A crash before that
//! leaves the chunks listed in `incoming`, and start-up removes them. A
//! message whose whole body rides with its commit (most mail) is made
//! durable by the commit journal instead (see `journal`): one short
//! sequential write, redb catching up durably within `BOOKKEEPING_SYNC`.
//!
//! Reads (the scheduler, the delivery client streaming a body) open their
//! own read transactions from any thread; redb serves them from a snapshot
//! without waiting for the writer.

pub mod destination;
pub mod journal;
pub mod retry;
pub mod schema;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use smol::channel::{Receiver, Sender, bounded};

use crate::config::RetryStep;
use crate::compose::dsn;
pub use destination::Destination;
use retry::Next;
pub use schema::CacheEntry;
use schema::{ATTEMPTS, CALLAHEAD, CALLAHEAD_EXPIRY, CHUNKS, INCOMING, MESSAGES, META, SCHEDULE};
pub use schema::{Attempt, Message, RcptState, Recipient};

/// Requests waiting for the spool thread, at most. A full queue makes the
/// sessions wait (back-pressure) instead of growing memory: with 32 KiB
/// chunks this bounds body bytes in flight to about 1 MiB.
pub const SPOOL_QUEUE: usize = 32;
/// Requests applied in one write transaction, at most.
pub const MAX_BATCH: usize = 64;
/// The header section copied into a DSN, at most.
pub const DSN_HEADER_CAP: usize = 64 * 1024;
/// Free disk space we keep beyond one maximal message before answering
/// 452: redb needs room for its own pages and commits.
pub const DISK_RESERVE: u64 = 1024 * 1024;
/// Call-ahead answers kept at most; the soonest to expire go first.
pub const CALLAHEAD_CACHE_MAX: u64 = 20_000;
/// Delivery bookkeeping is made durable at most this long after it was
/// applied (sooner when a message commit comes by).
pub const BOOKKEEPING_SYNC: Duration = Duration::from_secs(2);
/// The file name inside `spool_dir`.
pub const SPOOL_FILE: &str = "spool.redb";
/// The commit journal's file name inside `spool_dir`.
pub const JOURNAL_FILE: &str = "journal";
/// `meta` keys: this database's journal epoch, and the last journal
/// generation its durable state includes.
const JOURNAL_EPOCH: &str = "journal_epoch";
const JOURNAL_GEN: &str = "journal_gen";
/// `meta`: the newest spool time the spool has seen running (see `clock`).
const CLOCK_HWM: &str = "clock_hwm";
/// `meta`: wall minus spool time then (an i64 stored as its bits).
const CLOCK_OFFSET: &str = "clock_offset";
/// The clock is recorded with a durable commit at most this often (a
/// high-water mark a minute stale costs at most a minute of a message's
/// age after a restart with the clock behind; arrivals count too).
const CLOCK_RECORD_EVERY: u64 = 60;

/// One entry of `Spool::list`: a message, or why its record is unreadable.
pub type Listed = (QueueId, Result<Message, String>);

/// A page of the queue (`Spool::messages_after`).
#[derive(Debug)]
pub struct Page {
    /// Messages after the cursor, oldest first.
    pub items: Vec<Listed>,
    /// Whether more messages follow the last of `items`.
    pub more: bool,
    /// Messages queued when the page was read (the whole queue).
    pub total: u64,
}

/// Most entries a page reserves room for up front (a caller's huge
/// `limit` must not allocate before anything is read).
const MAX_PAGE: usize = 1024;
/// Records `oldest_arrival` reads at most.
const OLDEST_SCAN: usize = 256;

/// Low bits of a queue id: a sequence within one second.
const ID_SEQ_BITS: u32 = 20;

/// The spool time (seconds) in a queue id's high bits (see `new_id`).
fn id_time(id: QueueId) -> u64 {
    id >> ID_SEQ_BITS
}

/// A queue id: unique, sorting by arrival. Shown as upper-case hex.
pub type QueueId = u64;

pub fn format_id(id: QueueId) -> String {
    format!("{id:X}")
}

pub fn parse_id(s: &str) -> Option<QueueId> {
    u64::from_str_radix(s, 16).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolError {
    /// The storage failed (disk full, I/O error): answer 452 4.3.1.
    Storage(String),
    /// The spool is over `max_spool_size` or the disk is nearly full.
    Full,
    /// A record does not decode.
    Damaged(String),
    /// No such message.
    NotFound,
    /// The spool thread is gone (shutting down).
    Closed,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Storage(e) => write!(f, "spool storage error: {e}"),
            SpoolError::Full => f.write_str("spool is full"),
            SpoolError::Damaged(e) => write!(f, "spool damaged: {e}"),
            SpoolError::NotFound => f.write_str("no such message in the queue"),
            SpoolError::Closed => f.write_str("spool is shutting down"),
        }
    }
}

impl std::error::Error for SpoolError {}

fn storage<E: fmt::Display>(e: E) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

/// Counters the spool keeps for limits and stats.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolState {
    /// Body bytes of queued messages.
    pub bytes: u64,
    /// Queued messages.
    pub messages: u64,
    /// Body bytes being received (not yet committed).
    pub incoming_bytes: u64,
}

/// Per-recipient outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Index into `Message::recipients`.
    pub index: usize,
    pub outcome: Outcome,
    /// The reply or error as one line.
    pub reply: String,
    /// `host[ip]:port` that answered, or empty.
    pub remote: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// 4xx or no answer: try again on the schedule.
    Deferred,
    /// 5xx: return to the sender.
    Failed,
}

/// What the delivery side reports after trying one destination of a message.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub time: u64,
    pub destination: Destination,
    pub relay: String,
    pub summary: String,
    pub results: Vec<RcptResult>,
}

/// How to return mail: the settings the spool thread needs to make DSNs.
#[derive(Debug, Clone)]
pub struct ReturnPolicy {
    pub steps: Vec<RetryStep>,
    pub reporting_mta: String,
    /// Where DSNs go: the smarthost, or None for the MX of the sender's domain.
    pub smarthost: Option<Destination>,
}

/// What became of a message after an attempt was recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// Recipients returned in this step (5xx or expired).
    pub failed: Vec<String>,
    /// The DSN queued for them, if one was made.
    pub dsn: Option<QueueId>,
    /// Failed recipients whose DSN was not made because the sender is `<>`.
    pub dropped: bool,
    /// Next attempt time if recipients remain; None if the message is gone.
    pub next_attempt: Option<u64>,
    /// Every recipient of the message is done; it was removed.
    pub removed: bool,
}

/// An envelope to commit at the end of DATA.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<(String, Destination)>,
    pub flags: u8,
    pub client: String,
    pub arrival: u64,
    /// When the first delivery attempt is due: `arrival`, or later when
    /// the destination is known to be down (see `deliver::down`).
    pub first_attempt: u64,
    /// Why the first attempt waits (shown as the last error until then).
    pub note: String,
}

enum Request {
    Append {
        id: QueueId,
        seq: u32,
        data: Vec<u8>,
    },
    Commit {
        id: QueueId,
        envelope: Envelope,
        chunks: u32,
        size: u64,
        /// The last chunk (seq, bytes), when the session held it back.
        last: Option<(u32, Vec<u8>)>,
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

/// A queue-wide change (flush, retag, a destination back up) is made in
/// batches, each its own transaction: with a week of mail queued, one
/// transaction over every message held them all decoded in memory and
/// every changed page dirty at once (+46 MiB draining 50,000 messages), and
/// kept the spool thread from everything else meanwhile. A batch changes
/// at most this many messages and looks at most `QUEUE_WIDE_SCAN` of them.
/// (Small in unit tests, so that their few hundred messages cross both
/// limits.)
const QUEUE_WIDE_BATCH: usize = if cfg!(test) { 16 } else { 256 };
const QUEUE_WIDE_SCAN: usize = if cfg!(test) { 64 } else { 4096 };

/// What one batch of a queue-wide change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Messages changed.
    pub changed: usize,
    /// Where the next batch starts (the first id not looked at), or None
    /// when the whole queue has been looked at.
    pub resume: Option<QueueId>,
}

/// Which messages a queue-wide operation touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Messages with a pending recipient in this domain.
    Domain(String),
    /// Messages with a pending recipient for this destination.
    Destination(Destination),
}

struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    state: Mutex<SpoolState>,
    next_id: Mutex<u64>,
    path: PathBuf,
    dir: PathBuf,
    cache_size: usize,
    /// Set by `open_with_backend`: where the database lives instead of
    /// `path` (also used when it is reopened after a write error).
    backend: Option<BackendFactory>,
}

/// Which file a `BackendFactory` is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Database,
    Journal,
}

/// Makes a fresh storage backend for the spool database or its journal,
/// each time it is opened or reopened (see `Spool::open_with_backend`).
pub type BackendFactory =
    Arc<dyn Fn(Store) -> std::io::Result<Box<dyn redb::StorageBackend>> + Send + Sync>;

/// Spool settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// redb's page cache (`cache_size`).
    pub cache_size: u64,
    /// The commit journal's size (`journal_size`); 0: no journal, every
    /// message is a durable redb commit.
    pub journal_size: u64,
}

/// Hands a boxed backend to redb, which takes `impl StorageBackend`.
#[derive(Debug)]
struct BoxedBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}

/// The handle every part of the daemon uses. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: Sender<Request>,
    wake: Sender<()>,
}

/// The spool thread, joined at shutdown after the last handle is gone.
pub struct SpoolThread(Option<thread::JoinHandle<()>>);

impl SpoolThread {
    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// A summary of start-up, for the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovered {
    pub messages: u64,
    pub bytes: u64,
    pub leftovers: u64,
    /// Messages restored from the commit journal (acknowledged, not yet
    /// in the database's last durable commit when the daemon stopped).
    pub replayed: u64,
    /// The newest spool time found (recorded high-water mark, arrivals,
    /// attempts) and the wall-minus-spool offset recorded last.
    pub clock_recorded: u64,
    pub clock_offset: i64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, removes crash
    /// leftovers and starts the spool thread. `wake` is signalled whenever
    /// the schedule changes (a new message, a flush, a DSN).
    pub fn open(
        dir: &Path,
        opts: SpoolOptions,
        wake: Sender<()>,
    ) -> Result<(Spool, SpoolThread, Recovered), SpoolError> {
        Spool::open_inner(dir, opts, wake, None)
    }

    /// As `open`, but the database lives in the storage `backend` makes
    /// (called again whenever the spool reopens it) instead of
    /// `dir/spool.redb` (and the journal instead of `dir/journal`); `dir`
    /// is still where free space is measured. For tests that simulate
    /// power cuts and failing disks.
    pub fn open_with_backend(
        dir: &Path,
        opts: SpoolOptions,
        wake: Sender<()>,
        backend: BackendFactory,
    ) -> Result<(Spool, SpoolThread, Recovered), SpoolError> {
        Spool::open_inner(dir, opts, wake, Some(backend))
    }

    fn open_inner(
        dir: &Path,
        opts: SpoolOptions,
        wake: Sender<()>,
        backend: Option<BackendFactory>,
    ) -> Result<(Spool, SpoolThread, Recovered), SpoolError> {
        make_spool_dir(dir).map_err(SpoolError::Storage)?;
        let path = dir.join(SPOOL_FILE);
        let journal_path = dir.join(JOURNAL_FILE);
        let existed = path.exists() && journal_path.exists();
        if backend.is_none() {
            // Spools made by older versions (or another umask) were 0755/0644.
            // The directory may be a link to the real one (followed); its
            // files are never followed (make_private skips links).
            let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            for (p, mode) in [
                (real.as_path(), 0o700),
                (path.as_path(), 0o600),
                (journal_path.as_path(), 0o600),
            ] {
                if p.exists() {
                    make_private(p, mode).map_err(SpoolError::Storage)?;
                }
            }
        }
        let cache_size = usize::try_from(opts.cache_size).unwrap_or(usize::MAX);
        let db = open_db(&path, cache_size, backend.as_ref())?;
        let mut journal = open_journal(&journal_path, opts.journal_size, backend.as_ref())?;
        if !existed && backend.is_none() {
            // The new files' directory entries must survive a power cut too.
            sync_dir(dir);
        }
        let replayed = match journal
            .as_mut()
            .map(|j| replay_journal(&db, j))
            .transpose()?
        {
            Some(Ok(n)) => n,
            None => 0,
            Some(Err(e)) => {
                // A journal that cannot be read (EIO) must not stop every
                // start (procd would restart into the same error forever):
                // its bytes are kept aside for recovery, a new one is used.
                journal = None;
                let aside = dir.join(format!("{JOURNAL_FILE}.unreadable"));
                let kept = backend.is_none() && std::fs::rename(&journal_path, &aside).is_ok();
                log::error!(
                    "event=journal_unreadable path={} error=\"{e}\" kept_as={}",
                    journal_path.display(),
                    if kept {
                        aside.display().to_string()
                    } else {
                        "none".into()
                    }
                );
                if kept {
                    journal = open_journal(&journal_path, opts.journal_size, None)?;
                }
                0
            }
        };
        // Replayed and recorded: from here on the journal's content is
        // history, and it can be resized, or retired.
        if let Some(mut j) = journal.take() {
            let size = opts.journal_size;
            let usable = size > 0
                && j.prepare(size)
                    .inspect_err(|e| {
                        // A nearly full disk: run without it rather than
                        // not at all (every message a durable commit).
                        log::warn!(
                            "event=journal_unavailable path={} size={size} error=\"{e}\"",
                            journal_path.display()
                        );
                    })
                    .is_ok();
            if usable {
                journal = Some(j);
            } else if backend.is_none() {
                drop(j);
                let _ = std::fs::remove_file(&journal_path);
            } else {
                j.retire()
                    .map_err(|e| SpoolError::Storage(format!("cannot retire the journal: {e}")))?;
            }
        }
        let (mut recovered, max_id) = recover(&db)?;
        recovered.replayed = replayed;
        // Spool time continues from what this spool saw (see `clock`).
        crate::clock::start(recovered.clock_recorded, recovered.clock_offset);
        let state = SpoolState {
            bytes: recovered.bytes,
            messages: recovered.messages,
            incoming_bytes: 0,
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            state: Mutex::new(state),
            next_id: Mutex::new(max_id),
            path,
            dir: dir.to_path_buf(),
            cache_size,
            backend,
        });
        let (tx, rx) = bounded(SPOOL_QUEUE);
        let thread_shared = shared.clone();
        let thread_wake = wake.clone();
        let handle = thread::Builder::new()
            .name("spool".into())
            .spawn(move || spool_thread(thread_shared, journal, rx, thread_wake))
            .map_err(|e| SpoolError::Storage(format!("cannot start the spool thread: {e}")))?;
        Ok((
            Spool { shared, tx, wake },
            SpoolThread(Some(handle)),
            recovered,
        ))
    }

    /// A new, unique queue id, increasing with time (and never repeating
    /// even when a router without a clock boots in 1970).
    pub fn new_id(&self, now: u64) -> QueueId {
        let mut next = lock(&self.shared.next_id);
        let candidate = now << ID_SEQ_BITS;
        *next = (*next + 1).max(candidate);
        *next
    }

    pub fn state(&self) -> SpoolState {
        *lock(&self.shared.state)
    }

    /// Whether `more` bytes may be received now: under `max_spool_size`
    /// (queued plus incoming) and with room on the disk.
    pub fn has_room(&self, more: u64, max_spool_size: u64, max_message_size: u64) -> bool {
        let s = self.state();
        if s.bytes
            .saturating_add(s.incoming_bytes)
            .saturating_add(more)
            > max_spool_size
        {
            return false;
        }
        match free_disk(&self.shared.dir) {
            Some(free) => free > max_message_size.max(more).saturating_add(DISK_RESERVE),
            None => true,
        }
    }

    fn add_incoming(&self, n: i64) {
        let mut s = lock(&self.shared.state);
        s.incoming_bytes = s.incoming_bytes.saturating_add_signed(n);
    }

    /// Appends a body chunk (not yet durable). Waits only when the spool
    /// thread's queue is full.
    pub async fn append(&self, id: QueueId, seq: u32, data: Vec<u8>) -> Result<(), SpoolError> {
        self.add_incoming(data.len() as i64);
        self.tx
            .send(Request::Append { id, seq, data })
            .await
            .map_err(|_| SpoolError::Closed)
    }

    /// Makes the message durable: returns after the fsync. `last`: the
    /// final chunk, when it was not appended (it is written in the same
    /// transaction). `size` counts every chunk, `last` included.
    pub async fn commit(
        &self,
        id: QueueId,
        envelope: Envelope,
        chunks: u32,
        size: u64,
        last: Option<(u32, Vec<u8>)>,
    ) -> Result<(), SpoolError> {
        if let Some((_, c)) = &last {
            self.add_incoming(c.len() as i64);
        }
        let r = self.call(|reply| Request::Commit {
            id,
            envelope,
            chunks,
            size,
            last,
            reply,
        });
        let result = r.await;
        self.add_incoming(-(size as i64));
        result
    }

    /// Drops a partly received body. `size`: the bytes appended so far.
    pub async fn abort(&self, id: QueueId, size: u64) {
        self.add_incoming(-(size as i64));
        // If the thread is gone the chunks stay in `incoming` and are
        // removed at the next start: nothing is lost but a little space.
        let _ = self.tx.send(Request::Abort { id }).await;
    }

    pub async fn finish(
        &self,
        id: QueueId,
        report: AttemptReport,
        policy: ReturnPolicy,
    ) -> Result<Finished, SpoolError> {
        self.call(|reply| Request::Finish {
            id,
            report,
            policy,
            reply,
        })
        .await
    }

    /// Moves the next attempt of matching messages to `now`, batch by
    /// batch; returns how many changed. A message that arrives meanwhile
    /// is new and due anyway.
    pub async fn reschedule(&self, filter: Filter, now: u64) -> Result<usize, SpoolError> {
        self.batched(|from, reply| Request::Reschedule {
            filter: filter.clone(),
            now,
            from,
            reply,
        })
        .await
    }

    pub async fn retag(
        &self,
        domain: String,
        dest: Destination,
        now: u64,
    ) -> Result<usize, SpoolError> {
        self.batched(|from, reply| Request::Retag {
            domain: domain.clone(),
            dest: dest.clone(),
            now,
            from,
            reply,
        })
        .await
    }

    /// Runs a queue-wide change one batch (one request, one transaction)
    /// at a time until the whole queue has been looked at.
    async fn batched(
        &self,
        make: impl Fn(QueueId, Sender<Result<Batch, SpoolError>>) -> Request,
    ) -> Result<usize, SpoolError> {
        let mut total = 0;
        let mut from = 0;
        loop {
            let b = self.call(|reply| make(from, reply)).await?;
            total += b.changed;
            match b.resume {
                Some(next) => from = next,
                None => return Ok(total),
            }
        }
    }

    pub async fn delete(&self, id: QueueId) -> Result<(), SpoolError> {
        self.call(|reply| Request::Delete { id, reply }).await
    }

    /// Sends the request `make` builds around a reply channel and waits for
    /// the spool thread's answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, SpoolError>>) -> Request,
    ) -> Result<T, SpoolError> {
        let (reply, rx) = bounded(1);
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.recv().await.map_err(|_| SpoolError::Closed)?
    }

    fn db(&self) -> Result<Arc<Database>, SpoolError> {
        read_lock(&self.shared.db)
            .clone()
            .ok_or_else(|| SpoolError::Storage("spool is being reopened".into()))
    }

    pub fn message(&self, id: QueueId) -> Result<Option<Message>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        match t.get(id).map_err(storage)? {
            Some(v) => schema::decode_message(v.value())
                .map(Some)
                .map_err(|e| SpoolError::Damaged(e.to_string())),
            None => Ok(None),
        }
    }

    pub fn chunk(&self, id: QueueId, seq: u32) -> Result<Option<Vec<u8>>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(CHUNKS).map_err(storage)?;
        Ok(t.get((id, seq))
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// Every queued message, oldest first. Damaged records are listed as
    /// errors, not skipped silently. Loads the whole queue: for tests; the
    /// daemon reads pages (`messages_after`) so its memory does not grow
    /// with the queue.
    pub fn list(&self) -> Result<Vec<Listed>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        let mut out = vec![];
        for e in t.iter().map_err(storage)? {
            let (k, v) = e.map_err(storage)?;
            out.push((
                k.value(),
                schema::decode_message(v.value()).map_err(|e| e.to_string()),
            ));
        }
        Ok(out)
    }

    /// At most `limit` queued messages with ids above `after` (from the
    /// first when `None`), in id order, which is arrival order. One short
    /// read transaction per call: a caller walks the queue page by page,
    /// passing the last id it got, and never holds a snapshot (or the
    /// whole queue) while it waits on something else.
    pub fn messages_after(&self, after: Option<QueueId>, limit: usize) -> Result<Page, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        let total = t.len().map_err(storage)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = t
            .range::<QueueId>((start, Bound::Unbounded))
            .map_err(storage)?;
        let mut items = Vec::with_capacity(limit.min(MAX_PAGE));
        for e in range.by_ref().take(limit) {
            let (k, v) = e.map_err(storage)?;
            let m = schema::decode_message(v.value()).map_err(|e| e.to_string());
            items.push((k.value(), m));
        }
        // Peeks at the key only: nothing more is decoded.
        let more = range.next().is_some();
        Ok(Page { items, more, total })
    }

    /// The arrival time of the oldest queued message, reading only the
    /// head of the queue (`queue stats` must stay cheap). Ids sort by the
    /// start of DATA (spool time in the high bits) and arrival is its end,
    /// so a later id arrived earlier only if its DATA started before that:
    /// the scan stops at the first id from a later second than the oldest
    /// arrival seen, or after `OLDEST_SCAN` records (a burst).
    pub fn oldest_arrival(&self) -> Result<Option<u64>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        let mut oldest: Option<u64> = None;
        for e in t.iter().map_err(storage)?.take(OLDEST_SCAN) {
            let (k, v) = e.map_err(storage)?;
            if oldest.is_some_and(|o| id_time(k.value()) > o) {
                break;
            }
            if let Ok(m) = schema::decode_message(v.value()) {
                oldest = Some(oldest.map_or(m.arrival, |o| o.min(m.arrival)));
            }
        }
        Ok(oldest)
    }

    /// The distinct destinations of pending recipients, read in one pass
    /// without keeping the messages.
    pub fn pending_destinations(&self) -> Result<BTreeSet<Destination>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(MESSAGES).map_err(storage)?;
        let mut set = BTreeSet::new();
        for e in t.iter().map_err(storage)? {
            let (_, v) = e.map_err(storage)?;
            if let Ok(m) = schema::decode_message(v.value()) {
                for (_, r) in m.pending() {
                    if !set.contains(&r.destination) {
                        set.insert(r.destination.clone());
                    }
                }
            }
        }
        Ok(set)
    }

    pub fn attempts(&self, id: QueueId) -> Result<Vec<Attempt>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(ATTEMPTS).map_err(storage)?;
        let mut out = vec![];
        for e in t.range((id, 0)..=(id, u32::MAX)).map_err(storage)? {
            let (_, v) = e.map_err(storage)?;
            if let Ok(a) = schema::decode_attempt(v.value()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Due messages (next attempt ≤ `now`), earliest first, skipping
    /// `busy` ones, at most `limit`; and the time of the first entry after
    /// them that is not busy (when to wake up next).
    pub fn due(
        &self,
        now: u64,
        limit: usize,
        busy: &HashSet<QueueId>,
    ) -> Result<(Vec<QueueId>, Option<u64>), SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(SCHEDULE).map_err(storage)?;
        let mut due = vec![];
        let mut next = None;
        for e in t.iter().map_err(storage)? {
            let (k, _) = e.map_err(storage)?;
            let (when, id) = k.value();
            if busy.contains(&id) {
                continue;
            }
            if when <= now && due.len() < limit {
                due.push(id);
            } else {
                next = Some(when);
                break;
            }
        }
        Ok((due, next))
    }

    /// The cached call-ahead answer for `address` (lower-case), if any.
    pub fn cache_get(&self, address: &str) -> Result<Option<CacheEntry>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(CALLAHEAD).map_err(storage)?;
        match t.get(address).map_err(storage)? {
            Some(v) => Ok(schema::decode_cache(v.value()).ok()),
            None => Ok(None),
        }
    }

    /// Waits until everything queued before (e.g. a message's chunks) is
    /// applied and readable with `chunk`.
    pub async fn barrier(&self) -> Result<(), SpoolError> {
        self.call(|reply| Request::Barrier {
            durable: false,
            reply,
        })
        .await
    }

    /// Makes everything applied so far durable (delivery bookkeeping is
    /// otherwise synced within `BOOKKEEPING_SYNC`): for a clean stop.
    pub async fn sync(&self) -> Result<(), SpoolError> {
        self.call(|reply| Request::Barrier {
            durable: true,
            reply,
        })
        .await
    }

    /// Replaces chunk `seq` of a message being received (before `commit`).
    /// `delta`: the change in size, for the incoming-bytes account.
    pub async fn replace_chunk(
        &self,
        id: QueueId,
        seq: u32,
        data: Vec<u8>,
        delta: i64,
    ) -> Result<(), SpoolError> {
        self.add_incoming(delta);
        self.tx
            .send(Request::ReplaceChunk { id, seq, data })
            .await
            .map_err(|_| SpoolError::Closed)
    }

    /// Stores a call-ahead answer. Returns once it is readable (the next
    /// RCPT for the address must find it), without waiting for the disk.
    pub async fn cache_put(&self, address: String, entry: CacheEntry) {
        let _ = self
            .call(|reply| Request::CachePut {
                address,
                entry,
                reply,
            })
            .await;
    }

    /// Signals the scheduler (new work).
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_db(
    path: &Path,
    cache_size: usize,
    backend: Option<&BackendFactory>,
) -> Result<Database, SpoolError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_size);
    let db = match backend {
        None => builder.create(path),
        Some(make) => {
            let b = make(Store::Database)
                .map_err(|e| SpoolError::Storage(format!("cannot open storage: {e}")))?;
            builder.create_with_backend(BoxedBackend(b))
        }
    }
    .map_err(|e| SpoolError::Storage(format!("cannot open {}: {e}", path.display())))?;
    let tx = db.begin_write().map_err(storage)?;
    {
        // Create every table so readers never meet a missing one.
        tx.open_table(MESSAGES).map_err(storage)?;
        tx.open_table(CHUNKS).map_err(storage)?;
        tx.open_table(SCHEDULE).map_err(storage)?;
        tx.open_table(ATTEMPTS).map_err(storage)?;
        tx.open_table(INCOMING).map_err(storage)?;
        tx.open_table(CALLAHEAD).map_err(storage)?;
        tx.open_table(CALLAHEAD_EXPIRY).map_err(storage)?;
        let mut meta = tx.open_table(META).map_err(storage)?;
        let version = meta.get("schema").map_err(storage)?.map(|v| v.value());
        match version {
            None => {
                meta.insert("schema", schema::SCHEMA_VERSION)
                    .map_err(storage)?;
            }
            Some(v) if v == schema::SCHEMA_VERSION => {}
            Some(v) => {
                return Err(SpoolError::Damaged(format!(
                    "{} has spool schema {v}; this mxspool reads {}",
                    path.display(),
                    schema::SCHEMA_VERSION
                )));
            }
        }
        // Journal frames name the database they belong to: a journal left
        // behind by a deleted spool.redb must never be replayed into a new one.
        if meta.get(JOURNAL_EPOCH).map_err(storage)?.is_none() {
            meta.insert(JOURNAL_EPOCH, random_u64()).map_err(storage)?;
        }
    }
    tx.commit().map_err(storage)?;
    Ok(db)
}

/// Sets `path`'s mode to `mode` (0700 for the spool directory, 0600 for
/// its files) unless it has it: queued mail is readable by the daemon's
/// user only. Does not follow a symbolic link.
fn make_private(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read the mode of {}: {e}", path.display()))?;
    if md.file_type().is_symlink() || md.permissions().mode() & 0o777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        format!(
            "cannot make {} private (mode {mode:o}): {e}",
            path.display()
        )
    })
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Unique enough for its purpose (telling databases apart).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_le_bytes(b)
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
fn record_journal_gen(tx: &redb::WriteTransaction, gen_: u64) -> Result<(), SpoolError> {
    let mut meta = tx.open_table(META).map_err(storage)?;
    if meta.get(JOURNAL_GEN).map_err(storage)?.map(|v| v.value()) != Some(gen_) {
        meta.insert(JOURNAL_GEN, gen_).map_err(storage)?;
    }
    Ok(())
}

/// Opens the commit journal as found, for replay (None when there is none
/// and `journal_size` is 0).
fn open_journal(
    path: &Path,
    size: u64,
    backend: Option<&BackendFactory>,
) -> Result<Option<journal::Journal>, SpoolError> {
    let fail = |e: &dyn fmt::Display| {
        SpoolError::Storage(format!("cannot open the journal {}: {e}", path.display()))
    };
    let store: Box<dyn redb::StorageBackend> = match backend {
        Some(make) => {
            let store = make(Store::Journal).map_err(|e| fail(&e))?;
            if size == 0 && store.len().map_err(|e| fail(&e))? == 0 {
                return Ok(None);
            }
            store
        }
        None => {
            if size == 0 && !path.exists() {
                return Ok(None);
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| fail(&e))?;
            Box::new(redb::backends::FileBackend::new(f).map_err(|e| fail(&e))?)
        }
    };
    let j = journal::Journal::open(store).map_err(|e| fail(&e))?;
    Ok(Some(j))
}

/// Puts back every acknowledged message the journal holds that the
/// database lost (its last commits were not durable yet), and records
/// that the journal is now all in the database. Returns the count.
/// Replays the journal into `db`: the number of messages restored, or
/// (inner Err) why the journal itself could not be read.
fn replay_journal(
    db: &Database,
    j: &mut journal::Journal,
) -> Result<Result<u64, String>, SpoolError> {
    let tx = db.begin_write().map_err(storage)?;
    let (epoch, after) = {
        let meta = tx.open_table(META).map_err(storage)?;
        let get = |k: &str| -> Result<u64, SpoolError> {
            Ok(meta.get(k).map_err(storage)?.map_or(0, |v| v.value()))
        };
        (get(JOURNAL_EPOCH)?, get(JOURNAL_GEN)?)
    };
    let mut n = 0u64;
    let last = {
        let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
        let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
        let mut schedule = tx.open_table(SCHEDULE).map_err(storage)?;
        let replayed = j.replay(epoch, after, |r| -> Result<(), SpoolError> {
            if messages.get(r.id).map_err(storage)?.is_some() {
                return Ok(());
            }
            let m = match schema::decode_message(r.message) {
                Ok(m) => m,
                Err(e) => {
                    log::error!(
                        "id={} event=damaged error=\"journal: {e}\"",
                        format_id(r.id)
                    );
                    return Ok(());
                }
            };
            messages.insert(r.id, r.message).map_err(storage)?;
            chunks.insert((r.id, 0), r.chunk).map_err(storage)?;
            if m.has_pending() {
                schedule
                    .insert((m.next_attempt, r.id), ())
                    .map_err(storage)?;
            }
            n += 1;
            Ok(())
        });
        match replayed {
            Ok(r) => r?,
            Err(e) => return Ok(Err(e.to_string())),
        }
    };
    if last != after {
        record_journal_gen(&tx, last)?;
        tx.commit().map_err(storage)?;
    } else {
        tx.abort().map_err(storage)?;
    }
    j.restart(epoch, last);
    if n > 0 {
        log::warn!("event=journal_replayed messages={n}");
    }
    Ok(Ok(n))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The RAM file system (`tmpfs`, `ramfs`) that `dir` (or, while it does not
/// exist yet, its nearest existing parent) lives on, if it does.
pub fn volatile_fs(dir: &Path) -> Option<&'static str> {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let existing = dir.ancestors().find(|p| p.exists())?;
    let s = rustix::fs::statfs(existing).ok()?;
    // f_type's width differs between targets (i32/u32/i64).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    match s.f_type as u64 & 0xFFFF_FFFF {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}

/// Creates the spool directory if it is missing, but only its last
/// component: a spool on a USB disk that is not mounted (yet, or any more)
/// must not be started afresh on the router's flash beneath the empty
/// mount point, where its mail would be hidden once the disk is mounted
/// again. Returns whether it was created.
pub fn make_spool_dir(dir: &Path) -> Result<bool, String> {
    if dir.is_dir() {
        return Ok(false);
    }
    check_parent(dir)?;
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(format!("cannot create spool_dir {}: {e}", dir.display())),
    }
}

/// The spool directory exists, or its parent does (so that it can be made).
fn check_parent(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => Err(format!(
            "option 'spool_dir': {} does not exist, nor does {}: if the spool is on a USB \
             disk, the disk is not mounted (mxspool does not start a new spool on the flash \
             beneath an empty mount point); otherwise create {}",
            dir.display(),
            parent.display(),
            parent.display()
        )),
        _ => Ok(()),
    }
}

/// Refuses a spool in RAM unless the owner allowed it: the message names
/// the problem and both ways out. Refuses too a spool_dir that could only
/// be made with its parents (see `make_spool_dir`).
pub fn check_durable_dir(dir: &Path, allow_volatile: bool) -> Result<(), String> {
    check_parent(dir)?;
    match volatile_fs(dir) {
        Some(fs) if !allow_volatile => Err(format!(
            "option 'spool_dir': {} is on {fs} (RAM): queued mail would be lost at the next \
             reboot; put the spool on flash or a USB disk, or set option allow_volatile_spool '1'",
            dir.display()
        )),
        _ => Ok(()),
    }
}

fn free_disk(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Removes half-received bodies, rebuilds the schedule index from the
/// messages (so the two can never disagree after a crash), and counts.
fn recover(db: &Database) -> Result<(Recovered, u64), SpoolError> {
    let tx = db.begin_write().map_err(storage)?;
    let mut rec = Recovered::default();
    let mut max_id = 0u64;
    {
        let mut incoming = tx.open_table(INCOMING).map_err(storage)?;
        let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
        let mut leftovers = vec![];
        for e in incoming.iter().map_err(storage)? {
            let (k, _) = e.map_err(storage)?;
            leftovers.push(k.value());
        }
        for id in leftovers {
            max_id = max_id.max(id);
            chunks
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .map_err(storage)?;
            incoming.remove(id).map_err(storage)?;
            rec.leftovers += 1;
        }
        {
            let meta = tx.open_table(META).map_err(storage)?;
            let get = |k| meta.get(k).map(|v| v.map(|v| v.value()));
            rec.clock_recorded = get(CLOCK_HWM).map_err(storage)?.unwrap_or(0);
            // Stored as the i64's bits.
            rec.clock_offset = get(CLOCK_OFFSET).map_err(storage)?.unwrap_or(0) as i64;
        }
        let messages = tx.open_table(MESSAGES).map_err(storage)?;
        let mut schedule = tx.open_table(SCHEDULE).map_err(storage)?;
        schedule.retain(|_, _| false).map_err(storage)?;
        for e in messages.iter().map_err(storage)? {
            let (k, v) = e.map_err(storage)?;
            let id = k.value();
            max_id = max_id.max(id);
            match schema::decode_message(v.value()) {
                Ok(m) => {
                    rec.messages += 1;
                    rec.bytes += m.size;
                    let attempted = m.recipients.iter().map(|r| r.last_attempt).max();
                    rec.clock_recorded = rec
                        .clock_recorded
                        .max(m.arrival)
                        .max(attempted.unwrap_or(0));
                    if m.has_pending() {
                        schedule.insert((m.next_attempt, id), ()).map_err(storage)?;
                    }
                }
                Err(e) => {
                    log::error!("id={} event=damaged error=\"{e}\"", format_id(id));
                }
            }
        }
    }
    tx.commit().map_err(storage)?;
    Ok((rec, max_id))
}

/// Replies owed after the batch's commit.
enum Owed {
    Unit(Sender<Result<(), SpoolError>>, Result<(), SpoolError>),
    Finished(
        Sender<Result<Finished, SpoolError>>,
        Result<Finished, SpoolError>,
    ),
    Batch(Sender<Result<Batch, SpoolError>>, Result<Batch, SpoolError>),
}

impl Owed {
    fn fail(self, e: &SpoolError) {
        match self {
            Owed::Unit(s, _) => drop(s.try_send(Err(e.clone()))),
            Owed::Finished(s, _) => drop(s.try_send(Err(e.clone()))),
            Owed::Batch(s, _) => drop(s.try_send(Err(e.clone()))),
        }
    }
    fn send(self) {
        match self {
            Owed::Unit(s, r) => drop(s.try_send(r)),
            Owed::Finished(s, r) => drop(s.try_send(r)),
            Owed::Batch(s, r) => drop(s.try_send(r)),
        }
    }
}

struct ThreadState {
    shared: Arc<Shared>,
    journal: Option<journal::Journal>,
    /// Bookkeeping committed without fsync since then.
    unsynced_since: Option<std::time::Instant>,
    /// Messages whose chunks failed to be written: their commit must fail.
    broken: HashSet<QueueId>,
    /// Messages being received: from their first chunk to their commit or
    /// abort. A reopen returns the database to its last durable state, which
    /// may lack chunks that earlier batches committed without a sync: every
    /// one of these is broken then, not only those of the failing batch.
    receiving: HashSet<QueueId>,
    /// Size deltas applied to the shared counters once the commit is done.
    bytes_delta: i64,
    messages_delta: i64,
    wake: bool,
    /// The write transaction left open by batches of body chunks alone,
    /// and the messages with chunks in it. Chunks need no commit of their
    /// own (they count only once their message commits), and a commit per
    /// batch of chunks cost more than the chunks' inserts.
    open: Option<redb::WriteTransaction>,
    open_ids: Vec<QueueId>,
    /// The spool time and offset last written to `meta` (see `record_clock`).
    clock_saved: Option<(u64, i64)>,
}

fn spool_thread(
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

fn run_batch(shared: &Shared, st: &mut ThreadState, batch: Vec<Request>) {
    // The read guard must be gone before `reopen` takes the write lock: a
    // guard in the `match` scrutinee would live through the whole match and
    // deadlock the spool thread after one failed reopen.
    let current = read_lock(&shared.db).clone();
    let db = match current {
        Some(db) => db,
        None => {
            st.open = None;
            reopen(shared, st.journal.as_mut());
            let reopened = read_lock(&shared.db).clone();
            match reopened {
                Some(db) => db,
                None => {
                    fail_batch(st, batch, &SpoolError::Storage("spool unavailable".into()));
                    return;
                }
            }
        }
    };
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
    let mut journaled = commits
        && !must_sync
        && st.journal.is_some()
        && batch.iter().all(|r| match r {
            Request::Commit { chunks, last, .. } => *chunks == 1 && matches!(last, Some((0, _))),
            _ => true,
        });
    let mut durable = must_sync || (commits && !journaled);
    // Chunks alone stay in the open transaction, unless a sync is due.
    let keep_open = !durable && batch.iter().all(|r| matches!(r, Request::Append { .. }));
    let mut appended = std::mem::take(&mut st.open_ids);
    let open = st.open.take();
    let mut owed: Vec<Owed> = vec![];
    st.bytes_delta = 0;
    st.messages_delta = 0;
    let result = (|| -> Result<Option<redb::WriteTransaction>, SpoolError> {
        let mut tx = match open {
            Some(tx) => tx,
            None => db.begin_write().map_err(storage)?,
        };
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(storage)?;
        for req in batch {
            match req {
                Request::Append { id, seq, data } => {
                    if !appended.contains(&id) {
                        appended.push(id);
                    }
                    st.receiving.insert(id);
                    if st.broken.contains(&id) {
                        continue;
                    }
                    if seq == 0 {
                        tx.open_table(INCOMING)
                            .map_err(storage)?
                            .insert(id, crate::clock::now())
                            .map_err(storage)?;
                    }
                    tx.open_table(CHUNKS)
                        .map_err(storage)?
                        .insert((id, seq), data.as_slice())
                        .map_err(storage)?;
                }
                Request::Commit {
                    id,
                    envelope,
                    chunks,
                    size,
                    last,
                    reply,
                } => {
                    if let Some((seq, data)) = &last
                        && !st.broken.contains(&id)
                    {
                        tx.open_table(CHUNKS)
                            .map_err(storage)?
                            .insert((id, *seq), data.as_slice())
                            .map_err(storage)?;
                    }
                    st.receiving.remove(&id);
                    let r = if st.broken.remove(&id) || !body_complete(&tx, id, chunks)? {
                        remove_body(&tx, id)?;
                        Err(SpoolError::Storage(
                            "a part of the message could not be written".into(),
                        ))
                    } else {
                        let encoded = commit_message(&tx, id, envelope, chunks, size)?;
                        if journaled && let Some(j) = st.journal.as_mut() {
                            let chunk = last.as_ref().map_or(&[][..], |(_, d)| d.as_slice());
                            let record = journal::Record {
                                id,
                                message: &encoded,
                                chunk,
                            };
                            if !j.add(record) {
                                // No room before the next durable commit:
                                // this one is it.
                                j.discard();
                                journaled = false;
                                durable = true;
                                tx.set_durability(Durability::Immediate).map_err(storage)?;
                            }
                        }
                        st.bytes_delta += size as i64;
                        st.messages_delta += 1;
                        st.wake = true;
                        Ok(())
                    };
                    owed.push(Owed::Unit(reply, r));
                }
                Request::Abort { id } => {
                    st.broken.remove(&id);
                    st.receiving.remove(&id);
                    remove_body(&tx, id)?;
                }
                Request::Finish {
                    id,
                    report,
                    policy,
                    reply,
                } => {
                    let r = finish(&tx, st, id, report, &policy);
                    let r = match r {
                        Err(SpoolError::Storage(e)) => return Err(SpoolError::Storage(e)),
                        other => other,
                    };
                    owed.push(Owed::Finished(reply, r));
                }
                Request::Reschedule {
                    filter,
                    now,
                    from,
                    reply,
                } => {
                    let b = reschedule(&tx, &filter, now, from)?;
                    if b.changed > 0 {
                        st.wake = true;
                    }
                    owed.push(Owed::Batch(reply, Ok(b)));
                }
                Request::CachePut {
                    address,
                    entry,
                    reply,
                } => {
                    cache_put(&tx, &address, &entry)?;
                    owed.push(Owed::Unit(reply, Ok(())));
                }
                Request::Barrier { reply, .. } => owed.push(Owed::Unit(reply, Ok(()))),
                Request::ReplaceChunk { id, seq, data } => {
                    appended.push(id);
                    st.receiving.insert(id);
                    if !st.broken.contains(&id) {
                        tx.open_table(CHUNKS)
                            .map_err(storage)?
                            .insert((id, seq), data.as_slice())
                            .map_err(storage)?;
                    }
                }
                Request::Retag {
                    domain,
                    dest,
                    now,
                    from,
                    reply,
                } => {
                    let b = retag(&tx, &domain, &dest, now, from)?;
                    if b.changed > 0 {
                        st.wake = true;
                    }
                    owed.push(Owed::Batch(reply, Ok(b)));
                }
                Request::Delete { id, reply } => {
                    let r = delete_message(&tx, st, id);
                    let r = match r {
                        Err(SpoolError::Storage(e)) => return Err(SpoolError::Storage(e)),
                        other => other,
                    };
                    owed.push(Owed::Unit(reply, r));
                }
            }
        }
        if keep_open {
            return Ok(Some(tx));
        }
        if durable && let Some(j) = st.journal.as_ref() {
            // Everything journaled so far is in this transaction's state.
            record_journal_gen(&tx, j.last_gen())?;
        }
        if durable {
            record_clock(&tx, &mut st.clock_saved)?;
        }
        tx.commit().map_err(storage)?;
        if journaled
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
            durable = true;
        }
        Ok(None)
    })();
    match result {
        Ok(Some(open)) => {
            st.open = Some(open);
            st.open_ids = appended;
        }
        Ok(None) => {
            if durable {
                st.unsynced_since = None;
                if let Some(j) = st.journal.as_mut() {
                    j.reset();
                }
            } else if bookkeeping || journaled {
                st.unsynced_since
                    .get_or_insert_with(std::time::Instant::now);
            }
            {
                let mut s = lock(&shared.state);
                s.bytes = s.bytes.saturating_add_signed(st.bytes_delta);
                s.messages = s.messages.saturating_add_signed(st.messages_delta);
            }
            for o in owed {
                o.send();
            }
        }
        Err(e) => {
            log::error!("event=spool_error error=\"{e}\"");
            if let Some(j) = st.journal.as_mut() {
                j.discard();
            }
            // Every message with a chunk in this batch has a hole now, and
            // so may every message being received (see `receiving`).
            st.broken.extend(appended);
            st.broken.extend(st.receiving.iter().copied());
            st.wake = false;
            for o in owed {
                o.fail(&e);
            }
            drop(db);
            reopen(shared, st.journal.as_mut());
        }
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

/// Whether every chunk `0..chunks` of a message is there: the last check
/// before a 250, so that no storage failure, however it came about, turns
/// into an accepted message with a hole ("chunk N missing" at delivery,
/// then a wrong return).
fn body_complete(
    tx: &redb::WriteTransaction,
    id: QueueId,
    chunks: u32,
) -> Result<bool, SpoolError> {
    if chunks == 0 {
        return Ok(true);
    }
    let t = tx.open_table(CHUNKS).map_err(storage)?;
    let n = t.range((id, 0)..(id, chunks)).map_err(storage)?.count();
    Ok(n == chunks as usize)
}

/// The number and total size of the messages in `db`.
fn count_queued(db: &Database) -> Result<(u64, u64), SpoolError> {
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

fn remove_body(tx: &redb::WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
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

fn commit_message(
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

fn delete_message(
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
fn finish(
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
    let mut newly_failed: Vec<usize> = vec![];
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
    let mut expired: Vec<usize> = vec![];
    if m.has_pending() {
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
    }
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

/// The enhanced status of a reply line such as `550 5.1.1 no such user`,
/// or one made from its basic code.
fn status_of(reply: &str) -> Option<String> {
    let mut it = reply.split_whitespace();
    let code = it.next()?;
    if let Some(enh) = it.next()
        && crate::smtp::Enhanced::parse_prefix(enh).is_some()
    {
        return Some(enh.to_string());
    }
    match code.as_bytes().first() {
        Some(b'5') => Some("5.0.0".into()),
        Some(b'4') => Some("4.0.0".into()),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn make_dsn(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    id: QueueId,
    m: &Message,
    failed: &[usize],
    expired: &[usize],
    policy: &ReturnPolicy,
    now: u64,
) -> Result<QueueId, SpoolError> {
    let mut reports = vec![];
    for &i in failed {
        let Some(r) = m.recipients.get(i) else {
            continue;
        };
        reports.push(dsn::RecipientReport {
            address: r.address.clone(),
            action: dsn::Action::Failed,
            status: status_of(&r.last_reply).unwrap_or_else(|| "5.0.0".into()),
            diagnostic: (!r.last_reply.is_empty()).then(|| r.last_reply.clone()),
            remote_mta: remote_host(&r.remote),
            last_attempt: (r.last_attempt > 0).then(|| crate::clock::to_unix(r.last_attempt)),
        });
    }
    for &i in expired {
        let Some(r) = m.recipients.get(i) else {
            continue;
        };
        reports.push(dsn::RecipientReport {
            address: r.address.clone(),
            action: dsn::Action::Failed,
            // RFC 3463 X.4.7: delivery time expired.
            status: "5.4.7".into(),
            diagnostic: (!r.last_reply.is_empty()).then(|| r.last_reply.clone()),
            remote_mta: remote_host(&r.remote),
            last_attempt: (r.last_attempt > 0).then(|| crate::clock::to_unix(r.last_attempt)),
        });
    }
    let headers = original_headers(tx, id, m.chunks)?;
    let dsn_id = {
        let mut next = lock(&st.shared.next_id);
        *next = (*next + 1).max(now << ID_SEQ_BITS);
        *next
    };
    let message_id = format!("<{}.dsn@{}>", format_id(dsn_id), policy.reporting_mta);
    let qid = format_id(id);
    let body = dsn::build(&dsn::DsnInput {
        reporting_mta: &policy.reporting_mta,
        sender: &m.sender,
        queue_id: &qid,
        // The DSN's dates are wall time: now, less the time that really
        // passed (spool time, see `clock`).
        arrival: crate::clock::to_unix(m.arrival),
        now: crate::clock::to_unix(now),
        recipients: &reports,
        original_headers: &headers,
        message_id: &message_id,
        utf8: m.flags & schema::FLAG_SMTPUTF8 != 0,
    });
    // RFC 6533: to an SMTPUTF8 sender the DSN goes with SMTPUTF8 (its
    // address may need it); 8-bit text goes with BODY=8BITMIME.
    let mut flags = schema::FLAG_DSN | (m.flags & schema::FLAG_SMTPUTF8);
    if !body.is_ascii() {
        flags |= schema::FLAG_8BITMIME;
    }
    let destination = match &policy.smarthost {
        Some(d) => d.clone(),
        None => Destination::Mx {
            domain: m
                .sender
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default(),
            port: 25,
        },
    };
    let mut chunks = 0u32;
    {
        let mut t = tx.open_table(CHUNKS).map_err(storage)?;
        for piece in body.chunks(crate::smtp::server::BODY_CHUNK) {
            t.insert((dsn_id, chunks), piece).map_err(storage)?;
            chunks += 1;
        }
    }
    let size = body.len() as u64;
    commit_message(
        tx,
        dsn_id,
        Envelope {
            sender: String::new(),
            recipients: vec![(m.sender.clone(), destination)],
            flags,
            client: "mxspool (delivery status notification)".into(),
            arrival: now,
            first_attempt: now,
            note: String::new(),
        },
        chunks,
        size,
    )?;
    st.bytes_delta += size as i64;
    st.messages_delta += 1;
    st.wake = true;
    Ok(dsn_id)
}

fn remote_host(remote: &str) -> Option<String> {
    let host = remote.split('[').next().unwrap_or("").trim();
    (!host.is_empty()).then(|| host.to_string())
}

/// The original message's header section, up to the empty line, capped.
fn original_headers(
    tx: &redb::WriteTransaction,
    id: QueueId,
    chunks: u32,
) -> Result<Vec<u8>, SpoolError> {
    let t = tx.open_table(CHUNKS).map_err(storage)?;
    let mut out: Vec<u8> = vec![];
    for seq in 0..chunks {
        let Some(v) = t.get((id, seq)).map_err(storage)? else {
            break;
        };
        let start = out.len().saturating_sub(3);
        out.extend_from_slice(v.value());
        if let Some(p) = find(&out[start..], b"\r\n\r\n") {
            out.truncate(start + p + 2);
            return Ok(out);
        }
        if out.len() >= DSN_HEADER_CAP {
            break;
        }
    }
    out.truncate(DSN_HEADER_CAP);
    // Cut at the last whole line.
    if let Some(p) = out.windows(2).rposition(|w| w == b"\r\n") {
        out.truncate(p + 2);
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn cache_put(
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

fn retag(
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

fn reschedule(
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

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: SpoolOptions = SpoolOptions {
        cache_size: 1 << 20,
        journal_size: 1 << 20,
    };

    /// Opens the spool in `dir`, runs `f` on it, and shuts it down.
    fn with_spool<T>(
        dir: &Path,
        opts: SpoolOptions,
        f: impl AsyncFnOnce(&Spool, Recovered) -> T,
    ) -> T {
        smol::block_on(async {
            let (wake, _w) = bounded(1);
            let (spool, thread, rec) = Spool::open(dir, opts, wake).unwrap();
            let out = f(&spool, rec).await;
            drop(spool);
            thread.join();
            out
        })
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxspool-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Retries every minute, returned after ten minutes.
    fn ten_minute_policy(smarthost: Option<Destination>) -> ReturnPolicy {
        ReturnPolicy {
            steps: vec![RetryStep {
                interval: Duration::from_secs(60),
                span: Duration::from_secs(600),
            }],
            reporting_mta: "mx2.test".into(),
            smarthost,
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            sender: "a@b.test".into(),
            recipients: vec![(
                "u@example.com".into(),
                Destination::Relay {
                    host: "127.0.0.1".into(),
                    port: 25,
                },
            )],
            flags: 0,
            client: "test".into(),
            arrival: 1000,
            first_attempt: 1000,
            note: String::new(),
        }
    }

    /// Field case: when one destination's attempt finds the message
    /// expired, only its own recipients are returned. The other
    /// destination's recipient (its job may be delivering it right now)
    /// stays pending, due at once, and is delivered when its job reports.
    #[test]
    fn expiry_returns_only_the_attempts_own_recipients() {
        let dir = tmpdir("expiry-per-job");
        let relay = |port| Destination::Relay {
            host: "127.0.0.1".into(),
            port,
        };
        let policy = ten_minute_policy(Some(relay(26)));
        let result = |index, outcome| RcptResult {
            index,
            outcome,
            reply: "451 4.3.0 later".into(),
            remote: String::new(),
        };
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let mut env = envelope();
            env.recipients.push(("v@example.org".into(), relay(2525)));
            let id = spool.new_id(1000);
            let body = b"Subject: e\r\n\r\nx\r\n".to_vec();
            spool
                .commit(id, env, 1, body.len() as u64, Some((0, body)))
                .await
                .unwrap();
            let expired = 1000 + 601;
            let report = |dest, index, outcome| AttemptReport {
                time: expired,
                destination: dest,
                relay: String::new(),
                summary: String::new(),
                results: vec![result(index, outcome)],
            };
            let f = spool
                .finish(id, report(relay(25), 0, Outcome::Deferred), policy.clone())
                .await
                .unwrap();
            assert_eq!(f.failed, vec!["u@example.com".to_string()]);
            assert!(!f.removed);
            assert_eq!(f.next_attempt, Some(expired), "the other job is due now");
            let m = spool.message(id).unwrap().unwrap();
            assert_eq!(m.recipients[1].state, RcptState::Pending);
            let f = spool
                .finish(
                    id,
                    report(relay(2525), 1, Outcome::Delivered),
                    policy.clone(),
                )
                .await
                .unwrap();
            assert!(
                f.failed.is_empty(),
                "a delivered recipient is never returned"
            );
            assert!(f.removed);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A queue-wide change goes batch by batch (bounded memory, one
    /// transaction each) and still reaches every matching message exactly
    /// once, across both the change limit and the scan limit.
    #[test]
    fn queue_wide_changes_reach_every_message_in_batches() {
        let dir = tmpdir("queue-wide");
        let n = 4 * QUEUE_WIDE_SCAN + 3;
        let other = Destination::Relay {
            host: "127.0.0.2".into(),
            port: 2525,
        };
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let mut ids = vec![];
            for i in 0..n {
                let mut env = envelope();
                if i % 10 == 0 {
                    env.recipients[0].0 = format!("u{i}@example.org");
                }
                let id = spool.new_id(1000);
                let body = b"Subject: q\r\n\r\nx\r\n".to_vec();
                spool
                    .commit(id, env, 1, body.len() as u64, Some((0, body)))
                    .await
                    .unwrap();
                ids.push(id);
            }
            let flushed = spool.reschedule(Filter::All, 5000).await.unwrap();
            assert_eq!(flushed, n);
            let retagged = spool
                .retag("example.org".into(), other.clone(), 6000)
                .await
                .unwrap();
            assert_eq!(retagged, n.div_ceil(10));
            for (i, id) in ids.iter().enumerate() {
                let m = spool.message(*id).unwrap().unwrap();
                let (next, dest) = if i % 10 == 0 {
                    (6000, other.clone())
                } else {
                    (5000, envelope().recipients[0].1.clone())
                };
                assert_eq!(m.next_attempt, next, "message {i}");
                assert_eq!(m.recipients[0].destination, dest, "message {i}");
            }
            let by_dest = spool
                .reschedule(Filter::Destination(other.clone()), 7000)
                .await
                .unwrap();
            assert_eq!(by_dest, n.div_ceil(10));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_chunk_fits_one_page() {
        // A chunk one byte over its page run costs twice the flash writes:
        // 32 full chunks must take about 1 MiB of pages, not 2.
        let dir = tmpdir("chunkfit");
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::create(dir.join("t.redb")).unwrap();
        let before = db.begin_write().unwrap().stats().unwrap().allocated_pages();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(CHUNKS).unwrap();
            let chunk = vec![b'x'; crate::smtp::server::BODY_CHUNK];
            for seq in 0..32 {
                t.insert((7, seq), chunk.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let w = db.begin_write().unwrap();
        let stats = w.stats().unwrap();
        let used = (stats.allocated_pages() - before) * stats.page_size() as u64;
        assert!(
            used < 32 * 32 * 1024 + 64 * 1024,
            "{used} bytes for 32 chunks"
        );
        drop(w);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journaled_message_is_replayed_into_a_database_that_lost_it() {
        let dir = tmpdir("journal-replay");
        let db_path = dir.join(SPOOL_FILE);
        let journal_path = dir.join(JOURNAL_FILE);
        let (old_db, journal, id) = with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            // The database as a power cut right now would leave it.
            let old_db = std::fs::read(&db_path).unwrap();
            let id = spool.new_id(1000);
            let body = b"Subject: j\r\n\r\nsmall\r\n".to_vec();
            spool
                .commit(id, envelope(), 1, body.len() as u64, Some((0, body)))
                .await
                .unwrap();
            // Acknowledged: the journal holds it, redb not durably yet.
            let journal = std::fs::read(&journal_path).unwrap();
            (old_db, journal, id)
        });
        std::fs::write(&db_path, old_db).unwrap();
        std::fs::write(&journal_path, &journal).unwrap();
        let reopen = || {
            with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
                let body = spool.chunk(id, 0).unwrap();
                (rec.messages, rec.replayed, body)
            })
        };
        let body = Some(b"Subject: j\r\n\r\nsmall\r\n".to_vec());
        assert_eq!(reopen(), (1, 1, body.clone()));
        // Replayed once: the next start finds it in the database.
        assert_eq!(reopen(), (1, 0, body));
        // A journal left behind by a deleted database is not replayed.
        std::fs::remove_file(&db_path).unwrap();
        std::fs::write(&journal_path, &journal).unwrap();
        assert_eq!(reopen(), (0, 0, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn journal_size_0_retires_the_journal_after_replaying_it() {
        let dir = tmpdir("journal-off");
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let id = spool.new_id(1000);
            spool
                .commit(id, envelope(), 1, 4, Some((0, b"x\r\n\r\n".to_vec())))
                .await
                .unwrap();
        });
        assert!(dir.join(JOURNAL_FILE).exists());
        let off = SpoolOptions {
            journal_size: 0,
            ..OPTS
        };
        with_spool(&dir, off, async |spool: &Spool, rec: Recovered| {
            assert_eq!(rec.messages, 1);
            let id = spool.new_id(1000);
            spool
                .commit(id, envelope(), 1, 4, Some((0, b"y\r\n\r\n".to_vec())))
                .await
                .unwrap();
        });
        assert!(!dir.join(JOURNAL_FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn committed_messages_survive_a_reopen_and_half_received_bodies_do_not() {
        let dir = tmpdir("reopen");
        with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
            assert_eq!(rec.messages, 0);
            let a = spool.new_id(1000);
            spool
                .append(a, 0, b"Subject: a\r\n\r\n".to_vec())
                .await
                .unwrap();
            spool.append(a, 1, b"body\r\n".to_vec()).await.unwrap();
            spool.commit(a, envelope(), 2, 20, None).await.unwrap();
            // A message whose client vanished mid-DATA: never committed.
            let b = spool.new_id(1000);
            spool.append(b, 0, b"partial".to_vec()).await.unwrap();
            spool.barrier().await.unwrap();
            assert_eq!(spool.state().messages, 1);
        });
        with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
            assert_eq!((rec.messages, rec.leftovers, rec.bytes), (1, 1, 20));
            let list = spool.list().unwrap();
            let (id, m) = &list[0];
            let m = m.as_ref().unwrap();
            assert_eq!(m.sender, "a@b.test");
            assert_eq!(spool.chunk(*id, 1).unwrap().unwrap(), b"body\r\n");
            // The new ids never repeat the old ones, whatever the clock says.
            assert!(spool.new_id(0) > *id);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pages_walk_the_queue_once_in_arrival_order() {
        let dir = tmpdir("pages");
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let mut ids = vec![];
            for i in 0..10 {
                let id = spool.new_id(1000 + i);
                let mut env = envelope();
                env.arrival = 1000 + i;
                let body = b"y\r\n\r\n".to_vec();
                spool.commit(id, env, 1, 5, Some((0, body))).await.unwrap();
                ids.push(id);
            }
            let first = spool.messages_after(None, 4).unwrap();
            assert_eq!((first.total, first.more, first.items.len()), (10, true, 4));
            // Walking page by page from each page's last id sees every
            // message once, in order; the last page says nothing follows.
            let (mut seen, mut cursor) = (vec![], None);
            loop {
                let p = spool.messages_after(cursor, 3).unwrap();
                assert_eq!(p.total, 10);
                seen.extend(p.items.iter().map(|(id, m)| {
                    assert_eq!(m.as_ref().unwrap().sender, "a@b.test");
                    *id
                }));
                cursor = seen.last().copied();
                if !p.more {
                    break;
                }
            }
            assert_eq!(seen, ids);
            // The cursor is a position: it need not be queued any more.
            let p = spool.messages_after(Some(ids[3] + 1), 2).unwrap();
            assert_eq!(p.items.iter().map(|e| e.0).collect::<Vec<_>>(), ids[4..6]);
            let p = spool.messages_after(Some(ids[9]), 5).unwrap();
            assert!(p.items.is_empty() && !p.more);
            let p = spool.messages_after(None, 0).unwrap();
            assert!(p.items.is_empty() && p.more);
            assert_eq!(spool.oldest_arrival().unwrap(), Some(1000));
            spool.delete(ids[0]).await.unwrap();
            assert_eq!(spool.oldest_arrival().unwrap(), Some(1001));
            assert_eq!(
                spool
                    .pending_destinations()
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>(),
                vec![envelope().recipients[0].1.clone()]
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Ids are taken when DATA starts, arrival is its end: within the
    /// same second a later id may have arrived first, and is found; the
    /// scan stops at the first id from a later second.
    #[test]
    fn the_oldest_arrival_reads_only_the_head_of_the_queue() {
        let dir = tmpdir("oldest");
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            assert_eq!(spool.oldest_arrival().unwrap(), None);
            for (start, arrival) in [(1000, 1005), (1000, 1003), (2000, 2000)] {
                let id = spool.new_id(start);
                let mut env = envelope();
                env.arrival = arrival;
                let body = b"y\r\n\r\n".to_vec();
                spool.commit(id, env, 1, 5, Some((0, body))).await.unwrap();
            }
            assert_eq!(spool.oldest_arrival().unwrap(), Some(1003));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_permanent_failure_returns_the_mail_and_a_temporary_one_reschedules() {
        let dir = tmpdir("finish");
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let id = spool.new_id(1000);
            spool
                .append(id, 0, b"Subject: x\r\n\r\nbody\r\n".to_vec())
                .await
                .unwrap();
            let mut env = envelope();
            env.recipients.push(env.recipients[0].clone());
            env.recipients[1].0 = "v@example.com".into();
            spool.commit(id, env, 1, 20, None).await.unwrap();
            let policy = ten_minute_policy(None);
            let report = AttemptReport {
                time: 1010,
                destination: envelope().recipients[0].1.clone(),
                relay: "h[127.0.0.1]:25".into(),
                summary: "mixed".into(),
                results: vec![
                    RcptResult {
                        index: 0,
                        outcome: Outcome::Failed,
                        reply: "550 5.1.1 no such user".into(),
                        remote: "h[127.0.0.1]:25".into(),
                    },
                    RcptResult {
                        index: 1,
                        outcome: Outcome::Deferred,
                        reply: "451 4.3.0 later".into(),
                        remote: "h[127.0.0.1]:25".into(),
                    },
                ],
            };
            let f = spool.finish(id, report, policy).await.unwrap();
            assert_eq!(f.failed, vec!["u@example.com".to_string()]);
            assert_eq!(f.next_attempt, Some(1060));
            let dsn = f.dsn.unwrap();
            let d = spool.message(dsn).unwrap().unwrap();
            assert_eq!(d.sender, "");
            assert_eq!(
                d.flags,
                schema::FLAG_DSN,
                "all ASCII: no SMTPUTF8, no 8BITMIME"
            );
            assert_eq!(d.recipients[0].address, "a@b.test");
            assert_eq!(
                d.recipients[0].destination,
                Destination::Mx {
                    domain: "b.test".into(),
                    port: 25
                }
            );
            let body = spool.chunk(dsn, 0).unwrap().unwrap();
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("Final-Recipient: rfc822; u@example.com"));
            assert!(text.contains("Subject: x"));
            // The schedule index moved with the message.
            let (due, next) = spool.due(1059, 10, &HashSet::new()).unwrap();
            assert_eq!(due, vec![dsn]);
            assert_eq!(next, Some(1060));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// RFC 6533: the DSN to a sender who used SMTPUTF8 is flagged so it goes
    /// out with SMTPUTF8 and BODY=8BITMIME, in the global types.
    #[test]
    fn dsn_to_an_smtputf8_sender_is_smtputf8() {
        let dir = tmpdir("dsn-utf8");
        with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
            let id = spool.new_id(1000);
            let body = "Subject: gr\u{fc}\u{df}e\r\n\r\nbody\r\n"
                .as_bytes()
                .to_vec();
            spool.append(id, 0, body).await.unwrap();
            let mut env = envelope();
            env.sender = "d\u{ef}ana@b.test".into();
            env.flags = schema::FLAG_SMTPUTF8 | schema::FLAG_8BITMIME;
            spool.commit(id, env, 1, 30, None).await.unwrap();
            let policy = ten_minute_policy(None);
            let report = AttemptReport {
                time: 1010,
                destination: envelope().recipients[0].1.clone(),
                relay: "h[127.0.0.1]:25".into(),
                summary: "refused".into(),
                results: vec![RcptResult {
                    index: 0,
                    outcome: Outcome::Failed,
                    reply: "553 5.6.7 h[127.0.0.1]:25 does not support SMTPUTF8".into(),
                    remote: "h[127.0.0.1]:25".into(),
                }],
            };
            let f = spool.finish(id, report, policy).await.unwrap();
            let dsn = f.dsn.unwrap();
            let d = spool.message(dsn).unwrap().unwrap();
            assert_eq!(
                d.flags,
                schema::FLAG_DSN | schema::FLAG_SMTPUTF8 | schema::FLAG_8BITMIME
            );
            assert_eq!(d.recipients[0].address, "d\u{ef}ana@b.test");
            let text = String::from_utf8(spool.chunk(dsn, 0).unwrap().unwrap()).unwrap();
            assert!(text.contains("Content-Type: message/global-delivery-status"));
            assert!(text.contains("Content-Type: message/global-headers"));
            assert!(text.contains("Status: 5.6.7"));
            assert!(text.contains("To: <d\u{ef}ana@b.test>"));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
