//! Opening a spool: the directory and its modes, the database and its
//! tables, the commit journal and its replay, and the recovery scan that
//! rebuilds the schedule and the counters (see docs/spool-format.md).

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use redb::{Database, ReadableTable};
use smol::channel::{Sender, bounded};

use super::handle::Shared;
use super::schema::{
    ATTEMPTS, CALLAHEAD, CALLAHEAD_EXPIRY, CHUNKS, INCOMING, MESSAGES, META, SCHEDULE,
};
use super::writer::{record_journal_gen, spool_thread};
use super::*;

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
            make_files_private(dir, &path, &journal_path)?;
        }
        let cache_size = usize::try_from(opts.cache_size).unwrap_or(usize::MAX);
        let db = open_db(&path, cache_size, backend.as_ref())?;
        let journal = open_journal(&journal_path, opts.journal_size, backend.as_ref())?;
        if !existed && backend.is_none() {
            // The new files' directory entries must survive a power cut too.
            sync_dir(dir);
        }
        let on_disk = backend.is_none();
        let (journal, replayed) =
            replay_at_open(&db, journal, &journal_path, opts.journal_size, on_disk)?;
        // Replayed and recorded: from here on the journal's content is
        // history, and it can be resized, or retired.
        let journal = match journal {
            Some(j) => resize_journal(j, &journal_path, opts.journal_size, on_disk)?,
            None => None,
        };
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
}

/// Spools made by older versions (or another umask) were 0755/0644.
/// The directory may be a link to the real one (followed); its files are
/// never followed (make_private skips links).
fn make_files_private(dir: &Path, path: &Path, journal_path: &Path) -> Result<(), SpoolError> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (p, mode) in [
        (real.as_path(), 0o700),
        (path, 0o600),
        (journal_path, 0o600),
    ] {
        if p.exists() {
            make_private(p, mode).map_err(SpoolError::Storage)?;
        }
    }
    Ok(())
}

/// Replays the journal found at start-up, if any; returns it (or its
/// replacement) and the number of messages restored. `on_disk`: the journal
/// is the file `journal_path` (not a test backend).
fn replay_at_open(
    db: &Database,
    journal: Option<journal::Journal>,
    journal_path: &Path,
    size: u64,
    on_disk: bool,
) -> Result<(Option<journal::Journal>, u64), SpoolError> {
    let Some(mut j) = journal else {
        return Ok((None, 0));
    };
    let e = match replay_journal(db, &mut j)? {
        Ok(n) => return Ok((Some(j), n)),
        Err(e) => e,
    };
    // A journal that cannot be read (EIO) must not stop every start
    // (procd would restart into the same error forever): its bytes are
    // kept aside for recovery, a new one is used.
    drop(j);
    let aside = journal_path.with_file_name(format!("{JOURNAL_FILE}.unreadable"));
    let kept = on_disk && std::fs::rename(journal_path, &aside).is_ok();
    log::error!(
        "event=journal_unreadable path={} error=\"{e}\" kept_as={}",
        journal_path.display(),
        if kept {
            aside.display().to_string()
        } else {
            "none".into()
        }
    );
    let fresh = if kept {
        open_journal(journal_path, size, None)?
    } else {
        None
    };
    Ok((fresh, 0))
}

/// Brings the journal to the configured size, or retires it (size 0, or
/// no room for it).
fn resize_journal(
    mut j: journal::Journal,
    journal_path: &Path,
    size: u64,
    on_disk: bool,
) -> Result<Option<journal::Journal>, SpoolError> {
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
        return Ok(Some(j));
    }
    if on_disk {
        drop(j);
        let _ = std::fs::remove_file(journal_path);
    } else {
        j.retire()
            .map_err(|e| SpoolError::Storage(format!("cannot retire the journal: {e}")))?;
    }
    Ok(None)
}

/// A database file that was never initialised: a power cut while the spool
/// was being created for the first time left it without redb's magic
/// number, and redb would refuse it for ever ("not a
/// redb database") — a daemon that cannot start. Nothing can have been
/// committed to such a file (a commit writes the header and syncs), so it
/// is emptied and created afresh; the journal, if any, still replays.
fn reset_if_never_written<B: redb::StorageBackend>(b: B, path: &Path) -> Result<B, SpoolError> {
    let io =
        |e: std::io::Error| SpoolError::Storage(format!("cannot read {}: {e}", path.display()));
    let len = b.len().map_err(io)?;
    if len == 0 {
        return Ok(b);
    }
    // redb writes its magic number (the first 9 bytes) last, once the rest
    // of a new file's header is synced: no magic, never initialised.
    let mut magic = [0u8; 9];
    let n = magic.len().min(usize::try_from(len).unwrap_or(magic.len()));
    b.read(0, &mut magic[..n]).map_err(io)?;
    if magic[..n].iter().all(|&x| x == 0) {
        log::warn!(
            "event=spool_reset path={} reason=\"it was never initialised (a power cut while it was first created): created afresh\"",
            path.display()
        );
        b.set_len(0).map_err(io)?;
        b.sync_data().map_err(io)?;
    }
    Ok(b)
}

pub(super) fn open_db(
    path: &Path,
    cache_size: usize,
    backend: Option<&BackendFactory>,
) -> Result<Database, SpoolError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_size);
    let db = match backend {
        None => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| SpoolError::Storage(format!("cannot open {}: {e}", path.display())))?;
            let file = redb::backends::FileBackend::new(file)
                .map_err(|e| SpoolError::Storage(format!("cannot open {}: {e}", path.display())))?;
            builder.create_with_backend(reset_if_never_written(file, path)?)
        }
        Some(make) => {
            let b = make(Store::Database)
                .map_err(|e| SpoolError::Storage(format!("cannot open storage: {e}")))?;
            let b = reset_if_never_written(BoxedBackend(b), path)?;
            builder.create_with_backend(b)
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
pub(super) fn replay_journal(
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

pub(super) fn free_disk(dir: &Path) -> Option<u64> {
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
