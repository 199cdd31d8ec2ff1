//! The steps that the upgrade scenarios (`cutover`, `demo`) share: the stack with pgbench data
//! and the unique-id writer, START UPGRADE under load until the target is synchronised,
//! switches through the admin console, and the final check of acknowledged writes.

use anyhow::{anyhow, bail, Context, Result};
use integration::{Stack, StackOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::console::{self, Console, Reply};
use crate::load::{self, LoadTotals};
use crate::pgbench::{Endpoint, Spec};
use crate::pgshift_log::{self, SwapEvent};
use crate::report::say;
use crate::scene::{self, WorkDir};
use crate::writer::{Writer, WriterReport};

/// Pause between two inserts of the unique-id writer.
const WRITER_GAP: Duration = Duration::from_millis(2);

/// A stack on which an upgrade is driven.
pub struct Session {
    /// Source, target and pgshift.
    pub stack: Arc<Stack>,
    /// The admin console.
    pub console: Console,
    /// The application database through pgshift.
    pub endpoint: Endpoint,
    /// Scratch space (pgbench logs).
    pub work: WorkDir,
    writer: Option<Writer>,
}

/// A switch (`INITIATE CUTOVER` / `ROLLBACK UPGRADE`) as the console answered it.
#[derive(Debug, Clone)]
pub struct Switch {
    /// The command.
    pub command: String,
    /// The console's reply, with the wall-clock span of the command.
    pub reply: Reply,
    /// The pause the reply reports (`pause N ms`).
    pub server_pause_ms: Option<f64>,
    /// The reply's breakdown of that pause.
    pub server_split: Option<String>,
}

/// The initial synchronisation.
#[derive(Debug, Clone)]
pub struct Sync {
    /// From START UPGRADE to phase `replicating`.
    pub seconds: f64,
    /// The load that ran meanwhile.
    pub load: LoadTotals,
}

/// The writer's figures at the end, checked against the serving side.
#[derive(Debug)]
pub struct WriterCheck {
    /// What the writer did.
    pub report: WriterReport,
    /// The side serving at the end (`source` / `target`).
    pub serving_side: String,
    /// Acknowledged ids missing there.
    pub missing: Vec<i64>,
}

impl Session {
    /// Start the stack (`source_major` → `target_major`, pgbench data of `scale`, the writer's
    /// table) and connect to the admin console. `what` names the scratch directory.
    pub async fn start(
        source_major: u32,
        target_major: u32,
        scale: u32,
        what: &str,
    ) -> Result<Session> {
        let opts = StackOptions {
            source_major,
            target_major,
            pgbench_scale: scale,
            ..Default::default()
        };
        Session::start_with(opts, what).await
    }

    /// [`start`](Self::start) with a stack made as `opts` says ([`scene::acked_stack`]).
    pub async fn start_with(opts: StackOptions, what: &str) -> Result<Session> {
        let stack = tokio::task::spawn_blocking(move || scene::acked_stack(opts))
            .await
            .map_err(|e| anyhow!("stack setup task: {e}"))??;
        let console = Console::connect(&stack.pgshift).await?;
        let endpoint = Endpoint::pgshift(&stack.pgshift);
        Ok(Session {
            stack: Arc::new(stack),
            console,
            endpoint,
            work: WorkDir::create(what)?,
            writer: None,
        })
    }

    /// `PostgreSQL 13.22 → 17.10`.
    pub fn versions(&self) -> String {
        format!(
            "PostgreSQL {} → {}",
            self.stack.source.binaries.version, self.stack.target.binaries.version
        )
    }

    /// Run blocking work on the stack (psql and friends) off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Stack) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let stack = self.stack.clone();
        tokio::task::spawn_blocking(move || f(&stack))
            .await
            .map_err(|e| anyhow!("blocking task: {e}"))?
    }

    /// Give pgbench_history a replica identity on the source ([`scene::REPLICA_IDENTITY_SQL`]).
    pub async fn fix_replica_identity(&self) -> Result<()> {
        self.blocking(|s| {
            s.source
                .psql(integration::stack::DB, scene::REPLICA_IDENTITY_SQL)
                .context("setting pgbench_history's replica identity")
        })
        .await?;
        Ok(())
    }

    /// Start the unique-id writer through pgshift.
    pub async fn start_writer(&mut self) -> Result<()> {
        let client = self.stack.app_client().await?;
        self.writer = Some(Writer::start(client, WRITER_GAP).await?);
        Ok(())
    }

    /// `START UPGRADE`, then wait up to `timeout` for phase `replicating`, with pgbench `load`
    /// running through pgshift in runs of `load.seconds` all along. With `show_preflight`, the
    /// upgrade is first started before pgbench_history has a replica identity, so that the
    /// preflight's refusal (and why) is shown, then the table is fixed and the upgrade started
    /// again; otherwise the table is fixed first.
    pub async fn start_upgrade_under_load(
        &mut self,
        load: &Spec,
        show_preflight: bool,
        timeout: Duration,
    ) -> Result<Sync> {
        if !show_preflight {
            self.fix_replica_identity().await?;
        }
        let endpoint = self.endpoint.clone();
        let started = Instant::now();
        let (_, totals) = load::while_waiting(&endpoint, load, async {
            if show_preflight {
                say("admin> START UPGRADE");
                match self.console.run("START UPGRADE").await {
                    Err(e) => {
                        say(format!("console: {e:#}"));
                        explain_replica_identity();
                        say(format!("source> {}", scene::REPLICA_IDENTITY_SQL));
                        self.fix_replica_identity().await?;
                    }
                    Ok(r) => {
                        say(format!(
                            "console: preflight let the upgrade start ({}); fixing pgbench_history anyway",
                            r.message()
                        ));
                        self.fix_replica_identity().await?;
                    }
                }
            }
            say("admin> START UPGRADE");
            let r = self.console.run("START UPGRADE").await?;
            if !r.notices.is_empty() {
                say(format!("console: {}", r.message()));
            }
            say("waiting for phase replicating (initial copy of the tables, then catch-up)");
            self.console.wait_phase("replicating", timeout).await
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        say(format!(
            "synchronised after {seconds:.1} s; pgbench during the copy: {} runs, {} transactions, {} failed",
            totals.runs, totals.transactions, totals.failures
        ));
        Ok(Sync {
            seconds,
            load: totals,
        })
    }

    /// Run a switch command (`INITIATE CUTOVER`, `ROLLBACK UPGRADE`) and say what it answered.
    pub async fn switch(&mut self, command: &str) -> Result<Switch> {
        say(format!("admin> {command}"));
        let reply = self.console.run(command).await?;
        let msg = reply.message();
        say(format!(
            "console ({:.0} ms): {}",
            reply.span.ms(),
            if msg.is_empty() { "(no message)" } else { &msg }
        ));
        Ok(Switch {
            command: command.to_string(),
            server_pause_ms: console::server_pause_ms(&msg),
            server_split: console::server_pause_split(&msg),
            reply,
        })
    }

    /// The swap that `sw` made, from pgshift's log: the one logged during the command.
    pub fn swap_of(&self, sw: &Switch) -> Option<SwapEvent> {
        let span = sw.reply.span;
        pgshift_log::swaps(&self.stack.pgshift.log())
            .into_iter()
            .find(|e| e.at_us >= span.start_us && e.at_us <= span.end_us)
    }

    /// `server_version` as the application sees it through pgshift (a fresh connection).
    pub async fn app_server_version(&self) -> Result<String> {
        let c = self.stack.app_client().await?;
        let row = c
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| anyhow!("SHOW server_version: {}", integration::stack::db_error(&e)))?;
        Ok(row.get(0))
    }

    /// Stop the writer and look for its acknowledged ids on the side serving now.
    pub async fn check_writer(&mut self) -> Result<WriterCheck> {
        let writer = self.writer.take().context("the writer was not started")?;
        let report = writer.finish().await?;
        let serving_side = self.console.serving_side().await?;
        let acked = report.acked.clone();
        let side = serving_side.clone();
        let missing = self
            .blocking(move |s| {
                let server = match side.as_str() {
                    "source" => &s.source,
                    "target" => &s.target,
                    other => bail!("unknown serving side {other:?}"),
                };
                scene::missing_ids(server, &acked)
            })
            .await?;
        Ok(WriterCheck {
            report,
            serving_side,
            missing,
        })
    }
}

/// Sleep `seconds`, saying why.
pub async fn hold(seconds: u64, why: &str) {
    say(format!("holding {seconds} s {why}"));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

fn explain_replica_identity() {
    say(
        "why: pgshift copies changes with logical replication. PostgreSQL can replicate an\n\
         UPDATE or DELETE only for a table with a replica identity, normally its primary key.\n\
         pgbench_history has none, so the preflight refuses to start rather than break\n\
         replication later. REPLICA IDENTITY FULL makes the old row itself the identity:\n\
         fine for an append-only history table (it costs WAL only on updates and deletes).",
    );
}
