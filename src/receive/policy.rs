//! The policy hooks: what the session driver asks at connect, MAIL, RCPT
//! and DATA. Each returns Ok or the exact reply to give. Later checks
//! (DNSBL, call-ahead, scanners) slot in here without touching the
//! protocol code.

use std::net::IpAddr;

use crate::config::{Config, DeliverTo, Verify};
use crate::smtp::Reply;
use crate::smtp::server::{MailFrom, RcptTo};
use crate::spool::Destination;
use crate::spool::Spool;

/// Why a command was refused, for the stats and the log.
pub type Refusal = (&'static str, Reply);

/// At connect: `client_deny` unless `client_allow`.
pub fn connect(cfg: &Config, ip: IpAddr) -> Result<(), Refusal> {
    let m = &cfg.main;
    if m.client_allow.iter().any(|c| c.contains(ip)) {
        return Ok(());
    }
    if m.client_deny.iter().any(|c| c.contains(ip)) {
        return Err((
            "client_deny",
            Reply::enh(554, (5, 7, 1), format!("{} Access denied", m.hostname)),
        ));
    }
    Ok(())
}

fn sender_listed(list: &[String], sender: &str) -> bool {
    let sender = sender.to_ascii_lowercase();
    let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    list.iter().any(|e| {
        if e.contains('@') {
            *e == sender
        } else if let Some(parent) = e.strip_prefix('.') {
            // `.example.com` matches subdomains only.
            domain.ends_with(e.as_str()) && domain.len() > parent.len()
        } else {
            domain == e
        }
    })
}

/// Whether `sender` is in `sender_allow` (which skips `sender_deny` and
/// the DNSBLs). The null sender is never listed.
pub fn sender_allowed(cfg: &Config, sender: &str) -> bool {
    !sender.is_empty() && sender_listed(&cfg.main.sender_allow, sender)
}

/// The sender lists: `sender_deny` unless the client is in `client_allow`
/// or the sender in `sender_allow`.
pub fn sender(cfg: &Config, ip: IpAddr, sender: &str) -> Result<(), Refusal> {
    let m = &cfg.main;
    let client_allowed = m.client_allow.iter().any(|c| c.contains(ip));
    if !client_allowed
        && !sender.is_empty()
        && !sender_allowed(cfg, sender)
        && sender_listed(&m.sender_deny, sender)
    {
        return Err((
            "sender_deny",
            Reply::enh(
                554,
                (5, 7, 1),
                format!("<{sender}>: Sender address rejected: Access denied"),
            ),
        ));
    }
    Ok(())
}

/// The spool is over `max_spool_size` or the disk nearly full: RFC 1870's
/// temporary "insufficient storage", never a silent loss.
pub fn storage_full() -> Refusal {
    (
        "spool_full",
        Reply::enh(
            452,
            (4, 3, 1),
            "Insufficient system storage, try again later",
        ),
    )
}

/// At MAIL: sender lists and spool room for the announced SIZE.
pub fn mail(cfg: &Config, ip: IpAddr, mail: &MailFrom, spool: &Spool) -> Result<(), Refusal> {
    let m = &cfg.main;
    sender(cfg, ip, &mail.from.to_string())?;
    let size = mail.size.unwrap_or(0);
    if !spool.has_room(size, m.max_spool_size, m.max_message_size) {
        return Err(storage_full());
    }
    Ok(())
}

/// What RCPT decided: where the mail goes, and whether the primary must
/// still be asked (call-ahead) before accepting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOk {
    pub destination: Destination,
    pub callahead: bool,
}

/// At RCPT: our domain, no routing tricks, the user lists.
pub fn rcpt(cfg: &Config, rcpt: &RcptTo) -> Result<RcptOk, Refusal> {
    let to = &rcpt.to;
    let relay_denied = || {
        (
            "relay",
            Reply::enh(550, (5, 7, 1), format!("<{to}>: Relay access denied")),
        )
    };
    // A source route, a `%`/`!` hack or a quoted `@` asks the next hop to
    // relay further: refused outright, as Postfix does by default.
    if rcpt.source_route || to.is_routed() || to.is_literal() {
        return Err(relay_denied());
    }
    let Some(domain) = cfg.domain(&to.domain) else {
        return Err(relay_denied());
    };
    let listed = || {
        let local = to.local.to_lowercase();
        let full = format!("{local}@{}", to.domain);
        domain.users.iter().any(|u| *u == local || *u == full)
    };
    let callahead = domain.verify == Verify::Callahead && !listed();
    match domain.verify {
        Verify::Users if !listed() => {
            return Err((
                "unknown_user",
                Reply::enh(
                    550,
                    (5, 1, 1),
                    format!("<{to}>: Recipient address rejected: User unknown"),
                ),
            ));
        }
        _ => {}
    }
    let destination = match &domain.deliver_to {
        DeliverTo::Relay(hp) => Destination::Relay {
            host: hp.host.clone(),
            port: hp.port,
        },
        DeliverTo::Mx => Destination::Mx {
            domain: domain.name.clone(),
            port: domain.port,
        },
    };
    Ok(RcptOk {
        destination,
        callahead,
    })
}

