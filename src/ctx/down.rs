//! Destinations found down. A delivery that could not connect (refused,
//! timed out, no address passed the guard) marks its destination down for
//! `DOWN_RECHECK`. Mail that arrives for it meanwhile is not tried on its
//! own: its first attempt is the end of that window, when one connection
//! tries again for all of it. While the primary is away a backup MX then
//! makes one connection attempt, and one batch of bookkeeping writes, per
//! window instead of one per message (Postfix's queue manager likewise
//! suspends a dead destination). The window is short so mail still moves
//! within seconds of the primary's return; a successful connection, a host
//! status change and `queue flush` lift the mark at once.

use std::collections::HashMap;

use crate::spool::Destination;

/// How long a destination stays marked down after a failed connection.
pub const DOWN_RECHECK_SECS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Down {
    until: u64,
    reason: String,
}

/// Destination → until when it counts as down, and why.
#[derive(Debug, Default)]
pub struct Marks(HashMap<Destination, Down>);

impl Marks {
    /// `dest` could not be reached at `now`.
    pub fn mark(&mut self, dest: &Destination, reason: &str, now: u64) {
        // Only live marks are kept: the map holds no more than the
        // destinations that failed in the last window.
        self.0.retain(|_, d| d.until > now);
        self.0.insert(
            dest.clone(),
            Down {
                until: now.saturating_add(DOWN_RECHECK_SECS),
                reason: reason.to_string(),
            },
        );
    }

    pub fn clear(&mut self, dest: &Destination) {
        self.0.remove(dest);
    }

    pub fn clear_all(&mut self) {
        self.0.clear();
    }

    /// When the first attempt of new mail for `dests` is due, and why it
    /// waits: at once unless every destination is down; otherwise when
    /// the soonest window ends.
    pub fn first_attempt<'a>(
        &self,
        dests: impl IntoIterator<Item = &'a Destination>,
        now: u64,
    ) -> (u64, String) {
        let mut soonest: Option<&Down> = None;
        for dest in dests {
            match self.0.get(dest).filter(|d| d.until > now) {
                None => return (now, String::new()),
                Some(d) => {
                    if soonest.is_none_or(|s| d.until < s.until) {
                        soonest = Some(d);
                    }
                }
            }
        }
        match soonest {
            Some(d) => (
                d.until,
                format!("delivery temporarily suspended: {}", d.reason),
            ),
            None => (now, String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(port: u16) -> Destination {
        Destination::Relay {
            host: "192.0.2.1".into(),
            port,
        }
    }

    #[test]
    fn new_mail_waits_for_the_window_only_when_every_destination_is_down() {
        let mut m = Marks::default();
        assert_eq!(m.first_attempt([&dest(25)], 100), (100, String::new()));
        m.mark(&dest(25), "connection refused", 100);
        let (t, why) = m.first_attempt([&dest(25)], 101);
        assert_eq!(t, 100 + DOWN_RECHECK_SECS);
        assert_eq!(why, "delivery temporarily suspended: connection refused");
        // One destination up: the message goes at once.
        assert_eq!(m.first_attempt([&dest(25), &dest(26)], 101).0, 101);
        // The window ends: mail is tried again, which probes the host.
        assert_eq!(m.first_attempt([&dest(25)], 100 + DOWN_RECHECK_SECS).0, 105);
        m.clear(&dest(25));
        assert_eq!(m.first_attempt([&dest(25)], 101).0, 101);
    }

    #[test]
    fn the_soonest_window_counts_and_old_marks_are_dropped() {
        let mut m = Marks::default();
        m.mark(&dest(25), "a", 100);
        m.mark(&dest(26), "b", 102);
        let (t, why) = m.first_attempt([&dest(26), &dest(25)], 103);
        assert_eq!(
            (t, why.as_str()),
            (105, "delivery temporarily suspended: a")
        );
        m.mark(&dest(27), "c", 200);
        assert_eq!(m.0.len(), 1, "expired marks are pruned");
        m.clear_all();
        assert!(m.0.is_empty());
    }
}
