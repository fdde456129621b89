//! The spool's on-disk schema: redb tables and the byte encoding of their
//! records (every integer little-endian, whatever the host). The tables
//! and record layouts are described in docs/spool-format.md: a change here
//! is a change there, and of `SCHEMA_VERSION`.

use redb::TableDefinition;

use super::Destination;

pub const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
pub const CHUNKS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("chunks");
pub const SCHEDULE: TableDefinition<(u64, u64), ()> = TableDefinition::new("schedule");
pub const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
pub const INCOMING: TableDefinition<u64, u64> = TableDefinition::new("incoming");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const CALLAHEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("callahead");
pub const CALLAHEAD_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("callahead_expiry");

/// `meta["schema"]`: a spool with another version is refused at open
/// (the upgrade policy: docs/spool-format.md).
pub const SCHEMA_VERSION: u64 = 1;
/// Attempt records kept per message (older ones are dropped): enough to
/// see a pattern in `queue show`, bounded for a 10-day queue.
pub const MAX_ATTEMPT_RECORDS: u32 = 24;

/// Record format version byte, first in every encoded record.
const RECORD_V1: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Still to be delivered.
    Pending,
    /// Accepted by the destination.
    Delivered,
    /// Refused for good or expired; a DSN was made (unless the sender was `<>`).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub destination: Destination,
    pub state: RcptState,
    /// The last reply or error for this recipient (one line), or empty.
    pub last_reply: String,
    /// `host[ip]:port` that gave `last_reply`, or empty.
    pub remote: String,
    /// Unix seconds of the last attempt, 0 if none.
    pub last_attempt: u64,
}

/// Message flags.
pub const FLAG_8BITMIME: u8 = 1;
pub const FLAG_SMTPUTF8: u8 = 2;
/// A DSN we made: never answered with another DSN.
pub const FLAG_DSN: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Reverse path without brackets; empty for `<>`.
    pub sender: String,
    /// Unix seconds of receipt: the retry spans count from here.
    pub arrival: u64,
    /// Where the retry intervals count from: `arrival`, or the moment of
    /// the last flush or host status change (back-off reset).
    pub backoff_base: u64,
    /// Body bytes (our Received header included).
    pub size: u64,
    /// Number of body chunks.
    pub chunks: u32,
    pub flags: u8,
    /// Unix seconds of the next attempt (mirrors the `schedule` key).
    pub next_attempt: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last error of any recipient (one line), or empty.
    pub last_error: String,
    /// `helo [ip]` of the client that sent it (for `queue show` and logs).
    pub client: String,
    pub recipients: Vec<Recipient>,
}

impl Message {
    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RcptState::Pending)
    }
    pub fn has_pending(&self) -> bool {
        self.pending().next().is_some()
    }
}

/// One delivery attempt to one destination, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub time: u64,
    pub destination: String,
    /// `host[ip]:port` or empty when nothing answered.
    pub relay: String,
    /// Outcome as one line (`250 2.0.0 ok`, `connect: refused`...).
    pub result: String,
}

/// A record that does not decode: the spool is damaged or from a newer
/// mxspool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "damaged spool record: {}", self.0)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        // Strings in records are bounded by the protocol limits (paths,
        // reply lines); u32 is plenty and fixed-width on every target.
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        let n = s.len().min(u32::MAX as usize);
        self.0.extend_from_slice(&s.as_bytes()[..n]);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("invalid UTF-8"))
    }
}

fn state_byte(s: RcptState) -> u8 {
    match s {
        RcptState::Pending => 0,
        RcptState::Delivered => 1,
        RcptState::Failed => 2,
    }
}

pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128 + m.recipients.len() * 96));
    w.u8(RECORD_V1);
    w.str(&m.sender);
    w.u64(m.arrival);
    w.u64(m.backoff_base);
    w.u64(m.size);
    w.u32(m.chunks);
    w.u8(m.flags);
    w.u64(m.next_attempt);
    w.u32(m.attempts);
    w.str(&m.last_error);
    w.str(&m.client);
    w.u32(u32::try_from(m.recipients.len()).unwrap_or(u32::MAX));
    for r in &m.recipients {
        w.str(&r.address);
        w.str(&r.destination.encode());
        w.u8(state_byte(r.state));
        w.str(&r.last_reply);
        w.str(&r.remote);
        w.u64(r.last_attempt);
    }
    w.0
}

/// Most recipients a record may claim: guards the allocation against a
/// damaged length field.
const MAX_DECODED_RECIPIENTS: u32 = 100_000;