/// At RCPT for a backup-MX domain: its MX records must leave a host better
/// than us (else the mail would loop), and DNS must answer (else 451, never
/// a guess).
pub async fn mx_route(
    resolver: &crate::dns::Resolver,
    domain: &crate::config::Domain,
    our_hostname: &str,
) -> Result<(), Refusal> {
    use crate::outbound::route::{self, MxPlan, RouteError};
    let name = &domain.name;
    match route::mx_plan(resolver, name, our_hostname).await {
        Ok(MxPlan::Hosts(hosts)) => {
            for h in hosts.iter().filter(|h| *h != name) {
                if let Ok(a) = resolver.ip(h).await
                    && let Some(c) = a.cname
                {
                    log::warn!(
                        "id=NOQUEUE event=dns_warning domain={name} kind=cname_mx mx={h} target={c} advice=\"an MX must name a host, not an alias (RFC 2181 10.3); list {c} instead\""
                    );
                }
            }
            Ok(())
        }
        Ok(MxPlan::Loop) => Err((
            "mx_loop",
            Reply::enh(
                550,
                (5, 4, 6),
                format!("mail for {name} loops back to myself: {our_hostname} is its best MX"),
            ),
        )),
        Ok(MxPlan::NullMx) => Err((
            "null_mx",
            Reply::enh(556, (5, 1, 10), format!("{name} accepts no mail (null MX)")),
        )),
        Ok(MxPlan::IpLiteral(l)) => Err((
            "mx_literal",
            Reply::enh(
                550,
                (5, 4, 4),
                format!("an MX record of {name} is an IP address ({l}): cannot route"),
            ),
        )),
        Err(RouteError::Permanent(e)) => Err((
            "mx_lookup",
            Reply::enh(550, (5, 4, 4), format!("cannot route mail for {name}: {e}")),
        )),
        Err(RouteError::Temporary(e)) => Err((
            "dns_tempfail",
            Reply::enh(
                451,
                (4, 4, 3),
                format!("DNS lookup for {name} failed, try again later: {e}"),
            ),
        )),
    }
}

/// At DATA: room for one more message of the maximal size.
pub fn data(cfg: &Config, spool: &Spool) -> Result<(), Refusal> {
    let m = &cfg.main;
    if !spool.has_room(0, m.max_spool_size, m.max_message_size) {
        return Err(storage_full());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_lists_match_domains_subdomains_and_addresses() {
        let l = vec![
            "spam.example".to_string(),
            ".bulk.example".to_string(),
            "joe@x.example".to_string(),
        ];
        assert!(sender_listed(&l, "a@spam.example"));
        assert!(sender_listed(&l, "A@SPAM.EXAMPLE"));
        assert!(!sender_listed(&l, "a@sub.spam.example"));
        assert!(sender_listed(&l, "a@sub.bulk.example"));
        assert!(!sender_listed(&l, "a@bulk.example"));
        assert!(sender_listed(&l, "joe@x.example"));
        assert!(!sender_listed(&l, "jim@x.example"));
        assert!(
            sender_listed(&l, "Joe@X.Example"),
            "addresses compare without case"
        );
        assert!(
            !sender_listed(&l, "a@notspam.example"),
            "no suffix match without the dot"
        );
        assert!(!sender_listed(&l, ""));
    }

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "config mxspool\n\toption hostname 'mx.example.net'\n\toption spool_dir '/srv/x'\n{extra}"
        );
        match Config::parse(&text, std::path::Path::new("/etc/config/mxspool")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // client_deny refuses at connect with 554 5.7.1; client_allow (v4 or
    // v6, and a v4-mapped client) overrides it.
    #[test]
    fn client_lists_at_connect() {
        let c = cfg(
            "\tlist client_deny '198.51.100.0/24'\n\tlist client_deny '2001:db8::/32'\n\tlist client_allow '198.51.100.7'\n",
        );
        let (reason, reply) = connect(&c, ip("198.51.100.8")).unwrap_err();
        assert_eq!(reason, "client_deny");
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (554, Some("5.7.1".into()))
        );
        assert!(connect(&c, ip("2001:db8::1")).is_err());
        assert!(connect(&c, ip("::ffff:198.51.100.9")).is_err());
        assert!(connect(&c, ip("198.51.100.7")).is_ok());
        assert!(connect(&c, ip("::ffff:198.51.100.7")).is_ok());
        assert!(connect(&c, ip("192.0.2.1")).is_ok());
    }

    // sender_deny refuses with 554 5.7.1 unless sender_allow or
    // client_allow says otherwise; the null sender is never refused by
    // the lists (bounces must get through).
    #[test]
    fn sender_lists_at_mail() {
        let c = cfg(
            "\tlist sender_deny 'spam.example'\n\tlist sender_deny '.bulk.example'\n\tlist sender_allow 'good@spam.example'\n\tlist client_allow '192.0.2.0/24'\n",
        );
        let out = ip("203.0.113.5");
        let (reason, reply) = sender(&c, out, "bad@spam.example").unwrap_err();
        assert_eq!(reason, "sender_deny");
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (554, Some("5.7.1".into()))
        );
        assert!(sender(&c, out, "x@a.bulk.example").is_err());
        assert!(sender(&c, out, "x@bulk.example").is_ok());
        assert!(sender(&c, out, "good@spam.example").is_ok());
        assert!(sender(&c, out, "").is_ok());
        assert!(sender(&c, ip("192.0.2.9"), "bad@spam.example").is_ok());
        assert!(sender_allowed(&c, "GOOD@spam.example"));
        assert!(!sender_allowed(&c, "bad@spam.example"));
        assert!(!sender_allowed(&c, ""));
    }
}
