//! Sans-IO DNS wire format: query building, response parsing, answer
//! validation and interpretation. Pure functions on bytes.
//!
//! Hand-written rather than simple-dns: simple-dns 0.13 `Packet::parse`
//! reserves `Vec::with_capacity(count)` from the untrusted header counts, so
//! one spoofed 12-byte datagram makes it allocate ~9 MB (65535 records x
//! 144 bytes) on a router that may have 64 MB. It also keeps every record and
//! borrows the buffer. Here nothing is sized by a count, every loop is
//! bounded by the packet length, a pointer-hop limit or [`MAX_RECORDS`],
//! and only the types the resolver needs are kept, as owned lower-case data.
//! (simple-dns is still used by the tests, as an independent encoder.)

use std::net::{Ipv4Addr, Ipv6Addr};

use super::DnsError;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_MX: u16 = 15;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// EDNS0 UDP payload size: the DNS flag day 2020 value, safe from
/// IP fragmentation on any sane path.
pub const EDNS_PAYLOAD: u16 = 1232;
/// Longest CNAME chain followed, across the answer section and re-queries.
pub const MAX_CNAME_CHAIN: usize = 8;
/// Answer records kept per response; the rest are ignored. A real MX or A
/// set is far smaller; this bounds memory against a hostile server.
pub const MAX_RECORDS: usize = 64;
/// Longest TXT record kept (bytes, all character-strings joined).
const MAX_TXT: usize = 4096;
/// Compression pointers followed per name. 255 octets of name can need at
/// most 127 labels, so more hops than that can only be a loop.
const MAX_POINTER_HOPS: usize = 128;
/// RFC 1035 limit on a name in wire form.
const MAX_NAME_WIRE: usize = 255;

/// The data of a record we understand. Names are lower-case, without the
/// trailing dot; the root is "".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Mx(u16, String),
    Txt(String),
    Ptr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: RData,
}

/// A parsed response: only what the resolver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub is_response: bool,
    pub opcode: u8,
    pub truncated: bool,
    pub rcode: u8,
    /// (name, type, class) of the first question, if any.
    pub question: Option<(String, u16, u16)>,
    /// Class-IN answer records of the types in [`RData`], at most [`MAX_RECORDS`].
    pub answers: Vec<Record>,
    /// RFC 2308 negative-caching TTL: min(SOA TTL, SOA MINIMUM) of the first
    /// SOA in the authority section.
    pub negative_ttl: Option<u32>,
}

/// Lower-cases and checks a name given by a caller: trailing dot optional,
/// labels 1..=63 octets of printable ASCII, whole name at most 253 chars.
pub fn normalize_name(name: &str) -> Result<String, DnsError> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let bad = |why: &str| DnsError::InvalidName(format!("{name:?}: {why}"));
    if n.is_empty() {
        return Err(bad("empty name"));
    }
    if n.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in n.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 characters"));
        }
        // No escapes are parsed, so backslash, space and controls are refused
        // rather than sent as something the caller did not mean.
        if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
            return Err(bad(
                "not a plain ASCII host name (IDNs must be in xn-- form)",
            ));
        }
    }
    Ok(n.to_ascii_lowercase())
}

/// A recursive query (RD set) for `name` (already normalized), with an
/// EDNS0 OPT record advertising [`EDNS_PAYLOAD`] if `edns`.
pub fn build_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 2 + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]); // QD=1 AN=0 NS=0 AR=0/1
    for label in name.split('.').filter(|l| !l.is_empty()) {
        // normalize_name bounds labels at 63; min() keeps a bad caller from
        // writing a length byte that would read as a pointer.
        let l = &label.as_bytes()[..label.len().min(63)];
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    if !edns {
        return q;
    }
    // OPT: root owner, type 41, class = payload size, ttl 0, rdlen 0.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(what: &str) -> DnsError {
        DnsError::Protocol(format!("malformed answer: {what}"))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.msg.len())
            .ok_or_else(|| Self::err("truncated"))?;
        let s = &self.msg[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DnsError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name; lower-case, no trailing dot.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut out = String::new();
        let mut wire_len = 0usize;
        let mut hops = 0usize;
        let mut at = self.pos;
        // Where the reader continues: after the first pointer, or the end.
        let mut resume = None;
        loop {
            let len = *self.msg.get(at).ok_or_else(|| Self::err("name past end"))?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    self.pos = resume.unwrap_or(at + 1);
                    return Ok(out);
                }
                0x00 => {
                    let len = len as usize;
                    wire_len += len + 1;
                    if wire_len > MAX_NAME_WIRE {
                        return Err(Self::err("name too long"));
                    }
                    let label = self
                        .msg
                        .get(at + 1..at + 1 + len)
                        .ok_or_else(|| Self::err("label past end"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    push_label(&mut out, label);
                    at += 1 + len;
                }
                0xC0 => {
                    let lo = *self
                        .msg
                        .get(at + 1)
                        .ok_or_else(|| Self::err("pointer past end"))?;
                    hops += 1;
                    if hops > MAX_POINTER_HOPS {
                        return Err(Self::err("compression pointer loop"));
                    }
                    if resume.is_none() {
                        resume = Some(at + 2);
                    }
                    at = (usize::from(len & 0x3F) << 8) | usize::from(lo);
                }
                _ => return Err(Self::err("unknown label type")),
            }
        }
    }
}

