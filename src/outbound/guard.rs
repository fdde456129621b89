//! The dynamic-IP guard: before any message is handed over, make sure the
//! host that answers is the owner's server and not whoever inherited its
//! old address. A refusal is never a bounce: the mail stays queued.

use std::net::SocketAddr;

use crate::config::Domain;

/// Checks made before connecting: the address is not an `offline_address`
/// and not one of our own listeners (that would loop back to us).
pub fn check_address(
    domain: Option<&Domain>,
    addr: SocketAddr,
    own: &[SocketAddr],
) -> Result<(), String> {
    let ip = crate::net::canonical_ip(addr.ip());
    if let Some(d) = domain
        && d.offline_address.contains(&ip)
    {
        return Err(format!("{ip} is an offline_address of {}", d.name));
    }
    let ours = own.iter().any(|l| {
        l.port() == addr.port()
            && (crate::net::canonical_ip(l.ip()) == ip || (l.ip().is_unspecified() && is_local(ip)))
    });
    if ours {
        return Err(format!("{addr} is one of our own listen addresses"));
    }
    Ok(())
}

/// True when `ip` is an address of this machine (an interface address, or
/// loopback): only a local address can be bound.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_unspecified() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The first word of a 220 greeting's first line: the server's name.
pub fn greeting_host(greeting_line: &str) -> &str {
    greeting_line.split_whitespace().next().unwrap_or("")
}

/// Checks made on the greeting: it must not name us (we would deliver to
/// ourselves) and must name `expect_greeting` when that is set.
pub fn check_greeting(
    domain: Option<&Domain>,
    our_hostname: &str,
    greeting_line: &str,
) -> Result<(), String> {
    let host = greeting_host(greeting_line);
    if host.eq_ignore_ascii_case(our_hostname) {
        return Err(format!(
            "the server greets as {host}, our own hostname: mail would loop"
        ));
    }
    if let Some(d) = domain
        && let Some(expect) = &d.expect_greeting
        && !host.eq_ignore_ascii_case(expect)
    {
        return Err(format!(
            "the server greets as '{host}', not the expected '{expect}'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_naming_ourselves_is_refused() {
        assert!(check_greeting(None, "mx2.test", "MX2.test ESMTP").is_err());
        assert!(check_greeting(None, "mx2.test", "mail.test ESMTP").is_ok());
    }

    #[test]
    fn an_interface_address_on_our_wildcard_port_is_refused() {
        // 127.0.0.5 is local (all of 127/8 is); 192.0.2.1 (TEST-NET) is not.
        let own: Vec<SocketAddr> = vec!["0.0.0.0:2525".parse().unwrap()];
        assert!(check_address(None, "127.0.0.5:2525".parse().unwrap(), &own).is_err());
        assert!(check_address(None, "192.0.2.1:2525".parse().unwrap(), &own).is_ok());
    }

    #[test]
    fn own_listener_is_refused() {
        let own: Vec<SocketAddr> = vec!["0.0.0.0:2525".parse().unwrap()];
        assert!(check_address(None, "127.0.0.1:2525".parse().unwrap(), &own).is_err());
        assert!(check_address(None, "127.0.0.1:2526".parse().unwrap(), &own).is_ok());
    }
}
