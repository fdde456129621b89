//! Wall-clock helpers: unix seconds and RFC 5322 dates, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar date and time of day, broken down from unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

impl Civil {
    /// `Jan`..`Dec`.
    pub fn month_name(&self) -> &'static str {
        MONTH_NAMES[(self.month as usize - 1) % 12]
    }

    /// `Sun`..`Sat`.
    pub fn day_name(&self) -> &'static str {
        DAY_NAMES[self.weekday as usize % 7]
    }
}

/// Breaks `unix` seconds down into a UTC date (proleptic Gregorian).
pub fn civil(unix: u64) -> Civil {
    // u64::MAX / 86400 fits in i64, so this cannot overflow.
    let days = (unix / 86_400) as i64;
    let secs = (unix % 86_400) as u32;
    // Howard Hinnant's civil_from_days: eras of 400 years (146097 days)
    // starting on 0000-03-01, so the leap day is the last day of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4) % 7) as u32,
    }
}

/// `Mon, 23 Nov 2026 12:15:06 +0000` for `unix` seconds (UTC). The day of
/// the month has no leading zero (RFC 5322 `1*2DIGIT`).
pub fn rfc5322(unix: u64) -> String {
    let c = civil(unix);
    format!(
        "{}, {} {} {:04} {:02}:{:02}:{:02} +0000",
        c.day_name(),
        c.day,
        c.month_name(),
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known instants, cross-checked with `date -u -d @N -R`: epoch, a leap
    /// day, the 2100 non-leap century, a 4-digit far future, the example date.
    #[test]
    fn rfc5322_known_timestamps() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(951_868_799), "Tue, 29 Feb 2000 23:59:59 +0000");
        assert_eq!(rfc5322(951_868_800), "Wed, 1 Mar 2000 00:00:00 +0000");
        // 2100 is not a leap year: 28 Feb is followed by 1 Mar.
        assert_eq!(rfc5322(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 +0000");
        assert_eq!(rfc5322(4_107_542_400), "Mon, 1 Mar 2100 00:00:00 +0000");
        assert_eq!(rfc5322(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 +0000");
        assert_eq!(rfc5322(1_795_436_106), "Mon, 23 Nov 2026 12:15:06 +0000");
    }

    /// Years past 9999 and the largest input must not panic or overflow.
    #[test]
    fn rfc5322_extreme_input_does_not_panic() {
        assert_eq!(rfc5322(253_402_300_800), "Sat, 1 Jan 10000 00:00:00 +0000");
        let s = rfc5322(u64::MAX);
        assert!(s.ends_with(" +0000"), "{s}");
    }

    /// Walks day by day over 1970..2500 and checks that the date advances
    /// exactly like a calendar: catches off-by-one errors at month and year
    /// ends and in the leap rule.
    #[test]
    fn civil_is_continuous() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut prev = civil(0);
        for d in 1..(530 * 366) {
            let c = civil(d * 86_400);
            let dim = match prev.month {
                2 if leap(prev.year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expect = if prev.day < dim {
                (prev.year, prev.month, prev.day + 1)
            } else if prev.month < 12 {
                (prev.year, prev.month + 1, 1)
            } else {
                (prev.year + 1, 1, 1)
            };
            assert_eq!((c.year, c.month, c.day), expect, "day {d}");
            assert_eq!(c.weekday, (prev.weekday + 1) % 7);
            prev = c;
        }
    }
}
