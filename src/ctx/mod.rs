//! What every task of the daemon shares, for the whole run: the
//! configuration, the spool, the counters, the executor, the stop signal,
//! TLS and DNS, and the state each driver keeps where the others can read
//! it (the listeners' addresses for the loop check, the destinations'
//! down marks and addresses). The types of that state are here, below the
//! drivers; their behaviour is in `receive` (listeners) and `deliver`
//! (queues, the host check). `daemon` puts it together.

pub mod down;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use smol::LocalExecutor;

use crate::alert::{Alerts, Kind};
use crate::config::Config;
use crate::spool::Destination;
use crate::spool::{QueueId, Spool};

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
    /// Dropped at stop: every `stopped()` waiter wakes up.
    stop_tx: RefCell<Option<smol::channel::Sender<()>>>,
    stop_rx: smol::channel::Receiver<()>,
    /// STARTTLS for our listeners, when a certificate is configured.
    pub tls_server: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Opportunistic TLS for deliveries and call-ahead.
    pub tls_client: Arc<rustls::ClientConfig>,
    /// The DNS resolver (rebuilt on reload).
    pub resolver: RefCell<crate::dns::Resolver>,
    /// Call-ahead probes in flight, bounded.
    pub probes: async_lock::Semaphore,
    /// Domain → last random-address check (call-ahead).
    pub random_checks: RefCell<HashMap<String, u64>>,
    /// What the owner was last alerted of (see `alert`).
    pub alerts: Alerts,
}

/// What `Ctx::new` is made of (the daemon sets these up first).
pub struct Parts {
    pub config: Config,
    pub spool: Spool,
    pub ex: Rc<LocalExecutor<'static>>,
    pub listeners: Listeners,
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    pub tls_client: Arc<rustls::ClientConfig>,
    pub resolver: crate::dns::Resolver,
}

impl Ctx {
    pub fn new(p: Parts) -> Ctx {
        let (stop_tx, stop_rx) = smol::channel::bounded(1);
        let probes = async_lock::Semaphore::new(p.config.main.callahead_max_probes);
        Ctx {
            config: RefCell::new(Arc::new(p.config)),
            spool: p.spool,
            stats: RefCell::new(Stats {
                started: crate::clock::now(),
                ..Stats::default()
            }),
            ex: p.ex,
            deliverer: Deliverer::default(),
            listeners: p.listeners,
            stopping: Cell::new(false),
            stop_tx: RefCell::new(Some(stop_tx)),
            stop_rx,
            tls_server: RefCell::new(p.tls_server),
            tls_client: p.tls_client,
            resolver: RefCell::new(p.resolver),
            probes,
            random_checks: RefCell::new(HashMap::new()),
            alerts: Alerts::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + 'static) {
        self.ex.spawn(f).detach();
    }

    /// Resolves when the daemon begins to stop (for tasks that wait on
    /// the network and must answer 421 promptly).
    pub async fn stopped(&self) {
        let _ = self.stop_rx.recv().await;
    }

    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop_tx.borrow_mut().take();
    }

    /// Raises an alert (see `alert::raise`).
    pub fn alert(&self, kind: Kind, text: &str, vars: &[(&str, String)]) {
        crate::alert::raise(&self.alerts, &self.config(), &self.ex, kind, text, vars);
    }

    /// Something about the primary of `domain` that its owner should fix
    /// (it greylists or refuses its own backup): logged and counted.
    pub fn primary_warning(&self, domain: &str, kind: &'static str, text: &str) {
        *self.stats.borrow_mut().callahead.entry(kind).or_insert(0) += 1;
        log::warn!(
            "id=NOQUEUE event=primary_warning domain={domain} kind={kind} advice=\"{text}\""
        );
    }
}

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

/// The bound listening sockets and the live connection counts (behaviour:
/// `receive`).
#[derive(Default)]
pub struct Listeners {
    pub(crate) entries: RefCell<Vec<Entry>>,
    pub(crate) active: Cell<usize>,
    pub(crate) per_ip: RefCell<HashMap<IpAddr, usize>>,
    pub(crate) closed: Cell<bool>,
}

pub struct Entry {
    /// The configured address (what a reload compares).
    pub(crate) addr: SocketAddr,
    /// The bound address (differs when the port was 0).
    pub(crate) local: SocketAddr,
    /// Bound but not yet accepting. A std socket on purpose: registering
    /// it with the async reactor starts the reactor's thread, and that must
    /// not happen before the privilege drop (the ids of a thread started
    /// earlier stay root).
    pub(crate) socket: Option<std::net::TcpListener>,
    /// Ends the accept loop.
    pub(crate) stop: Option<smol::channel::Sender<()>>,
}

/// One message's pending recipients for one destination.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: QueueId,
    /// (index into the message's recipients, address).
    pub rcpts: Vec<(usize, String)>,
}

/// One destination's jobs (behaviour: `deliver`).
#[derive(Default)]
pub struct DestQueue {
    pub(crate) jobs: VecDeque<Job>,
    pub(crate) workers: usize,
    /// Due messages that found `jobs` at `max_destination_queue`: they wait
    /// here (ids only) and move into `jobs` as it drains, so a slow
    /// destination holds no more job slots than that, and the scheduler
    /// passes over them to other destinations' mail.
    pub(crate) parked: VecDeque<QueueId>,
}

/// The delivery side's state (behaviour: `deliver`).
#[derive(Default)]
pub struct Deliverer {
    /// Message → jobs of it still running.
    pub(crate) in_flight: RefCell<HashMap<QueueId, usize>>,
    /// Message → destinations it is parked for (see `DestQueue::parked`).
    pub(crate) parked: RefCell<HashMap<QueueId, usize>>,
    pub(crate) queues: RefCell<HashMap<Destination, DestQueue>>,
    /// Destination → the addresses it last resolved to, for delivery,
    /// call-ahead or the host check (see `deliver::hostcheck`).
    pub resolved: RefCell<Known>,
    /// Destinations a delivery could not reach just now (see `down`).
    pub down: RefCell<down::Marks>,
}

/// Destination → the addresses it resolved to.
pub type Known = HashMap<Destination, BTreeSet<IpAddr>>;
