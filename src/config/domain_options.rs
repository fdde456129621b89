//! `config domain`: every option of a domain section, declared once.
//! The order is `check`'s output order; `name` comes first because
//! `user` is checked against it.

use super::spec::Form::{List, Required, Single};
use super::spec::*;
use super::value::*;
use super::{ConfigError, DeliverTo, Domain, HostPort, OnTempfail, Verify};
use std::net::IpAddr;

pub(super) static DOMAIN_OPTIONS: &[OptionSpec<Domain>] = &[
    OptionSpec {
        name: "name",
        form: Required("the domain this section accepts mail for"),
        doc: doc("the domain we accept mail for"),
        parse: |d, v| set(&mut d.name, domain_name(v, 2)),
        print: |d| one(&d.name),
    },
    OptionSpec {
        name: "deliver_to",
        form: Single("mx"),
        doc: doc(
            "`mx`: backup MX, deliver to this domain's MX hosts that rank above our hostname; \
             `HOST[:PORT]`: relay, always deliver there",
        ),
        parse: |d, v| set(&mut d.deliver_to, deliver_to(v)),
        print: |d| match &d.deliver_to {
            DeliverTo::Mx => one("mx"),
            DeliverTo::Relay(hp) => one(hp),
        },
    },
    OptionSpec {
        name: "port",
        form: Single("25"),
        doc: doc("the port for `mx` deliveries"),
        parse: |d, v| set(&mut d.port, parse_port(v)),
        print: |d| match d.deliver_to {
            DeliverTo::Mx => one(d.port),
            // Refused next to a relay: its port is in deliver_to.
            DeliverTo::Relay(_) => Vec::new(),
        },
    },
    OptionSpec {
        name: "verify",
        form: Single("callahead"),
        doc: doc("`callahead`, `users` or `none`"),
        parse: |d, v| set(&mut d.verify, verify(v)),
        print: |d| {
            one(match d.verify {
                Verify::Callahead => "callahead",
                Verify::Users => "users",
                Verify::None => "none",
            })
        },
    },
    OptionSpec {
        name: "user",
        form: List(&[]),
        doc: doc(
            "local part or full address; with `users` the only ones accepted, with `callahead` \
             accepted without asking",
        ),
        parse: |d, v| {
            let user = domain_user(v)?;
            if let Some((_, domain)) = user.rsplit_once('@')
                && domain != d.name
            {
                return Err(format!("is not an address in '{}'", d.name));
            }
            d.users.push(user);
            Ok(())
        },
        print: |d| each(&d.users),
    },
    OptionSpec {
        name: "on_tempfail",
        form: Single("accept"),
        doc: doc("call-ahead got 4xx: `accept` (queue it) or `defer` (answer 450)"),
        parse: |d, v| set(&mut d.on_tempfail, on_tempfail(v)),
        print: |d| {
            one(match d.on_tempfail {
                OnTempfail::Accept => "accept",
                OnTempfail::Defer => "defer",
            })
        },
    },
    OptionSpec {
        name: "offline_address",
        form: List(&[]),
        doc: doc("the guard: never connect to these addresses"),
        parse: |d, v| push(&mut d.offline_address, ip_address(v)),
        print: |d| each(&d.offline_address),
    },
    OptionSpec {
        name: "expect_greeting",
        form: Single(""),
        doc: doc("the guard: the destination's greeting must name this host"),
        parse: |d, v| set(&mut d.expect_greeting, empty_or(v, greeting_host)),
        print: |d| unset(d.expect_greeting.as_ref()),
    },
    OptionSpec {
        name: "tls_pin",
        form: Single(""),
        doc: doc(
            "the guard: `sha256:BASE64` of the destination certificate's SPKI; requires STARTTLS",
        ),
        parse: |d, v| set(&mut d.tls_pin, empty_or(v, tls_pin)),
        print: |d| unset(d.tls_pin.as_ref()),
    },
];

/// Reads one domain section: the table, then the rules between options.
pub(super) fn parse(o: &Options) -> Result<Domain, ConfigError> {
    let domain = parse_section(o, DOMAIN_OPTIONS, blank(o.section.line))?;
    if let (DeliverTo::Relay(_), Some(item)) = (&domain.deliver_to, o.get("port")) {
        return Err(o.bad(
            item,
            "applies only to deliver_to 'mx'; give a relay's port in deliver_to as HOST:PORT",
        ));
    }
    if domain.verify == Verify::Users
        && domain.users.is_empty()
        && let Some(item) = o.get("verify")
    {
        return Err(o.bad(
            item,
            "needs at least one 'list user' in this section, or every recipient is refused",
        ));
    }
    Ok(domain)
}

/// What the table's defaults and the file's values are written into:
/// every field is set by its option before `parse` returns.
pub(super) fn blank(line: usize) -> Domain {
    Domain {
        line,
        name: String::new(),
        deliver_to: DeliverTo::Mx,
        port: 0,
        verify: Verify::None,
        users: Vec::new(),
        on_tempfail: OnTempfail::Accept,
        offline_address: Vec::new(),
        expect_greeting: None,
        tls_pin: None,
    }
}

fn deliver_to(v: &str) -> Result<DeliverTo, String> {
    if v.eq_ignore_ascii_case("mx") {
        Ok(DeliverTo::Mx)
    } else {
        HostPort::parse(v, 25)
            .map(DeliverTo::Relay)
            .map_err(|e| format!("must be 'mx' or HOST[:PORT]: {e}"))
    }
}

fn verify(v: &str) -> Result<Verify, String> {
    match v {
        "callahead" => Ok(Verify::Callahead),
        "users" => Ok(Verify::Users),
        "none" => Ok(Verify::None),
        _ => Err("must be 'callahead', 'users' or 'none'".into()),
    }
}

fn on_tempfail(v: &str) -> Result<OnTempfail, String> {
    match v {
        "accept" => Ok(OnTempfail::Accept),
        "defer" => Ok(OnTempfail::Defer),
        _ => Err("must be 'accept' or 'defer'".into()),
    }
}

fn ip_address(v: &str) -> Result<IpAddr, String> {
    v.parse::<IpAddr>()
        .map_err(|_| "is not an IP address".to_string())
}

/// `expect_greeting`: an IP address in its canonical form, or a host name.
fn greeting_host(v: &str) -> Result<String, String> {
    match v.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => domain_name(v, 1),
    }
}
