//! The daemon's side of the control socket: one short connection per
//! `mxspool queue` command.

use std::fmt::Write as _;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use async_net::unix::{UnixListener, UnixStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::{ListArgs, MAX_REQUEST, json_str, term_str};
use crate::config::HostPort;
use crate::ctx::Ctx;
use crate::spool::Destination;
use crate::spool::{self, AttemptReport, Filter, Message, Outcome, RcptResult, RcptState};

/// A control client gets this long to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the control socket (removing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another mxspool is running (its control socket {} answers)",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot create the control socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(l)
}

pub async fn serve(ctx: Rc<Ctx>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => ctx.spawn(handle(ctx.clone(), stream)),
            Err(e) => {
                log::warn!("event=control_error error=\"{e}\"");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
        if ctx.stopping.get() {
            return;
        }
    }
}

async fn read_request(stream: &mut UnixStream) -> Option<String> {
    let mut buf = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while buf.len() < MAX_REQUEST {
        match stream.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(buf).ok(),
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    None
}

async fn handle(ctx: Rc<Ctx>, mut stream: UnixStream) {
    let req = futures_lite::future::or(read_request(&mut stream), async {
        smol::Timer::after(REQUEST_TIMEOUT).await;
        None
    })
    .await;
    let answer = match req.as_deref().map(|r| (r, list_request(r))) {
        // A listing can be long: it is written as it is read.
        Some((_, Some(words))) => match ListArgs::parse(&words) {
            Ok(a) => {
                super::list::answer(&ctx, &mut stream, a, crate::clock::now()).await;
                return;
            }
            Err(e) => err_line(&e),
        },
        Some((r, None)) => match run(&ctx, r).await {
            Ok(out) => format!("OK\n{out}"),
            Err(e) => err_line(&e),
        },
        None => "ERR bad request\n".to_string(),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.flush().await;
}

fn err_line(e: &str) -> String {
    format!("ERR {}\n", term_str(&e.replace('\n', " ")))
}

/// The words after `list`, when `req` is a `list` request.
fn list_request(req: &str) -> Option<Vec<&str>> {
    let mut words = req.split(' ').filter(|w| !w.is_empty());
    (words.next() == Some("list")).then(|| words.collect())
}

/// One line of text output. Whole lines are escaped, so no field that came
/// from a stranger (header, address, HELO, remote reply) can reach the
/// operator's terminal with a control character, or break the line.
pub(super) fn line(out: &mut String, text: &str) {
    out.push_str(&term_str(text));
    out.push('\n');
}

pub(super) fn age(now: u64, t: u64) -> String {
    let s = now.saturating_sub(t);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub(super) fn destinations(m: &Message) -> Vec<String> {
    let mut d: Vec<String> = m
        .pending()
        .map(|(_, r)| r.destination.to_string())
        .collect();
    d.dedup();
    d
}

fn parse_id(s: &str) -> Result<u64, String> {
    spool::parse_id(s).ok_or_else(|| format!("'{s}' is not a queue id"))
}

async fn run(ctx: &Rc<Ctx>, req: &str) -> Result<String, String> {
    let words: Vec<&str> = req.split(' ').filter(|w| !w.is_empty()).collect();
    // Spool time: ages and "next in" are time that really passed.
    let now = crate::clock::now();
    match words.as_slice() {
        ["stats"] => Ok(stats(ctx, now, false)),
        ["stats", "--json"] => Ok(stats(ctx, now, true)),
        ["flush"] => flush(ctx, Filter::All, now).await,
        ["flush", domain] => {
            let d = domain.trim_end_matches('.').to_ascii_lowercase();
            flush(ctx, Filter::Domain(d), now).await
        }
        ["show", id] => show(ctx, parse_id(id)?, now),
        ["delete", id] => {
            let id = parse_id(id)?;
            ctx.spool.delete(id).await.map_err(|e| e.to_string())?;
            log::info!("id={} event=deleted by=admin", spool::format_id(id));
            Ok(format!("{}: deleted\n", spool::format_id(id)))
        }
        ["bounce", id] => bounce(ctx, parse_id(id)?, now).await,
        ["retag", domain, dest] => {
            let hp = HostPort::parse(dest, 25)?;
            let d = domain.trim_end_matches('.').to_ascii_lowercase();
            let dest = Destination::Relay {
                host: hp.host,
                port: hp.port,
            };
            let n = ctx
                .spool
                .retag(d.clone(), dest.clone(), now)
                .await
                .map_err(|e| e.to_string())?;
            log::info!("id=NOQUEUE event=retag domain={d} destination={dest} messages={n}");
            Ok(format!("{n} message(s) of {d} now go to {dest}\n"))
        }
        _ => Err(format!("unknown request: {req}")),
    }
}

async fn flush(ctx: &Ctx, filter: Filter, now: u64) -> Result<String, String> {
    // A flush means "try now": new mail too, not only what is queued.
    ctx.deliverer.down.borrow_mut().clear_all();
    let n = ctx
        .spool
        .reschedule(filter, now)
        .await
        .map_err(|e| e.to_string())?;
    log::info!("id=NOQUEUE event=flush messages={n}");
    Ok(format!("{n} message(s) scheduled for immediate delivery\n"))
}

fn show(ctx: &Ctx, id: u64, now: u64) -> Result<String, String> {
    let m = ctx
        .spool
        .message(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not in the queue", spool::format_id(id)))?;
    let mut out = String::new();
    let o = &mut out;
    line(o, &format!("id: {}", spool::format_id(id)));
    line(o, &format!("from: <{}>", m.sender));
    line(o, &format!("client: {}", m.client));
    let arrival = crate::time::rfc5322(crate::clock::to_unix(m.arrival));
    line(
        o,
        &format!("arrival: {arrival} ({} ago)", age(now, m.arrival)),
    );
    line(o, &format!("size: {}", m.size));
    line(o, &format!("attempts: {}", m.attempts));
    let next = crate::time::rfc5322(crate::clock::to_unix(m.next_attempt));
    line(o, &format!("next attempt: {next}"));
    for r in &m.recipients {
        let state = match r.state {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        };
        let last = if r.last_reply.is_empty() {
            String::new()
        } else {
            format!(" last: {}", r.last_reply)
        };
        let to = format!("to: <{}> {state} via {}{last}", r.address, r.destination);
        line(o, &to);
    }
    for a in ctx.spool.attempts(id).map_err(|e| e.to_string())? {
        let time = crate::time::rfc5322(crate::clock::to_unix(a.time));
        let relay = if a.relay.is_empty() { "-" } else { &a.relay };
        line(
            o,
            &format!("attempt: {time} {} {relay} {}", a.destination, a.result),
        );
    }
    line(o, "headers:");
    for l in String::from_utf8_lossy(&headers(ctx, id, m.chunks)).split_terminator("\r\n") {
        line(o, l);
    }
    Ok(out)
}

/// The header section of a message as stored (at most about 64 KiB).
fn headers(ctx: &Ctx, id: u64, chunks: u32) -> Vec<u8> {
    let mut head = Vec::new();
    for seq in 0..chunks {
        match ctx.spool.chunk(id, seq) {
            Ok(Some(c)) => head.extend_from_slice(&c),
            _ => break,
        }
        if let Some(p) = memchr::memmem::find(&head, b"\r\n\r\n") {
            head.truncate(p + 2);
            break;
        }
        if head.len() > 64 * 1024 {
            break;
        }
    }
    head
}

async fn bounce(ctx: &Ctx, id: u64, now: u64) -> Result<String, String> {
    let m = ctx
        .spool
        .message(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not in the queue", spool::format_id(id)))?;
    let reply = "550 5.0.0 Returned to the sender by the mail administrator";
    let results: Vec<RcptResult> = m
        .pending()
        .map(|(i, _)| RcptResult {
            index: i,
            outcome: Outcome::Failed,
            reply: reply.to_string(),
            remote: String::new(),
        })
        .collect();
    let dest = m
        .pending()
        .map(|(_, r)| r.destination.clone())
        .next()
        .ok_or_else(|| "nothing pending to return".to_string())?;
    let job = crate::deliver::Job {
        id,
        rcpts: m.pending().map(|(i, r)| (i, r.address.clone())).collect(),
    };
    let report = AttemptReport {
        time: now,
        destination: dest,
        relay: String::new(),
        summary: "returned by the administrator".into(),
        results,
    };
    crate::deliver::record(ctx, &job, report, m.arrival).await;
    // The owner was told "returned": that (and the DSN) must survive a
    // power cut, not wait for the next bookkeeping sync.
    ctx.spool.sync().await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    line(
        &mut out,
        &format!("{}: returned to <{}>", spool::format_id(id), m.sender),
    );
    Ok(out)
}

fn stats(ctx: &Ctx, now: u64, json: bool) -> String {
    let st = ctx.stats.borrow().clone();
    let sp = ctx.spool.state();
    let oldest = ctx
        .spool
        .oldest_arrival()
        .ok()
        .flatten()
        .map_or(0, |a| now.saturating_sub(a));
    if json {
        let rejected: Vec<String> = st
            .rejected
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        let callahead: Vec<String> = st
            .callahead
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        // Destination → seconds since its outage began (the LuCI status
        // and the metrics say "primary unreachable" from this).
        let unreachable: Vec<String> = ctx
            .alerts
            .unreachable_now()
            .iter()
            .map(|(d, since)| format!("{}:{}", json_str(d), now.saturating_sub(*since)))
            .collect();
        format!(
            "{{\"accepted\":{},\"rejected\":{{{}}},\"delivered\":{},\"deferred\":{},\"bounced\":{},\"queued\":{},\"oldest_age\":{oldest},\"spool_bytes\":{},\"max_spool_size\":{},\"guard_refusals\":{},\"callahead\":{{{}}},\"unreachable\":{{{}}},\"uptime\":{}}}\n",
            st.accepted,
            rejected.join(","),
            st.delivered,
            st.deferred,
            st.bounced,
            sp.messages,
            sp.bytes,
            ctx.config().main.max_spool_size,
            st.guard_refusals,
            callahead.join(","),
            unreachable.join(","),
            now.saturating_sub(st.started)
        )
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "uptime: {}", age(now, st.started));
        let _ = writeln!(out, "accepted: {}", st.accepted);
        let total: u64 = st.rejected.values().sum();
        let _ = writeln!(out, "rejected: {total}");
        for (k, v) in &st.rejected {
            let _ = writeln!(out, "  {k}: {v}");
        }
        let _ = writeln!(out, "delivered: {}", st.delivered);
        let _ = writeln!(out, "deferred: {}", st.deferred);
        let _ = writeln!(out, "bounced: {}", st.bounced);
        let _ = writeln!(out, "queued: {}", sp.messages);
        let _ = writeln!(out, "oldest: {}", age(now, now.saturating_sub(oldest)));
        let _ = writeln!(out, "spool bytes: {}", sp.bytes);
        let _ = writeln!(out, "guard refusals: {}", st.guard_refusals);
        for (k, v) in &st.callahead {
            let _ = writeln!(out, "call-ahead {k}: {v}");
        }
        for (d, since) in ctx.alerts.unreachable_now() {
            let _ = writeln!(out, "unreachable: {d} for {}", age(now, since));
        }
        out
    }
}
