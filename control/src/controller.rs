//! Placeholder; replaced by the real controller.
use crate::{Side, Traffic};
use config::Config;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

#[derive(Debug, Clone)]
pub struct UpgradeStatus {
    pub phase: String,
    pub state: String,
    pub replication_lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub source_weight: u32,
    pub target_weight: u32,
    pub epoch: u64,
    pub last_error: Option<String>,
    pub updated_at: String,
}

pub struct Controller {
    _cfg: Arc<Config>,
}

impl Controller {
    pub fn open(cfg: Arc<Config>) -> Result<Arc<Controller>, ControlError> {
        Ok(Arc::new(Controller { _cfg: cfg }))
    }
    pub fn serving_side(&self) -> (Side, u64) {
        (Side::Source, 1)
    }
    pub fn attach(self: &Arc<Self>, _traffic: Traffic) {}
    pub async fn start_upgrade(self: &Arc<Self>) -> Result<String, ControlError> {
        Err(ControlError("not implemented".into()))
    }
    pub async fn initiate_cutover(self: &Arc<Self>) -> Result<String, ControlError> {
        Err(ControlError("not implemented".into()))
    }
    pub async fn rollback(self: &Arc<Self>) -> Result<String, ControlError> {
        Err(ControlError("not implemented".into()))
    }
    pub fn status(&self) -> UpgradeStatus {
        UpgradeStatus {
            phase: "idle".into(),
            state: "idle".into(),
            replication_lag_bytes: None,
            lag_seconds: None,
            source_weight: 100,
            target_weight: 0,
            epoch: 1,
            last_error: None,
            updated_at: String::new(),
        }
    }
}
