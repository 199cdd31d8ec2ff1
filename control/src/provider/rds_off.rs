//! The `rds` provider in a build without the `rds` feature (the fuzz targets build
//! `control` so, to leave the AWS SDK out): the same API, and every call that would reach
//! AWS fails saying how to get a build that has it.

use crate::logical::DriverError;
use config::{Config, ProvisionConfig, ServerConfig};
use tokio_postgres::Client as PgClient;

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// The `[target.provision] provider = "rds"` of a configuration.
#[derive(Debug)]
pub struct Rds {
    /// The section.
    pub spec: ProvisionConfig,
    /// `[target]`.
    pub server: ServerConfig,
}

fn off() -> DriverError {
    DriverError::new(
        "[target.provision] provider = \"rds\": this pgshift was built without the `rds` feature (cargo build -p proxy --features rds, the default)",
    )
}

impl Rds {
    /// The rds `[target.provision]` of `cfg`, if it has one.
    pub fn target(cfg: &Config) -> Option<Rds> {
        cfg.target
            .provision
            .clone()
            .filter(|p| p.provider == config::Provider::Rds)
            .map(|spec| Rds {
                spec,
                server: cfg.target.clone(),
            })
    }

    /// `source_db_instance_id`.
    pub fn source_id(&self) -> &str {
        self.spec.source_db_instance_id.as_deref().unwrap_or("")
    }

    /// The new instance's identifier (as the real provider names it).
    pub fn instance_id(&self) -> String {
        self.spec.db_instance_id.clone().unwrap_or_default()
    }

    /// Fails: no AWS in this build.
    pub async fn made_by_pgshift(&self) -> Result<bool> {
        Err(off())
    }

    /// One failure: no AWS in this build.
    pub async fn check_target(
        &self,
        _source_major: Option<u32>,
        _needs: &[(&str, &str)],
    ) -> (Vec<String>, Vec<String>) {
        (vec![off().to_string()], Vec::new())
    }

    /// Fails: no AWS in this build.
    pub async fn provision(&self, _src: &PgClient, _needs: &[(&str, &str)]) -> Result<String> {
        Err(off())
    }

    /// Fails: no AWS in this build.
    pub async fn configure_target(&self, _settings: &[(String, String)]) -> Result<String> {
        Err(off())
    }

    /// Fails: no AWS in this build.
    pub async fn configure_source(&self, _needs: &[(&str, &str)]) -> Result<String> {
        Err(off())
    }

    /// Fails: no AWS in this build.
    pub async fn remove(&self) -> Result<String> {
        Err(off())
    }

    /// Fails: no AWS in this build.
    pub async fn decommission(&self, _delete: bool) -> Result<String> {
        Err(off())
    }
}
