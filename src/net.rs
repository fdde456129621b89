//! Address helpers shared by the listeners and the delivery guard.

use std::net::IpAddr;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 client it stands for.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
