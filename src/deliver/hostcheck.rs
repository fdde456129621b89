//! Host status change (MailHop's name for it): every `host_check_interval`,
//! the destinations that hold queued mail are resolved again; when a
//! destination's address set changes — the owner's server came back on a
//! new dynamic address — all its mail is retried at once with its back-off
//! reset, instead of waiting out the retry interval.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use super::destination::Destination;
use super::route;
use crate::daemon::Ctx;
use crate::spool::Filter;

/// The task.
pub async fn run(ctx: Rc<Ctx>) {
    let mut known: HashMap<Destination, BTreeSet<IpAddr>> = HashMap::new();
    loop {
        let interval = ctx.config().main.host_check_interval;
        smol::Timer::after(interval).await;
        if ctx.stopping.get() {
            return;
        }
        if ctx.spool.state().messages == 0 {
            known.clear();
            continue;
        }
        check(&ctx, &mut known).await;
    }
}

/// The distinct destinations of pending recipients.
fn queued_destinations(ctx: &Ctx) -> Vec<Destination> {
    let mut set = BTreeSet::new();
    if let Ok(list) = ctx.spool.list() {
        for (_, m) in list {
            if let Ok(m) = m {
                for (_, r) in m.pending() {
                    set.insert(r.destination.clone());
                }
            }
        }
    }
    set.into_iter().collect()
}

async fn check(ctx: &Ctx, known: &mut HashMap<Destination, BTreeSet<IpAddr>>) {
    let dests = queued_destinations(ctx);
    known.retain(|d, _| dests.contains(d));
    let resolver = ctx.resolver.borrow().clone();
    let hostname = ctx.config().main.hostname.clone();
    for d in dests {
        let Ok(targets) = route::resolve(&resolver, &hostname, &d).await else {
            // A failed lookup says nothing about a change: keep the old set.
            continue;
        };
        let now: BTreeSet<IpAddr> = targets.iter().map(|t| t.addr.ip()).collect();
        match known.insert(d.clone(), now.clone()) {
            Some(old) if old != now => {
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
                let t = crate::time::now_unix();
                match ctx
                    .spool
                    .reschedule(Filter::Destination(d.clone()), t)
                    .await
                {
                    Ok(n) => log::info!("id=NOQUEUE event=flush destination={d} messages={n}"),
                    Err(e) => log::error!("id=NOQUEUE event=spool_error error=\"{e}\""),
                }
            }
            _ => {}
        }
    }
}
