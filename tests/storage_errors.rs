//! Storage errors that go away: a sync fails once (EIO,
//! ENOSPC), the spool reopens at its last durable state and goes on.
//!
//! What it protects: no message gets a `250` with a part of its body
//! missing. Before, a message whose first chunks an earlier batch had
//! committed without a sync lost them at the reopen, was not marked
//! broken (only the failing batch's messages were), committed with a hole,
//! and was later returned to its sender ("chunk 0 missing"). Now every
//! message being received at a reopen fails its commit (its client gets a
//! 4xx and sends it again), the commit checks that every chunk is there,
//! and the spool's counters are recounted.
//!
//! The disk model: on a failed sync every write since the last good sync
//! is gone (Linux may drop dirty pages after an fsync error), which is also
//! what a reopen of the database then finds.

use std::io;
use std::sync::{Arc, Mutex};

use mxspool::spool::Destination;
use mxspool::spool::{BackendFactory, CacheEntry, Envelope, Spool, SpoolOptions, Store};

#[derive(Debug, Default)]
struct File {
    current: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct DiskState {
    files: [File; 2],
    /// The next this many syncs fail (and lose what they would have kept).
    failing_syncs: u32,
    /// Reads of the journal fail (a bad sector under it).
    journal_unreadable: bool,
}

#[derive(Debug, Default)]
struct Disk(Mutex<DiskState>);

impl Disk {
    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Backend(Arc<Disk>, usize);

impl redb::StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().files[self.1].current.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.0.lock();
        if self.1 == 1 && s.journal_unreadable {
            return Err(io::Error::other("injected EIO reading the journal"));
        }
        let start = offset as usize;
        let src = s.files[self.1]
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.lock().files[self.1].current.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.0.lock();
        if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            let f = &mut s.files[self.1];
            f.current = f.synced.clone();
            return Err(io::Error::other("injected EIO at fsync"));
        }
        let f = &mut s.files[self.1];
        f.synced = f.current.clone();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.0.lock();
        let f = &mut s.files[self.1];
        let end = offset as usize + data.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn factory(disk: &Arc<Disk>) -> BackendFactory {
    let disk = disk.clone();
    Arc::new(move |store| {
        let i = match store {
            Store::Database => 0,
            Store::Journal => 1,
        };
        Ok(Box::new(Backend(disk.clone(), i)) as Box<dyn redb::StorageBackend>)
    })
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

const CHUNK: usize = 4096;

fn chunk(tag: u8, seq: u32) -> Vec<u8> {
    vec![tag.wrapping_add(seq as u8); CHUNK]
}

/// Every message the spool holds is whole: all its chunks are there.
fn assert_whole(spool: &Spool, id: u64, chunks: u32) {
    for seq in 0..chunks {
        assert!(
            spool.chunk(id, seq).unwrap().is_some(),
            "message {id:x} was accepted with chunk {seq} missing"
        );
    }
}

fn run(journal_size: u64) {
    let disk = Arc::new(Disk::default());
    let dir = std::env::temp_dir().join(format!(
        "mxspool-storage-errors-{journal_size}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = SpoolOptions {
        cache_size: 1 << 20,
        journal_size,
    };
    smol::block_on(async {
        let (wake, _w) = smol::channel::bounded(1);
        let (spool, thread, _) =
            Spool::open_with_backend(&dir, opts, wake, factory(&disk)).unwrap();
        // X is being received: its first chunk rides a commit without a
        // sync (the bookkeeping of a call-ahead answer).
        let x = spool.new_id(1000);
        spool.append(x, 0, chunk(b'x', 0)).await.unwrap();
        spool
            .cache_put(
                "someone@example.com".into(),
                CacheEntry {
                    positive: true,
                    refresh: 2000,
                    expire: 3000,
                    reply: "250 ok".into(),
                },
            )
            .await;
        // Another session's message needs a durable commit; its sync fails
        // once, and the spool reopens at its last durable state.
        disk.lock().failing_syncs = 1;
        let y = spool.new_id(1000);
        spool.append(y, 0, chunk(b'y', 0)).await.unwrap();
        let y_result = spool
            .commit(
                y,
                envelope(),
                2,
                2 * CHUNK as u64,
                Some((1, chunk(b'y', 1))),
            )
            .await;
        assert!(
            y_result.is_err(),
            "a commit whose sync failed was acknowledged"
        );
        // X goes on and finishes: it must not be acknowledged with a hole.
        spool.append(x, 1, chunk(b'x', 1)).await.unwrap();
        let x_result = spool
            .commit(
                x,
                envelope(),
                3,
                3 * CHUNK as u64,
                Some((2, chunk(b'x', 2))),
            )
            .await;
        if x_result.is_ok() {
            assert_whole(&spool, x, 3);
        }
        // The disk is well again: the spool goes on without a restart.
        let z = spool.new_id(1000);
        spool.append(z, 0, chunk(b'z', 0)).await.unwrap();
        spool
            .commit(
                z,
                envelope(),
                2,
                2 * CHUNK as u64,
                Some((1, chunk(b'z', 1))),
            )
            .await
            .expect("the spool must work again once the disk does");
        assert_whole(&spool, z, 2);
        let queued = spool.state().messages;
        let expect = 1 + u64::from(x_result.is_ok());
        assert_eq!(queued, expect, "the message counter after the reopen");
        drop(spool);
        thread.join();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_sync_never_leaves_an_accepted_message_with_a_hole() {
    run(0);
}

#[test]
fn a_failed_sync_never_leaves_an_accepted_message_with_a_hole_with_the_journal() {
    run(1 << 20);
}

/// An unreadable journal (EIO) must not make every start fail, which under
/// procd is a crash loop: the spool opens without it, keeps what redb
/// holds, and takes mail again.
#[test]
fn an_unreadable_journal_does_not_stop_the_start() {
    let disk = Arc::new(Disk::default());
    let dir = std::env::temp_dir().join(format!("mxspool-journal-eio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = SpoolOptions {
        cache_size: 1 << 20,
        journal_size: 1 << 20,
    };
    let open = || {
        let (wake, _w) = smol::channel::bounded(1);
        Spool::open_with_backend(&dir, opts, wake, factory(&disk))
    };
    let kept = smol::block_on(async {
        let (spool, thread, _) = open().unwrap();
        let id = spool.new_id(1000);
        spool.append(id, 0, chunk(b'k', 0)).await.unwrap();
        spool
            .commit(
                id,
                envelope(),
                2,
                2 * CHUNK as u64,
                Some((1, chunk(b'k', 1))),
            )
            .await
            .unwrap();
        drop(spool);
        thread.join();
        id
    });
    disk.lock().journal_unreadable = true;
    smol::block_on(async {
        let (spool, thread, rec) = open().expect("an unreadable journal stopped the start");
        assert_eq!(rec.messages, 1);
        assert_whole(&spool, kept, 2);
        let id = spool.new_id(1000);
        spool
            .commit(id, envelope(), 1, CHUNK as u64, Some((0, chunk(b'n', 0))))
            .await
            .expect("mail is taken again");
        drop(spool);
        thread.join();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
