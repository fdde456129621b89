//! Reads: each opens its own read transaction on a snapshot, from any
//! thread, without waiting for the spool thread.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::schema::{ATTEMPTS, CALLAHEAD, CHUNKS, MESSAGES, SCHEDULE};
use super::*;

impl Spool {
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
}
