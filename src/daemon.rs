//! `mxspool run`: opens the spool, binds the listeners, and runs every
//! session, the scheduler and the deliveries on one single-threaded smol
//! executor. Blocking disk work lives on the spool thread only.

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use smol::LocalExecutor;

use crate::config::Config;
use crate::ctx::{Ctx, Parts};
use crate::receive::Listeners;
use crate::spool::Spool;

/// How long a stopping daemon waits for sessions and commits in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM/SIGINT. Returns the exit status.
pub fn run(config_path: &Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mxspool: {e}");
            return 2;
        }
    };
    crate::log::init(config.main.syslog, config.main.log_level);
    let m = &config.main;
    if let Err(e) = crate::spool::check_durable_dir(&m.spool_dir, m.allow_volatile_spool) {
        log::error!("event=fatal error=\"{e}\"");
        eprintln!("mxspool: {}: {e}", config_path.display());
        return 2;
    }
    match prepare(&config) {
        Ok(prepared) => {
            let ex = Rc::new(LocalExecutor::new());
            let r = smol::block_on(ex.run(start(ex.clone(), config, config_path, prepared)));
            match r {
                Ok(()) => 0,
                Err(e) => fail(&e),
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> i32 {
    log::error!("event=fatal error=\"{e}\"");
    eprintln!("mxspool: {e}");
    1
}

/// What is set up as root, before any thread exists.
struct Prepared {
    listeners: Listeners,
    control: std::os::unix::net::UnixListener,
    tls_server: Option<Arc<rustls::ServerConfig>>,
}

/// The STARTTLS configuration from `tls_cert`/`tls_key`, if set.
pub fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (&config.main.tls_cert, &config.main.tls_key) {
        (Some(c), Some(k)) => crate::tls::server_config(c, k).map(Some),
        _ => Ok(None),
    }
}

/// Binds the sockets, then drops privileges. This runs while the process
/// has a single thread, so changing the ids of this thread changes them
/// for the whole process (threads started later inherit them).
fn prepare(config: &Config) -> Result<Prepared, String> {
    let m = &config.main;
    // Key files are often readable by root only: load them before the drop.
    let tls_server = load_tls(config)?;
    // Queued mail is private: everything the daemon creates (spool files,
    // the control socket at bind) is for its own user only, with no window
    // in which another local user could open it.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if crate::spool::make_spool_dir(&m.spool_dir)? {
        log::info!(
            "id=NOQUEUE event=spool_created dir={}",
            m.spool_dir.display()
        );
    }
    // spool_dir itself may be a link the owner made (to a USB disk): it is
    // followed once, here; nothing inside it ever is. (Its mode is set by
    // the spool when it opens, as the daemon's user.)
    let spool_dir = std::fs::canonicalize(&m.spool_dir)
        .map_err(|e| format!("cannot resolve spool_dir {}: {e}", m.spool_dir.display()))?;
    let listeners = Listeners::bind(&m.listen)?;
    let control = crate::control::server::bind(&m.control_socket)?;
    if let Some(user) = &m.user {
        // Only what mxspool made: the directory, its two files, the socket.
        let spool_file = spool_dir.join(crate::spool::SPOOL_FILE);
        let journal = spool_dir.join(crate::spool::JOURNAL_FILE);
        crate::privilege::drop_to(
            user,
            &[&spool_dir, &spool_file, &journal, &m.control_socket],
        )?;
    }
    Ok(Prepared {
        listeners,
        control,
        tls_server,
    })
}

async fn start(
    ex: Rc<LocalExecutor<'static>>,
    config: Config,
    config_path: &Path,
    prepared: Prepared,
) -> Result<(), String> {
    // First thing after the privilege drop (it registers with the reactor,
    // whose thread must not start earlier): until this runs, a SIGHUP
    // (procd's reload) would kill us with its default action, and opening
    // a large spool can take a while. The listeners only listen once all
    // is ready (receive::start), so "port open" means "signals handled".
    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (wake_tx, wake_rx) = smol::channel::bounded(1);
    let (spool, spool_thread, recovered) = Spool::open(
        &config.main.spool_dir,
        crate::spool::SpoolOptions {
            cache_size: config.main.cache_size,
            journal_size: config.main.journal_size,
        },
        wake_tx.clone(),
    )
    .map_err(|e| e.to_string())?;
    log::info!(
        "event=start version={} spool={} queued={} bytes={} leftovers_removed={} journal_replayed={}",
        env!("CARGO_PKG_VERSION"),
        config.main.spool_dir.display(),
        recovered.messages,
        recovered.bytes,
        recovered.leftovers,
        recovered.replayed
    );
    let control = async_net::unix::UnixListener::try_from(prepared.control)
        .map_err(|e| format!("control socket: {e}"))?;
    let resolver = make_resolver(&config);
    let ctx = Rc::new(Ctx::new(Parts {
        config,
        spool,
        ex: ex.clone(),
        listeners: prepared.listeners,
        tls_server: prepared.tls_server,
        tls_client: crate::tls::client_config()?,
        resolver,
    }));
    crate::receive::start(&ctx);
    ctx.spawn(crate::deliver::scheduler(ctx.clone(), wake_rx));
    ctx.spawn(crate::deliver::hostcheck::run(ctx.clone()));
    ctx.spawn(crate::control::server::serve(ctx.clone(), control));

    while let Some(sig) = signals.next().await {
        match sig {
            Ok(async_signal::Signal::Hup) => reload(&ctx, config_path),
            Ok(_) => break,
            Err(e) => log::warn!("event=signal_error error=\"{e}\""),
        }
    }
    log::info!("event=stopping");
    ctx.begin_stop();
    ctx.listeners.close();
    ctx.spool.wake();
    // Sessions answer 421 to their next command; commits in flight finish
    // and their clients get their 250 before we go.
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while ctx.listeners.active() > 0 && std::time::Instant::now() < deadline {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    if let Err(e) = ctx.spool.sync().await {
        log::error!("event=spool_error error=\"{e}\"");
    }
    let _ = std::fs::remove_file(&ctx.config().main.control_socket);
    drop(wake_tx);
    drop(spool_thread);
    log::info!("event=stopped");
    Ok(())
}

/// The resolver from `resolver` or the system's resolv.conf files. With
/// none, relays to literal addresses still work; lookups fail (and defer)
/// with an error that names the missing setting.
pub fn make_resolver(config: &Config) -> crate::dns::Resolver {
    let servers = match crate::dns::system_nameservers(config.main.resolver) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("event=dns_config error=\"{e}\"");
            vec![]
        }
    };
    crate::dns::Resolver::new(servers, crate::dns::Options::default())
}

