//! Alerts: the few events a router owner must hear about, handed to the
//! program `alert_command` names (never through a shell) with the event in
//! `MXSPOOL_ALERT_*` variables, at most one per kind per hour. Every alert
//! is also logged (`event=alert`), with or without a command.
//!
//! Kinds: `destination_unreachable` (no connection for `alert_after`),
//! `spool_nearly_full` (80 % of `max_spool_size`), `guard_refusal`,
//! `returned` (mail returned to its sender).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use smol::LocalExecutor;

use crate::config::Config;

/// One alert of a kind per this many seconds.
pub const RATE_SECS: u64 = 3600;
/// An alert command still running after this is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    DestinationUnreachable,
    SpoolNearlyFull,
    GuardRefusal,
    Returned,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::DestinationUnreachable => "destination_unreachable",
            Kind::SpoolNearlyFull => "spool_nearly_full",
            Kind::GuardRefusal => "guard_refusal",
            Kind::Returned => "returned",
        }
    }
}

/// The alert state: when each kind last went out, and since when each
/// destination has been unreachable. Times are spool time (`clock`).
#[derive(Debug, Default)]
pub struct Alerts {
    last: RefCell<HashMap<Kind, u64>>,
    unreachable_since: RefCell<HashMap<String, u64>>,
}

impl Alerts {
    /// Whether an alert of `kind` may go out at `now`; if so it counts as
    /// sent.
    pub fn allow(&self, kind: Kind, now: u64) -> bool {
        let mut last = self.last.borrow_mut();
        match last.get(&kind) {
            Some(&t) if now < t.saturating_add(RATE_SECS) => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }

    /// `dest` could not be reached at `now`: since when it has not been.
    pub fn unreachable(&self, dest: &str, now: u64) -> u64 {
        *self
            .unreachable_since
            .borrow_mut()
            .entry(dest.to_string())
            .or_insert(now)
    }

    /// The destinations that could not be reached at their last attempt,
    /// with since when (sorted by name): `queue stats` shows them.
    pub fn unreachable_now(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .unreachable_since
            .borrow()
            .iter()
            .map(|(d, t)| (d.clone(), *t))
            .collect();
        v.sort();
        v
    }

    /// `dest` answered: its outage is over.
    pub fn reachable(&self, dest: &str) {
        self.unreachable_since.borrow_mut().remove(dest);
    }
}

/// Raises an alert: logs it, and runs `alert_command` unless one of this
/// kind went out within the hour. `vars` become `MXSPOOL_ALERT_<NAME>`.
/// (Callers use `Ctx::alert`.)
pub fn raise(
    alerts: &Alerts,
    cfg: &Config,
    ex: &LocalExecutor<'static>,
    kind: Kind,
    text: &str,
    vars: &[(&str, String)],
) {
    let now = crate::clock::now();
    if !alerts.allow(kind, now) {
        return;
    }
    log::warn!("event=alert kind={} text=\"{text}\"", kind.name());
    let Some(argv) = cfg.main.alert_command.clone() else {
        return;
    };
    // std's Command, watched from a task: smol::process (async-process)
    // would add its reaper thread, a signal handler and ~80 KB to the
    // router binary for what is at most four children an hour.
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("MXSPOOL_ALERT_EVENT", kind.name())
        .env("MXSPOOL_ALERT_TEXT", text)
        .env("MXSPOOL_ALERT_HOSTNAME", &cfg.main.hostname)
        .env("MXSPOOL_ALERT_TIME", crate::time::now_unix().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in vars {
        cmd.env(format!("MXSPOOL_ALERT_{}", k.to_ascii_uppercase()), v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "event=alert_command_failed command={} error=\"{e}\"",
                argv[0]
            );
            return;
        }
    };
    let program = argv[0].clone();
    ex.spawn(async move {
        // Looked at once a second: an alert command is short and rare.
        let started = std::time::Instant::now();
        let done = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(Ok(status)),
                Err(e) => break Some(Err(e)),
                Ok(None) if started.elapsed() >= COMMAND_TIMEOUT => break None,
                Ok(None) => {
                    smol::Timer::after(Duration::from_secs(1)).await;
                }
            }
        };
        match done {
            Some(Ok(s)) if s.success() => {}
            Some(Ok(s)) => log::warn!("event=alert_command_failed command={program} status={s}"),
            Some(Err(e)) => log::warn!("event=alert_command_failed command={program} error=\"{e}\""),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                log::warn!("event=alert_command_failed command={program} error=\"still running after {}s: killed\"", COMMAND_TIMEOUT.as_secs());
            }
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_kind_per_hour() {
        let a = Alerts::default();
        assert!(a.allow(Kind::Returned, 1000));
        assert!(!a.allow(Kind::Returned, 1000 + RATE_SECS - 1));
        assert!(a.allow(Kind::GuardRefusal, 1001), "kinds are independent");
        assert!(a.allow(Kind::Returned, 1000 + RATE_SECS));
    }

    #[test]
    fn an_outage_counts_from_the_first_failure_until_an_answer() {
        let a = Alerts::default();
        assert_eq!(a.unreachable("mail.example.com", 100), 100);
        assert_eq!(a.unreachable("mail.example.com", 400), 100);
        a.reachable("mail.example.com");
        assert_eq!(a.unreachable("mail.example.com", 900), 900);
    }
}
