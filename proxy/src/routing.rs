//! The routing table: one immutable value behind an `ArcSwap`, published by the control
//! plane, read lock-free by every session at each transaction boundary.

use crate::stats::Traffic;
use arc_swap::ArcSwap;
use control::{RouteState, Side, TrafficControl, TrafficStats};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Where one side lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl BackendAddr {
    pub fn from_config(c: &config::ServerConfig) -> Self {
        BackendAddr {
            host: c.host.clone(),
            port: c.port,
            dbname: c.dbname.clone(),
        }
    }
}

/// One published routing state. Never mutated: a change publishes a new value.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Incremented by each change of `side`.
    pub epoch: u64,
    /// Side that new transactions go to.
    pub side: Side,
    /// While true, idle sessions hold their next message in the proxy.
    pub paused: bool,
    /// Percentage (0..=100) of eligible (read-only) units sent to the side that is not serving.
    pub weight: u8,
    pub source: Arc<BackendAddr>,
    pub target: Arc<BackendAddr>,
}

impl RoutingTable {
    pub fn addr(&self, side: Side) -> &Arc<BackendAddr> {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

/// The proxy's implementation of [`TrafficControl`].
///
/// Drain accounting is Dekker-style with sequentially consistent atomics: a session
/// increments `busy` and then reads `paused`; `pause` sets `paused` and the control plane
/// then reads `busy`. Either the session sees the pause, or the control plane sees the
/// session busy: no transaction starts unseen after a pause.
pub struct Router {
    table: ArcSwap<RoutingTable>,
    paused: AtomicBool,
    busy: AtomicUsize,
    changes: watch::Sender<u64>,
    /// Client traffic per side, for health checks.
    pub traffic: Traffic,
    /// Test hook `PGSHIFT_FAILPOINT` (see [`Failpoint`]).
    failpoint: Option<Failpoint>,
}

/// Crash points for the kill tests: with `PGSHIFT_FAILPOINT=pause` the process kills itself
/// with SIGKILL when the control plane pauses traffic (the start of a cutover, after its
/// journal record); with `PGSHIFT_FAILPOINT=switch`, when it publishes a new serving side
/// (inside the cutover, after the swap was journaled, before any session moved). A `kill -9`
/// from outside cannot hit these windows of a few milliseconds reliably. Unset in production;
/// any other value is ignored with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    Pause,
    Switch,
}

impl Failpoint {
    fn from_env() -> Option<Failpoint> {
        let v = std::env::var("PGSHIFT_FAILPOINT").ok()?;
        match v.as_str() {
            "" => None,
            "pause" => Some(Failpoint::Pause),
            "switch" => Some(Failpoint::Switch),
            other => {
                tracing::warn!(
                    "PGSHIFT_FAILPOINT={other:?} is not a failpoint (pause, switch); ignored"
                );
                None
            }
        }
    }

    fn hit(self, at: Failpoint) {
        if self == at {
            tracing::error!("PGSHIFT_FAILPOINT={self:?}: killing the process (SIGKILL)");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

impl Router {
    pub fn new(side: Side, epoch: u64, source: BackendAddr, target: BackendAddr) -> Arc<Router> {
        let t = RoutingTable {
            epoch,
            side,
            paused: false,
            weight: 0,
            source: Arc::new(source),
            target: Arc::new(target),
        };
        let (changes, _) = watch::channel(0);
        Arc::new(Router {
            table: ArcSwap::from_pointee(t),
            paused: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            changes,
            traffic: Traffic::new(std::time::Duration::from_secs(10)),
            failpoint: Failpoint::from_env(),
        })
    }

    /// The table in force (lock-free).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// Receiver woken by every publication.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A session starts a unit of work (a transaction or a message batch). Returns false
    /// (and counts nothing) when traffic is paused: the session must hold.
    #[inline]
    pub fn try_enter(&self) -> bool {
        self.busy.fetch_add(1, Ordering::SeqCst);
        if self.paused.load(Ordering::SeqCst) {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The session's unit is over (ReadyForQuery `I`, nothing in flight) or the session ended.
    #[inline]
    pub fn leave(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    fn publish(&self, f: impl FnOnce(&RoutingTable) -> RoutingTable) {
        let cur = self.table.load_full();
        let next = f(&cur);
        self.paused.store(next.paused, Ordering::SeqCst);
        self.table.store(Arc::new(next));
        self.changes.send_modify(|v| *v += 1);
    }
}

impl TrafficControl for Router {
    fn route(&self) -> RouteState {
        let t = self.table.load();
        RouteState {
            side: t.side,
            epoch: t.epoch,
            paused: t.paused,
        }
    }
    fn pause(&self) {
        if let Some(f) = self.failpoint {
            f.hit(Failpoint::Pause);
        }
        self.publish(|t| RoutingTable {
            paused: true,
            ..t.clone()
        });
    }
    fn resume(&self) {
        self.publish(|t| RoutingTable {
            paused: false,
            ..t.clone()
        });
    }
    fn switch_to(&self, side: Side, epoch: u64) {
        if let Some(f) = self.failpoint {
            f.hit(Failpoint::Switch);
        }
        // A new serving side starts with no shifted traffic.
        self.publish(|t| RoutingTable {
            side,
            epoch,
            paused: false,
            weight: 0,
            ..t.clone()
        });
    }
    fn busy_sessions(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
    fn set_weight(&self, percent: u8) {
        let weight = percent.min(100);
        self.publish(|t| RoutingTable {
            weight,
            ..t.clone()
        });
    }
    fn weight(&self) -> u8 {
        self.table.load().weight
    }
    fn stats(&self) -> TrafficStats {
        self.traffic.stats()
    }
}
