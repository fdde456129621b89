//! The early-talker test (postscreen's pregreet): with `greet_pause` set we
//! wait that long before our 220. A real MTA waits for the greeting
//! (RFC 5321 3.1); a spam bot that fires its commands blind talks into
//! the silence and is refused with `554 5.5.1` and disconnected.

use std::net::IpAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::Ctx;
use crate::smtp::Reply;
use crate::tls::Stream;

/// How long the refusal may take to write: the client is not ours to wait for.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);
/// The most we read (and discard) from an early talker before closing.
const DRAIN_LIMIT: usize = 64 * 1024;

/// What the client did during the pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Nothing: greet it.
    Quiet,
    /// It sent something before our greeting.
    Talked,
    /// It closed the connection (or the socket failed).
    Gone,
}

/// Waits `t` while watching the socket.
pub async fn pause(stream: &mut Stream, t: Duration) -> Pause {
    // One byte is enough to know; whatever was sent is discarded anyway.
    let mut b = [0u8; 1];
    futures_lite::future::or(
        async {
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => Pause::Gone,
                Ok(_) => Pause::Talked,
            }
        },
        async {
            smol::Timer::after(t).await;
            Pause::Quiet
        },
    )
    .await
}

/// The reply for an early talker.
pub fn refusal(hostname: &str) -> Reply {
    Reply::enh(
        554,
        (5, 5, 1),
        format!("{hostname} Protocol error (talked before greeting)"),
    )
}

/// The greeting pause of one connection (nothing for `client_allow`
/// clients or with `greet_pause '0s'`). False: the session is over (the
/// client talked first and was refused, or left).
pub async fn wait(ctx: &Ctx, stream: &mut Stream, ip: IpAddr) -> bool {
    let cfg = ctx.config();
    let m = &cfg.main;
    if m.greet_pause.is_zero() || m.client_allow.iter().any(|c| c.contains(ip)) {
        return true;
    }
    match pause(stream, m.greet_pause).await {
        Pause::Quiet => true,
        Pause::Gone => {
            log::debug!("id=NOQUEUE event=disconnect stage=greet_pause client=[{ip}]");
            false
        }
        Pause::Talked => {
            let reply = refusal(&m.hostname);
            log::info!(
                "id=NOQUEUE event=reject stage=connect client=[{ip}] reason=pregreet reply=\"{}\"",
                reply.one_line()
            );
            ctx.stats.borrow_mut().reject("pregreet");
            let bytes = reply.to_wire();
            let _ = futures_lite::future::or(
                async {
                    stream.write_all(&bytes).await.ok()?;
                    // Half-close, then swallow what the client still sends:
                    // closing with unread input would reset the connection
                    // and could destroy our reply before the client reads it.
                    stream.close().await.ok()?;
                    let mut sink = [0u8; 1024];
                    let mut left = DRAIN_LIMIT;
                    while left > 0 {
                        match stream.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                    Some(())
                },
                async {
                    smol::Timer::after(REFUSAL_WRITE).await;
                    None
                },
            )
            .await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The early talker's reply is a permanent protocol error with the
    // wording clients and the integration tests look for.
    #[test]
    fn refusal_wording() {
        assert_eq!(
            refusal("mx.example.net").one_line(),
            "554 5.5.1 mx.example.net Protocol error (talked before greeting)"
        );
    }

    fn pair() -> (Stream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let server = async_net::TcpStream::try_from(server).unwrap();
        (Stream::Plain(server), client)
    }

    // A silent client is greeted after the pause; one that writes first
    // is caught; one that hangs up is gone (not counted as a talker).
    #[test]
    fn pause_outcomes() {
        use std::io::Write;
        let (mut s, _c) = pair();
        let r = smol::block_on(pause(&mut s, Duration::from_millis(50)));
        assert_eq!(r, Pause::Quiet);

        let (mut s, mut c) = pair();
        c.write_all(b"EHLO bot\r\n").unwrap();
        let r = smol::block_on(pause(&mut s, Duration::from_secs(5)));
        assert_eq!(r, Pause::Talked);

        let (mut s, c) = pair();
        drop(c);
        let r = smol::block_on(pause(&mut s, Duration::from_secs(5)));
        assert_eq!(r, Pause::Gone);
    }
}
