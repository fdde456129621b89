//! The control socket and the `mxspool queue` commands.
//!
//! Protocol (a Unix stream socket, mode 0600, owned by the daemon's user):
//! the client sends one request line, the `queue` words joined by single
//! spaces (`list --json`, `flush example.com`, `show 6921A3F200001`), then
//! LF. The daemon answers `OK` or `ERR <message>` on the first line, the
//! command's output after it, and closes the connection.

pub mod server;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 1024;
/// How long `mxspool queue` waits for the daemon's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer the client reads (a queue of thousands of messages).
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

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
    /// Call-ahead results: `accepted`, `rejected`, `policy_refusal`,
    /// `null_sender_refused`, `tempfail`, `unreachable`, `cache_*`, and the
    /// primary warnings by kind.
    pub callahead: BTreeMap<&'static str, u64>,
    /// Started, unix seconds.
    pub started: u64,
}

impl Stats {
    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }
}

/// Text that may come from strangers (headers, addresses, HELO names,
/// remote replies) made safe for an operator's terminal: every control
/// character but TAB (C0, DEL, and C1, since a UTF-8 terminal may take
/// U+009B as CSI) becomes `\xNN`, so no escape sequence gets through.
/// Backslashes are kept: the output is read, never parsed back.
pub fn term_str(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON string literal. Every control character is escaped, DEL and C1
/// too (JSON allows them raw, a terminal showing the JSON does not).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks the words of a `queue` command before anything is sent, so bad
/// usage is exit 2 even with no daemon running.
pub fn validate(words: &[&str]) -> Result<(), String> {
    let json_ok = |rest: &[&str]| rest.iter().all(|w| *w == "--json");
    match words {
        ["list", rest @ ..] if json_ok(rest) => Ok(()),
        ["stats", rest @ ..] if json_ok(rest) => Ok(()),
        ["flush"] | ["flush", _] => Ok(()),
        ["show", id] | ["delete", id] | ["bounce", id] => crate::spool::parse_id(id)
            .map(|_| ())
            .ok_or_else(|| format!("'{id}' is not a queue id")),
        ["retag", _domain, dest] => crate::config::HostPort::parse(dest, 25)
            .map(|_| ())
            .map_err(|e| format!("bad destination '{dest}': {e}")),
        [] => {
            Err("queue needs a subcommand: list, show, flush, delete, bounce, retag, stats".into())
        }
        _ => Err(format!("unknown queue command: {}", words.join(" "))),
    }
}

/// `mxspool queue ...`: talks to the running daemon over its control
/// socket. The spool file belongs to the daemon, so with no daemon there
/// is nothing to ask.
pub fn queue_command(config_path: &Path, words: &[&str]) -> i32 {
    if let Err(e) = validate(words) {
        eprintln!("mxspool: {e}");
        return 2;
    }
    let cfg = match crate::config::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let sock = &cfg.main.control_socket;
    let mut stream = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(_) => {
            eprintln!(
                "mxspool is not running (no control socket at {})",
                sock.display()
            );
            return 1;
        }
    };
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let request = format!("{}\n", words.join(" "));
    if let Err(e) = stream.write_all(request.as_bytes()) {
        eprintln!(
            "mxspool: cannot talk to the daemon at {}: {e}",
            sock.display()
        );
        return 1;
    }
    let mut reader = BufReader::new(stream.take(MAX_RESPONSE));
    let mut status = String::new();
    if let Err(e) = reader.read_line(&mut status) {
        eprintln!("mxspool: no answer from the daemon: {e}");
        return 1;
    }
    let mut rest = String::new();
    if let Err(e) = reader.read_to_string(&mut rest) {
        eprintln!("mxspool: answer cut short: {e}");
        return 1;
    }
    match status.trim_end().strip_prefix("ERR") {
        Some(msg) => {
            eprintln!("mxspool: {}", msg.trim());
            1
        }
        None if status.trim_end() == "OK" => {
            print!("{rest}");
            0
        }
        None => {
            eprintln!(
                "mxspool: unexpected answer from the daemon: {}",
                status.trim_end()
            );
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_controls_and_keep_utf8() {
        assert_eq!(json_str("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
        assert_eq!(
            json_str("\x1b[2J\x7f\u{9b}\t"),
            "\"\\u001b[2J\\u007f\\u009b\\t\""
        );
    }

    #[test]
    fn terminal_text_escapes_every_control_but_tab() {
        assert!(matches!(term_str("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(
            term_str("a\x1b[2J\x1b]0;t\x07b\r\n\0\x7f\u{9b}2J\u{85}\tc"),
            "a\\x1b[2J\\x1b]0;t\\x07b\\x0d\\x0a\\x00\\x7f\\x9b2J\\x85\tc"
        );
    }

    #[test]
    fn bad_queue_usage_is_caught_before_the_socket() {
        assert!(validate(&["list"]).is_ok());
        assert!(validate(&["list", "--json"]).is_ok());
        assert!(validate(&["show", "ZZZ"]).is_err());
        assert!(validate(&["retag", "example.com"]).is_err());
        assert!(validate(&["frobnicate"]).is_err());
        assert!(validate(&[]).is_err());
    }
}
