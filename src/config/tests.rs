//! Tests of the typed model: defaults, validation errors with their lines,
//! the `check` round trip, and the value parsers.

use super::*;

const PATH: &str = "/etc/config/mxspool";

/// The smallest valid file: line 1 is the section, 2-3 the required options.
const BASE: &str = "config mxspool 'main'\n\toption hostname 'mx2.example.net'\n\toption spool_dir '/srv/mxspool'\n";

fn parse(text: &str) -> Config {
    match Config::parse(text, Path::new(PATH)) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}\n{text}"),
    }
}

fn error(text: &str) -> ConfigError {
    match Config::parse(text, Path::new(PATH)) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// BASE plus `extra` lines inside the main section (they start at line 4).
fn main_with(extra: &str) -> Config {
    parse(&format!("{BASE}{extra}\n"))
}

fn main_error(extra: &str) -> ConfigError {
    error(&format!("{BASE}{extra}\n"))
}

/// BASE plus a domain section at line 4 whose options start at line 5.
fn domain_with(extra: &str) -> Domain {
    let c = parse(&format!("{BASE}config domain\n{extra}\n"));
    assert_eq!(c.domains.len(), 1);
    c.domains[0].clone()
}

fn domain_error(extra: &str) -> ConfigError {
    error(&format!("{BASE}config domain\n{extra}\n"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// Every default of the contract and of the documented extras.
#[test]
fn main_defaults() {
    let c = parse(BASE);
    let m = &c.main;
    assert_eq!(c.path, Path::new(PATH));
    assert_eq!(m.line, 1);
    assert_eq!(m.hostname, "mx2.example.net");
    assert_eq!(m.spool_dir, Path::new("/srv/mxspool"));
    assert_eq!(
        m.listen,
        vec![
            "0.0.0.0:25".parse::<SocketAddr>().unwrap(),
            "[::]:25".parse().unwrap()
        ]
    );
    assert_eq!(m.control_socket, Path::new("/var/run/mxspool.sock"));
    assert_eq!(m.resolver, None);
    assert_eq!(m.max_message_size, 10 * 1024 * 1024);
    assert_eq!(m.max_recipients, 100);
    assert_eq!(m.max_connections, 20);
    assert_eq!(m.max_connections_per_ip, 5);
    assert_eq!(m.max_spool_size, 64 * 1024 * 1024);
    assert_eq!(m.callahead_timeout, secs(10));
    assert_eq!(
        m.retry,
        vec![
            RetryStep {
                interval: secs(900),
                span: secs(86400)
            },
            RetryStep {
                interval: secs(3600),
                span: secs(4 * 86400)
            },
            RetryStep {
                interval: secs(7200),
                span: secs(5 * 86400)
            },
        ]
    );
    assert_eq!(m.host_check_interval, secs(60));
    assert_eq!(m.max_hops, 30);
    assert_eq!(m.smarthost, None);
    assert_eq!(m.user, None);
    assert!(m.syslog);
    assert_eq!(m.log_level, log::LevelFilter::Info);
    assert_eq!(m.tls_cert, None);
    assert_eq!(m.tls_key, None);
    assert!(m.dnsbl.is_empty());
    assert!(m.client_allow.is_empty());
    assert!(m.client_deny.is_empty());
    assert!(m.sender_allow.is_empty());
    assert!(m.sender_deny.is_empty());
    assert_eq!(m.cache_size, 4 * 1024 * 1024);
    assert_eq!(m.journal_size, 4 * 1024 * 1024);
    assert_eq!(m.command_timeout, secs(300));
    assert_eq!(m.data_timeout, secs(180));
    assert_eq!(m.max_errors, 10);
    assert_eq!(m.max_destination_connections, 2);
    assert_eq!(m.connect_timeout, secs(30));
    assert_eq!(m.transaction_timeout, secs(1800));
    assert_eq!(m.max_destination_queue, 128);
    assert_eq!(m.greeting_timeout, secs(300));
    assert!(c.domains.is_empty());
}

// Every default of a domain section; the name is normalised.
#[test]
fn domain_defaults() {
    let d = domain_with("option name 'Example.COM.'");
    assert_eq!(d.line, 4);
    assert_eq!(d.name, "example.com");
    assert_eq!(d.deliver_to, DeliverTo::Mx);
    assert_eq!(d.port, 25);
    assert_eq!(d.verify, Verify::Callahead);
    assert!(d.users.is_empty());
    assert_eq!(d.on_tempfail, OnTempfail::Accept);
    assert!(d.offline_address.is_empty());
    assert_eq!(d.expect_greeting, None);
    assert_eq!(d.tls_pin, None);
}

/// A SHA-256-sized pin: base64 of 32 zero bytes.
const PIN: &str = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// The contract's example, with every option set to a non-default value.
fn full() -> String {
    format!(
        "package mxspool

config mxspool 'main'
	option hostname 'MX2.Example.net.'
	list   listen '0.0.0.0:2525'
	list   listen '[::1]:25'
	option spool_dir '/srv/my '\\''spool'\\'''
	option control_socket '/run/mx.sock'
	option resolver '127.0.0.1'
	option max_message_size '20M'
	option max_recipients '50'
	option max_connections '10'
	option max_connections_per_ip '3'
	option max_spool_size '1G'
	option callahead_timeout '90s'
	list   retry '5m 2h'
	list   retry '1h 3d'
	option host_check_interval '2m'
	option max_hops '40'
	option smarthost 'relay.example.net:587'
	option user 'mxspool'
	option syslog 'no'
	option log_level 'debug'
	option tls_cert '/etc/mxspool/cert.pem'
	option tls_key '/etc/mxspool/key.pem'
	list   dnsbl 'zen.spamhaus.org'
	list   client_allow '192.0.2.0/24'
	list   client_allow '2001:db8::/32'
	list   client_deny '198.51.100.7'
	list   sender_allow 'Partner.example'
	list   sender_allow 'Bob@Friend.example'
	list   sender_deny '.spam.example'
	option cache_size '1536K'
	option journal_size '0'
	option command_timeout '10m'
	option data_timeout '1h'
	option max_errors '3'
	option max_destination_connections '4'
	option connect_timeout '45s'
	option greeting_timeout '2d'

config domain 'example'
	option name 'example.com'
	option port '2525'
	option verify 'users'
	list   user 'Alice'
	list   user 'bob@example.com'
	option on_tempfail 'defer'
	list   offline_address '203.0.113.7'
	list   offline_address '2001:db8::7'
	option expect_greeting 'Mail.Example.com'
	option tls_pin '{PIN}'

config domain
	option name 'other.example'
	option deliver_to '[2001:db8::25]:2525'
	option verify 'none'
"
    )
}

// The example file parses to exactly what it says.
#[test]
fn full_example_values() {
    let c = parse(&full());
    let m = &c.main;
    assert_eq!(m.line, 3);
    assert_eq!(m.hostname, "mx2.example.net");
    assert_eq!(
        m.listen,
        vec![
            "0.0.0.0:2525".parse::<SocketAddr>().unwrap(),
            "[::1]:25".parse().unwrap()
        ]
    );
    assert_eq!(m.spool_dir, Path::new("/srv/my 'spool'"));
    assert_eq!(m.resolver, Some("127.0.0.1:53".parse().unwrap()));
    assert_eq!(m.max_message_size, 20 << 20);
    assert_eq!(m.max_spool_size, 1 << 30);
    assert_eq!(m.callahead_timeout, secs(90));
    assert_eq!(
        m.retry,
        vec![
            RetryStep {
                interval: secs(300),
                span: secs(7200)
            },
            RetryStep {
                interval: secs(3600),
                span: secs(3 * 86400)
            },
        ]
    );
    assert_eq!(
        m.smarthost,
        Some(HostPort {
            host: "relay.example.net".into(),
            port: 587
        })
    );
    assert_eq!(m.user.as_deref(), Some("mxspool"));
    assert!(!m.syslog);
    assert_eq!(m.log_level, log::LevelFilter::Debug);
    assert_eq!(
        m.tls_cert.as_deref(),
        Some(Path::new("/etc/mxspool/cert.pem"))
    );
    assert_eq!(m.client_allow.len(), 2);
    assert_eq!(m.client_deny[0].prefix, 32);
    assert_eq!(
        m.sender_allow,
        vec!["partner.example", "bob@friend.example"]
    );
    assert_eq!(m.sender_deny, vec![".spam.example"]);
    assert_eq!(m.cache_size, 1536 * 1024);
    assert_eq!(m.journal_size, 0);
    assert_eq!(m.greeting_timeout, secs(2 * 86400));

    let d = &c.domains[0];
    assert_eq!(d.line, 42);
    assert_eq!(d.port, 2525);
    assert_eq!(d.verify, Verify::Users);
    assert_eq!(d.users, vec!["alice", "bob@example.com"]);
    assert_eq!(d.on_tempfail, OnTempfail::Defer);
    assert_eq!(
        d.offline_address,
        vec![
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "2001:db8::7".parse().unwrap()
        ]
    );
    assert_eq!(d.expect_greeting.as_deref(), Some("mail.example.com"));
    assert_eq!(d.tls_pin.as_deref(), Some(PIN));
    assert_eq!(
        c.domains[1].deliver_to,
        DeliverTo::Relay(HostPort {
            host: "2001:db8::25".into(),
            port: 2525
        })
    );
    assert_eq!(c.domain("other.example").map(|d| d.line), Some(54));
    assert!(c.domain("example.org").is_none());
}

/// Line numbers are not part of the printed form; compare without them.
fn without_lines(mut c: Config) -> Config {
    c.main.line = 0;
    for d in &mut c.domains {
        d.line = 0;
    }
    c
}

// `mxspool check` prints UCI that parses back to the same configuration,
// and printing that again gives the same text.
#[test]
fn display_round_trip() {
    for text in [BASE.to_string(), full()] {
        let first = parse(&text);
        let printed = first.to_string();
        let second = parse(&printed);
        assert_eq!(
            without_lines(first.clone()),
            without_lines(second.clone()),
            "{printed}"
        );
        assert_eq!(printed, second.to_string());
    }
}

// The printed form uses the largest exact unit, quotes every value, and
// escapes quotes the way uci export does.
#[test]
fn display_format() {
    let printed = parse(&full()).to_string();
    for line in [
        "config mxspool 'main'\n",
        "\toption hostname 'mx2.example.net'\n",
        "\tlist listen '[::1]:25'\n",
        "\toption spool_dir '/srv/my '\\''spool'\\'''\n",
        "\toption resolver '127.0.0.1:53'\n",
        "\toption max_message_size '20M'\n",
        "\toption max_spool_size '1G'\n",
        "\toption cache_size '1536K'\n",
        "\toption callahead_timeout '90s'\n",
        "\toption host_check_interval '2m'\n",
        "\toption data_timeout '1h'\n",
        "\tlist retry '5m 2h'\n",
        "\tlist retry '1h 3d'\n",
        "\toption syslog '0'\n",
        "\toption log_level 'debug'\n",
        "\tlist client_deny '198.51.100.7/32'\n",
        "\toption smarthost 'relay.example.net:587'\n",
        "\nconfig domain\n\toption name 'example.com'\n\toption deliver_to 'mx'\n\toption port '2525'\n",
        "\toption deliver_to '[2001:db8::25]:2525'\n\toption verify 'none'\n",
    ] {
        assert!(printed.contains(line), "missing {line:?} in\n{printed}");
    }
    let defaults = parse(BASE).to_string();
    for line in [
        "\tlist listen '0.0.0.0:25'\n\tlist listen '[::]:25'\n",
        "\toption max_message_size '10M'\n",
        "\tlist retry '15m 1d'\n\tlist retry '1h 4d'\n\tlist retry '2h 5d'\n",
        "\toption smarthost ''\n",
        "\toption resolver ''\n",
        "\toption syslog '1'\n",
        "\toption log_level 'info'\n",
        "\toption command_timeout '5m'\n",
    ] {
        assert!(defaults.contains(line), "missing {line:?} in\n{defaults}");
    }
}

// Required options: their absence names the line of the section.
#[test]
fn missing_required_options() {
    let e = error("# x\nconfig mxspool\n\toption spool_dir '/srv'\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("'option hostname'"), "{}", e.message);
    let e = error("\nconfig mxspool\n\toption hostname 'a.example'\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("'option spool_dir'"), "{}", e.message);
    let e = domain_error("option verify none");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("'option name'"), "{}", e.message);
}

// No main section at all is an error, reported at line 1 so the output
// keeps the PATH:LINE: form.
#[test]
fn missing_main_section() {
    for text in [
        "",
        "# only a comment\n",
        "config domain\n\toption name a.example\n",
    ] {
        let e = error(text);
        assert_eq!(e.line, 1);
        assert!(e.message.contains("no 'config mxspool'"), "{}", e.message);
        assert!(e.to_string().starts_with("/etc/config/mxspool:1: "));
    }
}

// Exactly one main section; named or anonymous.
#[test]
fn one_main_section() {
    assert_eq!(parse(&BASE.replace(" 'main'", "")).main.line, 1);
    let e = error(&format!("{BASE}\nconfig mxspool\n"));
    assert_eq!(e.line, 5);
    assert!(
        e.message.contains("second 'config mxspool'"),
        "{}",
        e.message
    );
}

// Unknown sections and options are errors with their line, in the
// contract's words.
#[test]
fn unknown_sections_and_options() {
    let e = error(&format!("{BASE}config relay 'x'\n"));
    assert_eq!(e.line, 4);
    assert!(
        e.to_string()
            .starts_with("/etc/config/mxspool:4: unknown section type 'relay'"),
        "{e}"
    );
    let e = main_error("\toption hostnmae 'x'");
    assert_eq!(
        e.to_string(),
        "/etc/config/mxspool:4: unknown option 'hostnmae' in section 'mxspool'"
    );
    let e = domain_error("option name a.example\noption deliver 'mx'");
    assert_eq!(e.line, 6);
    assert_eq!(e.message, "unknown option 'deliver' in section 'domain'");
    // Keys of the other section type are unknown here too.
    assert_eq!(main_error("option verify none").line, 4);
}

// `list` for a single-value key is refused; `option` for a list key is one
// entry of the list.
#[test]
fn list_and_option_forms() {
    let e = main_error("list max_hops 3");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("takes one value"), "{}", e.message);
    let m = main_with("option listen '127.0.0.1:25'\nlist listen '[::1]:25'").main;
    assert_eq!(
        m.listen,
        vec![
            "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
            "[::1]:25".parse().unwrap()
        ]
    );
    assert_eq!(main_with("option retry '1m 1h'").main.retry.len(), 1);
}

// A single-value option given twice is refused rather than silently
// keeping one of them.
#[test]
fn repeated_option() {
    let e = main_error("option max_hops 3\n\noption max_hops 4");
    assert_eq!(e.line, 6);
    assert!(e.message.contains("first at line 4"), "{}", e.message);
}

// Two sections of one name would be merged by uci; we refuse it.
#[test]
fn repeated_section_name() {
    let e = error(&format!(
        "{BASE}config domain 'a'\n option name a.example\nconfig domain 'a'\n option name b.example\n"
    ));
    assert_eq!(e.line, 6);
    assert!(e.message.contains("used twice"), "{}", e.message);
}

// Domain names are normalised, checked, and unique.
#[test]
fn domain_names() {
    assert_eq!(
        domain_with("option name 'MAIL.Example.ORG.'").name,
        "mail.example.org"
    );
    for bad in [
        "example",
        "a..example",
        "-a.example",
        "a_b.example",
        "1.2.3.4",
        "bücher.example",
        "",
    ] {
        let e = domain_error(&format!("option name '{bad}'"));
        assert_eq!(e.line, 5, "{bad}");
        assert!(e.message.starts_with("option 'name': "), "{}", e.message);
    }
    let e = error(&format!(
        "{BASE}config domain\n option name a.example\n\nconfig domain\n option name A.Example.\n"
    ));
    assert_eq!(e.line, 8);
    assert!(e.message.contains("configured twice"), "{}", e.message);
    assert!(e.message.contains("line 4"), "{}", e.message);
}

/// Asserts the value-error form at line 4: `option 'KEY': ... (got 'VALUE')`.
fn assert_bad_main(key: &str, value: &str) {
    let e = main_error(&format!("option {key} '{value}'"));
    assert_eq!(e.line, 4, "{key} {value}: {e}");
    assert!(
        e.message.starts_with(&format!("option '{key}': "))
            && e.message.ends_with(&format!("(got '{value}')")),
        "{key} {value}: {e}"
    );
}

fn assert_bad_list(key: &str, value: &str) {
    let e = main_error(&format!("list {key} '{value}'"));
    assert_eq!(e.line, 4, "{key} {value}: {e}");
    assert!(
        e.message.starts_with(&format!("option '{key}': "))
            && e.message.ends_with(&format!("(got '{value}')")),
        "{key} {value}: {e}"
    );
}

// Every bad value in the main section is an error at its line, naming the
// option and the value.
#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let c = Config::parse(
        "config mxspool\n\toption hostname 'mx2.example.net'\n\toption spool_dir 'spool'\n\toption control_socket 'spool/ctl.sock'\n",
        Path::new("/etc/mxspool/mxspool.conf"),
    )
    .unwrap();
    assert_eq!(c.main.spool_dir, PathBuf::from("/etc/mxspool/spool"));
    assert_eq!(
        c.main.control_socket,
        PathBuf::from("/etc/mxspool/spool/ctl.sock")
    );
}

#[test]
fn main_value_errors() {
    // The required options, replacing BASE's value (line 2 or 3).
    for (key, value, line) in [
        ("hostname", "mx2", 2),
        ("hostname", "mx 2.example", 2),
        ("hostname", "192.0.2.1", 2),
        ("spool_dir", "", 3),
    ] {
        let old = if key == "hostname" {
            "'mx2.example.net'"
        } else {
            "'/srv/mxspool'"
        };
        let text = BASE.replace(old, &format!("'{value}'"));
        let e = error(&text);
        assert_eq!(e.line, line, "{key} {value}: {e}");
        assert!(
            e.message.starts_with(&format!("option '{key}': "))
                && e.message.ends_with(&format!("(got '{value}')")),
            "{key} {value}: {e}"
        );
    }
    for (key, value) in [
        ("control_socket", ""),
        ("resolver", "dns.example"),
        ("resolver", "127.0.0.1:0"),
        ("resolver", "127.0.0.1:99999"),
        ("max_message_size", "0"),
        ("max_message_size", "10MB"),
        ("max_message_size", "-1"),
        ("max_message_size", "99999999999G"),
        ("max_recipients", "0"),
        ("max_recipients", "1e3"),
        ("max_recipients", "+5"),
        ("max_recipients", " 5"),
        ("max_connections", ""),
        ("max_connections_per_ip", "0"),
        ("max_spool_size", "x"),
        ("callahead_timeout", "10"),
        ("callahead_timeout", "0s"),
        ("callahead_timeout", "10x"),
        ("host_check_interval", "1.5m"),
        ("max_hops", "0"),
        ("smarthost", "relay.example:0"),
        ("smarthost", "2001:db8::1:25:x"),
        ("user", "-root"),
        ("user", "a b"),
        ("syslog", "2"),
        ("log_level", "verbose"),
        ("tls_cert", "cert.pem"),
        ("cache_size", "4MB"),
        ("journal_size", "63K"),
        ("journal_size", "2G"),
        ("command_timeout", "5"),
        ("data_timeout", "0m"),
        ("max_errors", "0"),
        ("max_destination_connections", "0"),
        ("connect_timeout", "-30s"),
        ("transaction_timeout", "0s"),
        ("max_destination_queue", "0"),
        ("greeting_timeout", "5 m"),
    ] {
        assert_bad_main(key, value);
    }
    for (key, value) in [
        ("listen", "0.0.0.0"),
        ("listen", "0.0.0.0:0"),
        ("listen", "*:25"),
        ("listen", "::1:25"),
        ("retry", "15m"),
        ("retry", "15m 24h 1d"),
        ("retry", "0m 1h"),
        ("retry", "2h 1h"),
        ("retry", "15 24h"),
        ("dnsbl", "zen"),
        ("dnsbl", "zen.spamhaus.org/x"),
        ("client_allow", "192.0.2.0/33"),
        ("client_allow", "2001:db8::/129"),
        ("client_deny", "example.com"),
        ("client_deny", "192.0.2.0/"),
        ("sender_allow", "a b@example.com"),
        ("sender_deny", "@example.com"),
        ("sender_deny", "..example"),
    ] {
        assert_bad_list(key, value);
    }
}

// Every bad value in a domain section is an error at its line (5).
#[test]
fn domain_value_errors() {
    for (key, value) in [
        ("deliver_to", "mx mx"),
        ("deliver_to", "relay.example:0"),
        ("deliver_to", "[2001:db8::1"),
        ("port", "0"),
        ("port", "65536"),
        ("verify", "yes"),
        ("on_tempfail", "reject"),
        ("expect_greeting", "mail example"),
        ("tls_pin", "sha1:AAAA"),
        ("tls_pin", "sha256:AAAA"),
        ("tls_pin", "sha256:not base64!"),
    ] {
        let e = domain_error(&format!("option {key} '{value}'\noption name a.example"));
        assert_eq!(e.line, 5, "{key} {value}: {e}");
        assert!(
            e.message.starts_with(&format!("option '{key}': "))
                && e.message.ends_with(&format!("(got '{value}')")),
            "{key} {value}: {e}"
        );
    }
    for (key, value) in [
        ("user", "a b"),
        ("user", "bob@other.example"),
        ("offline_address", "host.example"),
    ] {
        let e = domain_error(&format!("list {key} '{value}'\noption name a.example"));
        assert_eq!(e.line, 5, "{key} {value}: {e}");
        assert!(e.message.starts_with(&format!("option '{key}': ")), "{e}");
    }
}

// Any `retry` replaces all default steps.
#[test]
fn retry_replaces_defaults() {
    let m = main_with("list retry '1m 1m'").main;
    assert_eq!(
        m.retry,
        vec![RetryStep {
            interval: secs(60),
            span: secs(60)
        }]
    );
}

// STARTTLS needs both files; one alone is an error at its line.
#[test]
fn tls_cert_and_key_together() {
    let e = main_error("option tls_cert '/etc/c.pem'");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("'tls_key' is not"), "{}", e.message);
    let e = main_error("option tls_cert ''\noption tls_key '/etc/k.pem'");
    assert_eq!(e.line, 5);
    assert!(e.message.contains("'tls_cert' is not"), "{}", e.message);
    let m = main_with("option tls_cert '/c'\noption tls_key '/k'").main;
    assert_eq!(m.tls_key.as_deref(), Some(Path::new("/k")));
}

// A spool smaller than the largest message could never queue it.
#[test]
fn spool_smaller_than_message() {
    let e = main_error("option max_spool_size '1M'");
    assert_eq!(e.line, 4);
    assert!(
        e.message.starts_with("option 'max_spool_size': "),
        "{}",
        e.message
    );
    assert_eq!(main_error("\noption max_message_size '100M'").line, 5);
}

// A listen address given twice would fail at bind; it fails here.
#[test]
fn duplicate_listen() {
    let e = main_error("list listen '[::]:25'\nlist listen '[::]:25'");
    assert_eq!(e.line, 5);
    assert!(e.message.contains("listed twice"), "{}", e.message);
}

// Empty means unset for the optional values.
#[test]
fn empty_values_are_unset() {
    let m = main_with(
        "option smarthost ''\noption user ''\noption resolver ''\noption tls_cert ''\noption tls_key ''",
    )
    .main;
    assert_eq!((m.smarthost, m.user, m.resolver), (None, None, None));
    let d = domain_with("option name a.example\noption expect_greeting ''\noption tls_pin ''");
    assert_eq!((d.expect_greeting, d.tls_pin), (None, None));
}

// The OpenWrt boolean spellings.
#[test]
fn booleans() {
    for v in ["1", "yes", "on", "true", "enabled", "YES"] {
        assert!(main_with(&format!("option syslog {v}")).main.syslog, "{v}");
    }
    for v in ["0", "no", "off", "false", "disabled"] {
        assert!(!main_with(&format!("option syslog {v}")).main.syslog, "{v}");
    }
}

// The level names, with syslog's `warning` and `notice` as aliases.
#[test]
fn log_levels() {
    use log::LevelFilter::*;
    for (v, l) in [
        ("error", Error),
        ("warn", Warn),
        ("warning", Warn),
        ("info", Info),
        ("notice", Info),
        ("debug", Debug),
        ("trace", Trace),
    ] {
        assert_eq!(
            main_with(&format!("option log_level {v}")).main.log_level,
            l
        );
    }
}

// The resolver forms: port 53 by default, IPv6 bracketed or bare.
#[test]
fn resolver_forms() {
    for (v, want) in [
        ("192.168.1.1", "192.168.1.1:53"),
        ("192.168.1.1:5353", "192.168.1.1:5353"),
        ("::1", "[::1]:53"),
        ("[::1]", "[::1]:53"),
        ("[::1]:5353", "[::1]:5353"),
    ] {
        let m = main_with(&format!("option resolver '{v}'")).main;
        assert_eq!(m.resolver, Some(want.parse().unwrap()), "{v}");
    }
}

// `deliver_to`: `mx` in any case, or a relay with port 25 by default; a
// `port` next to a relay is refused since it would be ignored.
#[test]
fn deliver_to_forms() {
    assert_eq!(
        domain_with("option name a.example\noption deliver_to MX").deliver_to,
        DeliverTo::Mx
    );
    let d = domain_with("option name a.example\noption deliver_to 'Mail.Example.net'");
    assert_eq!(
        d.deliver_to,
        DeliverTo::Relay(HostPort {
            host: "mail.example.net".into(),
            port: 25
        })
    );
    let e =
        domain_error("option name a.example\noption deliver_to 'h.example:2525'\noption port 2525");
    assert_eq!(e.line, 7);
    assert!(
        e.message.starts_with("option 'port': applies only"),
        "{}",
        e.message
    );
}

// `verify 'users'` with no user would refuse every recipient.
#[test]
fn verify_users_needs_users() {
    let e = domain_error("option name a.example\noption verify users");
    assert_eq!(e.line, 6);
    assert!(e.message.contains("list user"), "{}", e.message);
}

// Values with line breaks (possible with multi-line quotes) are refused,
// and the error stays on one line.
#[test]
fn control_characters_refused() {
    let e = main_error("option control_socket '/run/a\nb'");
    assert_eq!(e.line, 4);
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(e.message.contains("line break"), "{}", e.message);
}

// A syntax error from the UCI layer keeps its line and gains the path.
#[test]
fn syntax_errors_have_path_and_line() {
    let e = main_error("\n\noption user 'abc");
    assert_eq!(e.line, 6);
    assert!(e.to_string().starts_with("/etc/config/mxspool:6: "), "{e}");
}

// A unit is required; no signs, fractions, spaces or overflow; the cap
// keeps clock arithmetic from overflowing.
#[test]
fn durations() {
    assert_eq!(parse_duration("90s"), Ok(secs(90)));
    assert_eq!(parse_duration("15m"), Ok(secs(900)));
    assert_eq!(parse_duration("4h"), Ok(secs(14400)));
    assert_eq!(parse_duration("4d"), Ok(secs(4 * 86400)));
    assert_eq!(parse_duration("0s"), Ok(secs(0)));
    assert_eq!(parse_duration("007m"), Ok(secs(420)));
    assert_eq!(parse_duration("49710d"), Ok(secs(49710 * 86400)));
    for bad in [
        "",
        "s",
        "90",
        "-5s",
        "+5s",
        "5 s",
        "5S",
        "5ms",
        "1.5h",
        "5w",
        "49711d",
        "99999999999999999999s",
        "18446744073709551615d",
        "5é",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(
        parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too long")
    );
}

// Powers of 1024 with an optional unit; overflow is an error, not a wrap.
#[test]
fn sizes() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert_eq!(parse_size("10K"), Ok(10240));
    assert_eq!(parse_size("10M"), Ok(10 << 20));
    assert_eq!(parse_size("2G"), Ok(2 << 30));
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    for bad in [
        "",
        "M",
        "-1",
        "1.5M",
        "10MB",
        "10 M",
        "10T",
        "18446744073709551616",
        "17179869184G",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert!(
        parse_size("17179869184G")
            .unwrap_err()
            .contains("too large")
    );
}

// `check` prints the largest exact unit, never a rounded value.
#[test]
fn printed_units() {
    assert_eq!(fmt_duration(secs(0)), "0s");
    assert_eq!(fmt_duration(secs(90)), "90s");
    assert_eq!(fmt_duration(secs(86400)), "1d");
    assert_eq!(fmt_duration(secs(90000)), "25h");
    assert_eq!(fmt_size(1025), "1025");
    assert_eq!(fmt_size(3 << 29), "1536M");
}

// HOST[:PORT] forms: names lower-cased, IPv6 canonical, ports 1-65535.
#[test]
fn host_port() {
    let hp = |h: &str, p| {
        Ok(HostPort {
            host: h.into(),
            port: p,
        })
    };
    assert_eq!(
        HostPort::parse("Mail.Example.com", 25),
        hp("mail.example.com", 25)
    );
    assert_eq!(
        HostPort::parse("mail.example.com.:2525", 25),
        hp("mail.example.com", 2525)
    );
    assert_eq!(HostPort::parse("nas", 25), hp("nas", 25));
    assert_eq!(HostPort::parse("192.0.2.1:587", 25), hp("192.0.2.1", 587));
    assert_eq!(
        HostPort::parse("[2001:DB8::1]:25", 2),
        hp("2001:db8::1", 25)
    );
    assert_eq!(HostPort::parse("[::1]", 2525), hp("::1", 2525));
    assert_eq!(HostPort::parse("::1", 2525), hp("::1", 2525));
    for bad in [
        "",
        ":25",
        "host:",
        "host:0",
        "host:65536",
        "host:x",
        "[::1",
        "[::1]x",
        "[host]:25",
        "a:b:c",
        "192.0.2.300",
        "bad_host",
        "h st",
    ] {
        assert!(HostPort::parse(bad, 25).is_err(), "{bad}");
    }
    // Display brackets IPv6 so the printed form parses back.
    assert_eq!(
        HostPort::parse("[::1]:26", 25).unwrap().to_string(),
        "[::1]:26"
    );
}

// Network membership, prefix bounds, IPv4-mapped clients.
#[test]
fn cidrs() {
    let c = |s: &str| Cidr::parse(s).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = c("192.0.2.0/24");
    assert!(net.contains(ip("192.0.2.0")) && net.contains(ip("192.0.2.255")));
    assert!(!net.contains(ip("192.0.3.0")));
    // IPv4-mapped IPv6, as a dual-stack socket reports IPv4 clients.
    assert!(net.contains(ip("::ffff:192.0.2.9")));
    assert!(!net.contains(ip("2001:db8::1")));
    // Host bits are cleared.
    assert_eq!(c("192.0.2.77/24"), net);
    assert_eq!(c("192.0.2.7").prefix, 32);
    assert!(c("192.0.2.7").contains(ip("192.0.2.7")) && !c("192.0.2.7").contains(ip("192.0.2.8")));
    assert!(c("0.0.0.0/0").contains(ip("203.0.113.1")));
    let v6 = c("2001:db8::/32");
    assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("192.0.2.1")));
    assert_eq!(c("::1").prefix, 128);
    assert!(c("::/0").contains(ip("2001:db8::1")));
    assert!(c("::ffff:0:0/96").contains(ip("198.51.100.1")));
    assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
    for bad in [
        "",
        "/24",
        "192.0.2.0/33",
        "::/129",
        "192.0.2.0/-1",
        "192.0.2.0/+8",
        "192.0.2/24",
        "x/8",
        "192.0.2.0/24/1",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

// The relay front door options (issue 6): defaults are "off" for every
// check that needs an outside service, and the documented thresholds.
#[test]
fn front_door_defaults() {
    let m = parse(BASE).main;
    assert_eq!(m.greet_pause, secs(0));
    assert_eq!(m.dnsbl_timeout, secs(5));
    assert_eq!(m.spamd, None);
    assert_eq!(m.clamd, None);
    assert_eq!(m.spam_tag_score, Score(500));
    assert_eq!(m.spam_reject_score, Score(1000));
    assert!(!m.scan_required);
    assert_eq!(m.scan_timeout, secs(30));
}

// Every front door option parses, prints in `check` and parses back equal;
// a scanner without a port gets its registered port.
#[test]
fn front_door_values_round_trip() {
    let c = main_with(
        "\toption greet_pause '2s'\n\toption dnsbl_timeout '3s'\n\toption spamd '127.0.0.1:7830'\n\toption spam_tag_score '3.5'\n\toption spam_reject_score '12'\n\toption clamd 'clam.lan'\n\toption scan_required 'yes'\n\toption scan_timeout '1m'",
    );
    let m = &c.main;
    assert_eq!(m.greet_pause, secs(2));
    assert_eq!(m.dnsbl_timeout, secs(3));
    assert_eq!(
        m.spamd,
        Some(HostPort {
            host: "127.0.0.1".into(),
            port: 7830
        })
    );
    assert_eq!(
        m.clamd,
        Some(HostPort {
            host: "clam.lan".into(),
            port: CLAMD_PORT
        })
    );
    assert_eq!(m.spam_tag_score, Score(350));
    assert_eq!(m.spam_reject_score, Score(1200));
    assert!(m.scan_required);
    assert_eq!(m.scan_timeout, secs(60));
    let printed = c.to_string();
    for line in [
        "\toption greet_pause '2s'\n",
        "\toption spamd '127.0.0.1:7830'\n",
        "\toption spam_tag_score '3.5'\n",
        "\toption spam_reject_score '12.0'\n",
        "\toption clamd 'clam.lan:3310'\n",
        "\toption scan_required '1'\n",
    ] {
        assert!(printed.contains(line), "missing {line:?} in\n{printed}");
    }
    assert_eq!(
        without_lines(parse(&printed)),
        without_lines(c.clone()),
        "{printed}"
    );
}

// Bad front door values are errors at their line, naming option and value.
#[test]
fn front_door_value_errors() {
    for (key, value) in [
        ("greet_pause", "2"),
        ("greet_pause", "31s"),
        ("dnsbl_timeout", "0s"),
        ("spamd", "127.0.0.1:x"),
        ("clamd", "a b"),
        ("spam_tag_score", "five"),
        ("spam_tag_score", "5."),
        ("spam_tag_score", "5.001"),
        ("spam_reject_score", "1e3"),
        ("spam_reject_score", "100001"),
        ("scan_required", "maybe"),
        ("scan_timeout", "0s"),
    ] {
        assert_bad_main(key, value);
    }
    // A reject threshold under the tag threshold could never tag anything.
    let e = main_error("\toption spam_tag_score '8'\n\toption spam_reject_score '6'");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.message.contains("below spam_tag_score"), "{e}");
}

// Scores are exact hundredths, signed, printed as SpamAssassin prints them.
#[test]
fn scores() {
    for (text, v, printed) in [
        ("5", 500, "5.0"),
        ("5.0", 500, "5.0"),
        ("15.2", 1520, "15.2"),
        ("-1.25", -125, "-1.25"),
        ("0.05", 5, "0.05"),
        ("1000", 100_000, "1000.0"),
    ] {
        assert_eq!(Score::parse(text), Ok(Score(v)), "{text}");
        assert_eq!(Score(v).to_string(), printed);
    }
    for bad in ["", "-", ".5", "5.", "1.234", "+5", "5,0", "--1"] {
        assert!(Score::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn callahead_cache_and_probe_cap_options() {
    let d = main_with("");
    assert_eq!(d.main.callahead_positive_ttl, secs(31 * 86400));
    assert_eq!(d.main.callahead_negative_ttl, secs(3 * 86400));
    assert_eq!(d.main.callahead_max_probes, 8);
    let c = main_with(
        "\toption callahead_positive_ttl '7d'\n\toption callahead_negative_ttl '2h'\n\toption callahead_max_probes '2'",
    );
    assert_eq!(c.main.callahead_positive_ttl, secs(7 * 86400));
    assert_eq!(c.main.callahead_negative_ttl, secs(7200));
    assert_eq!(c.main.callahead_max_probes, 2);
    assert_eq!(main_error("\toption callahead_max_probes '0'").line, 4);
    assert_eq!(main_error("\toption callahead_negative_ttl '0s'").line, 4);
}

/// The rows of one option table in README.md's "Configuration reference":
/// (option, is a list, default cell, meaning cell). A row naming several
/// options (`tls_cert`, `tls_key`) gives each the same default and meaning.
fn readme_rows(heading: &str) -> Vec<(String, bool, String, String)> {
    const README: &str = include_str!("../../README.md");
    let Some(start) = README.find(heading) else {
        panic!("README.md has no heading {heading:?}");
    };
    let mut rows = Vec::new();
    for line in README[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("| `"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let [names, default, meaning] = cells[..] else {
            panic!("a reference row without three cells: {line}");
        };
        let is_list = names.ends_with("(list)") || names.ends_with("(lists)");
        for name in names.split('`').skip(1).step_by(2) {
            rows.push((
                name.to_string(),
                is_list,
                default.trim().to_string(),
                meaning.trim().to_string(),
            ));
        }
    }
    rows
}

/// A table row as the README shows it: `name` (list) | default | meaning.
fn expected_rows<T>(table: &[spec::OptionSpec<T>]) -> Vec<(String, bool, String, String)> {
    let code = |v: &&str| format!("`{v}`");
    table
        .iter()
        .map(|s| {
            let default = match &s.form {
                spec::Form::Required(_) => "required".to_string(),
                spec::Form::Single("") => "empty".to_string(),
                spec::Form::Single(v) => code(v),
                spec::Form::List([]) => "none".to_string(),
                spec::Form::List(v) => v.iter().map(code).collect::<Vec<_>>().join(", "),
            };
            (s.name.to_string(), s.is_list(), default, s.doc.to_string())
        })
        .collect()
}

// The README's reference and the option tables cannot drift: every
// option is in the README with its form, default and text, and every
// README row is an option.
#[test]
fn readme_reference_matches_the_option_tables() {
    for (heading, expected) in [
        ("### `config mxspool`", expected_rows(MAIN_OPTIONS)),
        ("### `config domain`", expected_rows(DOMAIN_OPTIONS)),
    ] {
        let readme = readme_rows(heading);
        for row in &expected {
            let Some(r) = readme.iter().find(|r| r.0 == row.0) else {
                panic!("option '{}' is missing under {heading} in README.md", row.0);
            };
            assert_eq!(
                r, row,
                "README.md (left) and the option table (right) differ"
            );
        }
        for r in &readme {
            assert!(
                expected.iter().any(|row| row.0 == r.0),
                "README.md documents '{}' under {heading}, which is no option",
                r.0
            );
        }
    }
}

// Every default is a valid value of its option (they are parsed at every
// load; a bad one would refuse every file that leaves the option out).
#[test]
fn defaults_parse() {
    fn check<T>(table: &[spec::OptionSpec<T>], blank: impl Fn() -> T) {
        for s in table {
            let defaults: &[&str] = match &s.form {
                spec::Form::Required(_) => &[],
                spec::Form::Single(d) => std::slice::from_ref(d),
                spec::Form::List(d) => d,
            };
            let mut t = blank();
            for d in defaults {
                if let Err(e) = (s.parse)(&mut t, d) {
                    panic!("the default '{d}' of option '{}' {e}", s.name);
                }
            }
        }
    }
    check(MAIN_OPTIONS, || main_options::blank(1));
    check(DOMAIN_OPTIONS, || domain_options::blank(1));
}

// `check`'s whole output for the defaults, as it was before the options
// became tables (byte for byte: scripts may compare it).
#[test]
fn check_output_of_the_defaults() {
    let text = format!("{BASE}config domain\n\toption name 'example.com'\n");
    assert_eq!(parse(&text).to_string(), DEFAULTS_PRINTED);
}

const DEFAULTS_PRINTED: &str = "\
config mxspool 'main'\n\
\toption hostname 'mx2.example.net'\n\
\tlist listen '0.0.0.0:25'\n\
\tlist listen '[::]:25'\n\
\toption spool_dir '/srv/mxspool'\n\
\toption allow_volatile_spool '0'\n\
\toption alert_command ''\n\
\toption alert_after '1h'\n\
\toption flush_on_ifup '1'\n\
\toption control_socket '/var/run/mxspool.sock'\n\
\toption resolver ''\n\
\toption max_message_size '10M'\n\
\toption max_recipients '100'\n\
\toption max_connections '20'\n\
\toption max_connections_per_ip '5'\n\
\toption max_spool_size '64M'\n\
\toption callahead_timeout '10s'\n\
\toption callahead_positive_ttl '31d'\n\
\toption callahead_negative_ttl '3d'\n\
\toption callahead_max_probes '8'\n\
\tlist retry '15m 1d'\n\
\tlist retry '1h 4d'\n\
\tlist retry '2h 5d'\n\
\toption host_check_interval '1m'\n\
\toption max_hops '30'\n\
\toption smarthost ''\n\
\toption user ''\n\
\toption enabled '1'\n\
\toption syslog '1'\n\
\toption log_level 'info'\n\
\toption tls_cert ''\n\
\toption tls_key ''\n\
\toption cache_size '4M'\n\
\toption journal_size '4M'\n\
\toption command_timeout '5m'\n\
\toption data_timeout '3m'\n\
\toption max_errors '10'\n\
\toption max_destination_connections '2'\n\
\toption connect_timeout '30s'\n\
\toption transaction_timeout '30m'\n\
\toption max_destination_queue '128'\n\
\toption greeting_timeout '5m'\n\
\toption greet_pause '0s'\n\
\toption dnsbl_timeout '5s'\n\
\toption spamd ''\n\
\toption spam_tag_score '5.0'\n\
\toption spam_reject_score '10.0'\n\
\toption clamd ''\n\
\toption scan_required '0'\n\
\toption scan_timeout '30s'\n\
\n\
config domain\n\
\toption name 'example.com'\n\
\toption deliver_to 'mx'\n\
\toption port '25'\n\
\toption verify 'callahead'\n\
\toption on_tempfail 'accept'\n\
\toption expect_greeting ''\n\
\toption tls_pin ''\n";
