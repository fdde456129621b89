//! The thin async driver: one question to one server over UDP or TCP, with
//! a deadline. Everything it receives goes through `wire`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_net::{TcpStream, UdpSocket};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};

use super::DnsError;
use super::wire::{self, Response};

/// Largest UDP response read. We advertise 1232; a server that ignores
/// EDNS and sends more gets cut here and fails to parse (then next server).
const UDP_BUF: usize = 4096;

/// Small non-cryptographic PRNG (splitmix64) for query ids. Seeded once from
/// /dev/urandom, or time, pid and address entropy if that is unavailable.
/// Spoofing resistance comes from id + random source port + exact question
/// match, as in every stub resolver.
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new() -> Rng {
        let mut seed = [0u8; 8];
        let from_urandom = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .is_ok();
        let mut s = u64::from_le_bytes(seed);
        if !from_urandom {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let stack = &seed as *const _ as u64; // ASLR adds a few bits
            s = t ^ (u64::from(std::process::id()) << 32) ^ stack;
        }
        Rng(Cell::new(s))
    }

    pub fn next_u64(&self) -> u64 {
        let s = self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.0.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u16(&self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

fn io(server: SocketAddr, e: std::io::Error) -> DnsError {
    DnsError::Io(format!("name server {server}: {e}"))
}

/// Runs `f` until `deadline`; past it, `DnsError::Timeout`.
async fn with_deadline<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, DnsError>>,
) -> Result<T, DnsError> {
    future::or(f, async {
        smol::Timer::at(deadline).await;
        Err(DnsError::Timeout)
    })
    .await
}

/// One UDP exchange. Datagrams that are malformed or answer a different
/// question or id are dropped and the wait continues until `timeout`, so a
/// spoofer has to guess id and port within that window.
pub async fn udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Response, DnsError> {
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    // A fresh socket per query: port 0 makes the kernel pick a random
    // ephemeral port. connect() makes the kernel drop datagrams from any
    // other address/port, and turns ICMP unreachable into an error so we
    // move on to the next server at once instead of waiting the timeout.
    let sock = UdpSocket::bind(local).await.map_err(|e| io(server, e))?;
    sock.connect(server).await.map_err(|e| io(server, e))?;
    sock.send(query).await.map_err(|e| io(server, e))?;
    let mut buf = vec![0u8; UDP_BUF];
    with_deadline(deadline, async {
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| io(server, e))?;
            match wire::parse_response(&buf[..n]) {
                Ok(resp) if wire::matches(&resp, id, name, qtype) => return Ok(resp),
                Ok(_) => log::debug!("dns: ignored non-matching answer from {server}"),
                Err(e) => log::debug!("dns: ignored answer from {server}: {e}"),
            }
        }
    })
    .await
}

/// One TCP exchange (after a truncated UDP answer): 2-byte length prefix
/// each way, RFC 1035 §4.2.2.
pub async fn tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Response, DnsError> {
    let deadline = Instant::now() + timeout;
    with_deadline(deadline, async {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| io(server, e))?;
        let len =
            u16::try_from(query.len()).map_err(|_| DnsError::Protocol("query too long".into()))?;
        let mut msg = Vec::with_capacity(2 + query.len());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(query);
        s.write_all(&msg).await.map_err(|e| io(server, e))?;
        // The stream is ours alone, so one answer is read; it must match.
        let mut lb = [0u8; 2];
        s.read_exact(&mut lb).await.map_err(|e| io(server, e))?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
        s.read_exact(&mut buf).await.map_err(|e| io(server, e))?;
        let resp = wire::parse_response(&buf)?;
        if !wire::matches(&resp, id, name, qtype) {
            return Err(DnsError::Protocol(format!(
                "name server {server} answered a different question over TCP"
            )));
        }
        Ok(resp)
    })
    .await
}
