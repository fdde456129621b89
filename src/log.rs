//! Logging: one `key=value` line per event. With `syslog '1'`, RFC 3164
//! datagrams to /dev/log (facility mail, ident `mxspool[pid]`, the log level
//! mapped to the severity); with `'0'`, stderr through env_logger.

/// Installs the logger. `syslog`: write to /dev/log (falls back to stderr
/// with a warning when /dev/log cannot be reached).
pub fn init(syslog: bool, level: log::LevelFilter) {
    let _ = (syslog, level);
    todo!("log::init")
}

/// Changes the level after a reload.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}