/// SIGHUP: read the configuration again; keep the old one if the new one
/// is invalid. Queued mail, sessions in progress and the spool stay.
fn reload(ctx: &Rc<Ctx>, path: &Path) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "event=reload_failed error=\"{e}\" action=\"keeping the running configuration\""
            );
            return;
        }
    };
    let old = ctx.config();
    for (what, changed) in [
        ("spool_dir", new.main.spool_dir != old.main.spool_dir),
        (
            "control_socket",
            new.main.control_socket != old.main.control_socket,
        ),
        ("user", new.main.user != old.main.user),
        ("cache_size", new.main.cache_size != old.main.cache_size),
        (
            "journal_size",
            new.main.journal_size != old.main.journal_size,
        ),
        ("syslog", new.main.syslog != old.main.syslog),
    ] {
        if changed {
            log::warn!(
                "event=reload_partial option={what} action=\"takes effect at the next restart\""
            );
        }
    }
    match load_tls(&new) {
        Ok(t) => *ctx.tls_server.borrow_mut() = t,
        Err(e) => {
            log::error!(
                "event=reload_failed error=\"{e}\" action=\"keeping the running configuration\""
            );
            return;
        }
    }
    crate::log::set_level(new.main.log_level);
    *ctx.resolver.borrow_mut() = make_resolver(&new);
    let listen = new.main.listen.clone();
    *ctx.config.borrow_mut() = Arc::new(new);
    ctx.listeners.apply(ctx, &listen);
    ctx.spool.wake();
    log::info!("event=reloaded domains={}", ctx.config().domains.len());
}