/// Appends a wire label in presentation form: lower-case ASCII, and `\DDD`
/// for anything that would be ambiguous or unprintable (never matches a
/// real host name, but stays unique and harmless in logs).
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
            out.push(b.to_ascii_lowercase() as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
}

/// Parses a response. Errors only on malformed packets; whether the packet
/// answers our query is [`matches`]' job.
pub fn parse_response(msg: &[u8]) -> Result<Response, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let qd = r.u16()?;
    let an = r.u16()?;
    let ns = r.u16()?;
    let _ar = r.u16()?; // additional section: nothing we need
    let mut question = None;
    for i in 0..qd {
        let name = r.name()?;
        let qtype = r.u16()?;
        let qclass = r.u16()?;
        if i == 0 {
            question = Some((name, qtype, qclass));
        }
    }
    let mut answers = Vec::new();
    let mut negative_ttl = None;
    // Each record costs at least 11 bytes, so these loops end with the packet.
    for section in [(an, true), (ns, false)] {
        for _ in 0..section.0 {
            let name = r.name()?;
            let rtype = r.u16()?;
            let class = r.u16()?;
            let ttl = r.u32()?;
            // RFC 2181 §8: a TTL with the top bit set is treated as zero.
            let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
            let rdlen = r.u16()? as usize;
            let rd_start = r.pos;
            let rdata = r.bytes(rdlen)?;
            let mut rd = Reader { msg, pos: rd_start };
            if class != CLASS_IN {
                continue;
            }
            if !section.1 {
                if rtype == TYPE_SOA && negative_ttl.is_none() {
                    rd.name()?; // MNAME
                    rd.name()?; // RNAME
                    rd.bytes(16)?; // SERIAL REFRESH RETRY EXPIRE
                    let minimum = rd.u32()?;
                    negative_ttl = Some(ttl.min(minimum));
                }
                continue;
            }
            if answers.len() >= MAX_RECORDS {
                continue;
            }
            let data = match rtype {
                TYPE_A => match <[u8; 4]>::try_from(rdata) {
                    Ok(b) => RData::A(Ipv4Addr::from(b)),
                    Err(_) => return Err(Reader::err("A record length")),
                },
                TYPE_AAAA => match <[u8; 16]>::try_from(rdata) {
                    Ok(b) => RData::Aaaa(Ipv6Addr::from(b)),
                    Err(_) => return Err(Reader::err("AAAA record length")),
                },
                TYPE_CNAME => RData::Cname(rd.name()?),
                TYPE_PTR => RData::Ptr(rd.name()?),
                TYPE_MX => {
                    let pref = rd.u16()?;
                    RData::Mx(pref, rd.name()?)
                }
                TYPE_TXT => {
                    let mut txt = Vec::new();
                    let mut s = Reader { msg: rdata, pos: 0 };
                    while s.pos < rdata.len() {
                        let n = s.u8()? as usize;
                        let part = s.bytes(n)?;
                        if txt.len() + part.len() <= MAX_TXT {
                            txt.extend_from_slice(part);
                        }
                    }
                    RData::Txt(String::from_utf8_lossy(&txt).into_owned())
                }
                _ => continue,
            };
            // A name in RDATA must not run past its RDLENGTH.
            if rd.pos > rd_start + rdlen && !matches!(data, RData::Txt(_)) {
                return Err(Reader::err("record data overruns its length"));
            }
            answers.push(Record {
                name,
                rtype,
                ttl,
                data,
            });
        }
    }
    Ok(Response {
        id,
        is_response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0F) as u8,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000F) as u8,
        question,
        answers,
        negative_ttl,
    })
}