pub fn decode_message(b: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader(b);
    if r.u8()? != RECORD_V1 {
        return Err(DecodeError("unknown message record version"));
    }
    let sender = r.str()?;
    let arrival = r.u64()?;
    let backoff_base = r.u64()?;
    let size = r.u64()?;
    let chunks = r.u32()?;
    let flags = r.u8()?;
    let next_attempt = r.u64()?;
    let attempts = r.u32()?;
    let last_error = r.str()?;
    let client = r.str()?;
    let n = r.u32()?;
    if n > MAX_DECODED_RECIPIENTS {
        return Err(DecodeError("recipient count"));
    }
    let mut recipients = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let address = r.str()?;
        let destination =
            Destination::decode(&r.str()?).ok_or(DecodeError("unknown destination"))?;
        let state = match r.u8()? {
            0 => RcptState::Pending,
            1 => RcptState::Delivered,
            2 => RcptState::Failed,
            _ => return Err(DecodeError("recipient state")),
        };
        recipients.push(Recipient {
            address,
            destination,
            state,
            last_reply: r.str()?,
            remote: r.str()?,
            last_attempt: r.u64()?,
        });
    }
    Ok(Message {
        sender,
        arrival,
        backoff_base,
        size,
        chunks,
        flags,
        next_attempt,
        attempts,
        last_error,
        client,
        recipients,
    })
}

pub fn encode_attempt(a: &Attempt) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.u8(RECORD_V1);
    w.u64(a.time);
    w.str(&a.destination);
    w.str(&a.relay);
    w.str(&a.result);
    w.0
}

pub fn decode_attempt(b: &[u8]) -> Result<Attempt, DecodeError> {
    let mut r = Reader(b);
    if r.u8()? != RECORD_V1 {
        return Err(DecodeError("unknown attempt record version"));
    }
    Ok(Attempt {
        time: r.u64()?,
        destination: r.str()?,
        relay: r.str()?,
        result: r.str()?,
    })
}

/// A cached call-ahead answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The primary accepted the address (2xx) or refused it (5xx).
    pub positive: bool,
    /// Until then the answer is used without asking again.
    pub refresh: u64,
    /// After this the answer is forgotten.
    pub expire: u64,
    /// The primary's reply as one line.
    pub reply: String,
}

pub fn encode_cache(e: &CacheEntry) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(32 + e.reply.len()));
    w.u8(RECORD_V1);
    w.u8(u8::from(e.positive));
    w.u64(e.refresh);
    w.u64(e.expire);
    w.str(&e.reply);
    w.0
}

pub fn decode_cache(b: &[u8]) -> Result<CacheEntry, DecodeError> {
    let mut r = Reader(b);
    if r.u8()? != RECORD_V1 {
        return Err(DecodeError("unknown cache record version"));
    }
    Ok(CacheEntry {
        positive: r.u8()? != 0,
        refresh: r.u64()?,
        expire: r.u64()?,
        reply: r.str()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            sender: "a@b.test".into(),
            arrival: 1_700_000_000,
            backoff_base: 1_700_000_000,
            size: 1234,
            chunks: 1,
            flags: FLAG_8BITMIME,
            next_attempt: 1_700_000_900,
            attempts: 2,
            last_error: "451 4.3.0 try later".into(),
            client: "client.test [127.0.0.1]".into(),
            recipients: vec![Recipient {
                address: "u@example.com".into(),
                destination: Destination::Relay {
                    host: "127.0.0.1".into(),
                    port: 2526,
                },
                state: RcptState::Pending,
                last_reply: String::new(),
                remote: String::new(),
                last_attempt: 0,
            }],
        }
    }

    #[test]
    fn message_round_trips() {
        let m = sample();
        assert_eq!(decode_message(&encode_message(&m)), Ok(m));
    }

    #[test]
    fn encoding_is_fixed_little_endian() {
        // The same bytes on every target: a spool moved between a MIPS
        // (big-endian) router and an ARM one stays readable.
        let enc = encode_message(&sample());
        assert_eq!(enc[0], 1);
        assert_eq!(&enc[1..5], &8u32.to_le_bytes());
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let enc = encode_message(&sample());
        for n in 0..enc.len() {
            assert!(decode_message(&enc[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn attempt_round_trips() {
        let a = Attempt {
            time: 5,
            destination: "127.0.0.1:25".into(),
            relay: "h[127.0.0.1]:25".into(),
            result: "250 ok".into(),
        };
        assert_eq!(decode_attempt(&encode_attempt(&a)), Ok(a));
    }
}
