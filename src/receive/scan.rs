//! Content scanning at the end of DATA, before the message is committed:
//! ClamAV's clamd (INSTREAM) and SpamAssassin's spamd (SPAMC/1.5), both
//! over TCP. The body is streamed from the spool chunk by chunk, never
//! held whole in memory. An infected message or one at or above
//! `spam_reject_score` is refused with 554 and nothing is queued (so no
//! bounce is ever made); a message at or above `spam_tag_score` gets the
//! X-Spam headers inserted below our Received header. A scanner that is
//! down or too slow is skipped (logged), or answers 451 with
//! `scan_required '1'`.
//!
//! The two protocols are pure encoders/parsers with unit tests; the
//! socket code below them is thin.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, HostPort, Score};
use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::spool::{self, QueueId};

/// The most we read of spamd's answer (the Spam header and the symbol
/// names); more is a protocol error.
pub const MAX_SPAMD_REPLY: usize = 64 * 1024;
/// The most we read of clamd's answer (`stream: NAME FOUND`).
pub const MAX_CLAMD_REPLY: usize = 4 * 1024;
/// The longest virus name or symbol list quoted in a reply or log line.
pub const MAX_NAME: usize = 100;
/// The INSTREAM command, `z` form: the reply is NUL-terminated.
pub const CLAMD_INSTREAM: &[u8] = b"zINSTREAM\0";

// ---- SPAMC (sans-IO) ----

/// The request head; the message (exactly `len` bytes) follows it. SYMBOLS
/// rather than CHECK: the same verdict plus the rule names for the log.
pub fn spamc_request(len: u64) -> Vec<u8> {
    format!("SYMBOLS SPAMC/1.5\r\nContent-length: {len}\r\n\r\n").into_bytes()
}

/// spamd's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamVerdict {
    pub score: Score,
    /// spamd's own threshold (for the log; ours decide).
    pub threshold: Score,
    /// The rule names that hit, comma-separated, bounded.
    pub symbols: String,
}

/// A score as spamd prints it (`15.2`, `-0.1`), rounded to hundredths and
/// clamped; anything that is not a finite number is an error.
fn spamd_score(s: &str) -> Result<Score, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad score '{}'", printable(s, MAX_NAME)))?;
    if !v.is_finite() {
        return Err("bad score".into());
    }
    let limit = f64::from(crate::config::MAX_SCORE) * 100.0;
    Ok(Score((v * 100.0).round().clamp(-limit, limit) as i32))
}

/// Parses spamd's whole answer: `SPAMD/1.1 0 EX_OK`, headers (among them
/// `Spam: True ; 15.2 / 5.0`), a blank line, the symbols.
pub fn parse_spamd(reply: &[u8]) -> Result<SpamVerdict, String> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h, b),
        None => (text.as_ref(), ""),
    };
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split_whitespace();
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line '{}'", printable(status, MAX_NAME)));
    };
    if !proto.starts_with("SPAMD/") {
        return Err(format!(
            "not a spamd answer: '{}'",
            printable(status, MAX_NAME)
        ));
    }
    if code != "0" {
        return Err(format!("spamd error: '{}'", printable(status, MAX_NAME)));
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("spam") {
            continue;
        }
        // `True ; 15.2 / 5.0`
        let (_, scores) = value
            .split_once(';')
            .ok_or_else(|| format!("bad Spam header '{}'", printable(value, MAX_NAME)))?;
        let (score, threshold) = scores
            .split_once('/')
            .ok_or_else(|| format!("bad Spam header '{}'", printable(value, MAX_NAME)))?;
        return Ok(SpamVerdict {
            score: spamd_score(score)?,
            threshold: spamd_score(threshold)?,
            symbols: printable(body.trim(), MAX_NAME),
        });
    }
    Err("spamd answered without a Spam header".into())
}

// ---- clamd INSTREAM (sans-IO) ----

