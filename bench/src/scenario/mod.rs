//! The scenarios: `cutover`, `overhead`, `demo`, `plan`, `mirror` and `apply`.

pub mod apply;
pub mod cutover;
pub mod demo;
pub mod mirror;
pub mod overhead;
pub mod plan;
mod plan_both;
mod upgrade;

/// What a scenario hands back: its closing JSON object and whether it passed.
pub struct Outcome {
    /// Printed as the last line of standard output.
    pub json: serde_json::Value,
    /// False makes the process exit with status 1.
    pub ok: bool,
}
