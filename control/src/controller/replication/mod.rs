//! The replication-driver seam: what every `[replication] driver` does for the plan and
//! for the switch, so that the plan's steps and the one cutover protocol
//! ([`Controller::switch`](super::Controller)) are written once.
//!
//! * [`ReplicationDriver`]: preflight, the notes of the steps a driver has nothing to do
//!   in, InitReplication (after the schema copy), WaitForSync, the lag probe, the start of a
//!   switch, the clean-up of an abandoned one, the steps after a swap, DetachOld and the
//!   rollback before cutover.
//! * [`SwitchRun`]: one switch's state (its connections) and the steps inside it, called by
//!   the switch in this order: [`before_pause`](SwitchRun::before_pause), pause and drain,
//!   [`check_paused`](SwitchRun::check_paused), [`barrier`](SwitchRun::barrier),
//!   [`stop_old`](SwitchRun::stop_old) (drivers whose
//!   [`reverses`](SwitchRun::reverses) is true), [`sequences`](SwitchRun::sequences),
//!   [`reverse_slot`](SwitchRun::reverse_slot) (same), the swap journaled,
//!   [`after_swap_journaled`](SwitchRun::after_swap_journaled), traffic switched; then
//!   [`ReplicationDriver::finish_switch`] after the pause.
//!
//! Implementations: [`logical::LogicalDriver`] (native publications and subscriptions, one
//! direction at a time), [`mirror::MirrorDriver`] (the proxy records committed writes and
//! applies them on the other side) and [`bidirectional::BidirectionalDriver`] (native
//! logical replication both ways at once, `origin = none`) and [`pgactive::PgactiveDriver`]
//! (AWS's pgactive extension: a group of two nodes replicating both ways).

pub(super) mod bidirectional;
pub(super) mod logical;
pub(super) mod mirror;
pub(super) mod pgactive;

use super::switch::Abandon;
use super::{ControlError, Controller};
use crate::logical::{Direction, DriverError, Lag, Logical, Preflight};
use crate::Traffic;

/// What the lag collector reads for a driver.
pub(super) enum LagProbe {
    /// Read each carried database's slot on the running direction's publisher.
    Slots,
    /// The driver knows its lag itself (`None`: not known now).
    Known(Option<Lag>),
}

/// What every replication driver does (module docs). Errors are the step's or command's
/// error, with what to do.
#[async_trait::async_trait]
pub(super) trait ReplicationDriver: Send + Sync {
    /// Adjusts the common preflight of one database (`d`; `target`: the target was checked
    /// too) to this driver: drops requirements it does not have, adds its own.
    async fn preflight(
        &self,
        c: &Controller,
        d: &Logical,
        target: bool,
        pf: Preflight,
    ) -> Preflight {
        let _ = (c, d, target);
        pf
    }

    /// The DDL gate the proxy applies while this driver replicates, under `[upgrade] ddl`
    /// (`ready`: the replication the driver's DDL replication needs is in place; before it,
    /// `replicate` blocks). The default suits native logical replication, which carries no
    /// DDL and replicates TRUNCATE: `block` refuses, `allow` warns.
    fn ddl_gate(&self, policy: config::DdlPolicy, ready: bool) -> crate::DdlGate {
        let _ = ready;
        crate::DdlGate {
            action: match policy {
                config::DdlPolicy::Allow => crate::DdlAction::Warn,
                config::DdlPolicy::Block | config::DdlPolicy::Replicate => crate::DdlAction::Block,
            },
            truncate: false,
        }
    }

    /// Whether the driver carries only the primary database (`[source] dbname`).
    fn primary_only(&self) -> bool {
        false
    }

    /// What ConfigureParams journals when the driver needs no server parameter change.
    fn configure_params_note(&self) -> &'static str;

