//! The control socket and the `mxspool queue` commands.
//!
//! Protocol (a Unix stream socket, mode 0600, owned by the daemon's user):
//! the client sends one request line, the `queue` words joined by single
//! spaces (`list --json`, `flush example.com`, `show 6921A3F200001`), then
//! LF. The daemon answers `OK` or `ERR <message>` on the first line, the
//! command's output after it, and closes the connection. A listing is
//! written while the queue is read; should the daemon fail after its `OK`,
//! the output ends with a NUL byte and `ERR <message>`.

mod list;
pub mod server;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request line the daemon reads.
pub const MAX_REQUEST: usize = 1024;
/// How long `mxspool queue` waits for the daemon's answer (for each read:
/// a long listing may take longer in all).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest status line (`OK`, `ERR message`) the client reads. The output
/// after `OK` is copied as it comes, unbounded: a listing of a long queue.
const MAX_STATUS: u64 = 64 * 1024;

pub use crate::ctx::Stats;

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

/// The options of `queue list`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListArgs {
    pub json: bool,
    /// At most this many messages (`--limit N`).
    pub limit: Option<u64>,
    /// Only messages queued after this id (`--after ID`).
    pub after: Option<u64>,
}

impl ListArgs {
    /// Parses the words after `list` (the client checks them before
    /// sending, the daemon parses the same words again).
    pub fn parse(words: &[&str]) -> Result<ListArgs, String> {
        let mut a = ListArgs::default();
        let mut it = words.iter();
        while let Some(&w) = it.next() {
            let (name, inline) = match w.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v)),
                _ => (w, None),
            };
            let mut value = || {
                inline
                    .or_else(|| it.next().copied())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let twice = || Err(format!("list: {name} given twice"));
            match name {
                "--json" if inline.is_some() => return Err("list: --json takes no value".into()),
                "--json" if a.json => return twice(),
                "--json" => a.json = true,
                "--limit" if a.limit.is_some() => return twice(),
                "--limit" => a.limit = Some(parse_limit(value()?)?),
                "--after" if a.after.is_some() => return twice(),
                "--after" => {
                    let id = value()?;
                    let n = crate::spool::parse_id(id)
                        .ok_or_else(|| format!("--after: '{id}' is not a queue id"))?;
                    a.after = Some(n);
                }
                _ => {
                    return Err(format!(
                        "list: unknown option '{w}' (list [--json] [--limit N] [--after ID])"
                    ));
                }
            }
        }
        Ok(a)
    }

    /// Paging was asked for: the answer says how many there are in all
    /// and where the next page starts.
    pub fn paged(&self) -> bool {
        self.limit.is_some() || self.after.is_some()
    }
}

fn parse_limit(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "--limit: '{v}' is not a number of messages (1 or more)"
        )),
    }
}

/// A DOMAIN argument: letters, digits, dots and hyphens, not starting with
/// '-' (configured domains are ASCII, IDNs in their xn-- form). Checked
/// before the configuration is read, so words glued together by a caller
/// (LuCI's ACL wildcards span spaces) are refused as usage errors.
pub fn domain_arg(d: &str) -> Result<(), String> {
    let ok = !d.is_empty()
        && !d.starts_with('-')
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("'{}' is not a domain name", term_str(d)))
    }
}

