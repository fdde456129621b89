//! Spool time: the time the queue measures ages, retry spans and expiry in.
//!
//! A router has no real-time clock. OpenWrt boots with the clock at the
//! newest file time under /etc (often weeks behind) and steps it when NTP
//! syncs; after a power cut the same happens again. Measured with the wall
//! clock, mail accepted before the sync would look weeks old after it (and
//! be returned), and mail queued before a restart would look as if it
//! arrived in the future (and stall).
//!
//! Spool time is unix seconds when nothing has gone wrong, and otherwise
//! counts only time that really passed:
//! - while the daemon runs it follows the monotonic clock, never the wall
//!   clock's steps;
//! - at start it continues from the wall clock less the offset between the
//!   two that the spool recorded (so time that passed while stopped
//!   counts when the clock is right), but never from before the newest time
//!   the spool has recorded (a high-water mark: a clock behind at boot
//!   costs the downtime, never a message's age).
//!
//! Every time the spool stores is spool time. Shown to people or written
//! into mail (queue list, DSN dates), a spool time becomes wall time by the
//! current offset: "now, less the time that really passed since".
//!
//! The arithmetic is `Clock`, a value with the monotonic and wall readings
//! passed in, so it is unit-tested with any clock, however wrong; `now()`
//! and `to_unix()` apply it to the real clocks.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The anchor of spool time: spool time `base` at monotonic reading zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    base: u64,
}

impl Clock {
    /// The clock at start: `wall` is the wall clock now (unix seconds, may
    /// be negative or far off), `recorded` the newest spool time the spool
    /// holds, `offset` the wall-minus-spool offset it recorded last (0 for
    /// a new spool).
    pub fn start(wall: i64, recorded: u64, offset: i64) -> Clock {
        let from_wall = u64::try_from(wall.saturating_sub(offset)).unwrap_or(0);
        Clock {
            base: from_wall.max(recorded),
        }
    }

    /// Spool time after `mono` of monotonic time since the anchor.
    pub fn now(&self, mono: Duration) -> u64 {
        self.base.saturating_add(mono.as_secs())
    }

    /// Wall time minus spool time, with the wall clock at `wall`.
    pub fn offset(&self, mono: Duration, wall: i64) -> i64 {
        wall.saturating_sub(i64::try_from(self.now(mono)).unwrap_or(i64::MAX))
    }

    /// The wall time (unix seconds) of spool time `t`, as the wall clock
    /// at `wall` would name it: now, less the time that passed since `t`.
    pub fn to_unix(&self, t: u64, mono: Duration, wall: i64) -> u64 {
        let t = i64::try_from(t).unwrap_or(i64::MAX);
        u64::try_from(t.saturating_add(self.offset(mono, wall))).unwrap_or(0)
    }

    /// Moves the anchor forward (never back) to what `start` would give.
    fn restart(&mut self, mono: Duration, wall: i64, recorded: u64, offset: i64) {
        let now = self.now(mono);
        let new = Clock::start(wall, recorded, offset).base.max(now);
        self.base = new.saturating_sub(mono.as_secs());
    }
}

/// The process's clock: the anchor and the monotonic instant it counts from.
static CLOCK: Mutex<Option<(Instant, Clock)>> = Mutex::new(None);

/// The wall clock in unix seconds, negative before 1970.
pub fn wall() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn with<T>(f: impl FnOnce(&mut Clock, Duration) -> T) -> T {
    let mut g = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (since, clock) = g.get_or_insert_with(|| (Instant::now(), Clock::start(wall(), 0, 0)));
    let mono = since.elapsed();
    f(clock, mono)
}

/// Anchors spool time for a spool that recorded `recorded` as its newest
/// time and `offset` as the last wall-minus-spool offset. Never moves spool
/// time back (a second spool opened by the same process, a reopen).
pub fn start(recorded: u64, offset: i64) {
    with(|c, mono| c.restart(mono, wall(), recorded, offset));
}

