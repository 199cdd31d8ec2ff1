//! pgshift's bench: scenarios that start their own PostgreSQL servers and pgshift through the
//! integration harness and measure it from outside. Progress goes to standard error, results
//! to standard output, whose last line is one JSON object.
//!
//! ```text
//! cargo run --release -p bench -- cutover    # pause of a cutover and a rollback under load
//! cargo run --release -p bench -- overhead   # direct vs pgshift vs pgbouncer: TPS, latency, CPU
//! cargo run --release -p bench -- demo       # the main job end to end, narrated
//! cargo run --release -p bench -- plan       # the unattended plan under load, then a target-stop fault
//! cargo run --release -p bench -- mirror     # pgbench TPC-B with mirroring and validation off / on
//! cargo run --release -p bench -- apply      # the mirror driver's applier throughput per apply_batch
//! ```

mod clock;
mod console;
mod cpu;
mod latency;
mod load;
mod pgbench;
mod pgbouncer;
mod pgshift_log;
mod prom;
mod report;
mod scenario;
mod scene;
mod writer;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// pgshift's bench scenarios (each starts its own local servers and pgshift).
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Cutover and rollback under pgbench TPC-B-like load (13 -> 17): client-observed pause,
    /// TPS before and after, failed transactions, lost writes. Exits 1 on any failure or loss.
    Cutover(scenario::cutover::Opts),
    /// pgbench -S directly, through pgshift and through pgbouncer, alternating: TPS, latency
    /// (average, p50) and the proxy's CPU time per transaction.
    Overhead(scenario::overhead::Opts),
    /// The main job end to end for an operator to watch: START UPGRADE, cutover to 17,
    /// rollback to 13, cutover again, under pgbench load, with the status every second.
    Demo(scenario::demo::Opts),
    /// The unattended plan (13 -> a provisioned 17, shift 25/25/50 with holds, cutover,
    /// detach, decommission) under pgbench TPC-B and -S load and a writer, then the target
    /// stopped during a shift step: failed transactions, lost writes, cutover pause, shift
    /// accuracy, automatic rollback time. Exits 1 on any failure or loss.
    Plan(scenario::plan::Opts),
    /// pgbench TPC-B (13 -> 17, while replicating) with mirroring and result validation
    /// switched off and on in alternating rounds: TPS and p99 latency per mode, statements
    /// compared, mismatches, shed units. Exits 1 on any mismatch or failed transaction.
    Mirror(scenario::mirror::Opts),
    /// The mirror replication driver's applier (13 with wal_level = replica -> 17) under
    /// unlimited pgbench TPC-B, one stack per `[replication] apply_batch` (default 1 and
    /// 64): apply rate during the load and the catch-up, catch-up time, lag, data equal on
    /// both sides. Exits 1 on an apply failure, a failed transaction or differing data.
    Apply(scenario::apply::Opts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    report::start_clock();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Cutover(o) => scenario::cutover::run(o).await,
            Scenario::Overhead(o) => scenario::overhead::run(o).await,
            Scenario::Demo(o) => scenario::demo::run(o).await,
            Scenario::Plan(o) => scenario::plan::run(o).await,
            Scenario::Mirror(o) => scenario::mirror::run(o).await,
            Scenario::Apply(o) => scenario::apply::run(o).await,
        }
    });
    match result {
        Ok(outcome) => {
            println!("{}", outcome.json);
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("bench: FAILED (see failed_transactions / lost_writes above)");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
