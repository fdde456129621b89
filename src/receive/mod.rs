//! Receiving mail: the listeners with their connection limits, the driver
//! that runs one `smtp::server::Session` per connection, and the policy
//! consulted at MAIL, RCPT and DATA.

pub mod callahead;
pub mod dnsbl;
pub mod policy;
pub mod pregreet;
pub mod scan;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use async_net::{TcpListener, TcpStream};
use futures_lite::AsyncWriteExt;

use crate::ctx::Ctx;

pub use crate::ctx::{Entry, Listeners};

impl Listeners {
    /// Binds every `listen` address (before any privilege drop).
    pub fn bind(addrs: &[SocketAddr]) -> Result<Listeners, String> {
        let l = Listeners::default();
        for a in addrs {
            match bind_one(*a) {
                Ok(s) => l.push(*a, s),
                // The default configuration listens on [::]:25 and
                // 0.0.0.0:25: a router kernel built without IPv6 still
                // gets its IPv4 listener.
                Err(e) if no_ipv6(a, &e) && addrs.iter().any(|o| o.is_ipv4()) => {
                    log::warn!(
                        "id=NOQUEUE event=listen_skipped addr={a} reason=\"this kernel has no IPv6\""
                    );
                }
                Err(e) => return Err(format!("cannot listen on {a}: {e}")),
            }
        }
        Ok(l)
    }

    fn add(&self, a: SocketAddr) -> Result<(), String> {
        let s = bind_one(a).map_err(|e| format!("cannot listen on {a}: {e}"))?;
        self.push(a, s);
        Ok(())
    }

    fn push(&self, a: SocketAddr, s: std::net::TcpListener) {
        let local = s.local_addr().unwrap_or(a);
        self.entries.borrow_mut().push(Entry {
            addr: a,
            local,
            socket: Some(s),
            stop: None,
        });
    }

    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Stops accepting on every listener.
    pub fn close(&self) {
        self.closed.set(true);
        for e in self.entries.borrow_mut().drain(..) {
            if let Some(stop) = e.stop {
                let _ = stop.try_send(());
            }
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.entries.borrow().iter().map(|e| e.local).collect()
    }

    /// After a reload: closes listeners no longer configured and binds the
    /// new ones; sessions in progress are not touched.
    pub fn apply(&self, ctx: &Rc<Ctx>, addrs: &[SocketAddr]) {
        self.entries.borrow_mut().retain(|e| {
            let keep = addrs.contains(&e.addr);
            if !keep {
                log::info!("event=listen_closed address={}", e.addr);
                if let Some(stop) = &e.stop {
                    let _ = stop.try_send(());
                }
            }
            keep
        });
        for a in addrs {
            let have = self.entries.borrow().iter().any(|e| e.addr == *a);
            if !have {
                match self.add(*a) {
                    Ok(()) => log::info!("event=listen_opened address={a}"),
                    Err(e) => log::error!("event=listen_error error=\"{e}\""),
                }
            }
        }
        start(ctx);
    }
}

/// Pending connections the kernel queues for one listener.
const BACKLOG: i32 = 128;

/// Binds (as root: port 25) but does not listen yet: `start` does, once the
/// daemon is ready, so a client (procd, a test) that sees the port accept
/// knows the spool is open and SIGHUP/SIGTERM are handled.
/// Whether binding `addr` failed because the kernel has no IPv6 at all
/// (built without it, or booted with ipv6.disable=1).
fn no_ipv6(addr: &SocketAddr, e: &std::io::Error) -> bool {
    addr.is_ipv6() && e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error())
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let family = if addr.is_ipv6() {
        rustix::net::AddressFamily::INET6
    } else {
        rustix::net::AddressFamily::INET
    };
    let sock = rustix::net::socket(family, rustix::net::SocketType::STREAM, None)?;
    // An IPv6 wildcard is made v6-only (bindv6only=0 would clash with
    // 0.0.0.0:25); SO_REUSEADDR so a restart does not wait for TIME_WAIT.
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&sock, true)?;
    }
    rustix::net::sockopt::set_socket_reuseaddr(&sock, true)?;
    rustix::net::bind(&sock, &addr)?;
    Ok(std::net::TcpListener::from(sock))
}

