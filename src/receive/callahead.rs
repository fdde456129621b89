//! Recipient verification by calling ahead to the primary at RCPT time
//! (`verify 'callahead'`): `MAIL FROM:<>`, `RCPT TO:<addr>`, RSET; its 2xx
//! accepts, its 5xx refuses with its text, and when it cannot be reached the
//! mail is accepted unless the cache remembers an earlier "no such address"
//! (Exim's `callout=defer_ok` with a cache, not Postfix's 450: a backup MX
//! exists to take mail while the primary is down).
//!
//! Only a refusal about the mailbox (5.1.x) is cached as "no such
//! address": any other 5xx (a policy refusal of the backup MX itself, a
//! protocol error) is passed on but not cached, and warned about, since
//! caching it would refuse real users from the cache during an outage.
//!
//! One probe connection serves every recipient of a session; answers are
//! cached in the spool so a dictionary attack costs the primary one probe
//! per address. The probe also notices the primary's mistakes that defeat a
//! backup MX (tarpitting, soft rejects, accept-all, greylisting) and says
//! so in the log.

use std::time::{Duration, Instant};

use crate::config::{Domain, OnTempfail};
use crate::ctx::Ctx;
use crate::outbound::conn::{self as client, Conn};
use crate::smtp::client::Event;
use crate::smtp::{Enhanced, Reply};
use crate::spool::CacheEntry;
use crate::spool::Destination;

/// A cached answer is asked again after this fraction of its lifetime
/// (`callahead_positive_ttl`, `callahead_negative_ttl`): Postfix's
/// refresh times (7d of 31d, 3h of 3d). A user created at the primary is
/// accepted at most a negative refresh time late.
pub const POSITIVE_REFRESH_DIVISOR: u64 = 4;
pub const NEGATIVE_REFRESH_DIVISOR: u64 = 24;
/// A greeting or reply slower than this is a tarpit worth a warning.
pub const TARPIT_WARN: Duration = Duration::from_secs(4);
/// The random-address check runs at most this often per domain.
pub const RANDOM_CHECK_INTERVAL: u64 = 6 * 3600;

/// A session's probe connection, kept across its RCPTs.
#[derive(Default)]
pub struct Prober {
    conn: Option<(Destination, Conn)>,
    /// The destination could not be reached in this session: do not try
    /// again for every recipient (the client would wait each time).
    unreachable: Option<Destination>,
}

impl Prober {
    /// Ends the probe connection politely.
    pub async fn close(&mut self) {
        if let Some((_, c)) = self.conn.take() {
            c.quit().await;
        }
    }
}

enum Probe {
    /// The primary's answer to `RCPT TO`.
    Answer(Reply),
    /// The primary refused the probe's `MAIL FROM:<>`: nothing was learned
    /// about the address.
    MailRefused(Reply),
    Unreachable(String),
}

/// What a 5xx answer to the probe's RCPT says about the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The mailbox does not exist (or moved): cached as "no such address".
    NoSuchAddress,
    /// Policy, protocol, system, mailbox full...: the probe was refused,
    /// the address was not judged. Passed on, never cached.
    Other,
}

/// The reply's enhanced code, when its class agrees with the reply code
/// (RFC 3463 3.1; Postfix ignores one that does not).
fn status(r: &Reply) -> Option<Enhanced> {
    r.enhanced.filter(|e| u16::from(e.0) == r.code / 100)
}

/// Classifies a permanent (5xx) answer to the probe's RCPT.
pub fn classify(r: &Reply) -> Refusal {
    match status(r) {
        // RFC 3463 X.1.x: addressing status (bad mailbox 5.1.1, bad
        // destination system 5.1.2, bad syntax 5.1.3, moved 5.1.6...).
        Some(Enhanced(_, 1, _)) => Refusal::NoSuchAddress,
        Some(_) => Refusal::Other,
        // No enhanced code: 550 (mailbox unavailable, Postfix's "User
        // unknown"), 551 (user not local) and 553 (mailbox name not
        // allowed) are RFC 5321's mailbox replies, as Postfix's
        // reject_unverified_recipient takes a bare 550. 554 and the
        // 50x protocol errors say nothing about the mailbox.
        None => match r.code {
            550 | 551 | 553 => Refusal::NoSuchAddress,
            _ => Refusal::Other,
        },
    }
}

