//! Where a recipient's mail goes. Each recipient is tagged at receipt with
//! its destination; names are resolved again at every attempt, so the
//! owner's dynamic address may change while mail waits.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `deliver_to 'HOST[:PORT]'`: always this host (a name or an address).
    Relay { host: String, port: u16 },
    /// `deliver_to 'mx'`: the MX hosts of `domain` that rank above us.
    Mx { domain: String, port: u16 },
}

impl Destination {
    /// The stable text form stored in the spool: `relay HOST PORT` or
    /// `mx DOMAIN PORT`.
    pub fn encode(&self) -> String {
        match self {
            Destination::Relay { host, port } => format!("relay {host} {port}"),
            Destination::Mx { domain, port } => format!("mx {domain} {port}"),
        }
    }

    pub fn decode(s: &str) -> Option<Destination> {
        let mut it = s.split(' ');
        let kind = it.next()?;
        let name = it.next()?.to_string();
        let port: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || name.is_empty() {
            return None;
        }
        match kind {
            "relay" => Some(Destination::Relay { host: name, port }),
            "mx" => Some(Destination::Mx { domain: name, port }),
            _ => None,
        }
    }
}

/// As `queue list` shows it: `host:port` or `mx:domain:port`.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Relay { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            Destination::Relay { host, port } => write!(f, "{host}:{port}"),
            Destination::Mx { domain, port } => write!(f, "mx:{domain}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_spool_form() {
        for d in [
            Destination::Relay {
                host: "::1".into(),
                port: 2525,
            },
            Destination::Mx {
                domain: "example.com".into(),
                port: 25,
            },
        ] {
            assert_eq!(Destination::decode(&d.encode()), Some(d));
        }
        assert_eq!(Destination::decode("relay x"), None);
        assert_eq!(Destination::decode("other x 25"), None);
    }
}