/// Whether `resp` is the answer to our query: a response, same id, same
/// question (name case-insensitively; both sides are lower-cased already).
/// Anything else is ignored and the wait goes on (anti-spoofing).
pub fn matches(resp: &Response, id: u16, name: &str, qtype: u16) -> bool {
    resp.is_response
        && resp.opcode == 0
        && resp.id == id
        && matches!(&resp.question, Some((n, t, c)) if n == name && *t == qtype && *c == CLASS_IN)
}

/// What a matching response means for (name, qtype).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records of the wanted type, `ttl` the smallest along the chain;
    /// `canonical` set when `name` was an alias.
    Answer {
        records: Vec<RData>,
        canonical: Option<String>,
        ttl: u32,
    },
    /// The chain in the answer section ended at `target` without the wanted
    /// type: ask again for `target`. `hops` CNAMEs were followed.
    Alias {
        target: String,
        hops: usize,
        ttl: u32,
    },
    /// The name exists but has no record of this type.
    NoData {
        negative_ttl: Option<u32>,
    },
    NxDomain {
        negative_ttl: Option<u32>,
    },
    /// Server trouble: try the next server.
    ServFail,
    Refused,
    /// TC set: retry over TCP.
    Truncated,
}

/// Interprets a matching response. `budget` is how many more CNAMEs may be
/// followed before the chain counts as too long.
pub fn interpret(
    resp: &Response,
    name: &str,
    qtype: u16,
    budget: usize,
) -> Result<Outcome, DnsError> {
    if resp.truncated {
        return Ok(Outcome::Truncated);
    }
    match resp.rcode {
        RCODE_NOERROR | RCODE_NXDOMAIN => {}
        RCODE_SERVFAIL => return Ok(Outcome::ServFail),
        RCODE_REFUSED => return Ok(Outcome::Refused),
        other => {
            return Err(DnsError::Protocol(format!(
                "the name server answered with error code {other}"
            )));
        }
    }
    let mut cur = name;
    let mut ttl = u32::MAX;
    let mut hops = 0usize;
    let mut seen: Vec<&str> = vec![name];
    loop {
        let mut records = Vec::new();
        for rec in resp
            .answers
            .iter()
            .filter(|r| r.rtype == qtype && r.name == cur)
        {
            ttl = ttl.min(rec.ttl);
            if !records.contains(&rec.data) {
                records.push(rec.data.clone());
            }
        }
        if !records.is_empty() {
            let canonical = (hops > 0).then(|| cur.to_string());
            return Ok(Outcome::Answer {
                records,
                canonical,
                ttl,
            });
        }
        let cname = resp.answers.iter().find_map(|r| match &r.data {
            RData::Cname(t) if r.name == cur => Some((t.as_str(), r.ttl)),
            _ => None,
        });
        let Some((target, cttl)) = cname else { break };
        if seen.contains(&target) {
            return Err(DnsError::Protocol(format!("CNAME loop at {target}")));
        }
        hops += 1;
        if hops > budget {
            return Err(DnsError::Protocol(format!(
                "CNAME chain from {name} longer than {MAX_CNAME_CHAIN}"
            )));
        }
        ttl = ttl.min(cttl);
        seen.push(target);
        cur = target;
    }
    // RFC 6604: with a chain the RCODE describes its last name.
    if resp.rcode == RCODE_NXDOMAIN {
        return Ok(Outcome::NxDomain {
            negative_ttl: resp.negative_ttl,
        });
    }
    if hops > 0 {
        return Ok(Outcome::Alias {
            target: cur.to_string(),
            hops,
            ttl,
        });
    }
    Ok(Outcome::NoData {
        negative_ttl: resp.negative_ttl,
    })
}

/// The name to ask PTR for: `4.3.2.1.in-addr.arpa`, or the nibble form
/// under `ip6.arpa`.
pub fn reverse_name(ip: std::net::IpAddr) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(72);
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(s, "{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
        }
        std::net::IpAddr::V6(v6) => {
            for b in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0x0F, b >> 4);
            }
            s.push_str("ip6.arpa");
        }
    }
    s
}
