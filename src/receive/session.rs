//! The driver around one `smtp::server::Session`: moves bytes between the
//! socket and the state machine, enforces the timeouts, answers the
//! policy events and streams the body into the spool.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::policy;
use crate::compose::received::{ReceivedInfo, received_header};
use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::smtp::server::{BODY_CHUNK, BodyType, DataRefusal, Event, Params, Session};
use crate::spool::Destination;
use crate::spool::{self, Envelope, QueueId};
use crate::tls::Stream;

/// Socket read size for commands. Small: the session keeps at most one
/// line besides.
pub const READ_BUF: usize = 4096;
/// Socket read size in DATA: a body chunk, so a large message takes a few
/// reads per chunk, not one per 4 KiB. Back to `READ_BUF` after DATA.
pub const DATA_READ_BUF: usize = BODY_CHUNK;

/// The message being received.
struct Incoming {
    id: QueueId,
    seq: u32,
    size: u64,
    /// Our Received header, sent with the first body chunk.
    header: Option<Vec<u8>>,
    /// The spool refused more bytes (over `max_spool_size`): answer 452.
    over_quota: bool,
    /// The newest chunk, not yet sent: it goes with the commit, so a small
    /// message costs the spool one transaction, not two.
    held: Option<Vec<u8>>,
    /// Bytes already sent with `append` (what an abort gives back).
    appended: u64,
    /// The body had an octet over 127 (declared with BODY=8BITMIME or not).
    eight_bit: bool,
    /// The envelope sender, for the log line of a refusal at the end of
    /// DATA (the machine has reset its transaction by then).
    from: String,
}

enum Io {
    Data(usize),
    Eof,
    Timeout,
    /// The daemon is stopping.
    Stop,
    Error(std::io::Error),
}

async fn read_timeout(ctx: &Ctx, stream: &mut Stream, buf: &mut [u8], t: Duration) -> Io {
    let stop = async {
        ctx.stopped().await;
        Io::Stop
    };
    let read = futures_lite::future::or(
        async {
            match stream.read(buf).await {
                Ok(0) => Io::Eof,
                Ok(n) => Io::Data(n),
                Err(e) => Io::Error(e),
            }
        },
        async {
            smol::Timer::after(t).await;
            Io::Timeout
        },
    );
    futures_lite::future::or(read, stop).await
}

async fn write_timeout(stream: &mut Stream, bytes: &[u8], t: Duration) -> bool {
    if bytes.is_empty() {
        return true;
    }
    futures_lite::future::or(async { stream.write_all(bytes).await.is_ok() }, async {
        smol::Timer::after(t).await;
        false
    })
    .await
}

