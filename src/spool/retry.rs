//! The retry schedule as a pure function: no clock, no state, so every
//! step of a ten-day schedule is a unit test.
//!
//! `retry 'INTERVAL SPAN'` steps run one after another: with the defaults,
//! every 15 min for 24 h, hourly for the next 4 d, every 2 h for 5 d more.
//! Attempts fall on a grid (`base + k * interval` inside each step), so the
//! next attempt depends only on (arrival, base, now). `base` is the arrival
//! time, or the moment the back-off was reset (flush, host status change);
//! the spans that end the schedule always count from the arrival.

use crate::config::RetryStep;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this unix time.
    At(u64),
    /// The last span has ended: return what is left to the sender.
    Expired,
}

/// Total schedule length in seconds.
pub fn lifetime(steps: &[RetryStep]) -> u64 {
    steps.iter().map(|s| s.span.as_secs()).sum()
}

/// When to try next after an attempt at `now`.
pub fn next_attempt(steps: &[RetryStep], arrival: u64, base: u64, now: u64) -> Next {
    let expiry = arrival.saturating_add(lifetime(steps));
    if now >= expiry || steps.is_empty() {
        return Next::Expired;
    }
    // No clock value may panic (spool time never runs behind an arrival,
    // but a damaged record could say so): a `now` before the arrival is
    // taken as the arrival, and `base` is held between the two.
    let now = now.max(arrival);
    let base = base.max(arrival).min(now);
    let elapsed = now - base;
    let mut start = 0u64;
    for step in steps {
        let span = step.span.as_secs();
        let end = start.saturating_add(span);
        if elapsed < end {
            let interval = step.interval.as_secs().max(1);
            let k = (elapsed - start) / interval + 1;
            let t = base
                .saturating_add(start)
                .saturating_add(k.saturating_mul(interval))
                .min(base.saturating_add(end));
            return Next::At(t.min(expiry));
        }
        start = end;
    }
    // The steps since `base` are used up but the lifetime from the arrival
    // is not (only after a reset): keep the last interval until expiry.
    let interval = steps.last().map_or(1, |s| s.interval.as_secs().max(1));
    Next::At(now.saturating_add(interval).min(expiry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const M: u64 = 60;
    const H: u64 = 3600;
    const D: u64 = 86400;

    fn defaults() -> Vec<RetryStep> {
        [(15 * M, D), (H, 4 * D), (2 * H, 5 * D)]
            .iter()
            .map(|&(i, s)| RetryStep {
                interval: Duration::from_secs(i),
                span: Duration::from_secs(s),
            })
            .collect()
    }

    /// Walks the whole schedule the way the scheduler does: attempt, ask
    /// for the next time, attempt there.
    fn walk(steps: &[RetryStep]) -> Vec<u64> {
        let arrival = 1_000_000;
        let mut now = arrival;
        let mut times = vec![];
        while let Next::At(t) = next_attempt(steps, arrival, arrival, now) {
            assert!(t > now, "time moves forward");
            times.push(t - arrival);
            now = t;
        }
        times
    }

    #[test]
    fn default_schedule_is_quarter_hourly_then_hourly_then_two_hourly_for_ten_days() {
        let t = walk(&defaults());
        // 96 attempts in the first day (the 96th at the 24 h mark),
        let first_day: Vec<_> = t.iter().filter(|&&x| x <= D).collect();
        assert_eq!(first_day.len(), 96);
        assert_eq!(t[0], 15 * M);
        // then hourly to day 5 (96 more),
        let hourly = t.iter().filter(|&&x| x > D && x <= 5 * D).count();
        assert_eq!(hourly, 96);
        // then every two hours to day 10 (60 more), the last at exactly 10 d.
        let two_hourly = t.iter().filter(|&&x| x > 5 * D).count();
        assert_eq!(two_hourly, 60);
        assert_eq!(*t.last().unwrap(), 10 * D);
        assert!(t.windows(2).all(|w| w[1] - w[0] <= 2 * H));
    }

    #[test]
    fn expired_at_and_after_the_last_span() {
        let s = defaults();
        assert_eq!(next_attempt(&s, 0, 0, 10 * D), Next::Expired);
        assert_eq!(next_attempt(&s, 0, 0, 11 * D), Next::Expired);
        assert_eq!(next_attempt(&s, 0, 0, 10 * D - 1), Next::At(10 * D));
    }

    #[test]
    fn a_late_attempt_lands_back_on_the_grid() {
        // The scheduler may run late (busy, suspended): the next attempt is
        // the next grid point, not now + interval.
        let s = defaults();
        assert_eq!(next_attempt(&s, 0, 0, 20 * M), Next::At(30 * M));
        assert_eq!(next_attempt(&s, 0, 0, D + 10 * M), Next::At(D + H));
    }

    #[test]
    fn reset_back_off_restarts_at_the_first_interval_but_not_the_lifetime() {
        let s = defaults();
        let base = 6 * D;
        assert_eq!(next_attempt(&s, 0, base, base), Next::At(base + 15 * M));
        // Lifetime still counts from the arrival.
        assert_eq!(next_attempt(&s, 0, base, 10 * D), Next::Expired);
        assert_eq!(
            next_attempt(&s, 0, 9 * D + 23 * H, 9 * D + 23 * H + 50 * M),
            Next::At(10 * D)
        );
    }

    /// The field's panic (`min > max` in `clamp`): an arrival after `now`,
    /// as a clock stepped back used to produce. Never a panic, never an
    /// expiry, and the next attempt is on the grid from the arrival.
    #[test]
    fn an_arrival_after_now_does_not_panic_or_expire() {
        let steps = defaults();
        let arrival = 1_800_000_000;
        for base in [0, arrival - 1, arrival, arrival + 5, u64::MAX] {
            assert_eq!(
                next_attempt(&steps, arrival, base, arrival - 40 * 86_400),
                Next::At(arrival + 15 * M),
                "base {base}"
            );
        }
    }

    #[test]
    fn short_test_schedules_work() {
        let s = vec![RetryStep {
            interval: Duration::from_secs(1),
            span: Duration::from_secs(4),
        }];
        assert_eq!(walk(&s), vec![1, 2, 3, 4]);
    }
}
