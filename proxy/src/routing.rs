//! The routing table: one immutable value behind an `ArcSwap`, published by the control
//! plane, read lock-free by every session at each transaction boundary.

use crate::stats::Traffic;
use arc_swap::ArcSwap;
use control::{RouteState, Side, TrafficControl, TrafficStats};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Where one side lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// Authentication methods accepted from this server (`[source] auth`).
    pub auth: Vec<config::ServerAuth>,
    /// TLS to this server (`sslmode` and certificates), `None` for `sslmode = "disable"`.
    pub tls: TlsTo,
}

/// The TLS set-up of one server, shared by every connection to it (built once: the files
/// are read at start-up). Two are equal when they are the same set-up.
#[derive(Debug, Clone, Default)]
pub struct TlsTo(pub Option<Arc<tls::Connector>>);

impl PartialEq for TlsTo {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for TlsTo {}

impl BackendAddr {
    /// The address, database, accepted authentication and TLS set-up of `[source]` or
    /// `[target]`. Errors: a certificate or key file that cannot be read, named.
    pub fn from_config(c: &config::ServerConfig) -> Result<Self, String> {
        let tls = tls::Connector::new(c)
            .map_err(|e| format!("TLS to {}:{}: {e}", c.host, c.port))?
            .map(Arc::new);
        Ok(BackendAddr {
            host: c.host.clone(),
            port: c.port,
            dbname: c.dbname.clone(),
            auth: c.auth.clone(),
            tls: TlsTo(tls),
        })
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
    /// While paused for a switch: the side traffic is about to move to. Held sessions open
    /// their connection there meanwhile, so that they go on the moment the switch is
    /// published (see [`TrafficControl::pause_for_switch`]).
    pub next: Option<Side>,
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

/// One session's unit of work counted busy in a [`Router`] ([`Router::enter`]); dropping it
/// leaves.
#[must_use = "dropping it leaves at once"]
pub struct Busy<'a>(&'a Router);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A session's place under the session-level shift of a both-ways replication driver
/// (`[replication] driver = "bidirectional"`): the weight applies to whole sessions, writes
/// included. [`Router::place`] registers a session; [`decide`](Placement::decide) at each
/// of its transaction boundaries says whether it runs on the side that is not serving, and
/// moves it only when the share requires it (sticky); dropping it leaves.
pub struct Placement<'a> {
    router: &'a Router,
    other: bool,
}

impl Placement<'_> {
    /// Whether the session runs on the other side under weight `w` (percent). The number
    /// of sessions there is kept at `round(w × registered sessions / 100)`: a session moves
    /// there only while fewer are, and back only while more are. A session that is not
    /// `movable` (it holds what cannot move) stays where it is.
    pub fn decide(&mut self, w: u8, movable: bool) -> bool {
        if !movable {
            return self.other;
        }
        let total = self.router.placed.load(Ordering::SeqCst).max(1);
        let want = (total * usize::from(w.min(100)) + 50) / 100;
        let on = &self.router.on_other;
        if self.other {
            if on
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n > want).then(|| n - 1)
                })
                .is_ok()
            {
                self.other = false;
            }
        } else if w > 0
            && on
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < want).then_some(n + 1)
                })
                .is_ok()
        {
            self.other = true;
        }
        self.other
    }
}

