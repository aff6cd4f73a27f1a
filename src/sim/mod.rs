//! `chunkgate sim`: a standalone simulator of the upstream chunked-upload API (UPSTREAM.md), with
//! fault injection and introspection under `/__sim/`, for tests, the demo, benchmarks and users who
//! want to test their own integration offline.

mod buffers;
pub mod faults;
mod path;
mod ratelimit;
pub mod resource;
mod routes;
mod shape;
pub mod store;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpListener;

use self::{faults::Injector, ratelimit::RateCounters, store::Store};
/// The simulator's settings live with the others (`config::sim`), so that the settings do not
/// depend on the simulator.
pub use crate::config::sim::{self as config, SimConfig};
use crate::edge::listener::{self as server, ConnLimits, Stopper};

/// The simulator's state, shared by every connection.
pub struct Sim {
    config: SimConfig,
    store: Store,
    rates: RateCounters,
    faults: Injector,
    /// Seconds added to the wall clock (`/__sim/clock`), so tests can reach expiry and the next hour.
    clock_offset: AtomicI64,
    stats: Stats,
    /// Request bodies are read into reused buffers and their parts decoded in place (fresh
    /// multi-megabyte buffers per request cost more in page faults than the decoding itself).
    buffers: Arc<buffers::Buffers>,
}

/// Most bytes of idle body buffers the simulator keeps.
const IDLE_BUFFER_BYTES: usize = 256 << 20;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    /// API requests that came over HTTP/2.
    http2_requests: AtomicU64,
    /// Client sockets seen: how many connections the requests came over.
    peers: std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>,
    throttled: AtomicU64,
    injected_errors: AtomicU64,
    dropped: AtomicU64,
}

// === impl Sim ===

impl Sim {
    pub fn new(config: SimConfig) -> Arc<Self> {
        Arc::new(Self {
            store: Store::new(config.storage, config.bool_style),
            rates: RateCounters::default(),
            faults: Injector::new(config.faults.clone()),
            clock_offset: AtomicI64::new(0),
            stats: Stats::default(),
            buffers: buffers::Buffers::new(IDLE_BUFFER_BYTES),
            config,
        })
    }

    /// The uploads, for in-process inspection (the demo).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters `/__sim/stats` answers with.
    pub fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut v = serde_json::json!(self.store.counts());
        v["requests"] = s.requests.load(Ordering::Relaxed).into();
        v["http2_requests"] = s.http2_requests.load(Ordering::Relaxed).into();
        v["connections"] = s.peers.lock().unwrap().len().into();
        v["throttled"] = s.throttled.load(Ordering::Relaxed).into();
        v["injected_errors"] = s.injected_errors.load(Ordering::Relaxed).into();
        v["dropped"] = s.dropped.load(Ordering::Relaxed).into();
        v
    }

    /// The limits in force for `account`.
    pub fn limits_for(&self, account: &str) -> config::Limits {
        self.config.limits_for(account)
    }

    /// The dialect the simulator speaks.
    pub fn dialect(&self) -> crate::config::Dialect {
        self.config.dialect
    }

    /// Unix seconds on the simulator's clock.
    fn now(&self) -> i64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        wall + self.clock_offset.load(Ordering::Relaxed)
    }
}

/// Serves the simulator on `listener` (with TLS when its config names a certificate) until
/// `shutdown` resolves.
pub async fn run(listener: TcpListener, sim: Arc<Sim>, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let tls = crate::config::tls_acceptor(sim.config.tls_cert.as_deref(), sim.config.tls_key.as_deref(), None)?;
    let limits = ConnLimits { tls, ..ConnLimits::default() };
    let handler = move |req: http::Request<hyper::body::Incoming>, peer| {
        if !req.uri().path().starts_with("/__sim/") {
            sim.stats.peers.lock().unwrap().insert(peer);
        }
        routes::handle(sim.clone(), req)
    };
    server::serve(listener, limits, handler, shutdown, Duration::from_secs(5), || {}).await;
    Ok(())
}

/// A simulator running in this process, for tests, the demo and benchmarks. Stops when dropped.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Arc<Sim>,
    pub stopper: Stopper,
}

impl SimHandle {
    /// `http://ADDR`, the base URL to point a client at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `config.listen` and serves the simulator in a background task.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(config);
    // Fail here, not in the task, when the TLS material is unusable.
    crate::config::tls_acceptor(sim.config.tls_cert.as_deref(), sim.config.tls_key.as_deref(), None)
        .map_err(std::io::Error::other)?;
    let (stopper, stopped) = Stopper::new();
    tokio::spawn(run(listener, sim.clone(), stopped));
    Ok(SimHandle { addr, sim, stopper })
}
