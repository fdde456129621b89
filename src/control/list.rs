//! `queue list`, streamed: the queue is read a page at a time (one short
//! read transaction each), and each page is formatted and written to the
//! control socket before the next is read. The daemon's memory does not
//! grow with the queue, however long the outage was.
//!
//! Not a snapshot: a message that arrives while the listing runs appears
//! at its end or not at all, one that leaves may still be shown; none is
//! shown twice, since the pages follow the ids (arrival order).

use std::fmt::Write as _;
use std::time::Duration;

use futures_lite::AsyncWriteExt;

use super::server::{age, destinations, line};
use super::{ListArgs, json_str};
use crate::ctx::Ctx;
use crate::spool::{self, Message, QueueId};

/// Messages read per read transaction.
pub const PAGE: usize = 32;
/// Formatted output is written out once it reaches this size.
const FLUSH_AT: usize = 16 * 1024;
/// A client that takes none of the answer for this long is given up on,
/// so a stuck reader cannot hold its task and buffer forever.
pub const WRITE_STALL: Duration = Duration::from_secs(120);

/// Where the listing stands between pages.
struct Walk {
    args: ListArgs,
    now: u64,
    /// How many to show at most (`--limit`).
    limit: usize,
    /// The last id read: the next page starts after it.
    cursor: Option<QueueId>,
    shown: usize,
    /// Messages queued when the first page was read.
    total: u64,
    /// No JSON element written yet (no comma before the next one).
    first: bool,
}

/// Answers a `list` request on `out`: `OK` and the listing, or `ERR` when
/// the first page cannot be read. A failure after `OK` went out ends the
/// answer with a NUL byte and `ERR message` (no listing output contains a
/// NUL), so the client still exits 1.
pub async fn answer<W: futures_lite::AsyncWrite + Unpin>(
    ctx: &Ctx,
    out: &mut W,
    args: ListArgs,
    now: u64,
) {
    let mut w = Walk {
        args,
        now,
        limit: args
            .limit
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        cursor: args.after,
        shown: 0,
        total: 0,
        first: true,
    };
    let mut buf = String::with_capacity(FLUSH_AT + 2048);
    let mut started = false;
    loop {
        let want = w.limit.saturating_sub(w.shown).min(PAGE);
        let page = match ctx.spool.messages_after(w.cursor, want) {
            Ok(p) => p,
            Err(e) => {
                let text = super::term_str(&e.to_string().replace('\n', " ")).into_owned();
                let msg = if started {
                    format!("\0ERR {text}\n")
                } else {
                    format!("ERR {text}\n")
                };
                buf.push_str(&msg);
                let _ = send(out, &mut buf).await;
                return;
            }
        };
        if !started {
            started = true;
            w.total = page.total;
            buf.push_str("OK\n");
            header(&mut buf, &w);
        }
        for (id, m) in &page.items {
            entry(&mut buf, &mut w, *id, m);
            if buf.len() >= FLUSH_AT && send(out, &mut buf).await.is_err() {
                return;
            }
        }
        w.shown += page.items.len();
        w.cursor = page.items.last().map(|(id, _)| *id).or(w.cursor);
        if !page.more || w.shown >= w.limit {
            footer(&mut buf, &w, page.more);
            let _ = send(out, &mut buf).await;
            return;
        }
        if send(out, &mut buf).await.is_err() {
            return;
        }
        // A long queue must not keep SMTP sessions waiting on the executor.
        futures_lite::future::yield_now().await;
    }
}

/// Writes and empties `buf`; an error or a stalled client ends the answer.
async fn send<W: futures_lite::AsyncWrite + Unpin>(
    out: &mut W,
    buf: &mut String,
) -> Result<(), ()> {
    if buf.is_empty() {
        return Ok(());
    }
    let write = async { out.write_all(buf.as_bytes()).await.map_err(|_| ()) };
    let stall = async {
        smol::Timer::after(WRITE_STALL).await;
        Err(())
    };
    let r = futures_lite::future::or(write, stall).await;
    buf.clear();
    r
}

fn header(buf: &mut String, w: &Walk) {
    match (w.args.json, w.args.paged()) {
        (true, true) => {
            let _ = write!(buf, "{{\"total\":{},\"messages\":[", w.total);
        }
        (true, false) => buf.push('['),
        (false, _) => {}
    }
}

fn footer(buf: &mut String, w: &Walk, more: bool) {
    let next = w.cursor.filter(|_| more).map(spool::format_id);
    match (w.args.json, w.args.paged()) {
        (true, true) => {
            let next = next.as_deref().map_or("null".to_string(), json_str);
            let _ = writeln!(buf, "],\"next\":{next}}}");
        }
        (true, false) => buf.push_str("]\n"),
        (false, true) => {
            let _ = write!(buf, "{} of {} shown", w.shown, w.total);
            if let Some(id) = next {
                let _ = write!(buf, "; next: mxspool queue list");
                if let Some(n) = w.args.limit {
                    let _ = write!(buf, " --limit {n}");
                }
                let _ = write!(buf, " --after {id}");
            }
            buf.push('\n');
        }
        (false, false) => {}
    }
}

fn entry(buf: &mut String, w: &mut Walk, id: QueueId, m: &Result<Message, String>) {
    let qid = spool::format_id(id);
    match m {
        Ok(m) if w.args.json => {
            if !w.first {
                buf.push(',');
            }
            w.first = false;
            json_entry(buf, &qid, m, w.now);
        }
        Ok(m) => text_entry(buf, &qid, m, w.now),
        // JSON consumers get well-formed entries only (as before paging).
        Err(_) if w.args.json => {}
        Err(e) => line(buf, &format!("{qid}  DAMAGED: {e}")),
    }
}

fn json_entry(buf: &mut String, qid: &str, m: &Message, now: u64) {
    let _ = write!(
        buf,
        "{{\"id\":{},\"arrival\":{},\"age\":{},\"sender\":{},\"recipients\":[",
        json_str(qid),
        crate::clock::to_unix(m.arrival),
        now.saturating_sub(m.arrival),
        json_str(&m.sender),
    );
    for (i, (_, r)) in m.pending().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        buf.push_str(&json_str(&r.address));
    }
    let _ = write!(
        buf,
        "],\"size\":{},\"destination\":{},\"attempts\":{},\"next_attempt\":{},\"last_error\":{}}}",
        m.size,
        json_str(&destinations(m).join(",")),
        m.attempts,
        crate::clock::to_unix(m.next_attempt),
        json_str(&m.last_error)
    );
}

fn text_entry(buf: &mut String, qid: &str, m: &Message, now: u64) {
    let next = if m.next_attempt <= now {
        "now".to_string()
    } else {
        format!("in {}", age(m.next_attempt, now))
    };
    let mut text = format!(
        "{qid}  age {}  {} bytes  from <{}>  to",
        age(now, m.arrival),
        m.size,
        m.sender
    );
    for (_, r) in m.pending() {
        let _ = write!(text, " <{}>", r.address);
    }
    let _ = write!(
        text,
        "  via {}  attempts {}  next {next}",
        destinations(m).join(","),
        m.attempts
    );
    if !m.last_error.is_empty() {
        let _ = write!(text, "  last error: {}", m.last_error);
    }
    line(buf, &text);
}