/// Starts an accept loop for every listener not yet accepting.
pub fn start(ctx: &Rc<Ctx>) {
    let mut started = vec![];
    for e in ctx.listeners.entries.borrow_mut().iter_mut() {
        if let Some(sock) = e.socket.take() {
            let (tx, rx) = smol::channel::bounded(1);
            e.stop = Some(tx);
            started.push((sock, rx));
        }
    }
    for (sock, rx) in started {
        let listening = rustix::net::listen(&sock, BACKLOG)
            .map_err(std::io::Error::from)
            .and_then(|()| TcpListener::try_from(sock));
        match listening {
            Ok(sock) => ctx.spawn(accept_loop(ctx.clone(), sock, rx)),
            Err(e) => log::error!("event=listen_error error=\"{e}\""),
        }
    }
}

/// Decrements the connection counts when a session ends, however it ends.
struct Slot {
    ctx: Rc<Ctx>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let l = &self.ctx.listeners;
        l.active.set(l.active.get().saturating_sub(1));
        let mut m = l.per_ip.borrow_mut();
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(ctx: Rc<Ctx>, listener: TcpListener, stop: smol::channel::Receiver<()>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        if ctx.listeners.closed.get() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                log::warn!("event=accept_error error=\"{e}\"");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = canonical_ip(peer.ip());
        let cfg = ctx.config();
        let l = &ctx.listeners;
        let per_ip = l.per_ip.borrow().get(&ip).copied().unwrap_or(0);
        if l.active.get() >= cfg.main.max_connections || per_ip >= cfg.main.max_connections_per_ip {
            log::info!(
                "id=NOQUEUE event=reject stage=connect client=[{ip}] reason=too_many_connections active={} from_ip={per_ip}",
                l.active.get()
            );
            ctx.stats.borrow_mut().reject("connections");
            let host = cfg.main.hostname.clone();
            ctx.spawn(refuse(stream, host));
            continue;
        }
        l.active.set(l.active.get() + 1);
        *l.per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
        let slot = Slot {
            ctx: ctx.clone(),
            ip,
        };
        let local = stream.local_addr().ok();
        ctx.spawn(async move {
            let rest = session::serve(
                slot.ctx.clone(),
                stream,
                SocketAddr::new(ip, peer.port()),
                local,
            )
            .await;
            // A lingering close does not hold a connection slot.
            drop(slot);
            if let Some(mut s) = rest {
                s.linger_close().await;
            }
        });
    }
}

/// Over a connection limit: RFC 5321 allows a 421 in place of the greeting.
/// A refused client's unread bytes would turn our close into a reset that
/// can destroy the 421; this long is spent draining them (short: refusals
/// hold no slot, so a flood must not pile them up).
pub const REFUSAL_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

async fn refuse(mut stream: TcpStream, host: String) {
    use futures_lite::AsyncReadExt;
    let line = format!("421 4.7.0 {host} Too many connections, try again later\r\n");
    let write = stream.write_all(line.as_bytes());
    let written = futures_lite::future::or(async { write.await.ok() }, async {
        smol::Timer::after(std::time::Duration::from_secs(5)).await;
        None
    })
    .await;
    if written.is_none() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 1024];
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    futures_lite::future::or(drain, async {
        smol::Timer::after(REFUSAL_DRAIN).await;
    })
    .await;
}

pub use crate::net::canonical_ip;

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_kernel_without_ipv6_lets_an_ipv6_listener_be_skipped() {
        let v6: std::net::SocketAddr = "[::]:25".parse().unwrap();
        let v4: std::net::SocketAddr = "0.0.0.0:25".parse().unwrap();
        let afno = std::io::Error::from_raw_os_error(rustix::io::Errno::AFNOSUPPORT.raw_os_error());
        let inuse = std::io::Error::from_raw_os_error(rustix::io::Errno::ADDRINUSE.raw_os_error());
        assert!(super::no_ipv6(&v6, &afno));
        assert!(!super::no_ipv6(&v6, &inuse), "a port in use is an error");
        assert!(!super::no_ipv6(&v4, &afno));
    }
}