/// One INSTREAM chunk's 4-byte big-endian length; a zero length ends the
/// stream. Chunks are spool chunks, far below u32::MAX.
pub fn clamd_chunk_len(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamVerdict {
    Clean,
    Infected(String),
}

/// Parses `stream: OK` / `stream: NAME FOUND` (NUL-terminated with `z`);
/// anything else (`... ERROR`, size limit exceeded) is an error.
pub fn parse_clamd(reply: &[u8]) -> Result<ClamVerdict, String> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\r', '\n', ' ']);
    let rest = text.strip_prefix("stream:").unwrap_or(text).trim();
    if rest == "OK" {
        return Ok(ClamVerdict::Clean);
    }
    if let Some(name) = rest.strip_suffix(" FOUND") {
        let name = printable(name.trim(), MAX_NAME);
        return Ok(ClamVerdict::Infected(if name.is_empty() {
            "unknown".into()
        } else {
            name
        }));
    }
    Err(format!("clamd answered '{}'", printable(text, MAX_NAME)))
}

// ---- the result, as headers and replies (pure) ----

/// Printable ASCII only (other bytes as spaces, runs collapsed), at most
/// `max` characters: safe in a reply line, a header and a log line.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_graphic() && c != '"' {
            c
        } else {
            ' '
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() >= max {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// The X-Spam headers for `score` against our tag threshold.
pub fn spam_headers(score: Score, tag: Score) -> Vec<u8> {
    if score >= tag {
        format!(
            "X-Spam-Flag: YES\r\nX-Spam-Score: {score}\r\nX-Spam-Status: Yes, score={score} required={tag}\r\n"
        )
    } else {
        format!("X-Spam-Status: No, score={score} required={tag}\r\n")
    }
    .into_bytes()
}

/// `chunk0` with `extra` inserted after its first header field (our
/// Received header, folded over several lines); at the top if the chunk
/// does not start with a header field.
pub fn insert_after_first_header(chunk0: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut at = 0;
    if chunk0.first().is_some_and(|b| b.is_ascii_alphanumeric()) {
        let mut i = 0;
        while let Some(p) = memchr::memmem::find(&chunk0[i..], b"\r\n") {
            let end = i + p + 2;
            // A continuation line starts with white space (RFC 5322 2.2.3).
            if !matches!(chunk0.get(end), Some(b' ' | b'\t')) {
                at = end;
                break;
            }
            i = end;
        }
    }
    let mut out = Vec::with_capacity(chunk0.len() + extra.len());
    out.extend_from_slice(&chunk0[..at]);
    out.extend_from_slice(extra);
    out.extend_from_slice(&chunk0[at..]);
    out
}

fn reply_554(text: String) -> Reply {
    Reply::enh(554, (5, 7, 1), text)
}

fn reply_unavailable() -> Reply {
    Reply::enh(
        451,
        (4, 7, 1),
        "Content scanner unavailable, try again later",
    )
}

// ---- the driver ----

/// Whether any scanner is configured (the session then sends every chunk
/// to the spool before `check`).
pub fn enabled(ctx: &Ctx) -> bool {
    let cfg = ctx.config();
    cfg.main.clamd.is_some() || cfg.main.spamd.is_some()
}

/// Scans message `id` (`chunks` chunks, `size` bytes, in the spool but not
/// committed). `Ok(delta)`: accept; the message grew by `delta` bytes of
/// X-Spam headers. `Err(reply)`: refuse with it (already logged and
/// counted); the caller aborts the message.
pub async fn check(
    ctx: &Ctx,
    id: QueueId,
    chunks: u32,
    size: u64,
    ip: IpAddr,
) -> Result<i64, Reply> {
    if !enabled(ctx) {
        return Ok(0);
    }
    let cfg = ctx.config();
    let scan = Scan {
        ctx,
        cfg: &cfg,
        id,
        qid: spool::format_id(id),
        ip,
    };
    // Everything appended so far must be readable before we stream it.
    if let Err(e) = ctx.spool.barrier().await {
        return Err(scan.spool_error(e));
    }
    if let Some(hp) = &cfg.main.clamd {
        scan.virus(hp, chunks).await?;
    }
    match &cfg.main.spamd {
        Some(hp) => scan.spam(hp, chunks, size).await,
        None => Ok(0),
    }
}

/// One message's scan: what its log lines and refusals need.
struct Scan<'a> {
    ctx: &'a Ctx,
    cfg: &'a Config,
    id: QueueId,
    qid: String,
    ip: IpAddr,
}

impl Scan<'_> {
    /// Counts and logs a refusal; returns its reply.
    fn reject(&self, reason: &'static str, reply: Reply, detail: String) -> Reply {
        self.ctx.stats.borrow_mut().reject(reason);
        log::info!(
            "id={} event=reject stage=DATA client=[{}] reason={reason} {detail} reply=\"{}\"",
            self.qid,
            self.ip,
            reply.one_line()
        );
        reply
    }

    fn spool_error(&self, e: impl std::fmt::Display) -> Reply {
        self.reject(
            "spool_error",
            Reply::enh(451, (4, 3, 0), "Local error in processing, try again later"),
            format!("error=\"{e}\""),
        )
    }

    /// A scanner could not be asked: refused when `scan_required`, else
    /// accepted unscanned (logged).
    fn skipped(&self, scanner: &str, e: String) -> Result<(), Reply> {
        if self.cfg.main.scan_required {
            Err(self.reject(
                "scan_unavailable",
                reply_unavailable(),
                format!("scanner={scanner} error=\"{e}\""),
            ))
        } else {
            log::warn!(
                "id={} event=scan_skipped scanner={scanner} error=\"{e}\" action=\"accepted unscanned (scan_required 0)\"",
                self.qid
            );
            Ok(())
        }
    }

    async fn virus(&self, hp: &HostPort, chunks: u32) -> Result<(), Reply> {
        let m = &self.cfg.main;
        match within(m.scan_timeout, clamd_scan(self.ctx, hp, self.id, chunks)).await {
            Ok(ClamVerdict::Clean) => {
                log::debug!("id={} event=virus_scan result=clean", self.qid);
                Ok(())
            }
            Ok(ClamVerdict::Infected(name)) => Err(self.reject(
                "virus",
                reply_554(format!("Message rejected: virus found: {name}")),
                format!("virus=\"{name}\""),
            )),
            Err(e) => self.skipped("clamd", e),
        }
    }

    /// Refuses spam over `spam_reject_score`; otherwise adds the X-Spam
    /// headers. Ok: the bytes added.
    async fn spam(&self, hp: &HostPort, chunks: u32, size: u64) -> Result<i64, Reply> {
        let m = &self.cfg.main;
        let v = match within(
            m.scan_timeout,
            spamd_scan(self.ctx, hp, self.id, chunks, size),
        )
        .await
        {
            Ok(v) => v,
            Err(e) => return self.skipped("spamd", e).map(|()| 0),
        };
        let tag = m.spam_tag_score;
        log::info!(
            "id={} event=spam_scan score={} required={tag} spamd_required={} symbols=\"{}\"",
            self.qid,
            v.score,
            v.threshold,
            v.symbols
        );
        if v.score >= m.spam_reject_score {
            return Err(self.reject(
                "spam",
                reply_554(format!(
                    "Message rejected as spam (score {} >= {})",
                    v.score, m.spam_reject_score
                )),
                format!("score={}", v.score),
            ));
        }
        let extra = spam_headers(v.score, tag);
        let delta = extra.len() as i64;
        let chunk0 = match self.ctx.spool.chunk(self.id, 0) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => return Err(self.spool_error(e)),
        };
        let new = insert_after_first_header(&chunk0, &extra);
        if let Err(e) = self.ctx.spool.replace_chunk(self.id, 0, new, delta).await {
            return Err(self.spool_error(e));
        }
        Ok(delta)
    }
}