/// Checks the words of a `queue` command before anything is sent, so bad
/// usage is exit 2 even with no daemon running.
pub fn validate(words: &[&str]) -> Result<(), String> {
    let json_ok = |rest: &[&str]| rest.iter().all(|w| *w == "--json");
    match words {
        ["list", rest @ ..] => ListArgs::parse(rest).map(|_| ()),
        ["stats", rest @ ..] if json_ok(rest) => Ok(()),
        ["flush"] => Ok(()),
        ["flush", domain] => domain_arg(domain),
        ["show", id] | ["delete", id] | ["bounce", id] => crate::spool::parse_id(id)
            .map(|_| ())
            .ok_or_else(|| format!("'{id}' is not a queue id")),
        ["retag", domain, dest] => {
            domain_arg(domain)?;
            crate::config::HostPort::parse(dest, 25)
                .map(|_| ())
                .map_err(|e| format!("bad destination '{}': {e}", term_str(dest)))
        }
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
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut status = String::new();
    if let Err(e) = reader.by_ref().take(MAX_STATUS).read_line(&mut status) {
        eprintln!("mxspool: no answer from the daemon: {e}");
        return 1;
    }
    match status.trim_end().strip_prefix("ERR") {
        Some(msg) => {
            eprintln!("mxspool: {}", msg.trim());
            1
        }
        None if status.trim_end() == "OK" => {
            match copy_answer(&mut reader, &mut std::io::stdout().lock()) {
                Ok(()) => 0,
                Err(Cut::Daemon(msg)) => {
                    eprintln!("mxspool: {msg}");
                    1
                }
                Err(Cut::Read(e)) => {
                    eprintln!("mxspool: answer cut short: {e}");
                    1
                }
                // `| head` closed the pipe: nothing to say.
                Err(Cut::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 1,
                Err(Cut::Write(e)) => {
                    eprintln!("mxspool: cannot write the output: {e}");
                    1
                }
            }
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

/// Why the output after `OK` stopped short.
#[derive(Debug)]
enum Cut {
    /// The daemon failed after it had begun (its message).
    Daemon(String),
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies the daemon's output to `out` as it comes, so a listing of a long
/// queue is never held whole here either. A NUL byte (never part of any
/// output) means the daemon failed midway: `ERR message` follows it.
fn copy_answer(reader: &mut impl BufRead, out: &mut impl Write) -> Result<(), Cut> {
    loop {
        let buf = reader.fill_buf().map_err(Cut::Read)?;
        if buf.is_empty() {
            return out.flush().map_err(Cut::Write);
        }
        if let Some(p) = buf.iter().position(|&b| b == 0) {
            out.write_all(&buf[..p]).map_err(Cut::Write)?;
            let _ = out.flush();
            reader.consume(p + 1);
            let mut msg = Vec::new();
            let _ = reader.take(MAX_STATUS).read_to_end(&mut msg);
            let msg = String::from_utf8_lossy(&msg);
            let msg = msg.trim();
            let msg = msg.strip_prefix("ERR").unwrap_or(msg).trim();
            return Err(Cut::Daemon(msg.to_string()));
        }
        let n = buf.len();
        out.write_all(buf).map_err(Cut::Write)?;
        reader.consume(n);
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
    fn list_options_parse_in_any_order_and_bad_ones_are_named() {
        let p = |w: &[&str]| ListArgs::parse(w);
        assert_eq!(p(&[]), Ok(ListArgs::default()));
        let all = ListArgs {
            json: true,
            limit: Some(20),
            after: Some(0x6921A3F200001),
        };
        assert_eq!(
            p(&["--after", "6921A3F200001", "--json", "--limit", "20"]),
            Ok(all)
        );
        assert_eq!(
            p(&["--limit=20", "--after=6921a3f200001", "--json"]),
            Ok(all)
        );
        assert!(!p(&["--json"]).unwrap().paged());
        assert!(p(&["--after", "1"]).unwrap().paged());
        for (bad, says) in [
            (&["--limit"][..], "needs a value"),
            (&["--limit", "0"], "1 or more"),
            (&["--limit", "-3"], "1 or more"),
            (&["--limit", "ten"], "'ten'"),
            (&["--after", "XYZ"], "not a queue id"),
            (&["--json", "--json"], "twice"),
            (&["--limit", "1", "--limit", "2"], "twice"),
            (&["--json=1"], "no value"),
            (&["--all"], "unknown option '--all'"),
            (&["20"], "unknown option '20'"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_answer_is_copied_and_a_late_failure_is_an_error() {
        let mut out = vec![];
        let ok = copy_answer(&mut &b"[1,2]\n"[..], &mut out);
        assert!(ok.is_ok() && out == b"[1,2]\n");
        let mut out = vec![];
        let cut = copy_answer(&mut &b"A\nB\n\0ERR spool is shutting down\n"[..], &mut out);
        assert!(matches!(cut, Err(Cut::Daemon(m)) if m == "spool is shutting down"));
        assert_eq!(out, b"A\nB\n");
    }

    #[test]
    fn bad_queue_usage_is_caught_before_the_socket() {
        assert!(validate(&["list"]).is_ok());
        assert!(validate(&["list", "--json"]).is_ok());
        assert!(validate(&["list", "--limit", "5", "--after", "1F"]).is_ok());
        assert!(validate(&["list", "--limit", "0"]).is_err());
        assert!(validate(&["list", "--bogus"]).is_err());
        assert!(validate(&["show", "ZZZ"]).is_err());
        assert!(validate(&["retag", "example.com"]).is_err());
        assert!(validate(&["flush", "example.com"]).is_ok());
        assert!(validate(&["flush", "Example.COM."]).is_ok());
        for bad in ["x -c /etc/shadow", "-c", "", "a b", "é.example"] {
            assert!(validate(&["flush", bad]).is_err(), "{bad:?}");
            assert!(
                validate(&["retag", bad, "mail.example.com"]).is_err(),
                "{bad:?}"
            );
        }
        assert!(validate(&["retag", "example.com", "x -c /etc/shadow"]).is_err());
        assert!(validate(&["frobnicate"]).is_err());
        assert!(validate(&[]).is_err());
    }
}
