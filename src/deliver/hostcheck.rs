//! Host status change (MailHop's name for it): every `host_check_interval`,
//! the destinations that hold queued mail are resolved again; when a
//! destination's address set changes — the owner's server came back on a
//! new dynamic address — all its mail is retried at once with its back-off
//! reset, instead of waiting out the retry interval.
//!
//! "Changed" is measured against the addresses the destination last
//! resolved to anywhere — a delivery attempt or call-ahead included — so a
//! change right after a failed attempt (before the first check) counts.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::rc::Rc;

use crate::ctx::{Ctx, Known};
use crate::outbound::route;
use crate::spool::Destination;
use crate::spool::Filter;

// What each destination resolved to at its last attempt is recorded by
// `outbound::conn` (`ctx.deliverer.resolved`).

/// Stores `now` for `dest`; returns the old set when it differs (a host
/// status change). The first sighting is no change.
fn update(
    known: &mut Known,
    dest: &Destination,
    now: BTreeSet<IpAddr>,
) -> Option<BTreeSet<IpAddr>> {
    match known.insert(dest.clone(), now.clone()) {
        Some(old) if old != now => Some(old),
        _ => None,
    }
}

/// The task.
pub async fn run(ctx: Rc<Ctx>) {
    loop {
        let interval = ctx.config().main.host_check_interval;
        smol::Timer::after(interval).await;
        if ctx.stopping.get() {
            return;
        }
        if ctx.spool.state().messages == 0 {
            ctx.deliverer.resolved.borrow_mut().clear();
            continue;
        }
        check(&ctx).await;
    }
}

/// The distinct destinations of pending recipients (read in one pass:
/// the queue is never loaded whole).
fn queued_destinations(ctx: &Ctx) -> Vec<Destination> {
    match ctx.spool.pending_destinations() {
        Ok(set) => set.into_iter().collect(),
        Err(e) => {
            log::warn!("id=NOQUEUE event=spool_error error=\"{e}\"");
            vec![]
        }
    }
}

async fn check(ctx: &Ctx) {
    let dests = queued_destinations(ctx);
    ctx.deliverer
        .resolved
        .borrow_mut()
        .retain(|d, _| dests.contains(d));
    let resolver = ctx.resolver.borrow().clone();
    let hostname = ctx.config().main.hostname.clone();
    for d in dests {
        let Ok(targets) = route::resolve(&resolver, &hostname, &d).await else {
            // A failed lookup says nothing about a change: keep the old set.
            continue;
        };
        let now: BTreeSet<IpAddr> = targets.iter().map(|t| t.addr.ip()).collect();
        let Some(old) = update(&mut ctx.deliverer.resolved.borrow_mut(), &d, now.clone()) else {
            continue;
        };
        let show = |s: &BTreeSet<IpAddr>| {
            s.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        log::info!(
            "id=NOQUEUE event=host_status_change destination={d} old={} new={}",
            show(&old),
            show(&now)
        );
        let t = crate::clock::now();
        ctx.deliverer.down.borrow_mut().clear(&d);
        match ctx
            .spool
            .reschedule(Filter::Destination(d.clone()), t)
            .await
        {
            Ok(n) => log::info!("id=NOQUEUE event=flush destination={d} messages={n}"),
            Err(e) => log::error!("id=NOQUEUE event=spool_error error=\"{e}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|i| i.parse().unwrap()).collect()
    }

    #[test]
    fn a_change_from_the_last_attempts_addresses_is_reported() {
        let d = Destination::Mx {
            domain: "example.com".into(),
            port: 25,
        };
        let mut known = Known::new();
        // First sighting: nothing to compare with.
        assert_eq!(update(&mut known, &d, set(&["127.0.0.2"])), None);
        assert_eq!(update(&mut known, &d, set(&["127.0.0.2"])), None);
        // What a delivery attempt recorded is the baseline of the next check.
        known.insert(d.clone(), set(&["127.0.0.2"]));
        assert_eq!(
            update(&mut known, &d, set(&["127.0.0.5"])),
            Some(set(&["127.0.0.2"]))
        );
        assert_eq!(update(&mut known, &d, set(&["127.0.0.5"])), None);
    }
}
