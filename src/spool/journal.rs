//! The commit journal: a message whose whole body rides with its commit
//! becomes durable with one short sequential write (a frame) instead of a
//! durable redb commit of scattered pages; the database catches up within
//! 2 s. The frame layout, the generations and epochs, and replay are
//! described in docs/spool-format.md.

use std::io;

use redb::StorageBackend;

/// Frames start on this boundary and are padded to it: a frame write
/// never rewrites a page that holds an acknowledged frame.
pub const FRAME_ALIGN: u64 = 4096;
/// The smallest journal that is worth having: the bound `journal_size`
/// is checked against where the option is declared.
pub const MIN_JOURNAL: u64 = crate::config::MIN_JOURNAL;

/// "MXJ1", little-endian.
const MAGIC: u32 = 0x314A_584D;
/// magic u32, body length u32, epoch u64, generation u64, crc u32, zero u32.
const HEADER: usize = 32;
/// Per record: id u64, message length u32, chunk length u32.
const RECORD_HEADER: usize = 16;

/// One message as journaled: its encoded `Message` and its only chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub id: u64,
    pub message: &'a [u8],
    pub chunk: &'a [u8],
}

pub struct Journal {
    store: Box<dyn StorageBackend>,
    size: u64,
    epoch: u64,
    /// Where the next frame goes.
    pos: u64,
    next_gen: u64,
    /// The frame being built: header space, then records.
    frame: Vec<u8>,
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

impl Journal {
    /// Takes the journal's storage as it is (to be replayed first).
    pub fn open(store: Box<dyn StorageBackend>) -> io::Result<Journal> {
        let size = store.len()? / FRAME_ALIGN * FRAME_ALIGN;
        Ok(Journal {
            store,
            size,
            epoch: 0,
            pos: 0,
            next_gen: 1,
            frame: Vec::new(),
        })
    }

    /// Makes the storage exactly `size` bytes for use, writing zeros over
    /// any new space (not a sparse extension: the first frame written
    /// there must not have to allocate blocks before its fsync returns).
    pub fn prepare(&mut self, size: u64) -> io::Result<()> {
        let size = size / FRAME_ALIGN * FRAME_ALIGN;
        let len = self.store.len()?;
        if len != size {
            self.store.set_len(size)?;
            if len < size {
                let zeros = vec![0u8; 64 * 1024];
                let mut at = len;
                while at < size {
                    let n = (size - at).min(zeros.len() as u64) as usize;
                    self.store.write(at, &zeros[..n])?;
                    at += n as u64;
                }
            }
            self.store.sync_data()?;
            self.size = size;
        }
        Ok(())
    }

    /// Calls `f` for every record of every frame written for `epoch` after
    /// generation `after`, in order, and returns the last generation found
    /// (or `after`).
    ///
    /// The chain of consecutive generations normally ends at a frame that
    /// is not the next one (torn by the crash, or left from an earlier
    /// cycle): that is where the last acknowledged frame ended. But a
    /// frame damaged later (a bad sector, a bit flip) breaks the chain in
    /// the middle: the pages after it are scanned for intact frames of
    /// this epoch with higher generations (an earlier cycle's frames have
    /// generations already recorded, so none can pass), which are replayed,
    /// and the gap is logged as `event=journal_damaged`.
    pub fn replay<E>(
        &self,
        epoch: u64,
        after: u64,
        mut f: impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<Result<u64, E>, io::Error> {
        let mut pos = 0u64;
        let mut expect = after.wrapping_add(1);
        let mut body = Vec::new();
        while pos + HEADER as u64 <= self.size {
            let (at, frame) = match self.frame_at(pos, epoch, expect, &mut body)? {
                Some(fr) => (pos, fr),
                None => match self.scan(pos + FRAME_ALIGN, epoch, expect, &mut body)? {
                    Some((at, fr)) => {
                        log::error!(
                            "event=journal_damaged offset={pos} lost_generations={}..{} \
                             action=\"replaying the intact frames after the damage\"",
                            expect,
                            fr.0.wrapping_sub(1)
                        );
                        (at, fr)
                    }
                    None => break,
                },
            };
            let (gen_, len) = frame;
            let Some(records) = parse_records(&body) else {
                // The CRC matched: this is not a torn write but a frame
                // this code did not write. Replaying a guess is worse.
                log::error!("event=journal_damaged generation={gen_} offset={at}");
                break;
            };
            for r in records {
                if let Err(e) = f(r) {
                    return Ok(Err(e));
                }
            }
            expect = gen_.wrapping_add(1);
            pos = align_up(at + HEADER as u64 + len as u64);
        }
        Ok(Ok(expect.wrapping_sub(1)))
    }

    /// The intact frame of `epoch` at `pos` with generation `min_gen` or
    /// higher, its body read into `body`: (generation, body length).
    fn frame_at(
        &self,
        pos: u64,
        epoch: u64,
        min_gen: u64,
        body: &mut Vec<u8>,
    ) -> io::Result<Option<(u64, u32)>> {
        let mut head = [0u8; HEADER];
        self.store.read(pos, &mut head)?;
        let Some((len, gen_, crc)) = parse_header(&head, epoch) else {
            return Ok(None);
        };
        if gen_ < min_gen || pos + HEADER as u64 + len as u64 > self.size {
            return Ok(None);
        }
        body.resize(len as usize, 0);
        self.store.read(pos + HEADER as u64, body)?;
        Ok((frame_crc(&head, body) == crc).then_some((gen_, len)))
    }

    /// The first intact frame at or after `from` (page by page) with a
    /// generation of at least `min_gen`.
    fn scan(
        &self,
        mut from: u64,
        epoch: u64,
        min_gen: u64,
        body: &mut Vec<u8>,
    ) -> io::Result<Option<(u64, (u64, u32))>> {
        while from + HEADER as u64 <= self.size {
            if let Some(fr) = self.frame_at(from, epoch, min_gen, body)? {
                return Ok(Some((from, fr)));
            }
            from += FRAME_ALIGN;
        }
        Ok(None)
    }

    /// Begins a cycle at offset 0: frames are for `epoch`, the next one is
    /// generation `last + 1` (called after every durable redb commit that
    /// recorded `last`).
    pub fn restart(&mut self, epoch: u64, last: u64) {
        self.epoch = epoch;
        self.next_gen = last.wrapping_add(1);
        self.pos = 0;
        self.frame.clear();
    }

    /// Empties the storage of a journal that is no longer used.
    pub fn retire(self) -> io::Result<()> {
        self.store.set_len(0)?;
        self.store.sync_data()
    }

    /// After a durable redb commit that recorded `last_gen()`: what the
    /// journal holds is in redb now, so the space can be reused.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.frame.clear();
    }

