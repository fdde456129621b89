//! The `Spool` handle: what every part of the daemon holds. Its requests
//! go to the spool thread (`writer`) through one bounded queue; its reads
//! are in `read`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use redb::Database;
use smol::channel::{Sender, bounded};

use super::open::free_disk;
use super::writer::{NewMessage, Request};
use super::*;

pub(super) struct Shared {
    pub(super) db: RwLock<Option<Arc<Database>>>,
    pub(super) state: Mutex<SpoolState>,
    pub(super) next_id: Mutex<u64>,
    pub(super) path: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) cache_size: usize,
    /// Set by `open_with_backend`: where the database lives instead of
    /// `path` (also used when it is reopened after a write error).
    pub(super) backend: Option<BackendFactory>,
}

/// The handle every part of the daemon uses. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: Sender<Request>,
    pub(super) wake: Sender<()>,
}

/// The spool thread, joined at shutdown after the last handle is gone.
pub struct SpoolThread(pub(super) Option<thread::JoinHandle<()>>);

impl SpoolThread {
    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Spool {
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
            message: NewMessage {
                id,
                envelope,
                chunks,
                size,
                last,
            },
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
