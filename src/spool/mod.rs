//! The spool: messages, their bodies and their delivery state in one redb
//! file, written by one dedicated spool thread. What is on the disk, and
//! when it is durable, is described in docs/spool-format.md.
//!
//! Why one thread: redb has one writer at a time, and a commit is an fsync
//! that must not stall the executor thread that runs every SMTP session.
//! Reads (the scheduler, the delivery client streaming a body) open their
//! own read transactions from any thread; redb serves them from a snapshot
//! without waiting for the writer.
//!
//! Files, bottom-up:
//! - `schema`: the tables and the byte layout of their records;
//!   `destination`: the stored destination tag; `retry`: the retry rule;
//! - `journal`: the commit journal (one sequential write per group commit);
//! - `ops`: what a request does inside a write transaction; `bounce`: the
//!   DSN record for returned recipients;
//! - `writer`: the spool thread, its batches and their commit;
//! - `open`: opening, recovery and journal replay at start-up;
//! - `handle`: the `Spool` handle and its requests; `read`: its reads.

mod bounce;
pub mod destination;
mod handle;
pub mod journal;
mod open;
mod ops;
mod read;
pub mod retry;
pub mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::RetryStep;
pub use destination::Destination;
pub use handle::{Spool, SpoolThread};
pub use open::{check_durable_dir, make_spool_dir, volatile_fs};
pub use schema::{Attempt, CacheEntry, Message, RcptState, Recipient};

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
    /// the destination is known to be down (see `ctx::down`).
    pub first_attempt: u64,
    /// Why the first attempt waits (shown as the last error until then).
    pub note: String,
}

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