    /// The generation of the last frame written (or attempted).
    pub fn last_gen(&self) -> u64 {
        self.next_gen.wrapping_sub(1)
    }

    /// Adds a record to the frame being built; false (and nothing added)
    /// when the journal has no room for it before the next durable commit.
    pub fn add(&mut self, r: Record<'_>) -> bool {
        if self.frame.is_empty() {
            self.frame.resize(HEADER, 0);
        }
        let end = self.frame.len() + RECORD_HEADER + r.message.len() + r.chunk.len();
        if self.pos + align_up(end as u64) > self.size
            || u32::try_from(r.message.len()).is_err()
            || u32::try_from(r.chunk.len()).is_err()
            || u32::try_from(end - HEADER).is_err()
        {
            return false;
        }
        self.frame.extend_from_slice(&r.id.to_le_bytes());
        self.frame
            .extend_from_slice(&(r.message.len() as u32).to_le_bytes());
        self.frame
            .extend_from_slice(&(r.chunk.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(r.message);
        self.frame.extend_from_slice(r.chunk);
        true
    }

    /// Whether records wait to be written.
    pub fn pending(&self) -> bool {
        self.frame.len() > HEADER
    }

    /// Drops the frame being built (its transaction became durable).
    pub fn discard(&mut self) {
        self.frame.clear();
    }

    /// Writes the frame and waits for it to be on stable storage. The
    /// generation is used up even on failure, so a partly written frame
    /// can never be taken for a later one.
    pub fn write(&mut self) -> io::Result<()> {
        let body_len = self.frame.len() - HEADER;
        let gen_ = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        let padded = align_up(self.frame.len() as u64) as usize;
        self.frame.resize(padded, 0);
        let mut head = [0u8; HEADER];
        head[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        head[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        head[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        head[16..24].copy_from_slice(&gen_.to_le_bytes());
        let crc = frame_crc(&head, &self.frame[HEADER..HEADER + body_len]);
        head[24..28].copy_from_slice(&crc.to_le_bytes());
        self.frame[..HEADER].copy_from_slice(&head);
        let r = self
            .store
            .write(self.pos, &self.frame)
            .and_then(|()| self.store.sync_data());
        if r.is_ok() {
            self.pos += padded as u64;
        }
        self.frame.clear();
        r
    }
}

/// (body length, generation, crc) of a frame header for `epoch`.
fn parse_header(h: &[u8; HEADER], epoch: u64) -> Option<(u32, u64, u32)> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(0) != MAGIC || u64_at(8) != epoch {
        return None;
    }
    Some((u32_at(4), u64_at(16), u32_at(24)))
}

/// CRC-32C over the header's length, epoch and generation and the body.
fn frame_crc(head: &[u8; HEADER], body: &[u8]) -> u32 {
    let c = crc32c_update(!0, &head[4..24]);
    !crc32c_update(c, body)
}

fn parse_records(mut b: &[u8]) -> Option<Vec<Record<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < RECORD_HEADER {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        let m = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        let c = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
        let rest = &b[RECORD_HEADER..];
        if rest.len() < m.checked_add(c)? {
            return None;
        }
        out.push(Record {
            id: u64::from_le_bytes(id),
            message: &rest[..m],
            chunk: &rest[m..m + c],
        });
        b = &rest[m + c..];
    }
    Some(out)
}

/// CRC-32C (Castagnoli), reflected, table-driven: the frames are a few
/// KiB, and this must run on MIPS cores without CRC instructions.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc32c_update(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Memory storage whose bytes the test can tamper with.
    #[derive(Debug, Clone, Default)]
    struct Mem(Arc<Mutex<Vec<u8>>>);
    impl StorageBackend for Mem {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let v = self.0.lock().unwrap();
            let s = offset as usize;
            out.copy_from_slice(
                v.get(s..s + out.len())
                    .ok_or(io::ErrorKind::UnexpectedEof)?,
            );
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut v = self.0.lock().unwrap();
            let s = offset as usize;
            v[s..s + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn ids(j: &Journal, epoch: u64, after: u64) -> (Vec<u64>, u64) {
        let mut got = vec![];
        let last = j
            .replay(epoch, after, |r| {
                assert_eq!(r.message, format!("m{}", r.id).as_bytes());
                assert_eq!(r.chunk.len(), r.id as usize * 100);
                got.push(r.id);
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        (got, last)
    }

    fn add(j: &mut Journal, id: u64) -> bool {
        let m = format!("m{id}");
        let c = vec![id as u8; id as usize * 100];
        j.add(Record {
            id,
            message: m.as_bytes(),
            chunk: &c,
        })
    }

    #[test]
    fn frames_replay_in_order_and_only_after_the_recorded_generation() {
        let mem = Mem::default();
        let mut j = Journal::open(Box::new(mem.clone())).unwrap();
        j.prepare(MIN_JOURNAL).unwrap();
        assert_eq!(mem.len().unwrap(), MIN_JOURNAL);
        j.restart(7, 10);
        assert!(add(&mut j, 1) && add(&mut j, 2));
        j.write().unwrap();
        assert!(add(&mut j, 3));
        j.write().unwrap();
        assert_eq!(j.last_gen(), 12);
        assert_eq!(ids(&j, 7, 10), (vec![1, 2, 3], 12));
        // Generations only grow, so a frame after the recorded one is
        // replayed wherever it lies (here behind frame 11, recorded).
        assert_eq!(ids(&j, 7, 11), (vec![3], 12));
        // Another database's epoch, or everything recorded: nothing.
        assert_eq!(ids(&j, 8, 10), (vec![], 10));
        assert_eq!(ids(&j, 7, 12), (vec![], 12));
    }

    /// A frame damaged in the middle of the journal (a bad
    /// sector, a bit flip) no longer hides the intact frames after it.
    #[test]
    fn frames_after_a_damaged_one_are_still_replayed() {
        let mem = Mem::default();
        let mut j = Journal::open(Box::new(mem.clone())).unwrap();
        j.prepare(MIN_JOURNAL).unwrap();
        j.restart(1, 0);
        for id in 1..=3 {
            assert!(add(&mut j, id));
            j.write().unwrap();
        }
        // Every frame is page-aligned and whole pages long.
        assert_eq!(j.pos, 3 * FRAME_ALIGN);
        // Damage the second frame's body: the third is replayed all the
        // same (its message was acknowledged).
        mem.0.lock().unwrap()[FRAME_ALIGN as usize + HEADER + 20] ^= 1;
        assert_eq!(ids(&j, 1, 0), (vec![1, 3], 3));
        // The last frame torn (a crash while writing it): nothing after.
        mem.0.lock().unwrap()[2 * FRAME_ALIGN as usize + HEADER + 20] ^= 1;
        assert_eq!(ids(&j, 1, 0), (vec![1], 1));
        mem.0.lock().unwrap()[2 * FRAME_ALIGN as usize + HEADER + 20] ^= 1;
        // A new cycle overwrites frame 1 only; frames 2 and 3 are stale
        // (their generations are not the next ones) and stay unreplayed.
        mem.0.lock().unwrap()[FRAME_ALIGN as usize + HEADER + 20] ^= 1;
        j.restart(1, 3);
        assert!(add(&mut j, 4));
        j.write().unwrap();
        assert_eq!(ids(&j, 1, 3), (vec![4], 4));
    }

    #[test]
    fn a_full_journal_refuses_the_record_and_keeps_the_frame() {
        let mut j = Journal::open(Box::new(Mem::default())).unwrap();
        j.prepare(MIN_JOURNAL).unwrap();
        j.restart(1, 0);
        let big = vec![0u8; MIN_JOURNAL as usize];
        assert!(!j.add(Record {
            id: 1,
            message: b"m",
            chunk: &big
        }));
        assert!(!j.pending());
        let mut n = 0;
        while add(&mut j, 20) {
            n += 1;
        }
        // 64 KiB less the header: 32 records of 2019 bytes.
        assert_eq!(n, 32);
        j.write().unwrap();
        assert!(!add(&mut j, 1));
        j.reset();
        assert!(add(&mut j, 1));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
    }
}
