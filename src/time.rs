//! Wall-clock helpers: unix seconds and RFC 5322 dates, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Mon, 23 Nov 2026 12:15:06 +0000` for `unix` seconds (UTC).
pub fn rfc5322(unix: u64) -> String {
    let _ = unix;
    todo!("time::rfc5322")
}
