//! `mxspool run`: opens the spool, binds the listeners, and runs every
//! session, the scheduler and the deliveries on one single-threaded smol
//! executor. Blocking disk work lives on the spool thread only.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use smol::LocalExecutor;

use crate::config::Config;
use crate::control::Stats;
use crate::deliver::Deliverer;
use crate::receive::Listeners;
use crate::spool::Spool;

/// How long a stopping daemon waits for sessions and commits in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every task shares. Lives for the whole run.
pub struct Ctx {
    pub config: RefCell<Arc<Config>>,
    pub spool: Spool,
    pub stats: RefCell<Stats>,
    pub ex: Rc<LocalExecutor<'static>>,
    pub deliverer: Deliverer,
    pub listeners: Listeners,
    /// Set once SIGTERM/SIGINT arrived.
    pub stopping: Cell<bool>,
}

impl Ctx {
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }
    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + 'static) {
        self.ex.spawn(f).detach();
    }
}

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
    let ex = Rc::new(LocalExecutor::new());
    let result = smol::block_on(ex.run(start(ex.clone(), config)));
    match result {
        Ok(()) => 0,
        Err(e) => {
            log::error!("event=fatal error=\"{e}\"");
            eprintln!("mxspool: {e}");
            1
        }
    }
}

async fn start(ex: Rc<LocalExecutor<'static>>, config: Config) -> Result<(), String> {
    let (wake_tx, wake_rx) = smol::channel::bounded(1);
    let (spool, spool_thread, recovered) = Spool::open(
        &config.main.spool_dir,
        config.main.cache_size,
        wake_tx.clone(),
    )
    .map_err(|e| e.to_string())?;
    log::info!(
        "event=start version={} spool={} queued={} bytes={} leftovers_removed={}",
        env!("CARGO_PKG_VERSION"),
        config.main.spool_dir.display(),
        recovered.messages,
        recovered.bytes,
        recovered.leftovers
    );
    let listeners = Listeners::bind(&config.main.listen).map_err(|e| e.to_string())?;
    let ctx = Rc::new(Ctx {
        config: RefCell::new(Arc::new(config)),
        spool,
        stats: RefCell::new(Stats {
            started: crate::time::now_unix(),
            ..Stats::default()
        }),
        ex: ex.clone(),
        deliverer: Deliverer::default(),
        listeners,
        stopping: Cell::new(false),
    });
    crate::receive::start(&ctx);
    ctx.spawn(crate::deliver::scheduler(ctx.clone(), wake_rx));

    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    while let Some(sig) = signals.next().await {
        match sig {
            Ok(async_signal::Signal::Hup) => {
                log::info!("event=reload_ignored reason=\"reload arrives with issue 7\"");
            }
            Ok(_) => break,
            Err(e) => log::warn!("event=signal_error error=\"{e}\""),
        }
    }
    log::info!("event=stopping");
    ctx.stopping.set(true);
    ctx.listeners.close();
    // Let commits in flight finish: sessions owe their clients an answer.
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while ctx.listeners.active() > 0 && std::time::Instant::now() < deadline {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    drop(wake_tx);
    // The spool thread ends when every handle is gone; the tasks holding
    // handles are dropped with the executor, so join on a helper thread
    // would race: the thread's queue is drained by then, that is enough.
    drop(spool_thread);
    log::info!("event=stopped");
    Ok(())
}