impl Drop for Placement<'_> {
    fn drop(&mut self) {
        self.router.placed.fetch_sub(1, Ordering::SeqCst);
        if self.other {
            self.router.on_other.fetch_sub(1, Ordering::SeqCst);
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
    /// Held while a table is published (see [`Router::publish`]).
    publishing: std::sync::Mutex<()>,
    changes: watch::Sender<u64>,
    /// Client traffic per side, for health checks.
    pub traffic: Traffic,
    /// Sessions registered for the session-level shift ([`Router::place`]), and those of
    /// them on the side that is not serving.
    placed: AtomicUsize,
    on_other: AtomicUsize,
    /// Test hook `PGSHIFT_FAILPOINT` (see [`Failpoint`]).
    failpoint: Option<Failpoint>,
    /// Sessions that hold state that cannot move, by pgshift pid ([`Router::set_pinned`]).
    pinned: std::sync::Mutex<std::collections::HashMap<i32, control::PinnedSession>>,
    /// The DDL gate in force ([`control::DdlGate::to_bits`]), read at each Query and Parse.
    ddl: AtomicU8,
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
            // The capture queue's own (capture::sync_failpoint).
            v if v.starts_with("capture-sync") => None,
            "pause" => Some(Failpoint::Pause),
            "switch" => Some(Failpoint::Switch),
            other => {
                tracing::warn!(
                    "PGSHIFT_FAILPOINT={other:?} is not a failpoint (pause, switch, capture-sync@N); ignored"
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
            next: None,
            weight: 0,
            source: Arc::new(source),
            target: Arc::new(target),
        };
        let (changes, _) = watch::channel(0);
        Arc::new(Router {
            table: ArcSwap::from_pointee(t),
            paused: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            publishing: std::sync::Mutex::new(()),
            changes,
            traffic: Traffic::new(std::time::Duration::from_secs(10)),
            failpoint: Failpoint::from_env(),
            pinned: Default::default(),
            placed: AtomicUsize::new(0),
            on_other: AtomicUsize::new(0),
            ddl: AtomicU8::new(0),
        })
    }

    /// The DDL gate in force (see [`TrafficControl::set_ddl`]): one relaxed load, so a
    /// statement sent as the gate changes may see either value.
    #[inline]
    pub fn ddl(&self) -> control::DdlGate {
        control::DdlGate::from_bits(self.ddl.load(Ordering::Relaxed))
    }

    /// Registers a session for the session-level shift (see [`Placement`]); it starts on
    /// the serving side.
    pub fn place(&self) -> Placement<'_> {
        self.placed.fetch_add(1, Ordering::SeqCst);
        Placement {
            router: self,
            other: false,
        }
    }

    /// Sessions registered for the session-level shift, and those on the side that is not
    /// serving: (registered, there).
    pub fn placement(&self) -> (usize, usize) {
        (
            self.placed.load(Ordering::SeqCst),
            self.on_other.load(Ordering::SeqCst),
        )
    }

    /// The table in force (lock-free).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// The table in force, owned (to keep across an await).
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.table.load_full()
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

    /// [`try_enter`](Self::try_enter) as a guard: `None` when paused; the [`Busy`] leaves
    /// when dropped, also while a session task unwinds from a panic, so a crashed session
    /// cannot keep every later drain waiting.
    #[inline]
    pub fn enter(&self) -> Option<Busy<'_>> {
        // `then`, not `then_some`: a Busy made and dropped when paused would leave once too often.
        self.try_enter().then(|| Busy(self))
    }

    /// The session's unit is over (ReadyForQuery `I`, nothing in flight) or the session ended.
    #[inline]
    pub fn leave(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Publishes the table `f` makes of the current one. Publications are serialised (a
    /// weight change from the health checks must not undo a concurrent switch), and ordered
    /// against sessions entering a unit ([`try_enter`](Self::try_enter), then
    /// [`load`](Self::load)):
    ///
    /// * pausing sets the `paused` flag before the table: a session that enters from then on
    ///   holds, and one that entered just before is counted busy, so the drain waits for it;
    /// * resuming or switching stores the new table before it clears the flag: a session that
    ///   sees the pause lifted (a SeqCst load after the SeqCst store) also sees the new
    ///   table. In the other order a session could enter in between, load the old table and
    ///   write on the old side after the cutover's barrier: acknowledged, and never
    ///   replicated.
    fn publish(&self, f: impl FnOnce(&RoutingTable) -> RoutingTable) {
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(&self.table.load_full());
        if next.paused {
            self.paused.store(true, Ordering::SeqCst);
            self.table.store(Arc::new(next));
        } else {
            self.table.store(Arc::new(next));
            self.paused.store(false, Ordering::SeqCst);
        }
        self.changes.send_modify(|v| *v += 1);
    }
}

impl Router {
    /// Records what pins session `pid` (`None`: nothing, or the session ended), for
    /// [`TrafficControl::pinned`]. Called only when it changes.
    pub fn set_pinned(&self, pid: i32, p: Option<control::PinnedSession>) {
        let mut g = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Some(p) => {
                g.insert(pid, p);
            }
            None => {
                g.remove(&pid);
            }
        }
        crate::metrics::pinned_sessions(g.len());
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
            next: None,
            ..t.clone()
        });
    }
    fn pause_for_switch(&self, to: Side) {
        if let Some(f) = self.failpoint {
            f.hit(Failpoint::Pause);
        }
        self.publish(|t| RoutingTable {
            paused: true,
            next: Some(to),
            ..t.clone()
        });
    }
    fn resume(&self) {
        self.publish(|t| RoutingTable {
            paused: false,
            next: None,
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
            next: None,
            weight: 0,
            ..t.clone()
        });
    }
    fn busy_sessions(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
    fn pinned(&self) -> Vec<control::PinnedSession> {
        let mut v: Vec<_> = self
            .pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }
    /// Pinned sessions end when they would move: at their next unit after the switch (or
    /// at once when they LISTEN), with this FATAL (57P01) and their backend closed. So this
    /// only counts them; the switch that follows ends them.
    fn end_pinned(&self, message: &str) -> usize {
        let n = self.pinned.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n > 0 {
            tracing::warn!("{n} pinned sessions will end at their next move: {message}");
        }
        n
    }
    fn set_ddl(&self, gate: control::DdlGate) {
        let old = self.ddl.swap(gate.to_bits(), Ordering::Relaxed);
        if old != gate.to_bits() {
            tracing::info!(action = ?gate.action, truncate = gate.truncate, "DDL gate published");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    impl Router {
        /// The publication order before issue 9 (the flag cleared before the new table is
        /// stored), kept to show that the stress test below catches it.
        fn publish_flag_first(&self, f: impl FnOnce(&RoutingTable) -> RoutingTable) {
            let next = f(&self.table.load_full());
            self.paused.store(next.paused, Ordering::SeqCst);
            // Widen the window between the two stores (a descheduling can fall here too).
            std::thread::yield_now();
            self.table.store(Arc::new(next));
        }
    }

    #[test]
    fn placement_keeps_the_share_and_moves_only_when_it_must() {
        let r = router();
        let mut p: Vec<Placement<'_>> = (0..8).map(|_| r.place()).collect();
        let on = |p: &mut Vec<Placement<'_>>, w| {
            p.iter_mut().map(|x| x.decide(w, true)).collect::<Vec<_>>()
        };
        assert_eq!(r.placement(), (8, 0));
        let a = on(&mut p, 25);
        assert_eq!(a.iter().filter(|b| **b).count(), 2);
        // Same weight: nobody moves.
        assert_eq!(on(&mut p, 25), a);
        let b = on(&mut p, 50);
        assert_eq!(b.iter().filter(|x| **x).count(), 4);
        assert!(
            a.iter().zip(&b).all(|(x, y)| !*x || *y),
            "sticky: {a:?} {b:?}"
        );
        // A session that cannot move stays where it is, even at weight 0.
        let pinned = b.iter().position(|x| *x).unwrap();
        assert!(p[pinned].decide(0, false));
        let c = on(&mut p, 0);
        assert_eq!(c.iter().filter(|x| **x).count(), 0);
        assert_eq!(r.placement(), (8, 0));
        let d = on(&mut p, 100);
        assert!(d.iter().all(|x| *x));
        p.truncate(3);
        assert_eq!(r.placement(), (3, 3), "dropped placements leave");
    }

    fn router() -> Arc<Router> {
        let a = || BackendAddr {
            host: "127.0.0.1".into(),
            port: 1,
            dbname: "app".into(),
            auth: vec![config::ServerAuth::ScramSha256],
            tls: TlsTo(None),
        };
        Router::new(Side::Source, 1, a(), a())
    }

    #[test]
    fn busy_guard_leaves_on_drop_and_on_unwind() {
        let r = router();
        let b = r.enter().expect("not paused");
        assert_eq!(r.busy_sessions(), 1);
        drop(b);
        assert_eq!(r.busy_sessions(), 0);
        // A session task that panics inside its unit: the count goes back all the same.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _b = r.enter().expect("not paused");
            assert_eq!(r.busy_sessions(), 1);
            panic!("a bug in a session");
        }));
        assert!(caught.is_err());
        assert_eq!(
            r.busy_sessions(),
            0,
            "a panicking session must not stay busy"
        );
        r.pause();
        assert!(r.enter().is_none(), "paused: nothing counted");
        assert_eq!(r.busy_sessions(), 0);
    }

    /// Sessions enter units and load the table as fast as they can while the control side
    /// runs `switches` cutover protocols (pause, drain, barrier, switch). Returns the units
    /// that started on an epoch whose barrier had already passed: writes that a real cutover
    /// would acknowledge on the old side and never replicate. The sessions act on whatever
    /// table they load (as the relay did before it also held on a paused table), so this
    /// tests the publication order alone.
    fn race(r: Arc<Router>, switches: u64, flag_first: bool) -> u64 {
        // The last epoch whose barrier has passed: no unit may start on it any more.
        let closed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicU64::new(0));
        let units = Arc::new(AtomicU64::new(0));
        let sessions: Vec<_> = (0..3)
            .map(|_| {
                let (r, closed, done, late, units) = (
                    r.clone(),
                    closed.clone(),
                    done.clone(),
                    late.clone(),
                    units.clone(),
                );
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if !r.try_enter() {
                            std::thread::yield_now();
                            continue;
                        }
                        let t = r.load();
                        if t.epoch <= closed.load(Ordering::SeqCst) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        units.fetch_add(1, Ordering::Relaxed);
                        r.leave();
                    }
                })
            })
            .collect();
        // Let the sessions start before the first switch.
        while units.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        for _ in 0..switches {
            let t = r.load_full();
            r.pause();
            while r.busy_sessions() > 0 {
                std::thread::yield_now();
            }
            closed.store(t.epoch, Ordering::SeqCst);
            let next = |c: &RoutingTable| RoutingTable {
                side: c.side.other(),
                epoch: c.epoch + 1,
                paused: false,
                next: None,
                ..c.clone()
            };
            if flag_first {
                r.publish_flag_first(next);
            } else {
                r.publish(next);
            }
        }
        done.store(true, Ordering::Relaxed);
        for s in sessions {
            s.join().expect("session thread");
        }
        let units = units.load(Ordering::Relaxed);
        // A sanity check that the sessions ran alongside the switches (on a loaded 2-core
        // machine they get fewer turns than there are switches; 1,640 for 2,000 was seen).
        assert!(
            units >= switches / 10,
            "the sessions hardly ran: {units} units"
        );
        late.load(Ordering::Relaxed)
    }

    #[test]
    fn no_unit_starts_on_the_old_side_after_a_switch() {
        assert_eq!(
            race(router(), 2_000, false),
            0,
            "units started after the barrier"
        );
        // The old order loses: some session enters between the two stores.
        let mut late = 0;
        for _ in 0..10 {
            late += race(router(), 2_000, true);
            if late > 0 {
                break;
            }
        }
        eprintln!("flag-first order: {late} units started after their barrier");
        assert!(
            late > 0,
            "the stress test did not catch the flag-first order"
        );
    }

    #[test]
    fn concurrent_publications_do_not_undo_each_other() {
        let r = router();
        let writers: Vec<_> = (0..2)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for n in 0..2_000u32 {
                        if i == 0 {
                            r.switch_to(Side::Target, u64::from(n) + 2);
                        } else {
                            r.set_weight((n % 100) as u8);
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!((r.load().side, r.load().epoch), (Side::Target, 2_001));
    }
}
