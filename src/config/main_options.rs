//! `config mxspool`: every option of the main section, declared once.
//! The order is `check`'s output order.

use super::spec::Form::{List, Required, Single};
use super::spec::*;
use super::value::*;
use super::{CLAMD_PORT, Cidr, ConfigError, HostPort, Main, RetryStep, SPAMD_PORT, Score};
use std::path::PathBuf;
use std::time::Duration;

pub(super) static MAIN_OPTIONS: &[OptionSpec<Main>] = &[
    OptionSpec {
        name: "hostname",
        form: Required("the name of this server, as in the MX records"),
        doc: doc("our name: greeting, EHLO, Received, and how we find ourselves in MX lists"),
        parse: |m, v| set(&mut m.hostname, domain_name(v, 2)),
        print: |m| one(&m.hostname),
    },
    OptionSpec {
        name: "listen",
        form: List(&["0.0.0.0:25", "[::]:25"]),
        doc: doc("addresses to accept mail on"),
        parse: |m, v| {
            let addr = parse_listen(v)?;
            // Binding one address twice would fail at start-up; say it here.
            if m.listen.contains(&addr) {
                return Err("is listed twice".into());
            }
            m.listen.push(addr);
            Ok(())
        },
        print: |m| each(&m.listen),
    },
    OptionSpec {
        name: "spool_dir",
        form: Required("where the spool lives, on flash or USB"),
        doc: doc("where the redb spool lives: flash or USB, never /tmp or /var (RAM on OpenWrt)"),
        parse: |m, v| set(&mut m.spool_dir, abs_path(v)),
        print: |m| one(m.spool_dir.display()),
    },
    OptionSpec {
        name: "allow_volatile_spool",
        form: Single("0"),
        doc: doc(
            "a `spool_dir` on tmpfs or ramfs is refused by `check` and `run` (exit 2, naming \
             the line) unless this is `1`",
        ),
        parse: |m, v| set(&mut m.allow_volatile_spool, parse_bool(v)),
        print: |m| flag(m.allow_volatile_spool),
    },
    OptionSpec {
        name: "alert_command",
        form: Single(""),
        doc: doc(
            "a program (absolute path, then arguments split on spaces; no shell) run on alert \
             events, with `MXSPOOL_ALERT_EVENT` (`destination_unreachable`, \
             `spool_nearly_full`, `guard_refusal`, `returned`), `MXSPOOL_ALERT_TEXT`, \
             `MXSPOOL_ALERT_HOSTNAME`, `MXSPOOL_ALERT_TIME` and per event \
             `MXSPOOL_ALERT_DESTINATION`, `_REASON`, `_ADDRESS`, `_QUEUE_ID`, `_RECIPIENTS`, \
             `_BYTES`, `_MAX`; at most one per kind per hour (every alert is logged as \
             `event=alert`); killed after 30 s",
        ),
        parse: |m, v| set(&mut m.alert_command, alert_command(v)),
        print: |m| {
            one(m
                .alert_command
                .as_ref()
                .map_or(String::new(), |a| a.join(" ")))
        },
    },
    OptionSpec {
        name: "alert_after",
        form: Single("1h"),
        doc: doc(
            "a destination that cannot be reached this long is a `destination_unreachable` alert",
        ),
        parse: |m, v| set(&mut m.alert_after, positive_duration(v)),
        print: |m| dur(m.alert_after),
    },
    OptionSpec {
        name: "flush_on_ifup",
        form: Single("1"),
        doc: doc(
            "for the OpenWrt init script: retry all queued mail 5 s after the `wan` or `wan6` \
             interface comes up (a procd interface trigger running `/etc/init.d/mxspool \
             flush`)",
        ),
        parse: |m, v| set(&mut m.flush_on_ifup, parse_bool(v)),
        print: |m| flag(m.flush_on_ifup),
    },
    OptionSpec {
        name: "control_socket",
        form: Single("/var/run/mxspool.sock"),
        doc: doc("the socket `mxspool queue` talks to"),
        parse: |m, v| set(&mut m.control_socket, abs_path(v)),
        print: |m| one(m.control_socket.display()),
    },
    OptionSpec {
        name: "resolver",
        form: Single(""),
        doc: doc("DNS server `IP[:PORT]`; empty: the nameservers listed in \
             `/tmp/resolv.conf.d/resolv.conf.auto`, else in `/etc/resolv.conf`"),
        parse: |m, v| set(&mut m.resolver, parse_resolver(v)),
        print: |m| unset(m.resolver),
    },
    OptionSpec {
        name: "max_message_size",
        form: Single("10M"),
        doc: doc("larger messages get `552 5.3.4`"),
        parse: |m, v| set(&mut m.max_message_size, positive_size(v)),
        print: |m| size(m.max_message_size),
    },
    OptionSpec {
        name: "max_recipients",
        form: Single("100"),
        doc: doc("recipients per message; more get `452 4.5.3`"),
        parse: |m, v| set(&mut m.max_recipients, count(v)),
        print: |m| one(m.max_recipients),
    },
    OptionSpec {
        name: "max_connections",
        form: Single("20"),
        doc: doc("simultaneous connections; more get `421 4.7.0`"),
        parse: |m, v| set(&mut m.max_connections, count(v)),
        print: |m| one(m.max_connections),
    },
    OptionSpec {
        name: "max_connections_per_ip",
        form: Single("5"),
        doc: doc("simultaneous connections from one address"),
        parse: |m, v| set(&mut m.max_connections_per_ip, count(v)),
        print: |m| one(m.max_connections_per_ip),
    },
    OptionSpec {
        name: "max_spool_size",
        form: Single("64M"),
        doc: doc("spool over this (or the disk nearly full): `452 4.3.1`"),
        parse: |m, v| set(&mut m.max_spool_size, positive_size(v)),
        print: |m| size(m.max_spool_size),
    },
    OptionSpec {
        name: "callahead_timeout",
        form: Single("10s"),
        doc: doc("the whole call-ahead probe's time budget"),
        parse: |m, v| set(&mut m.callahead_timeout, positive_duration(v)),
        print: |m| dur(m.callahead_timeout),
    },
    OptionSpec {
        name: "callahead_positive_ttl",
        form: Single("31d"),
        doc: doc(
            "how long the primary's 2xx for an address is cached (asked again after a quarter \
             of it) (extra)",
        ),
        parse: |m, v| set(&mut m.callahead_positive_ttl, positive_duration(v)),
        print: |m| dur(m.callahead_positive_ttl),
    },
    OptionSpec {
        name: "callahead_negative_ttl",
        form: Single("3d"),
        doc: doc(
            "how long its \"no such address\" (5.1.x) is cached (asked again after a 24th: 3h) \
             (extra)",
        ),
        parse: |m, v| set(&mut m.callahead_negative_ttl, positive_duration(v)),
        print: |m| dur(m.callahead_negative_ttl),
    },
    OptionSpec {
        name: "callahead_max_probes",
        form: Single("8"),
        doc: doc("call-ahead probes in flight at once (extra)"),
        parse: |m, v| set(&mut m.callahead_max_probes, count(v)),
        print: |m| one(m.callahead_max_probes),
    },
    OptionSpec {
        name: "retry",
        form: List(&["15m 24h", "1h 4d", "2h 5d"]),
        doc: doc("`INTERVAL SPAN` steps; after the last span the mail is returned"),
        parse: |m, v| push(&mut m.retry, parse_retry(v)),
        print: |m| {
            let step =
                |r: &RetryStep| format!("{} {}", fmt_duration(r.interval), fmt_duration(r.span));
            m.retry.iter().map(step).collect()
        },
    },
    OptionSpec {
        name: "host_check_interval",
        form: Single("60s"),
        doc: doc("how often destinations with queued mail are re-resolved"),
        parse: |m, v| set(&mut m.host_check_interval, positive_duration(v)),
        print: |m| dur(m.host_check_interval),
    },
    OptionSpec {
        name: "max_hops",
        form: Single("30"),
        doc: doc("more Received headers than this: `554 5.4.6`"),
        parse: |m, v| set(&mut m.max_hops, count(v)),
        print: |m| one(m.max_hops),
    },
    OptionSpec {
        name: "smarthost",
        form: Single(""),
        doc: doc("`HOST:PORT` for mail we originate (DSNs); empty: the MX of the sender's domain"),
        parse: |m, v| set(&mut m.smarthost, empty_or(v, |v| HostPort::parse(v, 25))),
        print: |m| unset(m.smarthost.as_ref()),
    },
    OptionSpec {
        name: "user",
        form: Single(""),
        doc: doc("drop to this user after binding the sockets"),
        parse: |m, v| set(&mut m.user, empty_or(v, system_user)),
        print: |m| unset(m.user.as_ref()),
    },
    OptionSpec {
        name: "enabled",
        form: Single("1"),
        doc: doc(
            "`0`: the OpenWrt init script starts nothing (extra option; the package ships `0` \
             until configured)",
        ),
        parse: |m, v| set(&mut m.enabled, parse_bool(v)),
        print: |m| flag(m.enabled),
    },
    OptionSpec {
        name: "syslog",
        form: Single("1"),
        doc: doc("`1`: RFC 3164 to /dev/log, facility mail; `0`: stderr"),
        parse: |m, v| set(&mut m.syslog, parse_bool(v)),
        print: |m| flag(m.syslog),
    },
    OptionSpec {
        name: "log_level",
        form: Single("info"),
        doc: doc("`error`, `warn`, `info`, `debug`, `trace`"),
        parse: |m, v| set(&mut m.log_level, parse_log_level(v)),
        print: |m| one(level_name(m.log_level)),
    },
    OptionSpec {
        name: "tls_cert",
        form: Single(""),
        doc: doc("PEM files; with both, STARTTLS is offered"),
        parse: |m, v| set(&mut m.tls_cert, empty_or(v, abs_path)),
        print: |m| unset(m.tls_cert.as_ref().map(|p| p.display())),
    },
    OptionSpec {
        name: "tls_key",
        form: Single(""),
        doc: doc("PEM files; with both, STARTTLS is offered"),
        parse: |m, v| set(&mut m.tls_key, empty_or(v, abs_path)),
        print: |m| unset(m.tls_key.as_ref().map(|p| p.display())),
    },
    OptionSpec {
        name: "dnsbl",
        form: List(&[]),
        doc: doc(
            "DNS blocklists for clients (IPv4 and IPv6), all zones asked in parallel at \
             connect; a listed client is refused at MAIL with `554 5.7.1` and the zone's TXT \
             reason (a `sender_allow` sender is not refused)",
        ),
        parse: |m, v| push(&mut m.dnsbl, domain_name(v, 2)),
        print: |m| each(&m.dnsbl),
    },
    OptionSpec {
        name: "client_allow",
        form: List(&[]),
        doc: doc("CIDRs; allow skips the DNSBL and deny lists"),
        parse: |m, v| push(&mut m.client_allow, Cidr::parse(v)),
        print: |m| each(&m.client_allow),
    },
    OptionSpec {
        name: "client_deny",
        form: List(&[]),
        doc: doc("CIDRs; allow skips the DNSBL and deny lists"),
        parse: |m, v| push(&mut m.client_deny, Cidr::parse(v)),
        print: |m| each(&m.client_deny),
    },
    OptionSpec {
        name: "sender_allow",
        form: List(&[]),
        doc: doc("a domain, `.domain` (its subdomains) or a full address"),
        parse: |m, v| push(&mut m.sender_allow, sender_pattern(v)),
        print: |m| each(&m.sender_allow),
    },
    OptionSpec {
        name: "sender_deny",
        form: List(&[]),
        doc: doc("a domain, `.domain` (its subdomains) or a full address"),
        parse: |m, v| push(&mut m.sender_deny, sender_pattern(v)),
        print: |m| each(&m.sender_deny),
    },
    OptionSpec {
        name: "cache_size",
        form: Single("4M"),
        doc: doc("redb page cache (extra option)"),
        parse: |m, v| set(&mut m.cache_size, parse_size(v)),
        print: |m| size(m.cache_size),
    },
    OptionSpec {
        name: "journal_size",
        form: Single("4M"),
        doc: doc(
            "the spool's commit journal (`SPOOL_DIR/journal`, preallocated with zeros): a \
             message whose body fits one 32 KiB chunk is made durable by one short sequential \
             write there, and the database catches up within 2 s or when the journal is full \
             (a bigger journal: fewer catch-ups; 1M accepted ~20% less at 8 sessions here); \
             `0`: no journal, every message is a durable database commit (a journal left from \
             before is replayed once and removed); otherwise 64K to 1G; without room for it on \
             the disk, mxspool logs `event=journal_unavailable` and runs without; takes effect \
             at restart (extra option)",
        ),
        parse: |m, v| set(&mut m.journal_size, journal_size(v)),
        print: |m| size(m.journal_size),
    },
    OptionSpec {
        name: "command_timeout",
        form: Single("5m"),
        doc: doc("server: wait for the next command (extra; RFC 5321 4.5.3.2.7)"),
        parse: |m, v| set(&mut m.command_timeout, positive_duration(v)),
        print: |m| dur(m.command_timeout),
    },
    OptionSpec {
        name: "data_timeout",
        form: Single("3m"),
        doc: doc("server: wait for the next block of message text (extra)"),
        parse: |m, v| set(&mut m.data_timeout, positive_duration(v)),
        print: |m| dur(m.data_timeout),
    },
    OptionSpec {
        name: "max_errors",
        form: Single("10"),
        doc: doc("error replies in a session before `421` and close (extra)"),
        parse: |m, v| set(&mut m.max_errors, count(v)),
        print: |m| one(m.max_errors),
    },
    OptionSpec {
        name: "max_destination_connections",
        form: Single("2"),
        doc: doc("parallel connections to one destination (extra)"),
        parse: |m, v| set(&mut m.max_destination_connections, count(v)),
        print: |m| one(m.max_destination_connections),
    },
    OptionSpec {
        name: "connect_timeout",
        form: Single("30s"),
        doc: doc("client: TCP connect budget (extra)"),
        parse: |m, v| set(&mut m.connect_timeout, positive_duration(v)),
        print: |m| dur(m.connect_timeout),
    },
    OptionSpec {
        name: "transaction_timeout",
        form: Single("30m"),
        doc: doc(
            "client: one whole transaction, MAIL FROM to the reply after the body; a \
             destination that trickles its replies is given up on and the mail deferred \
             (extra)",
        ),
        parse: |m, v| set(&mut m.transaction_timeout, positive_duration(v)),
        print: |m| dur(m.transaction_timeout),
    },
    OptionSpec {
        name: "max_destination_queue",
        form: Single("128"),
        doc: doc(
            "jobs waiting for one destination; more due mail for it waits as ids (up to 20,000 \
             in all) and joins the queue as it drains, so a slow destination cannot hold every \
             job slot and other destinations' mail goes ahead (extra)",
        ),
        parse: |m, v| set(&mut m.max_destination_queue, count(v)),
        print: |m| one(m.max_destination_queue),
    },
    OptionSpec {
        name: "greeting_timeout",
        form: Single("5m"),
        doc: doc("client: wait for the server's greeting (extra)"),
        parse: |m, v| set(&mut m.greeting_timeout, positive_duration(v)),
        print: |m| dur(m.greeting_timeout),
    },
    OptionSpec {
        name: "greet_pause",
        form: Single("0s"),
        doc: doc(
            "wait this long before the `220` (`0s`: off); a client that talks first gets `554 \
             5.5.1` and is closed (postscreen's pregreet test; 1-3s is typical, at most 30s; \
             `client_allow` clients are not made to wait) (extra)",
        ),
        parse: |m, v| set(&mut m.greet_pause, greet_pause(v)),
        print: |m| dur(m.greet_pause),
    },
    OptionSpec {
        name: "dnsbl_timeout",
        form: Single("5s"),
        doc: doc(
            "budget of one `dnsbl` zone's lookup; a zone that does not answer in time is \
             skipped (fail open) and logged (extra)",
        ),
        parse: |m, v| set(&mut m.dnsbl_timeout, positive_duration(v)),
        print: |m| dur(m.dnsbl_timeout),
    },
    OptionSpec {
        name: "spamd",
        form: Single(""),
        doc: doc(
            "SpamAssassin `spamd` as `HOST[:PORT]` (port 783): every message is checked with \
             SPAMC over TCP before it is queued; empty: off (extra)",
        ),
        parse: |m, v| {
            set(
                &mut m.spamd,
                empty_or(v, |v| HostPort::parse(v, SPAMD_PORT)),
            )
        },
        print: |m| unset(m.spamd.as_ref()),
    },
    OptionSpec {
        name: "spam_tag_score",
        form: Single("5.0"),
        doc: doc(
            "at or above: `X-Spam-Flag: YES`, `X-Spam-Score` and `X-Spam-Status: Yes, ...` \
             headers are added; below: `X-Spam-Status: No, ...` (extra)",
        ),
        parse: |m, v| set(&mut m.spam_tag_score, Score::parse(v)),
        print: |m| one(m.spam_tag_score),
    },
    OptionSpec {
        name: "spam_reject_score",
        form: Single("10.0"),
        doc: doc(
            "at or above: `554 5.7.1` at the end of DATA, nothing queued; must not be below \
             `spam_tag_score` (extra)",
        ),
        parse: |m, v| set(&mut m.spam_reject_score, Score::parse(v)),
        print: |m| one(m.spam_reject_score),
    },
    OptionSpec {
        name: "clamd",
        form: Single(""),
        doc: doc(
            "ClamAV `clamd` as `HOST[:PORT]` (port 3310, `TCPSocket`): every message is \
             scanned with INSTREAM; infected: `554 5.7.1` with the virus name; empty: off \
             (extra)",
        ),
        parse: |m, v| {
            set(
                &mut m.clamd,
                empty_or(v, |v| HostPort::parse(v, CLAMD_PORT)),
            )
        },
        print: |m| unset(m.clamd.as_ref()),
    },
    OptionSpec {
        name: "scan_required",
        form: Single("0"),
        doc: doc(
            "`0`: a scanner that is down or times out is skipped (logged, mail accepted); `1`: \
             `451 4.7.1`, try again later (extra)",
        ),
        parse: |m, v| set(&mut m.scan_required, parse_bool(v)),
        print: |m| flag(m.scan_required),
    },
    OptionSpec {
        name: "scan_timeout",
        form: Single("30s"),
        doc: doc("the whole exchange with one scanner (extra)"),
        parse: |m, v| set(&mut m.scan_timeout, positive_duration(v)),
        print: |m| dur(m.scan_timeout),
    },
];

