//! From a destination to the addresses to try, resolved at every attempt so
//! the owner's dynamic address may change while mail waits.

use std::net::{IpAddr, SocketAddr};

use super::destination::Destination;

/// One address to try, with the name it was found under (for the log and
/// the guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// Why no address could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Try again later (DNS timeout, no answer yet).
    Temporary(String),
    /// The destination cannot exist (null MX, loop to ourselves).
    Permanent(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Temporary(s) | RouteError::Permanent(s) => f.write_str(s),
        }
    }
}

/// Strips the brackets of `[::1]`.
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The addresses for `dest`, in the order to try them.
pub async fn resolve(dest: &Destination) -> Result<Vec<Target>, RouteError> {
    match dest {
        Destination::Relay { host, port } => {
            if let Some(ip) = literal(host) {
                return Ok(vec![Target {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, *port),
                }]);
            }
            let name = format!("{host}:{port}");
            let addrs = smol::unblock(move || {
                std::net::ToSocketAddrs::to_socket_addrs(&name).map(|a| a.collect::<Vec<_>>())
            })
            .await
            .map_err(|e| RouteError::Temporary(format!("cannot resolve {host}: {e}")))?;
            if addrs.is_empty() {
                return Err(RouteError::Temporary(format!("{host} has no address")));
            }
            Ok(addrs
                .into_iter()
                .map(|addr| Target {
                    host: host.clone(),
                    addr,
                })
                .collect())
        }
        Destination::Mx { domain, .. } => Err(RouteError::Temporary(format!(
            "MX delivery for {domain} needs the DNS resolver, not in this build yet"
        ))),
    }
}
