//! Providers make and remove servers: [`local`] (initdb/pg_ctl on this machine) and
//! [`rds`] (an Amazon RDS instance, by the RDS API); [`Target`] is the one a plan uses. The
//! roles and database of a new target are copied from the source by [`roles`], for every
//! provider; [`dump`] writes the source's final `pg_dump`.

mod dump;
mod local;
#[cfg(feature = "rds")]
pub mod rds;
#[cfg(not(feature = "rds"))]
#[path = "rds_off.rs"]
pub mod rds;
mod roles;

pub use dump::final_dump;
pub use local::*;
pub use roles::{copy_roles_and_database, source_shape, DbShape};

use crate::logical::DriverError;
use config::Config;

/// The provider of `[target.provision]`.
#[derive(Debug)]
pub enum Target {
    /// `provider = "local"`.
    Local(Local),
    /// `provider = "rds"`.
    Rds(rds::Rds),
}

impl Target {
    /// The `[target.provision]` of `cfg`, if any.
    pub fn of(cfg: &Config) -> Option<Target> {
        Local::target(cfg)
            .map(Target::Local)
            .or_else(|| rds::Rds::target(cfg).map(Target::Rds))
    }

    /// What ProvisionTarget makes, for the phase message.
    pub fn describe(&self) -> String {
        match self {
            Target::Local(l) => format!(
                "PostgreSQL {} in {}",
                l.spec.major(),
                l.data_dir().display()
            ),
            Target::Rds(r) => format!(
                "RDS instance {} (postgres {}) like {}",
                r.instance_id(),
                r.spec.engine_version.as_deref().unwrap_or(""),
                r.source_id()
            ),
        }
    }

    /// Whether the server exists and pgshift made it (a rollback deletes only such).
    pub async fn made_by_pgshift(&self) -> Result<bool, DriverError> {
        match self {
            Target::Local(l) => Ok(l.made_by_pgshift()),
            // Boxed: the AWS SDK's futures are deep, and these run inside the admin's.
            Target::Rds(r) => Box::pin(r.made_by_pgshift()).await,
        }
    }

    /// ConfigureParams on the target: `settings` (PostgreSQL names and values), then the
    /// restart or reboot they need. Returns what was done.
    pub async fn configure(&self, settings: &[(String, String)]) -> Result<String, DriverError> {
        match self {
            Target::Local(l) => l.configure(settings).await,
            Target::Rds(r) => Box::pin(r.configure_target(settings)).await,
        }
    }

    /// Rollback before the cutover: removes what pgshift made. Returns what was done.
    pub async fn remove(&self) -> Result<String, DriverError> {
        match self {
            Target::Local(l) => l.remove().await,
            Target::Rds(r) => Box::pin(r.remove()).await,
        }
    }
}
