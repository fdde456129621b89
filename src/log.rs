//! Logging: one `key=value` line per event. With `syslog '1'`, RFC 3164
//! datagrams to /dev/log (facility mail, ident `mxspool[pid]`, the log level
//! mapped to the severity); with `'0'`, stderr through env_logger.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::time::{civil, now_unix};

const DEV_LOG: &str = "/dev/log";
/// syslog facility `mail` (RFC 3164 4.1.1).
const FACILITY_MAIL: u8 = 2;
/// RFC 3164 4.1: a datagram is at most 1024 octets; logd cuts longer ones.
const MAX_DATAGRAM: usize = 1024;
/// Set when MXSPOOL_LOG chose the filter: a config reload must not undo it.
static ENV_OVERRIDE: AtomicBool = AtomicBool::new(false);

/// Installs the logger. `syslog`: write to /dev/log (falls back to stderr
/// with a warning when /dev/log cannot be reached).
///
/// Records of other crates (async-io, redb...) are passed at info and above
/// only, so `log_level 'debug'` shows our debug lines, not the runtime's.
/// With `syslog '0'`, `MXSPOOL_LOG` (env_logger syntax, e.g.
/// `debug,async_io=trace`) replaces the configured level entirely.
/// A second call does nothing (the `log` crate takes one logger).
pub fn init(syslog: bool, level: LevelFilter) {
    if syslog {
        let logger = Syslog::new(PathBuf::from(DEV_LOG));
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(level);
        }
        return;
    }
    let mut b = env_logger::Builder::new();
    match std::env::var("MXSPOOL_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            b.parse_filters(&spec);
            ENV_OVERRIDE.store(true, Ordering::Relaxed);
        }
        // Let everything of ours through: the global max level (set below
        // and by `set_level`) is what filters, so a reload can change it.
        _ => {
            b.filter_level(LevelFilter::Info);
            b.filter_module("mxspool", LevelFilter::Trace);
        }
    }
    b.target(env_logger::Target::Stderr);
    b.format(|buf, record| {
        let c = civil(now_unix());
        writeln!(
            buf,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z {} {}",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            record.level(),
            scrub(&record.args().to_string())
        )
    });
    let logger = b.build();
    let max = if ENV_OVERRIDE.load(Ordering::Relaxed) {
        logger.filter()
    } else {
        level
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// Changes the level after a reload (unless MXSPOOL_LOG set it).
pub fn set_level(level: LevelFilter) {
    if !ENV_OVERRIDE.load(Ordering::Relaxed) {
        log::set_max_level(level);
    }
}

/// RFC 3164 severity of a log level: error 3, warning 4, info 6, debug 7.
pub fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `<PRI>Mmm dd hh:mm:ss mxspool[PID]: MESSAGE` (RFC 3164 4.1, facility
/// mail, UTC, day space-padded). Control characters in `msg` (CR/LF from
/// network text) become spaces; the whole line is cut to 1024 octets.
pub fn format_syslog(severity: u8, unix_time: u64, pid: u32, msg: &str) -> String {
    let c = civil(unix_time);
    let mut line = format!(
        "<{}>{} {:>2} {:02}:{:02}:{:02} mxspool[{pid}]: ",
        FACILITY_MAIL * 8 + severity.min(7),
        c.month_name(),
        c.day,
        c.hour,
        c.minute,
        c.second
    );
    for ch in scrub(msg).chars() {
        if line.len() + ch.len_utf8() > MAX_DATAGRAM {
            break;
        }
        line.push(ch);
    }
    line
}

/// One line: every control character (CR, LF, NUL, ESC...) becomes a space.
fn scrub(msg: &str) -> String {
    msg.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Ours at every level, other crates at info and above.
fn wanted(meta: &Metadata<'_>) -> bool {
    meta.level() <= Level::Info || meta.target().starts_with("mxspool")
}

/// The /dev/log writer. The socket is unbound and non-blocking: a full or
/// absent logd costs one line on stderr, never a stalled daemon.
struct Syslog {
    path: PathBuf,
    /// None until first use and after a failed send, so a restarted logd
    /// is picked up by the next line.
    sock: Mutex<Option<UnixDatagram>>,
    pid: u32,
    /// A fallback warning was printed for the current outage.
    failing: AtomicBool,
}

impl Syslog {
    fn new(path: PathBuf) -> Self {
        Syslog {
            path,
            sock: Mutex::new(None),
            pid: std::process::id(),
            failing: AtomicBool::new(false),
        }
    }

    fn send(&self, line: &str) -> io::Result<()> {
        let mut guard = self.sock.lock().unwrap_or_else(PoisonError::into_inner);
        let sock = match guard.take() {
            Some(s) => s,
            None => {
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                s
            }
        };
        sock.send_to(line.as_bytes(), &self.path)?;
        *guard = Some(sock);
        Ok(())
    }
}

impl Log for Syslog {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        wanted(meta)
    }

    fn log(&self, record: &Record<'_>) {
        // The log macros already checked the global max level.
        if !wanted(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let line = format_syslog(severity(record.level()), now_unix(), self.pid, &msg);
        match self.send(&line) {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                // Write errors on stderr are ignored: there is nowhere left.
                let mut err = io::stderr().lock();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let _ = writeln!(
                        err,
                        "mxspool: cannot log to {}: {e}; using stderr",
                        self.path.display()
                    );
                }
                let _ = writeln!(err, "{} {}", record.level(), scrub(&msg));
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// Each log level lands at the syslog severity logd/logread expects,
    /// under facility mail (2 * 8).
    #[test]
    fn pri_mapping() {
        let pri = |l| format_syslog(severity(l), 0, 1, "x");
        assert!(pri(Level::Error).starts_with("<19>"));
        assert!(pri(Level::Warn).starts_with("<20>"));
        assert!(pri(Level::Info).starts_with("<22>"));
        assert!(pri(Level::Debug).starts_with("<23>"));
        assert!(pri(Level::Trace).starts_with("<23>"));
    }

    /// The RFC 3164 timestamp, with the day space-padded, and the exact
    /// line layout logd parses (it skips a 15-character timestamp).
    #[test]
    fn timestamp_and_layout() {
        assert_eq!(
            format_syslog(6, 1_795_436_106, 42, "accept id=Q1"),
            "<22>Nov 23 12:15:06 mxspool[42]: accept id=Q1"
        );
        assert_eq!(
            format_syslog(3, 0, 7, "m"),
            "<19>Jan  1 00:00:00 mxspool[7]: m"
        );
    }

    /// Network text in a message cannot split it into several log lines,
    /// and an oversized message is cut on a character boundary at 1024.
    #[test]
    fn scrubs_and_caps() {
        let l = format_syslog(4, 0, 1, "helo=evil\r\n<22>Jan  1 fake\0\x1b[31m");
        assert!(l.ends_with("helo=evil  <22>Jan  1 fake  [31m"), "{l}");
        assert!(!l.chars().any(char::is_control));
        let l = format_syslog(6, 0, 1, &"\u{e9}".repeat(2000));
        assert!(l.len() <= MAX_DATAGRAM && l.len() > MAX_DATAGRAM - 2);
    }

    /// Only our crate logs below info; dependencies are held at info.
    #[test]
    fn dependency_debug_is_dropped() {
        let meta = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(wanted(&meta("mxspool::deliver", Level::Trace)));
        assert!(wanted(&meta("async_io::reactor", Level::Info)));
        assert!(!wanted(&meta("async_io::reactor", Level::Debug)));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mxspool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = std::fs::create_dir_all(&dir);
        assert!(made.is_ok(), "{made:?}");
        dir
    }

    fn recv(sock: &UnixDatagram) -> String {
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn log_warn(logger: &Syslog, msg: &str) {
        logger.log(
            &Record::builder()
                .args(format_args!("{msg}"))
                .level(Level::Warn)
                .target("mxspool::test")
                .build(),
        );
    }

    /// A record reaches a datagram socket at the configured path as one
    /// RFC 3164 line; with the socket gone the send fails (the line goes
    /// to stderr) and, once it is back, the next line is delivered again:
    /// a restarted logd is picked up without restarting mxspool.
    #[test]
    fn sends_to_socket_and_recovers() {
        let dir = temp_dir("log");
        let path = dir.join("log.sock");
        let logger = Syslog::new(path.clone());

        assert!(logger.send("lost").is_err(), "no socket yet");
        log_warn(&logger, "falls back to stderr"); // must not panic
        assert!(logger.failing.load(Ordering::Relaxed));

        let server = match UnixDatagram::bind(&path) {
            Ok(s) => s,
            Err(e) => panic!("bind {}: {e}", path.display()),
        };
        log_warn(&logger, "guard refusal id=Q1\r\nhost=x");
        let got = recv(&server);
        let suffix = format!(
            " mxspool[{}]: guard refusal id=Q1  host=x",
            std::process::id()
        );
        assert!(got.starts_with("<20>") && got.ends_with(&suffix), "{got}");
        assert!(!logger.failing.load(Ordering::Relaxed));

        // logd restarts: the old socket file is replaced by a new one.
        drop(server);
        let _ = std::fs::remove_file(&path);
        log_warn(&logger, "during restart");
        let server = match UnixDatagram::bind(&path) {
            Ok(s) => s,
            Err(e) => panic!("rebind {}: {e}", path.display()),
        };
        log_warn(&logger, "after restart");
        assert!(recv(&server).ends_with("after restart"));
        let _ = std::fs::remove_dir_all(Path::new(&dir));
    }
}