/// Names the likely mistake at the primary behind a refusal that is not
/// about the mailbox, for the operator reading the log.
fn hint(r: &Reply) -> &'static str {
    let policy = match status(r) {
        Some(e) => e.1 == 7,
        None => r.code == 554,
    };
    if policy {
        "the primary refuses this backup MX itself: allow its address there"
    } else {
        "the primary refused the probe, not the mailbox: check what it refuses from the backup MX"
    }
}

/// A stored `Reply::one_line()` back to a reply.
fn parse_line(line: &str) -> Option<Reply> {
    let (code, rest) = line.split_at_checked(3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (enhanced, text) = match Enhanced::parse_prefix(rest) {
        Some((e, t)) => (Some(e), t),
        None => (None, rest),
    };
    Some(Reply::new(code, enhanced, text))
}

/// A cache entry still worth using.
struct Cached {
    refresh: u64,
    /// None: the primary accepted the address; Some: its "no such address".
    refusal: Option<Reply>,
}

fn cached(ctx: &Ctx, addr: &str, now: u64) -> Option<Cached> {
    let e = ctx.spool.cache_get(addr).ok().flatten()?;
    usable(&e, now)
}

fn usable(e: &CacheEntry, now: u64) -> Option<Cached> {
    if e.expire <= now {
        return None;
    }
    let refusal = if e.positive {
        None
    } else {
        // Older versions cached any 5xx: a negative entry that is not
        // about the mailbox (a policy refusal) is ignored, not trusted.
        Some(parse_line(&e.reply).filter(|r| classify(r) == Refusal::NoSuchAddress)?)
    };
    Some(Cached {
        refresh: e.refresh,
        refusal,
    })
}

fn count(ctx: &Ctx, what: &'static str) {
    *ctx.stats.borrow_mut().callahead.entry(what).or_insert(0) += 1;
}

fn warn(ctx: &Ctx, domain: &str, kind: &'static str, text: &str) {
    ctx.primary_warning(domain, kind, text);
}

/// Verifies `addr` (lower-case) of `domain` at `dest`. Ok: accept.
pub async fn verify(
    ctx: &Ctx,
    prober: &mut Prober,
    domain: &Domain,
    dest: &Destination,
    addr: &str,
) -> Result<(), (&'static str, Reply)> {
    let now = crate::clock::now();
    let cached = cached(ctx, addr, now);
    if let Some(c) = &cached
        && now < c.refresh
    {
        return match &c.refusal {
            None => {
                count(ctx, "cache_positive");
                Ok(())
            }
            Some(r) => {
                count(ctx, "cache_negative");
                Err(("callahead", refusal(addr, r)))
            }
        };
    }
    let budget = ctx.config().main.callahead_timeout;
    let probe = futures_lite::future::or(probe(ctx, prober, domain, dest, addr), async {
        smol::Timer::after(budget).await;
        Probe::Unreachable("call-ahead timed out".into())
    })
    .await;
    match probe {
        Probe::Answer(r) if r.is_positive() => {
            count(ctx, "accepted");
            store(ctx, addr, true, &r, now).await;
            random_check(ctx, prober, domain, dest, now).await;
            Ok(())
        }
        Probe::Answer(r) if r.is_permanent() => permanent(ctx, &domain.name, addr, &r, now).await,
        Probe::Answer(r) => {
            count(ctx, "tempfail");
            match domain.on_tempfail {
                OnTempfail::Accept => Ok(()),
                OnTempfail::Defer => Err((
                    "callahead_tempfail",
                    Reply::new(
                        450,
                        Some(r.enhanced.unwrap_or(Enhanced(4, 1, 1))),
                        format!("<{addr}>: Recipient address not verified now: {}", r.text()),
                    ),
                )),
            }
        }
        Probe::MailRefused(r) => {
            // Asking again with the same null sender would only be refused
            // again: not for the other recipients of this session either.
            prober.unreachable = Some(dest.clone());
            null_sender_refused(ctx, &domain.name, addr, &r);
            fallback(ctx, cached, addr)
        }
        Probe::Unreachable(why) => {
            // A probe cut off mid-way leaves the connection in an unknown
            // state: never reuse it.
            prober.conn = None;
            prober.unreachable = Some(dest.clone());
            count(ctx, "unreachable");
            log::info!("id=NOQUEUE event=callahead_unreachable to=<{addr}> reason=\"{why}\"");
            fallback(ctx, cached, addr)
        }
    }
}

/// The primary's 5xx to RCPT: cached only when it is about the mailbox,
/// passed on to the client in any case.
async fn permanent(
    ctx: &Ctx,
    domain: &str,
    addr: &str,
    r: &Reply,
    now: u64,
) -> Result<(), (&'static str, Reply)> {
    match classify(r) {
        Refusal::NoSuchAddress => {
            count(ctx, "rejected");
            store(ctx, addr, false, r, now).await;
            Err(("callahead", refusal(addr, r)))
        }
        Refusal::Other => {
            // Passed on so the sender learns at once; queuing would only
            // bounce later if the primary refuses the backup itself.
            count(ctx, "policy_refusal");
            log::warn!(
                "id=NOQUEUE event=callahead_policy_refusal domain={domain} stage=rcpt to=<{addr}> reply=\"{r}\" hint=\"{}\"",
                hint(r)
            );
            Err(("callahead_policy", refusal(addr, r)))
        }
    }
}

/// The primary refused the probe's `MAIL FROM:<>`. The caller then accepts
/// (unless the cache knows better), as when the primary is unreachable:
/// the refusal is about our null sender, not the recipient, and the queued
/// mail is delivered later with its real sender, which the primary may
/// well accept. Postfix's address verification likewise calls an address
/// undeliverable only for an answer about the address. Passing the 5xx on
/// would refuse every recipient for the primary's mistake.
fn null_sender_refused(ctx: &Ctx, domain: &str, addr: &str, r: &Reply) {
    count(ctx, "null_sender_refused");
    log::warn!(
        "id=NOQUEUE event=callahead_policy_refusal domain={domain} stage=mail to=<{addr}> reply=\"{r}\" hint=\"the primary refuses MAIL FROM:<> (needed for bounces and call-ahead): accept it from the backup MX\""
    );
}

/// No answer about `addr` now: an earlier "no such address" still
/// refuses, anything else is accepted.
fn fallback(ctx: &Ctx, cached: Option<Cached>, addr: &str) -> Result<(), (&'static str, Reply)> {
    match cached.and_then(|c| c.refusal) {
        Some(r) => {
            count(ctx, "cache_negative");
            Err(("callahead", refusal(addr, &r)))
        }
        None => Ok(()),
    }
}

/// `550` carrying the primary's reason and enhanced code.
fn refusal(addr: &str, r: &Reply) -> Reply {
    let enh = status(r).unwrap_or(match classify(r) {
        Refusal::NoSuchAddress => Enhanced(5, 1, 1),
        Refusal::Other => Enhanced(5, 0, 0),
    });
    Reply::new(
        550,
        Some(enh),
        format!("<{addr}>: Recipient address rejected: {}", r.text()),
    )
}

async fn store(ctx: &Ctx, addr: &str, positive: bool, r: &Reply, now: u64) {
    let m = &ctx.config().main;
    let (expire, divisor) = if positive {
        (m.callahead_positive_ttl.as_secs(), POSITIVE_REFRESH_DIVISOR)
    } else {
        (m.callahead_negative_ttl.as_secs(), NEGATIVE_REFRESH_DIVISOR)
    };
    let refresh = (expire / divisor).max(1);
    ctx.spool
        .cache_put(
            addr.to_string(),
            CacheEntry {
                positive,
                refresh: now + refresh,
                expire: now + expire,
                reply: r.one_line(),
            },
        )
        .await;
}

async fn probe(
    ctx: &Ctx,
    prober: &mut Prober,
    domain: &Domain,
    dest: &Destination,
    addr: &str,
) -> Probe {
    if prober.unreachable.as_ref() == Some(dest) {
        return Probe::Unreachable("primary unreachable earlier in this session".into());
    }
    let _slot = ctx.probes.acquire().await;
    if prober.conn.as_ref().is_none_or(|(d, _)| d != dest) {
        prober.close().await;
        let cfg = ctx.config();
        let started = Instant::now();
        match client::connect(ctx, &cfg, dest).await {
            Ok(c) => {
                if started.elapsed() > TARPIT_WARN {
                    warn(
                        ctx,
                        &domain.name,
                        "tarpit",
                        "the primary is slow to greet mxspool; exempt the backup MX's address from tarpitting/greet delays",
                    );
                }
                prober.conn = Some((dest.clone(), c));
            }
            Err(e) => return Probe::Unreachable(e.reason),
        }
    }
    let Some((_, conn)) = prober.conn.as_mut() else {
        return Probe::Unreachable("no connection".into());
    };
    let started = Instant::now();
    let r = ask(conn, addr).await;
    if started.elapsed() > TARPIT_WARN {
        warn(
            ctx,
            &domain.name,
            "tarpit",
            "the primary answers RCPT slowly; exempt the backup MX's address from tarpitting",
        );
    }
    match r {
        Ok(Heard::Rcpt(reply)) => Probe::Answer(reply),
        // Storage, greylisting, load: says nothing about the address (nor
        // does a 503 to the RCPT behind it); a tempfail, never a refusal.
        Ok(Heard::MailDeferred(reply)) => Probe::Answer(reply),
        Ok(Heard::MailRefused(mail_refused)) => {
            prober.close().await;
            Probe::MailRefused(mail_refused)
        }
        Err(e) => {
            prober.conn = None;
            Probe::Unreachable(e)
        }
    }
}

/// What one probe round heard.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// MAIL accepted: the answer to RCPT.
    Rcpt(Reply),
    /// MAIL got 4xx: try again later, whatever the address.
    MailDeferred(Reply),
    /// MAIL got 5xx: the primary refuses `MAIL FROM:<>`.
    MailRefused(Reply),
}