async fn within<T>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    futures_lite::future::or(f, async {
        smol::Timer::after(t).await;
        Err(format!("no answer within {}s", t.as_secs()))
    })
    .await
}

async fn connect(ctx: &Ctx, hp: &HostPort) -> Result<async_net::TcpStream, String> {
    let ip = match hp.host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let resolver = ctx.resolver.borrow().clone();
            let a = resolver
                .ip(&hp.host)
                .await
                .map_err(|e| format!("{}: {e}", hp.host))?;
            *a.addrs
                .first()
                .ok_or_else(|| format!("{} has no address", hp.host))?
        }
    };
    async_net::TcpStream::connect(SocketAddr::new(ip, hp.port))
        .await
        .map_err(|e| format!("connect to {hp}: {e}"))
}

/// Reads until the peer closes, at most `max` bytes.
async fn read_bounded(s: &mut async_net::TcpStream, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(format!("answer longer than {max} bytes"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn chunk(ctx: &Ctx, id: QueueId, seq: u32) -> Result<Vec<u8>, String> {
    match ctx.spool.chunk(id, seq) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(format!("chunk {seq} missing from the spool")),
        Err(e) => Err(format!("spool: {e}")),
    }
}

async fn clamd_scan(
    ctx: &Ctx,
    hp: &HostPort,
    id: QueueId,
    chunks: u32,
) -> Result<ClamVerdict, String> {
    let mut s = connect(ctx, hp).await?;
    let w = |e: std::io::Error| format!("write: {e}");
    s.write_all(CLAMD_INSTREAM).await.map_err(w)?;
    for seq in 0..chunks {
        let c = chunk(ctx, id, seq)?;
        s.write_all(&clamd_chunk_len(c.len())).await.map_err(w)?;
        s.write_all(&c).await.map_err(w)?;
    }
    s.write_all(&clamd_chunk_len(0)).await.map_err(w)?;
    s.flush().await.map_err(w)?;
    parse_clamd(&read_bounded(&mut s, MAX_CLAMD_REPLY).await?)
}

async fn spamd_scan(
    ctx: &Ctx,
    hp: &HostPort,
    id: QueueId,
    chunks: u32,
    size: u64,
) -> Result<SpamVerdict, String> {
    let mut s = connect(ctx, hp).await?;
    let w = |e: std::io::Error| format!("write: {e}");
    s.write_all(&spamc_request(size)).await.map_err(w)?;
    for seq in 0..chunks {
        s.write_all(&chunk(ctx, id, seq)?).await.map_err(w)?;
    }
    s.flush().await.map_err(w)?;
    parse_spamd(&read_bounded(&mut s, MAX_SPAMD_REPLY).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The SPAMC/1.5 head spamd expects: verb, version, exact body length.
    #[test]
    fn spamc_request_head() {
        assert_eq!(
            spamc_request(1234),
            b"SYMBOLS SPAMC/1.5\r\nContent-length: 1234\r\n\r\n".to_vec()
        );
    }

    // A real spamd answer (GTUBE) and a clean one parse to their scores.
    #[test]
    fn spamd_answers() {
        let gtube = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 22\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,MISSING_HEADERS\r\n";
        assert_eq!(
            parse_spamd(gtube),
            Ok(SpamVerdict {
                score: Score(100_000),
                threshold: Score(500),
                symbols: "GTUBE,MISSING_HEADERS".into()
            })
        );
        let clean = b"SPAMD/1.1 0 EX_OK\r\nspam: False ; -0.1 / 5.0\r\n\r\n";
        let v = parse_spamd(clean).unwrap();
        assert_eq!(v.score, Score(-10));
        assert_eq!(v.symbols, "");
        let precise = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 15.234 / 5.0\r\n\r\n";
        assert_eq!(parse_spamd(precise).unwrap().score, Score(1523));
    }

    // Errors and garbage are errors (the scan is skipped or 451), never a
    // "clean" verdict.
    #[test]
    fn spamd_errors() {
        for bad in [
            &b""[..],
            b"SPAMD/1.0 76 Bad header line: (Content-length mismatch)\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; inf / 5.0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True 15\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                parse_spamd(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A huge score is clamped, not wrapped into a negative one.
        let v = parse_spamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e30 / 5\r\n\r\n").unwrap();
        assert_eq!(v.score, Score(crate::config::MAX_SCORE * 100));
    }

    // INSTREAM framing: 4-byte network-order lengths, zero ends the stream.
    #[test]
    fn clamd_framing() {
        assert_eq!(clamd_chunk_len(0), [0, 0, 0, 0]);
        assert_eq!(clamd_chunk_len(32 * 1024 + 5), [0, 0, 0x80, 0x05]);
        assert_eq!(CLAMD_INSTREAM, b"zINSTREAM\0");
    }

    // clamd's answers: OK, FOUND with the name (sanitized), errors.
    #[test]
    fn clamd_answers() {
        assert_eq!(parse_clamd(b"stream: OK\0"), Ok(ClamVerdict::Clean));
        assert_eq!(
            parse_clamd(b"stream: Mxspool.Test.Sig.UNOFFICIAL FOUND\0"),
            Ok(ClamVerdict::Infected("Mxspool.Test.Sig.UNOFFICIAL".into()))
        );
        assert_eq!(
            parse_clamd(b"stream: Evil\r\n250 ok FOUND\0"),
            Ok(ClamVerdict::Infected("Evil 250 ok".into())),
            "a name cannot break our reply line"
        );
        assert!(parse_clamd(b"INSTREAM size limit exceeded. ERROR\0").is_err());
        assert!(parse_clamd(b"").is_err());
        assert!(parse_clamd(b"stream: OKAY\0").is_err());
    }

    // At/above the tag score: Flag, Score and Status Yes; below: Status No
    // only (no X-Spam-Flag, which filters key on).
    #[test]
    fn headers_by_threshold() {
        assert_eq!(
            String::from_utf8(spam_headers(Score(520), Score(500))).unwrap(),
            "X-Spam-Flag: YES\r\nX-Spam-Score: 5.2\r\nX-Spam-Status: Yes, score=5.2 required=5.0\r\n"
        );
        assert_eq!(
            String::from_utf8(spam_headers(Score(500), Score(500))).unwrap(),
            "X-Spam-Flag: YES\r\nX-Spam-Score: 5.0\r\nX-Spam-Status: Yes, score=5.0 required=5.0\r\n",
            "the tag score itself tags"
        );
        assert_eq!(
            String::from_utf8(spam_headers(Score(-10), Score(500))).unwrap(),
            "X-Spam-Status: No, score=-0.1 required=5.0\r\n"
        );
    }

    // The headers go right below our (folded) Received header, whatever
    // follows it; at the top when chunk 0 starts oddly.
    #[test]
    fn insertion_point() {
        let x = b"X-Spam-Status: No\r\n";
        let c = b"Received: from a\r\n\tby b; date\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            insert_after_first_header(c, x),
            b"Received: from a\r\n\tby b; date\r\nX-Spam-Status: No\r\nSubject: hi\r\n\r\nbody\r\n"
                .to_vec()
        );
        // An empty message: our header is all of chunk 0.
        let c = b"Received: from a\r\n by b\r\n";
        assert_eq!(
            insert_after_first_header(c, x),
            b"Received: from a\r\n by b\r\nX-Spam-Status: No\r\n".to_vec()
        );
        assert_eq!(
            insert_after_first_header(b"\r\nbody", x),
            b"X-Spam-Status: No\r\n\r\nbody".to_vec()
        );
        assert_eq!(insert_after_first_header(b"", x), x.to_vec());
    }

    // Names from scanners are printable, bounded, quote-free.
    #[test]
    fn printable_names() {
        assert_eq!(printable("a\"b\tc\u{e9}", 50), "a b c");
        assert_eq!(printable(&"v".repeat(500), MAX_NAME).len(), MAX_NAME);
    }
}
