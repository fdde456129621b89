//! The command line (README "Command line"): parses the arguments and
//! dispatches to the module that does the work. Exit codes: 0 success, 1
//! runtime failure, 2 bad usage or configuration.

use std::path::PathBuf;

use crate::config::Config;

pub const DEFAULT_CONFIG: &str = "/etc/config/mxspool";

const USAGE: &str = "usage: mxspool COMMAND [-c PATH]
commands:
  run                       run the daemon in the foreground
  check                     validate the configuration and print the effective settings
  queue list [--json] [--limit N] [--after ID]
                            list queued messages (oldest first; a page of N after ID)
  queue show ID | delete ID | bounce ID
  queue flush [DOMAIN]      retry now, resetting the back-off
  queue retag DOMAIN HOST[:PORT]
  queue stats [--json]      counters since start
  dnscheck DOMAIN [--json]  check a domain's MX setup
  version                   print the version and target";

/// The parsed command line: `-c PATH` may stand anywhere.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub words: Vec<String>,
}

pub fn parse(args: Vec<String>) -> Result<Args, String> {
    let mut config = None;
    let mut words = vec![];
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "-c" || a == "--config" {
            match it.next() {
                Some(p) => config = Some(PathBuf::from(p)),
                None => return Err(format!("{a} needs a path")),
            }
        } else if let Some(p) = a.strip_prefix("--config=") {
            config = Some(PathBuf::from(p));
        } else {
            words.push(a);
        }
    }
    Ok(Args {
        config: config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
        words,
    })
}

/// The target triple this binary was built for.
pub fn target() -> String {
    let arch = std::env::consts::ARCH;
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "gnu") {
        "gnu"
    } else {
        ""
    };
    let abi = if cfg!(all(target_arch = "arm", target_abi = "eabihf")) {
        "eabihf"
    } else {
        ""
    };
    let arch = if arch == "arm" { "armv7" } else { arch };
    format!("{arch}-unknown-{}-{env}{abi}", std::env::consts::OS)
}

pub fn main(args: Vec<String>) -> i32 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mxspool: {e}\n{USAGE}");
            return 2;
        }
    };
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["version"] | ["--version"] | ["-V"] => {
            println!("mxspool {} {}", env!("CARGO_PKG_VERSION"), target());
            0
        }
        ["help"] | ["--help"] | ["-h"] => {
            println!("mxspool {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["run"] => crate::daemon::run(&args.config),
        ["check"] => check(&args.config),
        ["queue", rest @ ..] => crate::control::queue_command(&args.config, rest),
        ["dnscheck", domain] | ["dnscheck", domain, "--json"] | ["dnscheck", "--json", domain]
            if crate::control::domain_arg(domain).is_ok() =>
        {
            let json = words.contains(&"--json");
            match Config::load(&args.config) {
                Ok(c) => crate::dnscheck::run(&c, domain, json),
                Err(e) => {
                    eprintln!("{e}");
                    2
                }
            }
        }
        ["dnscheck", ..] => {
            eprintln!("mxspool: usage: dnscheck DOMAIN [--json]");
            2
        }
        [] => {
            eprintln!("mxspool: no command given\n{USAGE}");
            2
        }
        [other, ..] => {
            eprintln!("mxspool: unknown command or arguments: '{other}'\n{USAGE}");
            2
        }
    }
}

/// `mxspool check`: the configuration, and the files it names (a bad
/// certificate is a configuration error here, not a crash at start).
fn check(path: &std::path::Path) -> i32 {
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    if let Err(e) = crate::spool::check_durable_dir(&c.main.spool_dir, c.main.allow_volatile_spool)
    {
        let line = option_line(path, "spool_dir");
        eprintln!("{}:{line}: {e}", path.display());
        return 2;
    }
    if let Err(e) = crate::daemon::load_tls(&c) {
        let line = option_line(path, "tls_cert");
        eprintln!(
            "{}:{line}: option 'tls_cert'/'tls_key': {e}",
            path.display()
        );
        return 2;
    }
    print!("{c}");
    0
}

/// The line of the first `option NAME` in the file (0 if not found).
fn option_line(path: &std::path::Path, name: &str) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| crate::config::uci::parse(&t).ok())
        .and_then(|secs| {
            secs.iter()
                .flat_map(|s| s.items.iter())
                .find(|i| i.name == name)
                .map(|i| i.line)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flag_may_stand_before_or_after_the_command() {
        let a = parse(vec!["-c".into(), "/x".into(), "check".into()]).unwrap();
        assert_eq!(a.config, PathBuf::from("/x"));
        assert_eq!(a.words, vec!["check"]);
        let b = parse(vec![
            "queue".into(),
            "list".into(),
            "-c".into(),
            "/y".into(),
        ])
        .unwrap();
        assert_eq!(b.config, PathBuf::from("/y"));
        assert_eq!(b.words, vec!["queue", "list"]);
        assert!(parse(vec!["check".into(), "-c".into()]).is_err());
    }
}