    /// The RDS parameters (name, value) the driver needs on an RDS instance, source and
    /// target (RDS User Guide, "Setting up logical replication for your Amazon RDS for
    /// PostgreSQL DB instance": `rds.logical_replication = 1`, which sets `wal_level`).
    fn rds_parameters(&self) -> &'static [(&'static str, &'static str)] {
        &[("rds.logical_replication", "1")]
    }

    /// Whether ConfigureParams and InstallExtension do work for this driver
    /// ([`configure_params`](Self::configure_params),
    /// [`install_extension`](Self::install_extension)); else they journal their notes.
    fn has_setup_steps(&self) -> bool {
        false
    }

    /// ConfigureParams: sets what the driver needs on the servers (restarting a server
    /// pgshift made, naming exactly what to change on one it did not). Returns what was done.
    async fn configure_params(&self, c: &Controller) -> Result<String, DriverError> {
        let _ = c;
        Ok(self.configure_params_note().into())
    }

    /// What InstallExtension journals when the driver needs no extension.
    fn install_extension_note(&self) -> &'static str {
        "logical driver: no extension to install (native publications and subscriptions)"
    }

    /// InstallExtension: creates the driver's extension in every carried database of both
    /// servers and checks what must match. Returns what was done.
    async fn install_extension(&self, c: &Controller) -> Result<String, DriverError> {
        let _ = c;
        Ok(self.install_extension_note().into())
    }

    /// InitReplication after the schema copy of every carried database: sets replication
    /// up. Returns what was done, one entry per part.
    async fn init(&self, c: &Controller, actor: &str) -> Result<Vec<String>, ControlError>;

    /// WaitForSync: waits until the initial copy is done and replication runs. Returns
    /// (tables or transactions synchronised, message).
    async fn wait_sync(&self, c: &Controller, actor: &str) -> Result<(u64, String), DriverError>;

    /// Whether both directions replicate at once, so that the health checks probe both
    /// subscribers.
    fn both_ways(&self) -> bool {
        false
    }

    /// A reason naming the newest conflict or apply error, for a health check that failed
    /// on new apply errors (`None`: the generic reason stands).
    async fn explain_apply_errors(&self, c: &Controller) -> Option<String> {
        let _ = c;
        None
    }

    /// What the lag collector reads.
    fn lag_probe(&self, c: &Controller) -> LagProbe {
        let _ = c;
        LagProbe::Slots
    }

    /// Why FORCE RESYNC TABLE `name` is not possible with this driver (`None`: it is).
    fn resync_refusal(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }

    /// Starts a switch of direction `dir`: connections and the checks before anything
    /// changes. `Err` refuses it (nothing changed; traffic stays).
    async fn begin_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<Box<dyn SwitchRun>, ControlError>;

    /// After a switch of `dir` was abandoned before its swap (traffic resumed on the side
    /// it was on): undoes what the switch changed so replication runs as before. Returns
    /// what could not be undone, one message each (empty: all).
    async fn abandon_cleanup(&self, c: &Controller, dir: Direction) -> Vec<String>;

    /// After the swap of a switch of `dir` (the direction that ran before it): the steps
    /// that make the other direction run, then the row's done phase. Also called on resume
    /// when the swap was journaled and these steps were not done.
    async fn finish_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError>;

    /// DetachOld: removes replication in both directions. Returns what was removed.
    async fn detach(&self, c: &Controller) -> Result<String, DriverError>;

    /// Rollback before cutover: removes every replication object (`target_absent`: a target
    /// pgshift provisions does not exist yet, only the source has objects; `provisioned`:
    /// the target is deleted next, so cleaning the source alone is enough if both fail).
    async fn teardown(
        &self,
        c: &Controller,
        actor: &str,
        target_absent: bool,
        provisioned: bool,
    ) -> Result<(), ControlError>;
}

/// One switch under way (module docs for the order of the calls). The switch owns the
/// pause, the drain, the journal and the swap; a run does only what its driver needs.
#[async_trait::async_trait]
pub(super) trait SwitchRun: Send + Sync {
    /// Number of carried databases the switch covers (for the messages).
    fn databases(&self) -> usize;

    /// Whether the driver stops the running direction and sets the reverse one up in the
    /// pause (steps `stop_apply` and `slot`), and after it (`finish_switch`).
    fn reverses(&self) -> bool;

    /// Before the pause, traffic flowing: waits for what cannot be paused (prepared
    /// transactions) and lets the other side catch up, so that the pause covers only the
    /// last stretch. `Err(reason)` abandons the switch.
    async fn before_pause(
        &mut self,
        c: &Controller,
        traffic: &Traffic,
        actor: &str,
    ) -> Result<(), String>;

    /// Paused and drained: what must hold before the barrier.
    async fn check_paused(&mut self, c: &Controller) -> Result<(), Abandon> {
        let _ = c;
        Ok(())
    }

    /// The barrier: waits until the other side has applied everything committed on the
    /// serving side. Returns what was applied, for the journal (`target applied 0/1A2B`).
    async fn barrier(&mut self, c: &Controller) -> Result<String, Abandon>;

    /// Stops the running direction's apply (only when [`reverses`](Self::reverses)).
    /// Returns what was stopped.
    async fn stop_old(&mut self, c: &Controller) -> Result<String, Abandon> {
        let _ = c;
        Ok(String::new())
    }

    /// Copies every used sequence to the new serving side. Returns how many were set.
    async fn sequences(&mut self, c: &Controller) -> Result<u64, Abandon>;

    /// Makes the reverse direction's slot (only when [`reverses`](Self::reverses)). Returns
    /// what was made.
    async fn reverse_slot(&mut self, c: &Controller) -> Result<String, Abandon> {
        let _ = c;
        Ok(String::new())
    }

    /// After the swap is journaled, before traffic goes over. Returns the name of the
    /// pause's lap it took, if it did anything.
    async fn after_swap_journaled(
        &mut self,
        c: &Controller,
    ) -> Result<Option<&'static str>, Abandon> {
        let _ = c;
        Ok(None)
    }
}

/// The driver of `[replication] driver`.
pub(super) fn for_config(cfg: &config::Config) -> Box<dyn ReplicationDriver> {
    match cfg.replication.driver {
        config::Driver::Logical => Box::new(logical::LogicalDriver),
        config::Driver::Mirror => Box::new(mirror::MirrorDriver),
        config::Driver::Bidirectional => Box::new(bidirectional::BidirectionalDriver),
        config::Driver::Pgactive => Box::new(pgactive::PgactiveDriver),
    }
}
