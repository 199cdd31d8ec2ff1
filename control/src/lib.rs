//! The upgrade control plane: the plan, its journal, and the replication drivers.
//!
//! `control` never sees the proxy's types. It steers traffic only through
//! [`TrafficControl`], which the proxy implements over its routing table.

use std::sync::Arc;

/// Which server traffic goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The old major.
    Source,
    /// The new major.
    Target,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "source" => Some(Side::Source),
            "target" => Some(Side::Target),
            _ => None,
        }
    }
}

/// A snapshot of the proxy's routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteState {
    /// Side that new transactions go to.
    pub side: Side,
    /// Incremented by every published change of `side`.
    pub epoch: u64,
    /// While true, sessions hold new transactions in the proxy (they are not refused).
    pub paused: bool,
}

/// What the control plane may do to client traffic. Implemented by the proxy.
///
/// All methods are cheap and non-blocking: they publish a new routing table or read
/// counters. Waiting (drain, catch-up) is the control plane's job.
pub trait TrafficControl: Send + Sync + 'static {
    /// The routing table in force.
    fn route(&self) -> RouteState;
    /// Publish `paused = true`: sessions that are idle (ReadyForQuery status `I`, nothing in
    /// flight) keep their next message in the proxy until [`resume`](Self::resume) or
    /// [`switch_to`](Self::switch_to). Transactions already open run on.
    fn pause(&self);
    /// Publish `paused = false` with the same side and epoch.
    fn resume(&self);
    /// Publish a new table: `side`, `epoch + 1`, not paused. Each session moves to `side` at
    /// its next transaction boundary, replaying its startup parameters, SETs and prepared
    /// statements there.
    fn switch_to(&self, side: Side, epoch: u64);
    /// Number of client sessions inside a transaction or with a message in flight to a backend.
    /// After `pause`, the cutover waits for this to reach 0.
    fn busy_sessions(&self) -> usize;
}

pub type Traffic = Arc<dyn TrafficControl>;

pub mod controller;
pub mod journal;
pub mod logical;

pub use controller::{ControlError, Controller, UpgradeStatus};
