//! Power-cut simulation of the spool.
//!
//! The spool's redb database and its commit journal run on an in-memory
//! disk (two files) that behaves like a real one under a power cut: writes
//! land in a volatile view, `sync_data` makes that file's view durable, and
//! at the cut every write not followed by a successful sync of its file is
//! lost (mode "drop": the last synced image survives) or, harsher, an
//! arbitrary subset of those writes survives (mode "subset": a disk that
//! reorders its write cache). Rounds alternate between a small journal
//! (it fills up: durable redb commits in the middle of a round), a large
//! one, and none. The cut falls at a random I/O
//! operation while several sessions append bodies and commit messages
//! concurrently (group commit), and while acknowledged ones are deleted.
//!
//! What it protects: the contract's "`250` after DATA means the message is
//! on stable storage; a crash or power cut after it loses nothing". After
//! every cut the spool must open, every message whose `commit` returned Ok
//! must be there with its full body, every message present must be whole
//! (no half-written body ever appears as queued), and no deleted message
//! whose delete returned Ok comes back. Seeded PRNG: a failure prints the
//! seed and round; set POWERCUT_SEED / POWERCUT_ROUNDS to replay or extend.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use mxspool::spool::Destination;
use mxspool::spool::{BackendFactory, Envelope, Spool, SpoolOptions, Store};

// ---------------------------------------------------------------- PRNG

#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------- the disk

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every write after the last sync is lost.
    Drop,
    /// A random subset of the writes after the last sync survives, each
    /// write torn at every page boundary (a disk writes pages, not calls:
    /// a multi-page journal frame or redb run may survive in part).
    Subset,
    /// Before the cut, the disk fails every write and sync for a while
    /// (a USB stick that drops off the bus and comes back, a full disk that
    /// is cleared) and then works again: the spool must reopen and go on
    /// taking mail, and the cut that ends the round must find everything
    /// acknowledged before, during and after the failures (writes lost as
    /// in Drop).
    Recovering,
}

/// The database and the journal.
const FILES: usize = 2;
/// The unit a disk writes atomically (at best).
const PAGE: usize = 4096;
type Images = [Vec<u8>; FILES];

fn index(store: Store) -> usize {
    match store {
        Store::Database => 0,
        Store::Journal => 1,
    }
}

#[derive(Debug, Default, Clone)]
struct FileState {
    /// What reads see (the page cache).
    current: Vec<u8>,
    /// The image as of the last successful sync.
    synced: Vec<u8>,
    /// Writes and length changes since the last sync, in order.
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct DiskState {
    files: [FileState; FILES],
    /// Write, set_len and sync operations so far, on either file.
    ops: u64,
    /// The operation at which the power goes.
    cut_at: u64,
    dead: bool,
    /// Operations in this range fail without taking effect (Recovering).
    failing: std::ops::Range<u64>,
    /// How many failed so.
    failed: u64,
}

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug)]
struct Disk(Mutex<DiskState>);

fn power_is_out() -> io::Error {
    io::Error::other("power cut")
}

fn disk_failed() -> io::Error {
    io::Error::other("I/O error (the disk comes back later)")
}

