//! One connection to a destination's host, used by deliveries and by the
//! call-ahead alike: resolve the destination (`route`), pick the first
//! address the guard allows, connect, read the greeting, EHLO, STARTTLS
//! when offered, and the guard's checks of the names and the certificate
//! pin. The SMTP conversation itself is `smtp::client::Client`; its timer
//! rules are the machine's, this driver only sleeps until `poll_timeout`.

use std::time::{Duration, Instant};

use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::guard;
use super::route::{self, RouteError, Target};
use crate::alert::Kind;
use crate::config::{Config, DeliverTo, Domain};
use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::smtp::client::{Client, Event, Expired, Extensions, Timeouts};
use crate::spool::Destination;
use crate::tls::Stream;

/// Records what `dest` resolved to for an attempt (delivery, call-ahead):
/// the host check compares against it (`deliver::hostcheck`).
fn seen(ctx: &Ctx, dest: &Destination, targets: &[Target]) {
    let now = targets.iter().map(|t| t.addr.ip()).collect();
    ctx.deliverer
        .resolved
        .borrow_mut()
        .insert(dest.clone(), now);
}

/// Bound on one write to a stalled socket (I/O, not an SMTP timer).
const WRITE_TIMEOUT: Duration = crate::smtp::client::REPLY_TIMEOUT;
/// Socket read size.
pub const READ_BUF: usize = 4096;

/// One connection to a destination host.
pub struct Conn {
    stream: Stream,
    pub client: Client,
    buf: Vec<u8>,
    pub target: Target,
    /// What the server offered in its (last) EHLO reply.
    pub ext: Extensions,
}

/// Why waiting on the server ended without an event.
#[derive(Debug)]
pub enum ConnError {
    /// The socket failed, or a write stalled.
    Io(String),
    /// One of the client's timers.
    Expired(Expired),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => f.write_str(e),
            ConnError::Expired(e) => e.fmt(f),
        }
    }
}

/// The client's timeouts under `cfg`.
pub fn timeouts(cfg: &Config) -> Timeouts {
    Timeouts {
        greeting: cfg.main.greeting_timeout,
        transaction: cfg.main.transaction_timeout,
        ..Timeouts::default()
    }
}

/// Runs `io` until `bound` or the client's deadline, whichever comes
/// first; the client decides whether its deadline expired.
async fn bounded<T>(
    client: &mut Client,
    io: impl std::future::Future<Output = Result<T, String>>,
    bound: Option<Instant>,
    late: &str,
) -> Result<T, ConnError> {
    let until = match (client.poll_timeout(), bound) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let r = match until {
        None => Some(io.await),
        Some(t) => {
            futures_lite::future::or(async { Some(io.await) }, async {
                smol::Timer::at(t).await;
                None
            })
            .await
        }
    };
    match r {
        Some(r) => r.map_err(ConnError::Io),
        None => match client.handle_timeout(Instant::now()) {
            Some(e) => Err(ConnError::Expired(e)),
            None => Err(ConnError::Io(late.to_string())),
        },
    }
}

impl Conn {
    /// `host[ip]:port`, as logs and DSNs name the server.
    pub fn relay(&self) -> String {
        format!(
            "{}[{}]:{}",
            self.target.host,
            self.target.addr.ip(),
            self.target.addr.port()
        )
    }

