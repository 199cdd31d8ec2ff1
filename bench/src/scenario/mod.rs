//! The scenarios: `cutover`, `overhead` and `demo`.

pub mod cutover;
pub mod demo;
pub mod overhead;
mod upgrade;

/// What a scenario hands back: its closing JSON object and whether it passed.
pub struct Outcome {
    /// Printed as the last line of standard output.
    pub json: serde_json::Value,
    /// False makes the process exit with status 1.
    pub ok: bool,
}