/// Runs one session. Returns the stream when it should be closed with a
/// linger (after a final reply), which the caller does once the session's
/// connection slot is free again.
pub async fn serve(
    ctx: Rc<Ctx>,
    tcp: async_net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Option<Stream> {
    let _ = local;
    let mut stream = Stream::Plain(tcp);
    let cfg = ctx.config();
    let tls = ctx.tls_server.borrow().clone();
    let m = &cfg.main;
    let ip = peer.ip();
    log::info!("id=NOQUEUE event=connect client=[{ip}]:{}", peer.port());
    let mut s = Session::new(Params {
        hostname: m.hostname.clone(),
        max_message_size: m.max_message_size,
        max_recipients: m.max_recipients,
        max_errors: m.max_errors,
        max_hops: m.max_hops,
        starttls: tls.is_some(),
    });
    let mut dnsbl = super::dnsbl::Check::default();
    if let Err((reason, reply)) = policy::connect(&cfg, ip) {
        log::info!(
            "id=NOQUEUE event=reject stage=connect client=[{ip}] reason={reason} reply=\"{}\"",
            reply.one_line()
        );
        ctx.stats.borrow_mut().reject(reason);
        s.refuse_connection(reply);
    } else {
        // The DNSBL lookups run during the greeting pause and EHLO.
        dnsbl = super::dnsbl::Check::start(&ctx, ip);
        if !super::pregreet::wait(&ctx, &mut stream, ip).await {
            return None;
        }
        s.greeting();
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut dests: Vec<Destination> = vec![];
    let mut msg: Option<Incoming> = None;
    let mut shut = false;
    let mut linger = false;
    let mut prober = super::callahead::Prober::default();
    loop {
        let out = s.take_output();
        if !write_timeout(&mut stream, &out, m.command_timeout).await {
            break;
        }
        if ctx.stopping.get() && !shut {
            shut = true;
            s.shutdown();
        }
        let Some(ev) = s.poll_event() else {
            if !s.wants_input() {
                // Nothing to read and nothing to do: the session is over.
                break;
            }
            let t = if s.in_data() {
                m.data_timeout
            } else {
                m.command_timeout
            };
            if shut {
                // Stopping and the session still wants input: it owes
                // nothing; its 421 is out, close.
                break;
            }
            let size = if s.in_data() { DATA_READ_BUF } else { READ_BUF };
            if buf.len() != size {
                buf.resize(size, 0);
                buf.shrink_to_fit();
            }
            let room = s.input_room().clamp(1, size);
            match read_timeout(&ctx, &mut stream, &mut buf[..room], t).await {
                Io::Stop => continue,
                Io::Data(n) => {
                    // Data that won the race against a stop is new (a
                    // command, the rest of a message): it gets the 421,
                    // never executed.
                    if ctx.stopping.get() && !shut {
                        shut = true;
                        s.shutdown();
                    }
                    s.receive(&buf[..n])
                }
                Io::Timeout => {
                    log::info!("id=NOQUEUE event=timeout client=[{ip}]");
                    s.timeout();
                }
                Io::Eof => break,
                Io::Error(e) => {
                    log::debug!("id=NOQUEUE event=read_error client=[{ip}] error=\"{e}\"");
                    break;
                }
            }
            continue;
        };
        match ev {
            Event::Mail(mail) => {
                dests.clear();
                let r = match dnsbl.at_mail(&cfg, ip, &mail.from.to_string()).await {
                    Ok(()) => policy::mail(&cfg, ip, &mail, &ctx.spool),
                    Err(r) => Err(r),
                };
                s.answer_mail(refusal(&ctx, r, ip, "MAIL", &mail.from.to_string(), ""));
            }
            Event::Rcpt(rcpt) => {
                let from = s
                    .mail_from()
                    .map(|f| f.from.to_string())
                    .unwrap_or_default();
                let mut verdict = policy::rcpt(&cfg, &rcpt);
                if let Ok(ok) = &verdict
                    && matches!(ok.destination, Destination::Mx { .. })
                    && let Some(d) = cfg.domain(&rcpt.to.domain)
                {
                    let resolver = ctx.resolver.borrow().clone();
                    if let Err(r) = policy::mx_route(&resolver, d, &m.hostname).await {
                        verdict = Err(r);
                    }
                }
                let verdict = match verdict {
                    Ok(ok) if ok.callahead => {
                        let addr = rcpt.to.to_string().to_lowercase();
                        match cfg.domain(&rcpt.to.domain) {
                            Some(d) => super::callahead::verify(
                                &ctx,
                                &mut prober,
                                d,
                                &ok.destination,
                                &addr,
                            )
                            .await
                            .map(|()| ok),
                            None => Ok(ok),
                        }
                    }
                    other => other,
                };
                match verdict {
                    Ok(ok) => {
                        dests.push(ok.destination);
                        s.answer_rcpt(Ok(()));
                    }
                    Err(r) => {
                        let to = rcpt.to.to_string();
                        s.answer_rcpt(refusal(&ctx, Err(r), ip, "RCPT", &from, &to));
                    }
                }
            }
            Event::DataStart => {
                prober.close().await;
                let from = s
                    .mail_from()
                    .map(|f| f.from.to_string())
                    .unwrap_or_default();
                match policy::data(&cfg, &ctx.spool) {
                    Ok(()) => {
                        let now = crate::clock::now();
                        let id = ctx.spool.new_id(now);
                        let qid = spool::format_id(id);
                        let rcpts = s.recipients();
                        let one = (rcpts.len() == 1).then(|| rcpts[0].to_string());
                        let utf8 = s.mail_from().is_some_and(|f| f.smtputf8);
                        // RFC 3848 / RFC 6531 protocol names.
                        let with = match (utf8, s.esmtp(), stream.is_tls()) {
                            (true, _, false) => "UTF8SMTP",
                            (true, _, true) => "UTF8SMTPS",
                            (false, true, false) => "ESMTP",
                            (false, true, true) => "ESMTPS",
                            (false, false, false) => "SMTP",
                            (false, false, true) => "SMTPS",
                        };
                        let header = received_header(&ReceivedInfo {
                            helo: s.helo(),
                            peer: ip,
                            by: &m.hostname,
                            with,
                            queue_id: &qid,
                            for_rcpt: one.as_deref(),
                            date: crate::time::now_unix(),
                        });
                        msg = Some(Incoming {
                            id,
                            seq: 0,
                            size: 0,
                            header: Some(header),
                            over_quota: false,
                            held: None,
                            appended: 0,
                            eight_bit: false,
                            from,
                        });
                        s.answer_data(Ok(()));
                    }
                    Err(r) => s.answer_data(refusal(&ctx, Err(r), ip, "DATA", &from, "")),
                }
            }
            Event::Body(chunk) => {
                if let Some(inc) = msg.as_mut() {
                    append(&ctx, inc, chunk).await;
                }
            }
            Event::DataEnd => {
                let Some(mut inc) = msg.take() else {
                    s.answer_data_end(Reply::enh(451, (4, 3, 0), "Internal error: no message"));
                    continue;
                };
                if let Some(h) = inc.header.take() {
                    // An empty body: the message is our header alone.
                    push_chunk(&ctx, &mut inc, h).await;
                }
                let reply = if inc.over_quota {
                    ctx.spool.abort(inc.id, inc.appended).await;
                    ctx.stats.borrow_mut().reject("spool_full");
                    log::warn!(
                        "id={} event=reject stage=DATA client=[{ip}] reason=spool_full",
                        spool::format_id(inc.id)
                    );
                    policy::storage_full().1
                } else {
                    // Content scanners see the spooled message before the 250.
                    if super::scan::enabled(&ctx) {
                        flush_held(&ctx, &mut inc).await;
                    }
                    match super::scan::check(&ctx, inc.id, inc.seq, inc.size, ip).await {
                        Ok(grew) => {
                            inc.size = inc.size.saturating_add_signed(grew);
                            commit(&ctx, &s, &dests, inc, ip).await
                        }
                        Err(reply) => {
                            ctx.spool.abort(inc.id, inc.appended).await;
                            reply
                        }
                    }
                };
                dests.clear();
                s.answer_data_end(reply);
            }
            Event::DataRefused(why) => {
                let mut from = s
                    .mail_from()
                    .map(|f| f.from.to_string())
                    .unwrap_or_default();
                if let Some(inc) = msg.take() {
                    ctx.spool.abort(inc.id, inc.appended).await;
                    from = inc.from;
                }
                let reason = match why {
                    DataRefusal::BareNewline => "bare_newline",
                    DataRefusal::TooBig => "size",
                    DataRefusal::LineTooLong => "line_too_long",
                    DataRefusal::TooManyHops => "hops",
                };
                ctx.stats.borrow_mut().reject(reason);
                log::info!(
                    "id=NOQUEUE event=reject stage=DATA client=[{ip}] from=<{from}> reason={reason}"
                );
                dests.clear();
            }
            Event::Reset => {
                prober.close().await;
                if let Some(inc) = msg.take() {
                    ctx.spool.abort(inc.id, inc.appended).await;
                }
                dests.clear();
            }
            Event::StartTls => {
                // The 220 goes out in plaintext; the session has already
                // thrown away anything the client sent behind STARTTLS.
                let out = s.take_output();
                if !write_timeout(&mut stream, &out, m.command_timeout).await {
                    break;
                }
                let Some(cfg) = tls.clone() else {
                    break;
                };
                let hs =
                    futures_lite::future::or(async { Some(stream.accept_tls(cfg).await) }, async {
                        smol::Timer::after(m.command_timeout).await;
                        None
                    })
                    .await;
                match hs {
                    Some(Ok(())) => {
                        log::info!(
                            "id=NOQUEUE event=starttls client=[{ip}] tls=\"{}\"",
                            stream.tls_info().unwrap_or_default()
                        );
                        s.tls_started();
                    }
                    Some(Err(e)) => {
                        log::info!("id=NOQUEUE event=tls_failed client=[{ip}] error=\"{e}\"");
                        break;
                    }
                    None => {
                        log::info!(
                            "id=NOQUEUE event=tls_failed client=[{ip}] error=\"handshake timed out\""
                        );
                        break;
                    }
                }
            }
            Event::Close => {
                let out = s.take_output();
                linger = write_timeout(&mut stream, &out, m.command_timeout).await;
                break;
            }
        }
    }
    prober.close().await;
    if let Some(inc) = msg.take() {
        // The client vanished mid-DATA: nothing was acknowledged.
        ctx.spool.abort(inc.id, inc.appended).await;
    }
    log::debug!("id=NOQUEUE event=disconnect client=[{ip}]");
    linger.then_some(stream)
}

fn refusal(
    ctx: &Ctx,
    r: Result<(), policy::Refusal>,
    ip: std::net::IpAddr,
    stage: &str,
    from: &str,
    to: &str,
) -> Result<(), Reply> {
    r.map_err(|(reason, reply)| {
        ctx.stats.borrow_mut().reject(reason);
        log::info!(
            "id=NOQUEUE event=reject stage={stage} client=[{ip}] from=<{from}> to=<{to}> reason={reason} reply=\"{}\"",
            reply.one_line()
        );
        reply
    })
}

async fn append(ctx: &Ctx, inc: &mut Incoming, chunk: Vec<u8>) {
    // Clients that send 8-bit text without BODY=8BITMIME are common (RFC
    // 6152 forbids it): the message is 8-bit all the same, so that it is
    // converted, not sent raw, to a server without 8BITMIME (as Postfix
    // decides by content too).
    inc.eight_bit = inc.eight_bit || !chunk.is_ascii();
    let chunk = match inc.header.take() {
        // A small message is one chunk, our Received header first.
        Some(mut h) if h.len() + chunk.len() <= BODY_CHUNK => {
            h.extend_from_slice(&chunk);
            h
        }
        // A full chunk stays page-sized: the header goes alone before it.
        Some(h) => {
            push_chunk(ctx, inc, h).await;
            chunk
        }
        None => chunk,
    };
    push_chunk(ctx, inc, chunk).await;
}

async fn push_chunk(ctx: &Ctx, inc: &mut Incoming, chunk: Vec<u8>) {
    if inc.over_quota {
        return;
    }
    let cfg = ctx.config();
    let st = ctx.spool.state();
    let len = chunk.len() as u64;
    if st.bytes + st.incoming_bytes + len > cfg.main.max_spool_size {
        inc.over_quota = true;
        return;
    }
    flush_held(ctx, inc).await;
    if inc.over_quota {
        return;
    }
    inc.held = Some(chunk);
    inc.seq += 1;
    inc.size += len;
}

/// Sends the held chunk (seq `inc.seq - 1`) to the spool now.
async fn flush_held(ctx: &Ctx, inc: &mut Incoming) {
    if let Some(prev) = inc.held.take() {
        let len = prev.len() as u64;
        if ctx
            .spool
            .append(inc.id, inc.seq.saturating_sub(1), prev)
            .await
            .is_err()
        {
            inc.over_quota = true;
            return;
        }
        inc.appended += len;
    }
}

/// Over 80 % of `max_spool_size`: the owner should hear of it before mail
/// is refused with 452.
fn spool_level_alert(ctx: &Ctx) {
    let max = ctx.config().main.max_spool_size;
    let bytes = ctx.spool.state().bytes;
    if max > 0 && bytes.saturating_mul(5) >= max.saturating_mul(4) {
        ctx.alert(
            crate::alert::Kind::SpoolNearlyFull,
            &format!("the spool holds {bytes} bytes of its {max} (max_spool_size)"),
            &[("bytes", bytes.to_string()), ("max", max.to_string())],
        );
    }
}

async fn commit(
    ctx: &Ctx,
    s: &Session,
    dests: &[Destination],
    inc: Incoming,
    ip: std::net::IpAddr,
) -> Reply {
    let mail = s.mail_from();
    let sender = mail.map(|f| f.from.to_string()).unwrap_or_default();
    let mut flags = 0;
    if inc.eight_bit || mail.is_some_and(|f| f.body == BodyType::EightBitMime) {
        flags |= spool::schema::FLAG_8BITMIME;
    }
    if mail.is_some_and(|f| f.smtputf8) {
        flags |= spool::schema::FLAG_SMTPUTF8;
    }
    let rcpts: Vec<(String, Destination)> = s
        .recipients()
        .iter()
        .zip(dests.iter())
        .map(|(r, d)| (r.to_string(), d.clone()))
        .collect();
    let nrcpt = rcpts.len();
    let qid = spool::format_id(inc.id);
    let arrival = crate::clock::now();
    let (first_attempt, note) = ctx
        .deliverer
        .down
        .borrow()
        .first_attempt(rcpts.iter().map(|(_, d)| d), arrival);
    let env = Envelope {
        sender: sender.clone(),
        recipients: rcpts,
        flags,
        client: format!("{} [{ip}]", s.helo().unwrap_or("unknown")),
        arrival,
        first_attempt,
        note,
    };
    let last = inc.held.map(|c| (inc.seq.saturating_sub(1), c));
    match ctx.spool.commit(inc.id, env, inc.seq, inc.size, last).await {
        Ok(()) => {
            ctx.stats.borrow_mut().accepted += 1;
            spool_level_alert(ctx);
            log::info!(
                "id={qid} event=accept client=[{ip}] from=<{sender}> size={} nrcpt={nrcpt}",
                inc.size
            );
            Reply::enh(250, (2, 0, 0), format!("Ok: queued as {qid}"))
        }
        Err(e) => {
            ctx.stats.borrow_mut().reject("spool_error");
            log::error!(
                "id={qid} event=reject stage=DATA client=[{ip}] reason=spool_error error=\"{e}\""
            );
            policy::storage_full().1
        }
    }
}