    async fn connect(
        target: Target,
        timeout: Duration,
        ehlo: &str,
        timeouts: Timeouts,
    ) -> Result<Conn, String> {
        let addr = target.addr;
        let stream = futures_lite::future::or(
            async {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect to {addr}: {e}"))
            },
            async {
                smol::Timer::after(timeout).await;
                Err(format!("connect to {addr}: timed out"))
            },
        )
        .await?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream: Stream::Plain(stream),
            client: Client::new(ehlo, timeouts),
            buf: vec![0u8; READ_BUF],
            target,
            ext: Extensions::default(),
        })
    }

    /// Writes what the client has to send.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let out = self.client.take_output();
        if out.is_empty() {
            return Ok(());
        }
        let w = self.stream.write_all(&out);
        let io = async { w.await.map_err(|e| format!("write: {e}")) };
        let bound = Some(Instant::now() + WRITE_TIMEOUT);
        bounded(&mut self.client, io, bound, "write: timed out").await
    }

    /// The next client event, reading as needed. The client's timers
    /// bound the whole wait, not each read: a reply trickled a byte at a
    /// time cannot stretch it.
    pub async fn event(&mut self) -> Result<Event, ConnError> {
        self.client.waiting(Instant::now());
        loop {
            self.flush().await?;
            if let Some(e) = self.client.poll_event() {
                return Ok(e);
            }
            if !self.client.wants_input() {
                return Err(ConnError::Io("client state machine stalled".into()));
            }
            let stream = &mut self.stream;
            let buf = &mut self.buf;
            let io = async { stream.read(buf).await.map_err(|e| format!("read: {e}")) };
            let n = bounded(
                &mut self.client,
                io,
                None,
                "timed out waiting for the server",
            )
            .await?;
            if n == 0 {
                self.client.eof();
            } else {
                self.client.receive(&self.buf[..n]);
            }
        }
    }

    /// QUIT, within the client's quit timeout.
    pub async fn quit(mut self) {
        self.client.quit();
        loop {
            match self.event().await {
                Ok(Event::Closed) | Ok(Event::Failed { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The domain section whose mail goes to `dest` (for the guard settings).
fn domain_for<'a>(cfg: &'a Config, dest: &Destination) -> Option<&'a Domain> {
    cfg.domains.iter().find(|d| match (&d.deliver_to, dest) {
        (DeliverTo::Relay(hp), Destination::Relay { host, port }) => {
            hp.host == *host && hp.port == *port
        }
        (DeliverTo::Mx, Destination::Mx { domain, .. }) => d.name == *domain,
        _ => false,
    })
}

/// Why no connection to a destination could be made.
pub struct ConnectError {
    pub reason: String,
    /// The destination cannot work (null MX, a loop): return the mail.
    pub permanent: bool,
}

/// Resolves `dest` and connects to the first address that passes the
/// guard, answers, and (when pinned) proves its key. Used by delivery and
/// call-ahead alike.
pub async fn connect(ctx: &Ctx, cfg: &Config, dest: &Destination) -> Result<Conn, ConnectError> {
    let resolver = ctx.resolver.borrow().clone();
    let targets = match route::resolve(&resolver, &cfg.main.hostname, dest).await {
        Ok(t) => t,
        Err(e) => {
            return Err(ConnectError {
                permanent: matches!(e, RouteError::Permanent(_)),
                reason: e.to_string(),
            });
        }
    };
    seen(ctx, dest, &targets);
    let domain = domain_for(cfg, dest);
    let own = ctx.listeners.local_addrs();
    let mut errors: Vec<String> = vec![];
    for t in targets {
        if let Err(why) = guard::check_address(domain, t.addr, &own) {
            guard_refusal(ctx, dest, &t, &why);
            errors.push(format!("guard: {why}"));
            continue;
        }
        let pinned = domain.is_some_and(|d| d.tls_pin.is_some());
        let mut result = open(ctx, cfg, t.clone(), domain, true).await;
        if let Err(OpenError::Tls(e)) = &result
            && !pinned
        {
            // Opportunistic TLS (RFC 7435): a broken TLS stack at the
            // primary must not hold its mail hostage; try in the clear.
            log::warn!(
                "id=NOQUEUE event=tls_failed destination={dest} error=\"{e}\" action=plaintext"
            );
            result = open(ctx, cfg, t.clone(), domain, false).await;
        }
        match result {
            Ok(c) => return Ok(c),
            Err(OpenError::Guard(t, why)) => {
                guard_refusal(ctx, dest, &t, &why);
                errors.push(format!("guard: {why}"));
            }
            Err(OpenError::Tls(e)) => {
                if pinned {
                    guard_refusal(ctx, dest, &t, &e);
                    errors.push(format!("guard: {e}"));
                } else {
                    errors.push(e);
                }
            }
            Err(OpenError::Other(e)) => errors.push(e),
        }
    }
    Err(ConnectError {
        reason: if errors.is_empty() {
            "no address to try".to_string()
        } else {
            errors.join("; ")
        },
        permanent: false,
    })
}

fn guard_refusal(ctx: &Ctx, dest: &Destination, t: &Target, why: &str) {
    ctx.stats.borrow_mut().guard_refusals += 1;
    log::warn!(
        "id=NOQUEUE event=guard_refusal destination={dest} address={} reason=\"{why}\"",
        t.addr
    );
    ctx.alert(
        Kind::GuardRefusal,
        &format!("mail for {dest} was not handed to {}: {why}", t.addr),
        &[
            ("destination", dest.to_string()),
            ("address", t.addr.to_string()),
        ],
    );
}

enum OpenError {
    Guard(Target, String),
    /// STARTTLS was offered but failed: worth one plaintext try (unless pinned).
    Tls(String),
    Other(String),
}

/// Connects, reads the greeting, says EHLO, upgrades to TLS when offered,
/// and applies the guard (greeting and EHLO names, certificate pin).
async fn open(
    ctx: &Ctx,
    cfg: &Config,
    t: Target,
    domain: Option<&Domain>,
    use_tls: bool,
) -> Result<Conn, OpenError> {
    let mut c = Conn::connect(
        t.clone(),
        cfg.main.connect_timeout,
        &cfg.main.hostname,
        timeouts(cfg),
    )
    .await
    .map_err(OpenError::Other)?;
    let relay = c.relay();
    let mut asked_tls = false;
    loop {
        match c.event().await {
            Ok(Event::Ready {
                greeting,
                ehlo,
                extensions,
            }) => {
                c.ext = extensions;
                match on_ready(&c, cfg, domain, use_tls, &greeting, &ehlo) {
                    Ok(Opened::Ready) => return Ok(c),
                    Ok(Opened::StartTls) => {
                        asked_tls = true;
                        c.client.starttls();
                    }
                    Err(why) => {
                        c.quit().await;
                        return Err(OpenError::Guard(t, why));
                    }
                }
            }
            Ok(Event::StartTls) => handshake(ctx, &mut c, &relay).await?,
            Ok(Event::Failed { reply, reason }) => {
                let r = reply.map(|r| r.one_line()).unwrap_or(reason);
                if asked_tls && !c.stream.is_tls() {
                    return Err(OpenError::Tls(format!("{relay}: STARTTLS: {r}")));
                }
                return Err(OpenError::Other(format!("{relay}: {r}")));
            }
            Ok(_) => {}
            Err(e) => return Err(OpenError::Other(format!("{relay}: {e}"))),
        }
    }
}

/// What `open` does after `Ready`.
enum Opened {
    /// The connection is ready for mail.
    Ready,
    /// Ask for STARTTLS first.
    StartTls,
}

/// The guard's checks after `Ready`: the greeting and EHLO names in the
/// clear, then STARTTLS when offered, the pin under TLS. Err: the guard's
/// reason (the caller says QUIT).
fn on_ready(
    c: &Conn,
    cfg: &Config,
    domain: Option<&Domain>,
    use_tls: bool,
    greeting: &Reply,
    ehlo: &Reply,
) -> Result<Opened, String> {
    let pin = domain.and_then(|d| d.tls_pin.as_deref());
    if !c.stream.is_tls() {
        let g = greeting.lines.first().cloned().unwrap_or_default();
        let e = ehlo.lines.first().cloned().unwrap_or_default();
        guard::check_greeting(domain, &cfg.main.hostname, &g)
            .and_then(|()| guard::check_greeting(domain, &cfg.main.hostname, &e))?;
        if use_tls && c.ext.starttls {
            return Ok(Opened::StartTls);
        }
        if pin.is_some() {
            return Err("tls_pin is set but the server did not offer STARTTLS".into());
        }
        return Ok(Opened::Ready);
    }
    if let Some(p) = pin {
        let got = c
            .stream
            .peer_certificate()
            .and_then(|d| crate::tls::pin_of(&d));
        if got.as_deref() != Some(p) {
            return Err(format!(
                "certificate key {} does not match tls_pin",
                got.unwrap_or_else(|| "(none)".into())
            ));
        }
    }
    Ok(Opened::Ready)
}

/// The TLS handshake after STARTTLS's 220, bounded by the client's timer.
async fn handshake(ctx: &Ctx, c: &mut Conn, relay: &str) -> Result<(), OpenError> {
    let name = crate::tls::server_name(&c.target.host, c.target.addr.ip());
    c.client.waiting(Instant::now());
    let stream = &mut c.stream;
    let io = async {
        stream
            .connect_tls(ctx.tls_client.clone(), name)
            .await
            .map_err(|e| format!("{relay}: TLS: {e}"))
    };
    let late = format!("{relay}: TLS handshake timed out");
    match bounded(&mut c.client, io, None, &late).await {
        Ok(()) => {
            c.client.tls_established();
            Ok(())
        }
        Err(ConnError::Io(e)) => Err(OpenError::Tls(e)),
        Err(ConnError::Expired(_)) => Err(OpenError::Tls(late)),
    }
}