impl Disk {
    fn new(images: Images, cut_at: u64) -> Arc<Disk> {
        Disk::failing(images, cut_at, 0..0)
    }
    fn failing(images: Images, cut_at: u64, failing: std::ops::Range<u64>) -> Arc<Disk> {
        let files = images.map(|image| FileState {
            current: image.clone(),
            synced: image,
            pending: vec![],
        });
        Arc::new(Disk(Mutex::new(DiskState {
            files,
            cut_at,
            failing,
            ..DiskState::default()
        })))
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Counts a mutating operation; Err once the power is out.
    fn tick(s: &mut DiskState) -> io::Result<()> {
        if s.dead {
            return Err(power_is_out());
        }
        s.ops += 1;
        if s.ops >= s.cut_at {
            s.dead = true;
            return Err(power_is_out());
        }
        if s.failing.contains(&s.ops) {
            s.failed += 1;
            return Err(disk_failed());
        }
        Ok(())
    }
    fn cut(&self) {
        self.lock().dead = true;
    }
    fn ops(&self) -> u64 {
        self.lock().ops
    }
    /// The images a reboot finds.
    fn after_cut(&self, mode: Mode, rng: &mut Rng) -> Images {
        let s = self.lock();
        let mut out = Images::default();
        for (f, img) in s.files.iter().zip(out.iter_mut()) {
            *img = Disk::file_after_cut(f, mode, rng);
        }
        out
    }

    fn file_after_cut(f: &FileState, mode: Mode, rng: &mut Rng) -> Vec<u8> {
        let mut img = f.synced.clone();
        if mode == Mode::Subset {
            for p in &f.pending {
                match p {
                    Pending::Write(off, data) => {
                        // Each page of the write survives or not on its own.
                        let mut at = *off as usize;
                        let end = at + data.len();
                        while at < end {
                            let piece_end = ((at / PAGE + 1) * PAGE).min(end);
                            if rng.below(2) == 1 {
                                if img.len() < piece_end {
                                    img.resize(piece_end, 0);
                                }
                                let from = at - *off as usize;
                                img[at..piece_end]
                                    .copy_from_slice(&data[from..from + piece_end - at]);
                            }
                            at = piece_end;
                        }
                    }
                    Pending::SetLen(len) => {
                        if rng.below(2) == 1 {
                            img.resize(*len as usize, 0);
                        }
                    }
                }
            }
        }
        img
    }
}

#[derive(Debug)]
struct Backend(Arc<Disk>, usize);

impl redb::StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        let s = self.0.lock();
        if s.dead {
            return Err(power_is_out());
        }
        Ok(s.files[self.1].current.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.0.lock();
        if s.dead {
            return Err(power_is_out());
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
        let mut s = self.0.lock();
        Disk::tick(&mut s)?;
        let f = &mut s.files[self.1];
        f.current.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.0.lock();
        Disk::tick(&mut s)?;
        let f = &mut s.files[self.1];
        f.synced = f.current.clone();
        f.pending.clear();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.0.lock();
        Disk::tick(&mut s)?;
        let f = &mut s.files[self.1];
        let end = offset as usize + data.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[offset as usize..end].copy_from_slice(data);
        f.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn factory(disk: &Arc<Disk>) -> BackendFactory {
    let disk = disk.clone();
    Arc::new(move |store| {
        if disk.lock().dead {
            return Err(power_is_out());
        }
        Ok(Box::new(Backend(disk.clone(), index(store))) as Box<dyn redb::StorageBackend>)
    })
}

/// The journal sizes rounds use: small (fills up within a round), the
/// default, none.
const JOURNALS: [u64; 3] = [64 * 1024, 1 << 20, 0];

fn opts(journal_size: u64) -> SpoolOptions {
    SpoolOptions {
        cache_size: 1 << 20,
        journal_size,
    }
}

// ---------------------------------------------------------------- messages

/// A message body, regenerated from its seed for the check.
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

const CHUNK: usize = 32 * 1024;

#[derive(Default)]
struct Book {
    /// Every message ever started: id -> (seed, len).
    issued: BTreeMap<u64, (u64, usize)>,
    /// Commit returned Ok, not deleted (or delete not acknowledged).
    acked: BTreeSet<u64>,
    /// Delete returned Ok: must never come back.
    deleted: BTreeSet<u64>,
    /// Commits acknowledged in a session after one of its operations had
    /// failed (Recovering): the spool reopened and went on.
    acked_after_failure: usize,
}

/// One session: sends messages until the power goes or `n` are done.
/// `persist`: after a refused message go on with the next (a client that
/// got 4xx tries again), as the disk may come back.
async fn session(
    spool: Spool,
    book: Rc<RefCell<Book>>,
    mut rng: Rng,
    n: usize,
    now: u64,
    persist: bool,
) {
    let mut failed = false;
    'message: for _ in 0..n {
        // Sometimes delete an acknowledged message (a delivery finishing).
        if rng.below(4) == 0 {
            let victim = {
                let b = book.borrow();
                let k = b.acked.len() as u64;
                (k > 0).then(|| b.acked.iter().nth(rng.below(k) as usize).copied())
            };
            if let Some(Some(id)) = victim {
                if spool.delete(id).await.is_err() {
                    // A delete that failed may still have taken effect (its
                    // commit written, its sync failed, a later sync carrying
                    // it): it is not owed to anyone, either way.
                    book.borrow_mut().acked.remove(&id);
                    if persist {
                        failed = true;
                        continue 'message;
                    }
                    return;
                }
                let mut b = book.borrow_mut();
                b.acked.remove(&id);
                b.deleted.insert(id);
            }
        }
        let len = match rng.below(4) {
            0 => rng.below(200) as usize,
            1 | 2 => rng.below(CHUNK as u64 * 2) as usize,
            _ => rng.below(CHUNK as u64 * 5) as usize,
        };
        let seed = rng.next();
        let id = spool.new_id(now);
        book.borrow_mut().issued.insert(id, (seed, len));
        let data = body(seed, len);
        let mut chunks = 0u32;
        // Half the messages hold their last chunk back for the commit, as
        // the session driver does.
        let pieces: Vec<&[u8]> = data.chunks(CHUNK).collect();
        let hold = rng.below(2) == 0 && !pieces.is_empty();
        let mut last = None;
        for (i, c) in pieces.iter().enumerate() {
            if hold && i + 1 == pieces.len() {
                last = Some((chunks, c.to_vec()));
                chunks += 1;
                break;
            }
            if spool.append(id, chunks, c.to_vec()).await.is_err() {
                spool.abort(id, u64::from(chunks) * CHUNK as u64).await;
                if persist {
                    failed = true;
                    continue 'message;
                }
                return;
            }
            chunks += 1;
            if rng.below(3) == 0 {
                futures_lite::future::yield_now().await;
            }
        }
        let env = Envelope {
            sender: format!("s{id}@example.org"),
            recipients: vec![(
                "alice@example.com".into(),
                Destination::Relay {
                    host: "127.0.0.1".into(),
                    port: 2526,
                },
            )],
            flags: 0,
            client: "test [127.0.0.1]".into(),
            arrival: 1_700_000_000,
            first_attempt: 1_700_000_000,
            note: String::new(),
        };
        match spool.commit(id, env, chunks, len as u64, last).await {
            Ok(()) => {
                let mut b = book.borrow_mut();
                b.acked.insert(id);
                b.acked_after_failure += usize::from(failed);
            }
            Err(_) if persist => failed = true,
            Err(_) => return,
        }
    }
}

/// Reopens the image and checks the promises. Returns the messages found.
fn check(
    dir: &std::path::Path,
    images: Images,
    journal_size: u64,
    book: &mut Book,
    ctx: &str,
) -> usize {
    let disk = Disk::new(images, u64::MAX);
    let (wake, _wake_rx) = smol::channel::bounded(1);
    let (spool, thread, _) =
        Spool::open_with_backend(dir, opts(journal_size), wake, factory(&disk))
            .unwrap_or_else(|e| panic!("{ctx}: the spool does not open after the cut: {e}"));
    let listed = spool.list().expect("list");
    let present: BTreeSet<u64> = listed.iter().map(|(id, _)| *id).collect();
    for (id, m) in &listed {
        let m = m
            .as_ref()
            .unwrap_or_else(|e| panic!("{ctx}: message {id:X} damaged: {e}"));
        let &(seed, len) = book
            .issued
            .get(id)
            .unwrap_or_else(|| panic!("{ctx}: message {id:X} was never sent"));
        assert!(
            !book.deleted.contains(id),
            "{ctx}: message {id:X} deleted (acknowledged) but back"
        );
        let mut got = Vec::new();
        for seq in 0..m.chunks {
            let c = spool
                .chunk(*id, seq)
                .expect("chunk read")
                .unwrap_or_else(|| panic!("{ctx}: message {id:X} misses chunk {seq}"));
            got.extend_from_slice(&c);
        }
        assert_eq!(m.size as usize, len, "{ctx}: message {id:X} size");
        assert!(got == body(seed, len), "{ctx}: message {id:X} body differs");
    }
    for id in &book.acked {
        assert!(
            present.contains(id),
            "{ctx}: message {id:X} was acknowledged (commit Ok) but is lost"
        );
    }
    // Whatever survived without an acknowledgement now counts as queued
    // (as a client that saw no 250 may send it again: a duplicate, never a loss).
    book.acked = present.clone();
    drop(spool);
    thread.join();
    present.len()
}

fn run(mode: Mode, rounds: u64, seed: u64) -> (u64, usize, u64) {
    let dir =
        std::env::temp_dir().join(format!("mxspool-powercut-{}-{mode:?}", std::process::id()));
    let mut rng = Rng(seed);
    let mut book = Book::default();
    let mut images = Images::default();
    // An estimate of the operations a whole round takes (learned).
    let mut max_ops = 200u64;
    let mut acked_total = 0usize;
    let mut cuts_mid_io = 0u64;
    let mut failures = 0u64;
    let mut after_failure = 0usize;
    for round in 0..rounds {
        let journal_size = JOURNALS[round as usize % JOURNALS.len()];
        let ctx = format!("mode {mode:?} seed {seed} round {round} journal {journal_size}");
        let cut_at = 1 + rng.below(max_ops);
        // Recovering: the cut is set once the spool is open.
        let recovering = mode == Mode::Recovering;
        let disk = Disk::new(images.clone(), if recovering { u64::MAX } else { cut_at });
        let (wake, _wake_rx) = smol::channel::bounded(1);
        let opened = Spool::open_with_backend(&dir, opts(journal_size), wake, factory(&disk));
        if let Ok((spool, thread, _)) = opened {
            if recovering {
                // Failures somewhere in the round after the open, then the
                // disk works again for a while before the cut (sometimes
                // past the round's end: then it ends without one).
                let mut s = disk.lock();
                let from = s.ops + rng.below(max_ops / 2);
                let until = from + 1 + rng.below(max_ops / 8 + 1);
                s.failing = from..until;
                s.cut_at = until + 1 + rng.below(max_ops);
            }
            let ex = smol::LocalExecutor::new();
            let book_rc = Rc::new(RefCell::new(std::mem::take(&mut book)));
            let before = book_rc.borrow().acked.len();
            let sessions = 1 + rng.below(4) as usize;
            for _ in 0..sessions {
                let t = ex.spawn(session(
                    spool.clone(),
                    book_rc.clone(),
                    Rng(rng.next()),
                    1 + rng.below(if mode == Mode::Recovering { 12 } else { 6 }) as usize,
                    // The clock moves on between boots (queue ids embed it).
                    1_700_000_000 + round,
                    mode == Mode::Recovering,
                ));
                t.detach();
            }
            smol::block_on(ex.run(async {
                while !ex.is_empty() {
                    futures_lite::future::yield_now().await;
                }
            }));
            drop(ex);
            book = Rc::try_unwrap(book_rc)
                .ok()
                .expect("sessions done")
                .into_inner();
            acked_total += book.acked.len().saturating_sub(before);
            after_failure += std::mem::take(&mut book.acked_after_failure);
            drop(spool);
            thread.join();
        }
        // Learn how many operations a round takes, so cuts spread over it.
        let ops = disk.ops();
        let failed = disk.lock().failed > 0;
        if failed {
            failures += 1;
        }
        if disk.lock().dead {
            cuts_mid_io += 1;
        } else if !failed {
            // Aim a little past a typical round: most cuts land inside it.
            max_ops = (max_ops * 3 + ops + ops / 8) / 4;
        }
        disk.cut();
        images = disk.after_cut(mode, &mut rng);
        // Checked with the next round's journal setting, as a restart with
        // a changed configuration would open it.
        let next = JOURNALS[(round as usize + 1) % JOURNALS.len()];
        let present = check(&dir, images.clone(), next, &mut book, &ctx);
        // The check's open ran recovery on its own copy; carry on from the
        // cut image itself, so the next round's open recovers it again.
        // Keep the spool small: forget the oldest when it grows.
        if present > 200 {
            images = Images::default();
            book = Book::default();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if mode == Mode::Recovering {
        assert!(
            failures > rounds / 4,
            "too few rounds had failed writes ({failures} of {rounds}): the test would prove little"
        );
        eprintln!(
            "powercut recovering: {failures} rounds with failed writes, {after_failure} messages acknowledged after a failure"
        );
        assert!(
            after_failure > 0,
            "no message was acknowledged after a failure: reopen-and-continue went untested"
        );
    }
    (rounds, acked_total, cuts_mid_io)
}

fn params() -> (u64, u64) {
    let rounds = std::env::var("POWERCUT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    (rounds, seed)
}

#[test]
fn power_cut_loses_no_acknowledged_message() {
    let (rounds, seed) = params();
    let (r, acked, mid) = run(Mode::Drop, rounds, seed);
    eprintln!(
        "powercut drop: {r} rounds survived, {acked} messages acknowledged, {mid} cuts during I/O, 0 lost"
    );
    assert!(
        mid > r / 4,
        "too few cuts landed during I/O ({mid} of {r}): the test would prove little"
    );
    assert!(acked > 0);
}

#[test]
fn power_cut_with_reordered_write_cache_loses_nothing() {
    let (rounds, seed) = params();
    let (r, acked, mid) = run(Mode::Subset, rounds, seed ^ 0xA5A5);
    eprintln!(
        "powercut subset: {r} rounds survived, {acked} messages acknowledged, {mid} cuts during I/O, 0 lost"
    );
    assert!(mid > r / 4, "too few cuts landed during I/O ({mid} of {r})");
    assert!(acked > 0);
}

#[test]
fn a_disk_that_fails_and_recovers_loses_nothing() {
    let (rounds, seed) = params();
    let (r, acked, mid) = run(Mode::Recovering, rounds, seed ^ 0x5A5A);
    eprintln!(
        "powercut recovering: {r} rounds survived, {acked} messages acknowledged, {mid} cuts during I/O, 0 lost"
    );
    assert!(acked > 0);
}