/// The probe's answer from its MAIL and RCPT replies: RCPT counts only
/// behind an accepted MAIL.
fn heard(mail: Option<Reply>, rcpt: Option<Reply>) -> Result<Heard, String> {
    match (mail, rcpt) {
        (Some(m), _) if m.is_transient() => Ok(Heard::MailDeferred(m)),
        (Some(m), _) if !m.is_positive() => Ok(Heard::MailRefused(m)),
        (Some(_), Some(r)) => Ok(Heard::Rcpt(r)),
        _ => Err("no answer to RCPT".into()),
    }
}

/// One `MAIL FROM:<>` / `RCPT TO` / RSET round on an open connection; Err
/// on a broken connection.
async fn ask(conn: &mut Conn, addr: &str) -> Result<Heard, String> {
    conn.client.send_probe("", &[addr.to_string()]);
    let mut mail: Option<Reply> = None;
    let mut rcpt: Option<Reply> = None;
    loop {
        match conn.event().await.map_err(|e| e.to_string())? {
            Event::MailReply(r) => mail = Some(r),
            Event::RcptReply { reply, .. } => rcpt = Some(reply),
            Event::ProbeDone => break,
            Event::Failed { reply, reason } => {
                return Err(reply.map(|r| r.one_line()).unwrap_or(reason));
            }
            Event::Closed => return Err("connection closed".into()),
            _ => {}
        }
    }
    heard(mail, rcpt)
}

