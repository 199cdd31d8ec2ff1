//! The `rds` provider: the target is an Amazon RDS for PostgreSQL instance made with the
//! RDS API (aws-sdk-rds), like the source instance.
//!
//! # ProvisionTarget
//!
//! 1. **Source.** `DescribeDBInstances` of `source_db_instance_id`: every setting of the new
//!    instance that `[target.provision]` leaves out is the source's (class, storage type,
//!    size, IOPS, throughput, subnet group, VPC security groups, Multi-AZ, backup retention,
//!    encryption and KMS key, public accessibility, port, tags).
//! 2. **Parameter group** `parameter_group` (default `pgshift-<db_instance_id>`), family
//!    `postgres<major>`, created if missing with the description [`GROUP_DESCRIPTION`]:
//!    the source's custom parameters (`DescribeDBParameters`, `Source=user`), then what the
//!    replication driver needs (`rds.logical_replication = 1`, or `rds.enable_pgactive = 1`),
//!    then `parameters`; all `pending-reboot`, 20 per `ModifyDBParameterGroup` as RDS takes
//!    them. A parameter the new family refuses (removed between majors) is left out and
//!    named in the step's message.
//! 3. **Instance** `db_instance_id` (default `<source>-pg<major>`): `CreateDBInstance` unless
//!    `DescribeDBInstances` finds it, master user `[target] user` with `[target] password`,
//!    tagged [`TAG`] = the source's identifier. An instance of that name without the tag is
//!    refused: pgshift changes nothing it did not make. Then the wait for `available`
//!    (`wait_poll_ms` doubling to 6 times, up to `wait_timeout_ms`); a terminal status
//!    (`failed`, `incompatible-parameters`, `storage-full`...) fails the step with it.
//! 4. **Roles and database**, copied from the source as with `local` (super::roles).
//!
//! Every part looks before it acts, so a step repeated after a crash finds what the first
//! attempt made and makes no second instance.
//!
//! # API errors
//!
//! The SDK's own retries are off; pgshift retries a call refused for throttling
//! (`Throttling`, `ThrottlingException`, `RequestLimitExceeded`, `TooManyRequestsException`),
//! for capacity (`InsufficientDBInstanceCapacity`) or that did not reach AWS, `api_attempts`
//! times with a backoff from `api_backoff_ms` doubling; then the step fails naming the call
//! and the code. No request or response is logged: `[target] password` travels only in
//! `CreateDBInstance`.
//!
//! # Source parameters, rollback, decommission
//!
//! ConfigureParams changes the source's parameters only with `allow_source_reboot`: a source
//! on a `default.*` group gets a group of its own (`pgshift-<source>`, the same family) with
//! the driver's parameters, attached by `ModifyDBInstance`; then `RebootDBInstance` and the
//! wait. ROLLBACK UPGRADE before the cutover deletes the instance and the parameter group
//! pgshift made (a final snapshot with `final_snapshot_on_rollback`). DecommissionSource
//! takes a final snapshot `<source>-pgshift-final-<unix seconds>` with `DeleteDBInstance`
//! only when `[upgrade] decommission_source` is true, and refuses a source with deletion
//! protection (pgshift never turns it off). It also gives the target the source's deletion
//! protection, which the target is made without so that a rollback can delete it.

use crate::logical::DriverError;
use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::{ApplyMethod, DbInstance, Parameter, Tag};
use config::{Config, ProvisionConfig, ServerConfig};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::Client as PgClient;

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// Tag key on every instance pgshift creates; its value is the source's identifier. Only an
/// instance with it is reused or deleted.
pub const TAG: &str = "pgshift:provisioned-for";

/// Description of every parameter group pgshift creates (the mark that it made it).
pub const GROUP_DESCRIPTION: &str = "made by pgshift for an upgrade";

/// Instance statuses after which waiting is pointless (RDS User Guide, "Viewing Amazon RDS
/// DB instance status").
const TERMINAL: &[&str] = &[
    "failed",
    "incompatible-parameters",
    "incompatible-network",
    "incompatible-option-group",
    "incompatible-restore",
    "inaccessible-encryption-credentials",
    "restore-error",
    "storage-full",
    "deleting",
];

/// Error codes worth a retry with backoff.
const RETRYABLE: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "InsufficientDBInstanceCapacity",
];

/// One refused API call: the error code (`""` when the call did not reach AWS) and the
/// message.
#[derive(Debug, Clone)]
struct Api {
    code: String,
    message: String,
}