/// Reads the main section: the table, then the rules between options.
pub(super) fn parse(o: &Options) -> Result<Main, ConfigError> {
    let main = parse_section(o, MAIN_OPTIONS, blank(o.section.line))?;
    check(o, &main)?;
    Ok(main)
}

/// What the table's defaults and the file's values are written into:
/// every field is set by its option before `parse` returns.
pub(super) fn blank(line: usize) -> Main {
    let zero = Duration::ZERO;
    Main {
        line,
        hostname: String::new(),
        listen: Vec::new(),
        spool_dir: PathBuf::new(),
        allow_volatile_spool: false,
        alert_command: None,
        alert_after: zero,
        flush_on_ifup: false,
        control_socket: PathBuf::new(),
        resolver: None,
        max_message_size: 0,
        max_recipients: 0,
        max_connections: 0,
        max_connections_per_ip: 0,
        max_spool_size: 0,
        callahead_timeout: zero,
        callahead_positive_ttl: zero,
        callahead_negative_ttl: zero,
        callahead_max_probes: 0,
        retry: Vec::new(),
        host_check_interval: zero,
        max_hops: 0,
        smarthost: None,
        user: None,
        syslog: false,
        enabled: false,
        log_level: log::LevelFilter::Off,
        tls_cert: None,
        tls_key: None,
        dnsbl: Vec::new(),
        client_allow: Vec::new(),
        client_deny: Vec::new(),
        sender_allow: Vec::new(),
        sender_deny: Vec::new(),
        cache_size: 0,
        journal_size: 0,
        command_timeout: zero,
        data_timeout: zero,
        max_errors: 0,
        max_destination_connections: 0,
        connect_timeout: zero,
        transaction_timeout: zero,
        max_destination_queue: 0,
        greeting_timeout: zero,
        greet_pause: zero,
        dnsbl_timeout: zero,
        spamd: None,
        spam_tag_score: Score(0),
        spam_reject_score: Score(0),
        clamd: None,
        scan_required: false,
        scan_timeout: zero,
    }
}