/// Spool time now.
pub fn now() -> u64 {
    with(|c, mono| c.now(mono))
}

/// Wall time minus spool time now (what the spool records next to its
/// high-water mark).
pub fn offset() -> i64 {
    with(|c, mono| c.offset(mono, wall()))
}

/// Spool time `t` as unix seconds for people and for mail headers.
pub fn to_unix(t: u64) -> u64 {
    with(|c, mono| c.to_unix(t, mono, wall()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_800_000_000;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn with_a_right_clock_spool_time_is_unix_time() {
        let c = Clock::start(T0, 0, 0);
        assert_eq!(c.now(s(0)), T0 as u64);
        assert_eq!(c.now(s(90)), T0 as u64 + 90);
        assert_eq!(c.offset(s(90), T0 + 90), 0);
        assert_eq!(c.to_unix(T0 as u64 + 5, s(90), T0 + 90), T0 as u64 + 5);
    }

    #[test]
    fn an_ntp_step_forward_while_running_is_not_age() {
        // Booted 40 days behind, mail accepted 4 s later, then NTP syncs.
        let behind = T0 - 40 * DAY;
        let c = Clock::start(behind, 0, 0);
        let arrival = c.now(s(4));
        let now = c.now(s(8));
        assert_eq!(now - arrival, 4, "the message is 4 s old, not 40 days");
        // Shown with the corrected wall clock, it arrived 4 s ago.
        assert_eq!(c.to_unix(arrival, s(8), T0), T0 as u64 - 4);
    }

    #[test]
    fn a_step_backward_while_running_does_not_stall_the_queue() {
        let c = Clock::start(T0, 0, 0);
        let next = c.now(s(60)) + 900;
        // The wall clock jumps a month back; spool time keeps counting.
        assert!(c.now(s(60 + 900)) >= next);
        assert_eq!(
            c.to_unix(c.now(s(70)), s(70), T0 - 30 * DAY),
            (T0 - 30 * DAY) as u64
        );
    }

    #[test]
    fn a_restart_with_the_clock_behind_never_goes_behind_the_spool() {
        // The spool recorded T0; the router reboots at a clock 40 days behind.
        let c = Clock::start(T0 - 40 * DAY, T0 as u64, 0);
        assert_eq!(c.now(s(0)), T0 as u64);
        // NTP then steps the wall clock to the truth (an hour of downtime):
        // spool time does not jump, the offset shows the step.
        assert_eq!(c.offset(s(10), T0 + 3600 + 10), 3600);
    }

    #[test]
    fn a_restart_with_a_right_clock_counts_the_downtime() {
        // Last run: the wall clock was 40 days ahead of spool time (it
        // had been stepped forward while running). A day later, restarted
        // with the clock right: a day passed in spool time too.
        let recorded = (T0 - 40 * DAY) as u64;
        let c = Clock::start(T0 + DAY, recorded, 40 * DAY);
        assert_eq!(c.now(s(0)), recorded + DAY as u64);
    }

    #[test]
    fn no_clock_value_panics() {
        for wall in [i64::MIN, -1, 0, 1, T0, i64::MAX] {
            for recorded in [0, 1, T0 as u64, u64::MAX] {
                for offset in [i64::MIN, -1, 0, 1, i64::MAX] {
                    let c = Clock::start(wall, recorded, offset);
                    for mono in [s(0), s(u64::MAX)] {
                        let _ = c.now(mono);
                        let _ = c.offset(mono, wall);
                        let _ = c.to_unix(recorded, mono, wall);
                    }
                }
            }
        }
    }

    #[test]
    fn restart_never_moves_spool_time_back() {
        let mut c = Clock::start(T0, 0, 0);
        let before = c.now(s(100));
        c.restart(s(100), T0 - 365 * DAY, 0, 0);
        assert_eq!(c.now(s(100)), before);
        c.restart(s(100), T0 + DAY, 0, 0);
        assert_eq!(c.now(s(100)), (T0 + DAY) as u64);
    }
}