/// Asks once per interval about an address that cannot exist: a 2xx means
/// the primary accepts everything (call-ahead cannot protect the queue), a
/// 4xx means it soft-rejects unknown users (Exim's `random` check).
async fn random_check(
    ctx: &Ctx,
    prober: &mut Prober,
    domain: &Domain,
    dest: &Destination,
    now: u64,
) {
    {
        let mut last = ctx.random_checks.borrow_mut();
        let due = last
            .get(&domain.name)
            .is_none_or(|&t| now.saturating_sub(t) >= RANDOM_CHECK_INTERVAL);
        if !due {
            return;
        }
        if last.len() > 1024 {
            last.clear();
        }
        last.insert(domain.name.clone(), now);
    }
    let Some((d, conn)) = prober.conn.as_mut() else {
        return;
    };
    if d != dest {
        return;
    }
    let local = format!("mxspool-check-{:x}", crate::time::now_unix() ^ 0x5bd1_e995);
    let addr = format!("{local}@{}", domain.name);
    match ask(conn, &addr).await {
        Ok(Heard::Rcpt(r)) if r.is_positive() => warn(
            ctx,
            &domain.name,
            "accept_all",
            "the primary accepts mail for any address at RCPT, so call-ahead cannot keep spam for unknown users out of the backup's queue; make it reject unknown users at RCPT",
        ),
        Ok(Heard::Rcpt(r)) if r.is_transient() => warn(
            ctx,
            &domain.name,
            "soft_reject",
            "the primary answers 4xx for unknown users; make it answer 550 so the backup can refuse them",
        ),
        Ok(_) => {}
        Err(_) => prober.conn = None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::{Client, Timeouts};

    /// A pipelined probe against `replies` (after the greeting and EHLO),
    /// read the way `ask` reads it.
    fn probe_replies(replies: &[u8]) -> Result<Heard, String> {
        let mut c = Client::new("mx2.example.net", Timeouts::default());
        c.receive(b"220 mx ESMTP\r\n250-mx\r\n250 PIPELINING\r\n");
        c.send_probe("", &["u@example.com".to_string()]);
        c.receive(replies);
        let (mut mail, mut rcpt) = (None, None);
        while let Some(e) = c.poll_event() {
            match e {
                Event::MailReply(r) => mail = Some(r),
                Event::RcptReply { reply, .. } => rcpt = Some(reply),
                _ => {}
            }
        }
        heard(mail, rcpt)
    }

    /// A 4xx at MAIL (storage, greylisting) is a tempfail for the address,
    /// never the 503 the primary gives the RCPT behind it; a 5xx at MAIL is
    /// the primary refusing `<>`; behind an accepted MAIL, RCPT decides.
    #[test]
    fn mail_4xx_is_a_tempfail_not_the_rcpt_503() {
        let need_mail = b"503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n";
        let heard =
            probe_replies(&[b"452 4.3.1 Insufficient system storage\r\n", &need_mail[..]].concat());
        assert!(
            matches!(&heard, Ok(Heard::MailDeferred(r)) if r.code == 452),
            "{heard:?}"
        );
        let heard = probe_replies(&[b"550 5.7.1 No null sender\r\n", &need_mail[..]].concat());
        assert!(
            matches!(&heard, Ok(Heard::MailRefused(r)) if r.code == 550),
            "{heard:?}"
        );
        let heard = probe_replies(b"250 ok\r\n550 5.1.1 User unknown\r\n250 ok\r\n");
        assert!(
            matches!(&heard, Ok(Heard::Rcpt(r)) if r.code == 550),
            "{heard:?}"
        );
    }

    fn reply(line: &str) -> Reply {
        parse_line(line).unwrap_or_else(|| panic!("unparsable {line:?}"))
    }

    #[test]
    fn refusal_carries_the_primarys_code_and_text() {
        let r = refusal(
            "u@example.com",
            &reply("550 5.1.1 <u@example.com>: User unknown"),
        );
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert!(r.text().ends_with("<u@example.com>: User unknown"));
        let r = refusal("u@example.com", &reply("550 no such mailbox"));
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert!(r.text().ends_with("rejected: no such mailbox"));
        // Not about the mailbox: never dressed up as 5.1.1.
        let r = refusal("u@example.com", &reply("554 5.7.1 Client host rejected"));
        assert_eq!(r.enhanced, Some(Enhanced(5, 7, 1)));
        assert!(r.text().ends_with("rejected: Client host rejected"));
        let r = refusal("u@example.com", &reply("554 Client host rejected"));
        assert_eq!(r.enhanced, Some(Enhanced(5, 0, 0)));
    }

    #[test]
    fn only_mailbox_refusals_mean_no_such_address() {
        use Refusal::{NoSuchAddress as No, Other};
        for (line, want) in [
            (
                "550 5.1.1 <u@example.com>: Recipient address rejected: User unknown",
                No,
            ),
            ("550 5.1.2 bad destination system", No),
            ("553 5.1.3 bad address syntax", No),
            ("551 5.1.6 mailbox moved", No),
            ("550 5.1.10 null MX", No),
            ("550 User unknown", No),
            ("551 User not local", No),
            ("553 mailbox name not allowed", No),
            (
                "554 5.7.1 <mx2[192.0.2.1]>: Client host rejected: Access denied",
                Other,
            ),
            ("550 5.7.1 <u@example.com>: Relay access denied", Other),
            ("550 5.7.27 sender has a null MX", Other),
            ("552 5.2.2 mailbox full", Other),
            ("550 5.2.1 mailbox disabled", Other),
            ("554 5.3.0 system error", Other),
            ("503 5.5.1 need MAIL", Other),
            ("554 Client host rejected", Other),
            ("552 exceeded storage allocation", Other),
            ("501 syntax error", Other),
            ("521 does not accept mail", Other),
            // An enhanced code of the wrong class is ignored: the basic
            // code decides.
            ("550 4.7.1 confused", No),
            ("554 2.1.1 confused", Other),
        ] {
            assert_eq!(classify(&reply(line)), want, "{line}");
        }
    }

    #[test]
    fn hints_name_the_backup_being_refused_for_policy() {
        assert!(hint(&reply("554 5.7.1 Client host rejected")).contains("refuses this backup MX"));
        assert!(hint(&reply("554 Client host rejected")).contains("refuses this backup MX"));
        assert!(hint(&reply("503 5.5.1 need MAIL")).contains("not the mailbox"));
    }

    #[test]
    fn cached_policy_refusals_of_older_versions_are_ignored() {
        let entry = |positive, reply: &str| CacheEntry {
            positive,
            refresh: 10,
            expire: 20,
            reply: reply.into(),
        };
        let no_such = entry(false, "550 5.1.1 User unknown");
        let r = usable(&no_such, 5).and_then(|c| c.refusal);
        assert_eq!(r.map(|r| r.code), Some(550));
        assert!(usable(&no_such, 20).is_none(), "expired");
        assert!(usable(&entry(false, "554 5.7.1 Client host rejected"), 5).is_none());
        assert!(usable(&entry(false, "garbage"), 5).is_none());
        let ok = usable(&entry(true, "250 2.1.5 Ok"), 5);
        assert!(ok.is_some_and(|c| c.refusal.is_none() && c.refresh == 10));
    }

    #[test]
    fn stored_lines_parse_back() {
        let r = Reply::enh(550, (5, 1, 1), "<u@x>: User unknown");
        assert_eq!(parse_line(&r.one_line()), Some(r));
        let r = Reply::new(550, None, "User unknown");
        assert_eq!(parse_line(&r.one_line()), Some(r));
        assert_eq!(parse_line("55"), None);
        assert_eq!(parse_line("+50 x"), None);
        assert_eq!(parse_line("é50 x"), None);
    }
}