/// Rules between options; each error names a line of one of them.
fn check(o: &Options, main: &Main) -> Result<(), ConfigError> {
    if main.spam_reject_score < main.spam_tag_score
        && let Some(item) = o
            .get("spam_reject_score")
            .or_else(|| o.get("spam_tag_score"))
    {
        return Err(o.bad(
            item,
            &format!(
                "spam_reject_score {} is below spam_tag_score {}: mail would be refused \
                 before it could ever be tagged",
                main.spam_reject_score, main.spam_tag_score
            ),
        ));
    }
    if main.tls_cert.is_some() != main.tls_key.is_some() {
        let (given, missing) = if main.tls_cert.is_some() {
            ("tls_cert", "tls_key")
        } else {
            ("tls_key", "tls_cert")
        };
        if let Some(item) = o.get(given) {
            return Err(o.bad(
                item,
                &format!("is set but '{missing}' is not; STARTTLS needs both"),
            ));
        }
    }
    if main.max_spool_size < main.max_message_size
        && let Some(item) = o
            .get("max_spool_size")
            .or_else(|| o.get("max_message_size"))
    {
        return Err(o.bad(
            item,
            &format!(
                "max_spool_size {} is smaller than max_message_size {}: \
                 the largest messages could never be queued",
                fmt_size(main.max_spool_size),
                fmt_size(main.max_message_size)
            ),
        ));
    }
    Ok(())
}