/// The `[target.provision] provider = "rds"` of a configuration.
#[derive(Debug)]
pub struct Rds {
    /// The section.
    pub spec: ProvisionConfig,
    /// `[target]`.
    pub server: ServerConfig,
    client: tokio::sync::OnceCell<aws_sdk_rds::Client>,
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
                client: Default::default(),
            })
    }

    /// `source_db_instance_id`.
    pub fn source_id(&self) -> &str {
        self.spec.source_db_instance_id.as_deref().unwrap_or("")
    }

    /// The new instance's identifier: `db_instance_id`, else `<source>-pg<major>`.
    pub fn instance_id(&self) -> String {
        self.spec
            .db_instance_id
            .clone()
            .unwrap_or_else(|| format!("{}-pg{}", self.source_id(), self.spec.major()))
    }

    /// The target's parameter group: `parameter_group`, else `pgshift-<instance>`.
    pub fn group_name(&self) -> String {
        self.spec
            .parameter_group
            .clone()
            .unwrap_or_else(|| format!("pgshift-{}", self.instance_id()))
    }

    fn family(major: u32) -> String {
        format!("postgres{major}")
    }

    fn ctx(&self, what: &str) -> String {
        format!("[target.provision] rds: {what}")
    }

    async fn client(&self) -> &aws_sdk_rds::Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(Duration::from_secs(60))
                            .build(),
                    );
                if let Some(r) = &self.spec.region {
                    loader = loader.region(aws_config::Region::new(r.clone()));
                }
                if let Some(p) = &self.spec.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(u) = &self.spec.endpoint_url {
                    loader = loader.endpoint_url(u);
                }
                aws_sdk_rds::Client::new(&loader.load().await)
            })
            .await
    }

    /// Runs one API call with the retries of the module docs.
    async fn call<T, E, R, F, Fut>(&self, op: &str, f: F) -> Result<T, Api>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let mut backoff = Duration::from_millis(self.spec.api_backoff_ms);
        let attempts = self.spec.api_attempts.max(1);
        let mut attempt = 1;
        loop {
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let reached = matches!(err, SdkError::ServiceError(_));
            let api = Api {
                code: err.code().unwrap_or_default().to_string(),
                message: if reached {
                    err.message().unwrap_or_default().to_string()
                } else {
                    DisplayErrorContext(&err).to_string()
                },
            };
            let retry = !reached || RETRYABLE.contains(&api.code.as_str());
            if !retry || attempt >= attempts {
                return Err(Api {
                    message: if retry {
                        format!("{op} failed {attempt} times: {}", describe(&api))
                    } else {
                        format!("{op}: {}", describe(&api))
                    },
                    ..api
                });
            }
            tracing::warn!(
                op,
                code = %api.code,
                attempt,
                backoff_ms = backoff.as_millis() as u64,
                "RDS API call refused; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(120));
            attempt += 1;
        }
    }

    fn fail(&self, e: Api) -> DriverError {
        let hint = match e.code.as_str() {
            "InsufficientDBInstanceCapacity" => format!(
                "; RDS has no capacity for {}: set [target.provision] instance_class to another class, or try later",
                self.spec.instance_class.as_deref().unwrap_or("the source's instance class")
            ),
            c if RETRYABLE.contains(&c) => "; the account's RDS API rate is exhausted: RESUME UPGRADE later".into(),
            "InvalidClientTokenId" | "UnrecognizedClientException" | "AccessDenied"
            | "AccessDeniedException" | "SignatureDoesNotMatch" => {
                "; check the AWS credentials and the IAM policy of the role pgshift runs as".into()
            }
            _ => String::new(),
        };
        let msg = self.ctx(&format!("{}{hint}", e.message));
        if e.code.is_empty() || RETRYABLE.contains(&e.code.as_str()) {
            DriverError::temporary(msg)
        } else {
            DriverError::new(msg)
        }
    }

    /// `DescribeDBInstances` of `id`; `None` when there is no such instance.
    async fn describe(&self, id: &str) -> Result<Option<DbInstance>> {
        let c = self.client().await;
        match self
            .call("DescribeDBInstances", || {
                c.describe_db_instances().db_instance_identifier(id).send()
            })
            .await
        {
            Ok(out) => Ok(out.db_instances().first().cloned()),
            Err(e) if e.code == "DBInstanceNotFound" || e.code == "DBInstanceNotFoundFault" => {
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn source(&self) -> Result<DbInstance> {
        self.describe(self.source_id()).await?.ok_or_else(|| {
            DriverError::new(self.ctx(&format!(
                "source_db_instance_id {}: no such DB instance in this account and region",
                self.source_id()
            )))
        })
    }

    fn ours(i: &DbInstance) -> bool {
        i.tag_list().iter().any(|t| t.key() == Some(TAG))
    }

    /// Whether the instance pgshift makes exists and carries [`TAG`].
    pub async fn made_by_pgshift(&self) -> Result<bool> {
        Ok(self
            .describe(&self.instance_id())
            .await?
            .is_some_and(|i| Self::ours(&i)))
    }

    /// The custom parameters (`Source=user`) of a group, all pages: name → value.
    async fn user_parameters(&self, group: &str) -> Result<Vec<(String, String)>> {
        let c = self.client().await;
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .call("DescribeDBParameters", || {
                    c.describe_db_parameters()
                        .db_parameter_group_name(group)
                        .source("user")
                        .set_marker(marker.clone())
                        .send()
                })
                .await
                .map_err(|e| self.fail(e))?;
            for p in page.parameters() {
                if let (Some(n), Some(v)) = (p.parameter_name(), p.parameter_value()) {
                    out.push((n.to_string(), v.to_string()));
                }
            }
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The parameter group attached to an instance and its apply status.
    fn group_of(i: &DbInstance) -> (String, String) {
        i.db_parameter_groups()
            .first()
            .map(|g| {
                (
                    g.db_parameter_group_name().unwrap_or_default().to_string(),
                    g.parameter_apply_status().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_default()
    }

    /// Of `needs` (name, value), those the source's parameter group does not have, and the
    /// group's name and apply status.
    async fn source_missing(
        &self,
        src: &DbInstance,
        needs: &[(&str, &str)],
    ) -> Result<(Vec<(String, String)>, String, String)> {
        let (group, status) = Self::group_of(src);
        let have = if group.starts_with("default.") || group.is_empty() {
            Vec::new()
        } else {
            self.user_parameters(&group).await?
        };
        let missing = needs
            .iter()
            .filter(|(n, v)| !have.iter().any(|(hn, hv)| hn == n && hv == v))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Ok((missing, group, status))
    }

    /// ValidateInput's checks: the source instance (engine, an older or equal major), the
    /// new instance's name (free, or pgshift's), and the source's parameters for the driver
    /// (`needs`). Returns (failures, notes).
    pub async fn check_target(
        &self,
        source_major: Option<u32>,
        needs: &[(&str, &str)],
    ) -> (Vec<String>, Vec<String>) {
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        let key = "[target.provision]";
        let src = match self.source().await {
            Ok(s) => s,
            Err(e) => {
                failures.push(e.to_string());
                return (failures, notes);
            }
        };
        if src.engine() != Some("postgres") {
            failures.push(format!(
                "{key}: source_db_instance_id {} runs engine {}; pgshift upgrades RDS for PostgreSQL (engine postgres)",
                self.source_id(),
                src.engine().unwrap_or("?")
            ));
        }
        let src_major = src
            .engine_version()
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .or(source_major);
        if let Some(m) = src_major {
            if self.spec.major() < m {
                failures.push(format!(
                    "{key}: engine_version {} is older than the source's {}; the target must run the same or a newer major",
                    self.spec.engine_version.as_deref().unwrap_or(""),
                    src.engine_version().unwrap_or("?")
                ));
            }
        }
        notes.push(format!(
            "{key}: source instance {} (postgres {}, {}, status {})",
            self.source_id(),
            src.engine_version().unwrap_or("?"),
            src.db_instance_class().unwrap_or("?"),
            src.db_instance_status().unwrap_or("?")
        ));
        match self.describe(&self.instance_id()).await {
            Ok(Some(i)) if Self::ours(&i) => notes.push(format!(
                "{key}: instance {} was made by pgshift earlier; it is reused",
                self.instance_id()
            )),
            Ok(Some(_)) => failures.push(format!(
                "{key}: an instance {} exists and was not made by pgshift (no tag {TAG}); pgshift never touches it: delete it or set db_instance_id",
                self.instance_id()
            )),
            Ok(None) => notes.push(format!(
                "{key}: instance {} will be created",
                self.instance_id()
            )),
            Err(e) => failures.push(e.to_string()),
        }
        match self.source_missing(&src, needs).await {
            Ok((missing, group, status)) => {
                if !missing.is_empty() {
                    let list = pairs(&missing);
                    if self.spec.allow_source_reboot {
                        notes.push(format!(
                            "{key}: ConfigureParams sets {list} on the source ({}) and reboots it (allow_source_reboot)",
                            if group.starts_with("default.") { format!("a new parameter group pgshift-{}, as {group} cannot be changed", self.source_id()) } else { format!("parameter group {group}") }
                        ));
                    } else {
                        failures.push(format!(
                            "{key}: the source {} needs {list} in its parameter group {group}{}, then a reboot; set them and reboot, or set allow_source_reboot = true for pgshift to do it",
                            self.source_id(),
                            if group.starts_with("default.") { " (a default group cannot be changed: attach a custom one)" } else { "" }
                        ));
                    }
                } else if status == "pending-reboot" {
                    failures.push(format!(
                        "{key}: the source {}'s parameter group {group} is pending-reboot: reboot the source so that its settings apply",
                        self.source_id()
                    ));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        if src.deletion_protection() == Some(true) {
            notes.push(format!(
                "{key}: the source has deletion protection: DecommissionSource will not delete it (pgshift never turns deletion protection off)"
            ));
        }
        (failures, notes)
    }

    /// Sets `params` (name, value) on `group`, 20 per call, `pending-reboot`. A parameter
    /// the group refuses alone is left out. Returns the names left out.
    async fn set_parameters(
        &self,
        group: &str,
        params: &[(String, String)],
    ) -> Result<Vec<String>> {
        let c = self.client().await;
        let mk = |(n, v): &(String, String)| {
            Parameter::builder()
                .parameter_name(n)
                .parameter_value(v)
                .apply_method(ApplyMethod::PendingReboot)
                .build()
        };
        let mut refused = Vec::new();
        for chunk in params.chunks(20) {
            let all: Vec<Parameter> = chunk.iter().map(mk).collect();
            let r = self
                .call("ModifyDBParameterGroup", || {
                    c.modify_db_parameter_group()
                        .db_parameter_group_name(group)
                        .set_parameters(Some(all.clone()))
                        .send()
                })
                .await;
            match r {
                Ok(_) => {}
                Err(e)
                    if e.code == "InvalidParameterValue"
                        || e.code == "InvalidParameterCombination" =>
                {
                    // One at a time, to find which the family does not have.
                    for p in chunk {
                        let one = mk(p);
                        match self
                            .call("ModifyDBParameterGroup", || {
                                c.modify_db_parameter_group()
                                    .db_parameter_group_name(group)
                                    .parameters(one.clone())
                                    .send()
                            })
                            .await
                        {
                            Ok(_) => {}
                            Err(e)
                                if e.code == "InvalidParameterValue"
                                    || e.code == "InvalidParameterCombination" =>
                            {
                                refused.push(p.0.clone())
                            }
                            Err(e) => return Err(self.fail(e)),
                        }
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(refused)
    }

    /// Creates `group` in `family` unless it exists. Returns whether it was created.
    async fn ensure_group(&self, group: &str, family: &str, what: &str) -> Result<bool> {
        let c = self.client().await;
        match self
            .call("DescribeDBParameterGroups", || {
                c.describe_db_parameter_groups()
                    .db_parameter_group_name(group)
                    .send()
            })
            .await
        {
            Ok(out) => {
                if let Some(g) = out.db_parameter_groups().first() {
                    if g.description() != Some(GROUP_DESCRIPTION) {
                        return Err(DriverError::new(self.ctx(&format!(
                            "parameter group {group} exists and was not made by pgshift; set [target.provision] parameter_group to another name"
                        ))));
                    }
                    if g.db_parameter_group_family() != Some(family) {
                        return Err(DriverError::new(self.ctx(&format!(
                            "parameter group {group} is of family {}, not {family}",
                            g.db_parameter_group_family().unwrap_or("?")
                        ))));
                    }
                    return Ok(false);
                }
            }
            Err(e)
                if e.code == "DBParameterGroupNotFound"
                    || e.code == "DBParameterGroupNotFoundFault" => {}
            Err(e) => return Err(self.fail(e)),
        }
        let tag = Tag::builder().key(TAG).value(what).build();
        self.call("CreateDBParameterGroup", || {
            c.create_db_parameter_group()
                .db_parameter_group_name(group)
                .db_parameter_group_family(family)
                .description(GROUP_DESCRIPTION)
                .tags(tag.clone())
                .send()
        })
        .await
        .map_err(|e| self.fail(e))?;
        Ok(true)
    }

    /// Waits until `id` is `available`, polling with backoff (module docs).
    async fn wait_available(&self, id: &str) -> Result<DbInstance> {
        let start = tokio::time::Instant::now();
        let first = Duration::from_millis(self.spec.wait_poll_ms);
        let mut poll = first;
        let mut last = String::new();
        loop {
            let Some(i) = self.describe(id).await? else {
                return Err(DriverError::new(self.ctx(&format!(
                    "instance {id} disappeared while pgshift waited for it"
                ))));
            };
            let status = i.db_instance_status().unwrap_or_default().to_string();
            let (_, apply) = Self::group_of(&i);
            if status == "available" && apply != "applying" {
                return Ok(i);
            }
            if TERMINAL.contains(&status.as_str()) {
                return Err(DriverError::new(self.ctx(&format!(
                    "instance {id} is {status}; see its events in the RDS console (aws rds describe-events --source-identifier {id})"
                ))));
            }
            if status != last {
                tracing::info!(instance = id, status = %status, "waiting for the RDS instance to be available");
                last = status.clone();
            }
            if start.elapsed() > Duration::from_millis(self.spec.wait_timeout_ms) {
                return Err(DriverError::temporary(self.ctx(&format!(
                    "instance {id} still {status} after {} s (wait_timeout_ms)",
                    start.elapsed().as_secs()
                ))));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(first * 6);
        }
    }

    /// ProvisionTarget (module docs). `src` is a connection to the source database and
    /// `needs` the driver's RDS parameters. Returns what was done.
    pub async fn provision(&self, src: &PgClient, needs: &[(&str, &str)]) -> Result<String> {
        let mut done = Vec::new();
        let source = self.source().await?;
        let id = self.instance_id();
        let group = self.group_name();
        let family = Self::family(self.spec.major());
        let existing = self.describe(&id).await?;
        if let Some(i) = &existing {
            if !Self::ours(i) {
                return Err(DriverError::new(self.ctx(&format!(
                    "an instance {id} exists and was not made by pgshift (no tag {TAG}): delete it or set db_instance_id"
                ))));
            }
        }
        if existing.is_none() {
            let created = self.ensure_group(&group, &family, self.source_id()).await?;
            let (sgroup, _) = Self::group_of(&source);
            let mut params: Vec<(String, String)> =
                if sgroup.is_empty() || sgroup.starts_with("default.") {
                    Vec::new()
                } else {
                    self.user_parameters(&sgroup).await?
                };
            let carried = params.len();
            for (n, v) in needs {
                put(&mut params, n, v);
            }
            for (n, v) in &self.spec.parameters {
                put(&mut params, n, &v.to_plain());
            }
            let refused = self.set_parameters(&group, &params).await?;
            done.push(format!(
                "parameter group {group} ({family}) {}: {carried} custom parameter(s) of {sgroup} carried, {}{}",
                if created { "created" } else { "exists" },
                pairs(&needs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>()),
                if refused.is_empty() {
                    String::new()
                } else {
                    format!("; left out (not in {family}): {}", refused.join(", "))
                }
            ));
            self.create_instance(&source, &id, &group).await?;
            done.push(format!("instance {id} created"));
        } else {
            done.push(format!("instance {id} exists (made by pgshift)"));
        }
        let inst = self.wait_available(&id).await?;
        let endpoint = inst
            .endpoint()
            .map(|e| format!("{}:{}", e.address().unwrap_or("?"), e.port().unwrap_or(0)))
            .unwrap_or_else(|| "?".into());
        let ours = format!("{}:{}", self.server.host, self.server.port);
        done.push(if endpoint == ours {
            format!("available at {endpoint}")
        } else {
            format!("available at {endpoint}; pgshift connects to [target] {ours}")
        });
        let shape = super::roles::source_shape(src).await?;
        let tgt = crate::connect::connect(
            &self.server,
            "postgres",
            Duration::from_secs(10),
            &self.ctx(&format!("cannot connect to {ours} as {}", self.server.user)),
        )
        .await?;
        done.push(
            super::roles::copy_roles_and_database(src, &tgt, &self.server, &shape, &|w| {
                self.ctx(w)
            })
            .await?,
        );
        Ok(done.join("; "))
    }

    async fn create_instance(&self, s: &DbInstance, id: &str, group: &str) -> Result<()> {
        let c = self.client().await;
        let p = &self.spec;
        let mut tags: Vec<Tag> = s
            .tag_list()
            .iter()
            .filter(|t| t.key().is_some_and(|k| !k.starts_with("aws:") && k != TAG))
            .cloned()
            .collect();
        for (k, v) in &p.tags {
            tags.retain(|t| t.key() != Some(k.as_str()));
            tags.push(Tag::builder().key(k).value(v).build());
        }
        tags.push(Tag::builder().key(TAG).value(self.source_id()).build());
        let class = p
            .instance_class
            .clone()
            .or(s.db_instance_class().map(String::from));
        let storage_type = p
            .storage_type
            .clone()
            .or(s.storage_type().map(String::from));
        let iops = p.iops.or(s.iops());
        let throughput = p.storage_throughput.or(s.storage_throughput());
        let iops_ok = storage_type
            .as_deref()
            .is_some_and(|t| matches!(t, "io1" | "io2" | "gp3"));
        let sgs: Option<Vec<String>> = p.vpc_security_group_ids.clone().or_else(|| {
            let v: Vec<String> = s
                .vpc_security_groups()
                .iter()
                .filter_map(|g| g.vpc_security_group_id().map(String::from))
                .collect();
            (!v.is_empty()).then_some(v)
        });
        let subnet = p.db_subnet_group.clone().or(s
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name().map(String::from)));
        let encrypted = p.kms_key_id.is_some() || s.storage_encrypted() == Some(true);
        let kms = p.kms_key_id.clone().or(s.kms_key_id().map(String::from));
        let port = i32::from(self.server.port);
        let password = self.server.password.clone().unwrap_or_default();
        self.call("CreateDBInstance", || {
            c.create_db_instance()
                .db_instance_identifier(id)
                .engine("postgres")
                .engine_version(p.engine_version.clone().unwrap_or_default())
                .set_db_instance_class(class.clone())
                .set_allocated_storage(p.allocated_storage_gb.or(s.allocated_storage()))
                .set_storage_type(storage_type.clone())
                .set_iops(if iops_ok { iops } else { None })
                .set_storage_throughput(if storage_type.as_deref() == Some("gp3") {
                    throughput
                } else {
                    None
                })
                .set_db_subnet_group_name(subnet.clone())
                .set_vpc_security_group_ids(sgs.clone())
                .set_multi_az(p.multi_az.or(s.multi_az()))
                .set_backup_retention_period(
                    p.backup_retention_days.or(s.backup_retention_period()),
                )
                .storage_encrypted(encrypted)
                .set_kms_key_id(if encrypted { kms.clone() } else { None })
                .set_publicly_accessible(s.publicly_accessible())
                .set_auto_minor_version_upgrade(s.auto_minor_version_upgrade())
                .set_copy_tags_to_snapshot(s.copy_tags_to_snapshot())
                .db_parameter_group_name(group)
                .master_username(&self.server.user)
                .master_user_password(&password)
                .port(if port == 0 { 5432 } else { port })
                .deletion_protection(false)
                .set_tags(Some(tags.clone()))
                .send()
        })
        .await
        // A create that reached AWS and timed out may have worked: the next attempt of the
        // step finds the instance by name.
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// ConfigureParams on the target: `settings` (PostgreSQL names and values) in its
    /// parameter group (`wal_level = logical` becomes `rds.logical_replication = 1`), then
    /// a reboot and the wait. Returns what was done.
    pub async fn configure_target(&self, settings: &[(String, String)]) -> Result<String> {
        let id = self.instance_id();
        let params: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| {
                if k == "wal_level" {
                    ("rds.logical_replication".to_string(), "1".to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let refused = self.set_parameters(&self.group_name(), &params).await?;
        if !refused.is_empty() {
            return Err(DriverError::new(self.ctx(&format!(
                "parameter group {} refuses {}",
                self.group_name(),
                refused.join(", ")
            ))));
        }
        self.reboot(&id).await?;
        Ok(format!(
            "target instance {id}: {} set in {}, rebooted",
            pairs(&params),
            self.group_name()
        ))
    }

    async fn reboot(&self, id: &str) -> Result<()> {
        let c = self.client().await;
        self.wait_available(id).await?;
        self.call("RebootDBInstance", || {
            c.reboot_db_instance().db_instance_identifier(id).send()
        })
        .await
        .map_err(|e| self.fail(e))?;
        // A reboot shows `rebooting` at once on RDS; the wait covers it.
        self.wait_available(id).await?;
        Ok(())
    }

    /// ConfigureParams on the source: the driver's parameters (`needs`), only with
    /// `allow_source_reboot` (module docs). Returns what was done.
    pub async fn configure_source(&self, needs: &[(&str, &str)]) -> Result<String> {
        let src = self.source().await?;
        let (missing, group, status) = self.source_missing(&src, needs).await?;
        let sid = self.source_id().to_string();
        if missing.is_empty() {
            if status == "pending-reboot" {
                if !self.spec.allow_source_reboot {
                    return Err(DriverError::new(self.ctx(&format!(
                        "the source {sid}'s parameter group {group} is pending-reboot: reboot the source, then RESUME UPGRADE"
                    ))));
                }
                self.reboot(&sid).await?;
                return Ok(format!(
                    "source {sid} rebooted for {group}'s pending settings"
                ));
            }
            return Ok(format!(
                "source {sid} has the driver's parameters ({group})"
            ));
        }
        if !self.spec.allow_source_reboot {
            return Err(DriverError::new(self.ctx(&format!(
                "the source {sid} needs {} in its parameter group {group} and a reboot; set them and reboot, then RESUME UPGRADE, or set allow_source_reboot = true",
                pairs(&missing)
            ))));
        }
        let c = self.client().await;
        let mut target_group = group.clone();
        let mut attached = String::new();
        if group.is_empty() || group.starts_with("default.") {
            let family = src
                .engine_version()
                .and_then(|v| v.split('.').next())
                .map(|m| format!("postgres{m}"))
                .unwrap_or_default();
            target_group = format!("pgshift-{sid}");
            self.ensure_group(&target_group, &family, &sid).await?;
            attached = format!("; {target_group} attached in place of {group}");
        }
        let refused = self.set_parameters(&target_group, &missing).await?;
        if !refused.is_empty() {
            return Err(DriverError::new(self.ctx(&format!(
                "parameter group {target_group} refuses {}",
                refused.join(", ")
            ))));
        }
        if target_group != group {
            self.call("ModifyDBInstance", || {
                c.modify_db_instance()
                    .db_instance_identifier(&sid)
                    .db_parameter_group_name(&target_group)
                    .apply_immediately(true)
                    .send()
            })
            .await
            .map_err(|e| self.fail(e))?;
        }
        self.reboot(&sid).await?;
        Ok(format!(
            "source {sid}: {} set in {target_group}{attached}, rebooted",
            pairs(&missing)
        ))
    }

    /// ROLLBACK UPGRADE before the cutover: deletes the instance and the parameter group
    /// pgshift made (a final snapshot with `final_snapshot_on_rollback`). Returns what was
    /// done.
    pub async fn remove(&self) -> Result<String> {
        let c = self.client().await;
        let id = self.instance_id();
        let mut done = Vec::new();
        match self.describe(&id).await? {
            None => done.push(format!("no instance {id}")),
            Some(i) if !Self::ours(&i) => {
                done.push(format!("instance {id} was not made by pgshift: left alone"))
            }
            Some(i) => {
                if i.db_instance_status() != Some("deleting") {
                    self.wait_available(&id).await?;
                    let snap = self
                        .spec
                        .final_snapshot_on_rollback
                        .then(|| format!("{id}-pgshift-rollback-{}", unix_now()));
                    self.call("DeleteDBInstance", || {
                        c.delete_db_instance()
                            .db_instance_identifier(&id)
                            .skip_final_snapshot(snap.is_none())
                            .set_final_db_snapshot_identifier(snap.clone())
                            .send()
                    })
                    .await
                    .map_err(|e| self.fail(e))?;
                    done.push(match snap {
                        Some(s) => format!("instance {id} deleted (final snapshot {s})"),
                        None => format!("instance {id} deleted (no final snapshot)"),
                    });
                }
                self.wait_gone(&id).await?;
            }
        }
        let group = self.group_name();
        match self
            .call("DescribeDBParameterGroups", || {
                c.describe_db_parameter_groups()
                    .db_parameter_group_name(&group)
                    .send()
            })
            .await
        {
            Ok(out)
                if out
                    .db_parameter_groups()
                    .first()
                    .is_some_and(|g| g.description() == Some(GROUP_DESCRIPTION)) =>
            {
                self.call("DeleteDBParameterGroup", || {
                    c.delete_db_parameter_group()
                        .db_parameter_group_name(&group)
                        .send()
                })
                .await
                .map_err(|e| self.fail(e))?;
                done.push(format!("parameter group {group} deleted"));
            }
            Ok(_) => {}
            Err(e) if e.code.starts_with("DBParameterGroupNotFound") => {}
            Err(e) => return Err(self.fail(e)),
        }
        Ok(done.join("; "))
    }

    async fn wait_gone(&self, id: &str) -> Result<()> {
        let start = tokio::time::Instant::now();
        let first = Duration::from_millis(self.spec.wait_poll_ms);
        let mut poll = first;
        while self.describe(id).await?.is_some() {
            if start.elapsed() > Duration::from_millis(self.spec.wait_timeout_ms) {
                return Err(DriverError::temporary(self.ctx(&format!(
                    "instance {id} still being deleted after {} s",
                    start.elapsed().as_secs()
                ))));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(first * 6);
        }
        Ok(())
    }

    /// DecommissionSource: gives the target the source's deletion protection, then (with
    /// `delete`, i.e. `[upgrade] decommission_source`) a final snapshot of the source and
    /// its deletion; a source with deletion protection is refused. Returns what was done.
    pub async fn decommission(&self, delete: bool) -> Result<String> {
        let c = self.client().await;
        let sid = self.source_id().to_string();
        let id = self.instance_id();
        let mut done = Vec::new();
        let src = self.describe(&sid).await?;
        let protect = src.as_ref().and_then(|s| s.deletion_protection()) == Some(true);
        if protect {
            if let Some(t) = self.describe(&id).await? {
                if t.deletion_protection() != Some(true) {
                    self.call("ModifyDBInstance", || {
                        c.modify_db_instance()
                            .db_instance_identifier(&id)
                            .deletion_protection(true)
                            .apply_immediately(true)
                            .send()
                    })
                    .await
                    .map_err(|e| self.fail(e))?;
                    done.push(format!(
                        "deletion protection turned on for {id}, as the source had it"
                    ));
                }
            }
        }
        match (delete, src) {
            (false, Some(_)) => done.push(format!(
                "source instance {sid} left running (decommission_source = false)"
            )),
            (_, None) => done.push(format!("source instance {sid} is gone")),
            (true, Some(s)) if s.deletion_protection() == Some(true) => {
                return Err(DriverError::new(self.ctx(&format!(
                    "the source {sid} has deletion protection, and pgshift never turns it off: turn it off (aws rds modify-db-instance --db-instance-identifier {sid} --no-deletion-protection), then RESUME UPGRADE, or set decommission_source = false"
                ))))
            }
            (true, Some(s)) => {
                let snap = format!("{sid}-pgshift-final-{}", unix_now());
                if s.db_instance_status() != Some("deleting") {
                    self.wait_available(&sid).await?;
                    self.call("DeleteDBInstance", || {
                        c.delete_db_instance()
                            .db_instance_identifier(&sid)
                            .skip_final_snapshot(false)
                            .final_db_snapshot_identifier(&snap)
                            .send()
                    })
                    .await
                    .map_err(|e| self.fail(e))?;
                }
                self.wait_gone(&sid).await?;
                let snaps = self
                    .call("DescribeDBSnapshots", || {
                        c.describe_db_snapshots()
                            .db_instance_identifier(&sid)
                            .snapshot_type("manual")
                            .send()
                    })
                    .await
                    .map_err(|e| self.fail(e))?;
                let names: Vec<String> = snaps
                    .db_snapshots()
                    .iter()
                    .filter_map(|s| {
                        let n = s.db_snapshot_identifier()?;
                        n.starts_with(&format!("{sid}-pgshift-final-"))
                            .then(|| format!("{n} ({})", s.status().unwrap_or("?")))
                    })
                    .collect();
                if names.is_empty() {
                    return Err(DriverError::new(self.ctx(&format!(
                        "the source {sid} was deleted but no final snapshot {sid}-pgshift-final-* is listed"
                    ))));
                }
                done.push(format!(
                    "source instance {sid} deleted after its final snapshot {}",
                    names.join(", ")
                ));
            }
        }
        Ok(done.join("; "))
    }
}

fn describe(e: &Api) -> String {
    if e.code.is_empty() {
        e.message.clone()
    } else {
        format!("{} ({})", e.message, e.code)
    }
}

fn put(params: &mut Vec<(String, String)>, name: &str, value: &str) {
    params.retain(|(n, _)| n != name);
    params.push((name.to_string(), value.to_string()));
}

fn pairs(p: &[(String, String)]) -> String {
    p.iter()
        .map(|(n, v)| format!("{n} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
