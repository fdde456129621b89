//! The control socket and the `mxspool queue` commands (issue 7), and the
//! counters they report.

use std::collections::BTreeMap;

/// Counters since start (`queue stats`).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub accepted: u64,
    /// Reason → count (`relay`, `size`, `bare_newline`, `hops`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub guard_refusals: u64,
    /// Started, unix seconds.
    pub started: u64,
}

impl Stats {
    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }
}

/// `mxspool queue ...`: talks to the running daemon over its control
/// socket. The spool file belongs to the daemon, so with no daemon there
/// is nothing to ask.
pub fn queue_command(config_path: &std::path::Path, words: &[&str]) -> i32 {
    let cfg = match crate::config::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let sock = &cfg.main.control_socket;
    if std::os::unix::net::UnixStream::connect(sock).is_err() {
        eprintln!(
            "mxspool is not running (no control socket at {})",
            sock.display()
        );
        return 1;
    }
    let _ = words;
    eprintln!("mxspool: queue commands are not available in this build yet");
    1
}
