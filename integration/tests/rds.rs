//! The `rds` provider (issue 12, item 1) against moto in server mode, with a proxy of the
//! test's own in front of it for what moto does not model (throttling, capacity errors,
//! instances that stay `creating`, a call that never answers). moto runs no database: the
//! data path uses the harness's local servers in place of the endpoints moto reports.
//!
//! Skipped, and saying so, where moto is not installed (scripts/test installs it; in CI a
//! missing moto fails).

use integration::load::{missing_ids, Writer};
use integration::moto::{Fault, Moto};
use integration::stack::{field, ACKED_TABLE_SQL};
use integration::{Stack, StackOptions};
use std::time::{Duration, Instant};

/// A source instance `orders` like a production one: custom parameter group, gp3 with
/// IOPS, Multi-AZ, encrypted, a subnet group and a security group, tags. Without
/// `rds.logical_replication` unless `logical`. Returns the security group id.
fn make_source(moto: &Moto, logical: bool, protected: bool) -> String {
    let out = moto
        .python(&format!(
            r#"
ec2 = boto3.client('ec2', **kw)
vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']
s1 = ec2.create_subnet(VpcId=vpc, CidrBlock='10.0.1.0/24', AvailabilityZone='us-east-1a')['Subnet']['SubnetId']
s2 = ec2.create_subnet(VpcId=vpc, CidrBlock='10.0.2.0/24', AvailabilityZone='us-east-1b')['Subnet']['SubnetId']
sg = ec2.create_security_group(GroupName='orders-db', Description='db', VpcId=vpc)['GroupId']
rds.create_db_subnet_group(DBSubnetGroupName='orders-subnets', DBSubnetGroupDescription='db', SubnetIds=[s1, s2])
rds.create_db_parameter_group(DBParameterGroupName='orders-params', DBParameterGroupFamily='postgres13', Description='orders')
params = [{{'ParameterName': 'work_mem', 'ParameterValue': '8192', 'ApplyMethod': 'immediate'}},
          {{'ParameterName': 'log_min_duration_statement', 'ParameterValue': '500', 'ApplyMethod': 'immediate'}}]
if {logical}:
    params.append({{'ParameterName': 'rds.logical_replication', 'ParameterValue': '1', 'ApplyMethod': 'pending-reboot'}})
rds.modify_db_parameter_group(DBParameterGroupName='orders-params', Parameters=params)
rds.create_db_instance(DBInstanceIdentifier='orders', Engine='postgres', EngineVersion='13.15',
    DBInstanceClass='db.m6g.large', AllocatedStorage=100, StorageType='gp3', Iops=3000,
    MasterUsername='postgres', MasterUserPassword='source-Secret-1', MultiAZ=True,
    BackupRetentionPeriod=7, DBParameterGroupName='orders-params', DBSubnetGroupName='orders-subnets',
    VpcSecurityGroupIds=[sg], StorageEncrypted=True, KmsKeyId='alias/orders',
    DeletionProtection={protected}, Tags=[{{'Key': 'team', 'Value': 'orders'}}])
print(sg)
"#,
            logical = if logical { "True" } else { "False" },
            protected = if protected { "True" } else { "False" },
        ))
        .expect("source instance in moto");
    out.trim().to_string()
}

fn rds_config(moto: &Moto, extra: &str) -> String {
    format!(
        "[target.provision]\nprovider = \"rds\"\nsource_db_instance_id = \"orders\"\nengine_version = \"17.4\"\n\
         endpoint_url = \"{}\"\nregion = \"us-east-1\"\nwait_poll_ms = 50\napi_backoff_ms = 50\napi_attempts = 3\n\
         tags = {{ upgrade = \"2026-12\" }}\nparameters = {{ \"rds.force_ssl\" = 1 }}\n{extra}\n",
        moto.endpoint()
    )
}

fn stack(moto: &Moto, upgrade: &str, provision: &str) -> Stack {
    Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config: format!("{upgrade}\n{}", rds_config(moto, provision)),
        env: moto.env(),
        ..Default::default()
    })
    .expect("stack")
}

fn tail(stack: &Stack) -> String {
    integration::tail_file(&stack.pgshift.log_path(), 40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_plan_makes_the_target_like_the_source_and_retires_the_source() {
    let Some(moto) = integration::moto::start_or_skip("rds_plan").await else {
        return;
    };
    let sg = make_source(&moto, false, false);
    // Two throttled CreateDBInstance calls, then the instance stays `creating` for 4 polls.
    moto.fault(
        "CreateDBInstance",
        None,
        2,
        Fault::Error {
            code: "Throttling".into(),
            message: "Rate exceeded".into(),
        },
    );
    moto.fault(
        "DescribeDBInstances",
        Some("orders-pg17"),
        4,
        Fault::Status("creating".into()),
    );
    let stack = stack(
        &moto,
        "[upgrade]\nshift = [100]\nshift_hold_ms = 300\npoll_interval_ms = 100\ndecommission_source = true\n\n[health]\ninterval_ms = 100\nwindow_ms = 500\nmin_transactions = 0\n",
        "allow_source_reboot = true\n",
    );
    stack.source.psql("app", ACKED_TABLE_SQL).unwrap();
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(5));
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = stack.status().await.unwrap();
        if field(&s, "phase") == "done" {
            break;
        }
        assert!(
            !matches!(field(&s, "state").as_str(), "error" | "paused" | "alert")
                && Instant::now() < deadline,
            "plan stopped: {s:?}\n{}",
            tail(&stack)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = writer.stop().await;
    assert!(
        written.acked.len() > 20 && written.errors.is_empty(),
        "{} acked, errors {:?}",
        written.acked.len(),
        written.errors
    );
    let missing = missing_ids(&stack.target, "app", "acked", &written.acked).unwrap();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");

    // The target instance: the source's settings, the new version, pgshift's group and tag.
    let t = moto.instance("orders-pg17").unwrap();
    assert!(!t.is_null(), "no target instance");
    for (k, want) in [
        ("DBInstanceClass", serde_json::json!("db.m6g.large")),
        ("EngineVersion", serde_json::json!("17.4")),
        ("StorageType", serde_json::json!("gp3")),
        ("AllocatedStorage", serde_json::json!(100)),
        ("Iops", serde_json::json!(3000)),
        ("MultiAZ", serde_json::json!(true)),
        ("BackupRetentionPeriod", serde_json::json!(7)),
        ("StorageEncrypted", serde_json::json!(true)),
        ("MasterUsername", serde_json::json!(stack.target.superuser)),
    ] {
        assert_eq!(t[k], want, "{k} of the target: {t}");
    }
    assert!(
        t["KmsKeyId"].as_str().unwrap_or("").contains("orders"),
        "{t}"
    );
    assert_eq!(
        t["DBSubnetGroup"]["DBSubnetGroupName"], "orders-subnets",
        "{t}"
    );
    assert_eq!(
        t["VpcSecurityGroups"][0]["VpcSecurityGroupId"],
        sg.as_str(),
        "{t}"
    );
    assert_eq!(
        t["DBParameterGroups"][0]["DBParameterGroupName"], "pgshift-orders-pg17",
        "{t}"
    );
    let tags: Vec<(String, String)> = t["TagList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["Key"].as_str().unwrap().into(),
                x["Value"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("team", "orders"),
        ("upgrade", "2026-12"),
        ("pgshift:provisioned-for", "orders"),
    ] {
        assert!(
            tags.contains(&(want.0.into(), want.1.into())),
            "tag {want:?} missing: {tags:?}"
        );
    }
    // Its parameters: the source's custom ones, the driver's, the configured ones.
    let p = moto.parameters("pgshift-orders-pg17").unwrap();
    for (k, v) in [
        ("work_mem", "8192"),
        ("log_min_duration_statement", "500"),
        ("rds.logical_replication", "1"),
        ("rds.force_ssl", "1"),
    ] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:?}");
    }
    // The source got rds.logical_replication and a reboot (allow_source_reboot).
    let sp = moto.parameters("orders-params").unwrap();
    assert_eq!(
        sp.get("rds.logical_replication").map(String::as_str),
        Some("1"),
        "{sp:?}"
    );
    let seen = moto.seen();
    let reboots: Vec<_> = seen
        .iter()
        .filter(|s| s.action == "RebootDBInstance")
        .map(|s| {
            s.params
                .get("DBInstanceIdentifier")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(reboots, vec!["orders".to_string()], "reboots: {reboots:?}");
    // Throttling: two refusals, then the create; the waits polled through `creating`.
    assert_eq!(moto.count("CreateDBInstance"), 3);
    let polls = seen
        .iter()
        .filter(|s| {
            s.action == "DescribeDBInstances"
                && s.params.get("DBInstanceIdentifier").map(String::as_str) == Some("orders-pg17")
        })
        .count();
    // Four answers `creating`, then `available`.
    assert!(polls >= 5, "{polls} DescribeDBInstances of the target");
    // DecommissionSource: a final snapshot, then the source deleted.
    assert!(
        moto.instance("orders").unwrap().is_null(),
        "source still exists"
    );
    let snaps = moto
        .python("print(json.dumps([s['DBSnapshotIdentifier'] for s in rds.describe_db_snapshots(SnapshotType='manual')['DBSnapshots']]))")
        .unwrap();
    assert!(snaps.contains("orders-pgshift-final-"), "{snaps}");
    let history = stack.history_lines().await.unwrap().join("\n");
    assert!(
        history.contains("pgshift connects to [target]")
            && history.contains("parameter group pgshift-orders-pg17 (postgres17) created")
            && history.contains("deleted after its final snapshot orders-pgshift-final-"),
        "{history}"
    );
    // No request in the log (the harness's password, `postgres`, is also a user and a
    // database name, so the check is for the request's fields).
    let log = stack.pgshift.log();
    assert!(
        !log.contains("MasterUserPassword") && !log.contains("master_user_password"),
        "a CreateDBInstance request is in the log"
    );
    assert!(
        log.contains("RDS API call refused; retrying"),
        "{}",
        tail(&stack)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_capacity_error_is_clear_then_resume_and_rollback_deletes_what_pgshift_made() {
    let Some(moto) = integration::moto::start_or_skip("rds_capacity").await else {
        return;
    };
    make_source(&moto, true, true);
    moto.fault(
        "CreateDBInstance",
        None,
        100,
        Fault::Error {
            code: "InsufficientDBInstanceCapacity".into(),
            message: "Cannot create a database instance because there is no capacity for db.m6g.large in us-east-1a".into(),
        },
    );
    let stack = stack(
        &moto,
        "[upgrade]\napprove_cutover = true\npoll_interval_ms = 100\nmax_attempts = 1\n",
        "final_snapshot_on_rollback = true\n",
    );
    stack.source.psql("app", ACKED_TABLE_SQL).unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let s = stack
        .wait_for("the failed step", Duration::from_secs(60), |s| {
            matches!(field(s, "state").as_str(), "error" | "paused" | "failed")
        })
        .await;
    let shown = format!("{s:?}");
    assert!(
        shown.contains("InsufficientDBInstanceCapacity") && shown.contains("instance_class"),
        "{shown}\n{}",
        tail(&stack)
    );
    assert_eq!(moto.count("CreateDBInstance"), 3, "api_attempts = 3");
    assert!(moto.instance("orders-pg17").unwrap().is_null());

    // Capacity back: RESUME UPGRADE provisions, the plan waits at the approval.
    moto.clear_faults();
    stack.admin("RESUME UPGRADE").await.expect("RESUME UPGRADE");
    stack
        .wait_state("waiting", Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!moto.instance("orders-pg17").unwrap().is_null());
    // Deletion protection of the source is not copied at create (a rollback must be able
    // to delete the target), and no reboot was needed: the source had the parameter.
    assert_eq!(
        moto.instance("orders-pg17").unwrap()["DeletionProtection"],
        false
    );
    assert_eq!(moto.count("RebootDBInstance"), 0);

    stack
        .admin("ROLLBACK UPGRADE")
        .await
        .expect("ROLLBACK UPGRADE");
    stack
        .wait_for("rolled back", Duration::from_secs(60), |s| {
            field(s, "phase") == "rolled_back"
        })
        .await;
    assert!(
        moto.instance("orders-pg17").unwrap().is_null(),
        "target not deleted"
    );
    let groups = moto
        .python("print(json.dumps([g['DBParameterGroupName'] for g in rds.describe_db_parameter_groups()['DBParameterGroups']]))")
        .unwrap();
    assert!(!groups.contains("pgshift-orders-pg17"), "{groups}");
    assert!(groups.contains("orders-params"), "{groups}");
    assert!(
        !moto.instance("orders").unwrap().is_null(),
        "source touched"
    );
    let snaps = moto
        .python("print(json.dumps([s['DBSnapshotIdentifier'] for s in rds.describe_db_snapshots()['DBSnapshots']]))")
        .unwrap();
    assert!(snaps.contains("orders-pg17-pgshift-rollback-"), "{snaps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_kill9_in_create_resumes_without_a_second_instance() {
    let Some(moto) = integration::moto::start_or_skip("rds_kill9").await else {
        return;
    };
    make_source(&moto, true, false);
    moto.fault("CreateDBInstance", None, 1, Fault::Hold);
    let mut stack = stack(
        &moto,
        "[upgrade]\napprove_cutover = true\npoll_interval_ms = 100\n",
        "",
    );
    stack.source.psql("app", ACKED_TABLE_SQL).unwrap();
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.count("CreateDBInstance") == 0 {
        assert!(
            Instant::now() < deadline,
            "no CreateDBInstance\n{}",
            tail(&stack)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The call reached moto (the instance exists), its answer never came.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.pgshift.kill9();
    assert!(!moto.instance("orders-pg17").unwrap().is_null());
    stack.pgshift.restart().expect("restart");
    stack
        .wait_state("waiting", Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        moto.count("CreateDBInstance"),
        1,
        "a second CreateDBInstance"
    );
    let n = moto
        .python("print(len(rds.describe_db_instances()['DBInstances']))")
        .unwrap();
    assert_eq!(n.trim(), "2", "source and one target");
    let history = stack.history_lines().await.unwrap().join("\n");
    assert!(
        history.contains("instance orders-pg17 exists (made by pgshift)"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_preflight_names_the_source_parameters_and_a_taken_name() {
    let Some(moto) = integration::moto::start_or_skip("rds_preflight").await else {
        return;
    };
    make_source(&moto, false, true);
    // An instance of the target's name that pgshift did not make.
    moto.python("rds.create_db_instance(DBInstanceIdentifier='orders-pg17', Engine='postgres', EngineVersion='17.4', DBInstanceClass='db.t4g.micro', AllocatedStorage=20, MasterUsername='x', MasterUserPassword='y-Secret-99')").unwrap();
    let stack = stack(&moto, "[upgrade]\napprove_cutover = true\n", "");
    let e = stack
        .admin("START UPGRADE")
        .await
        .expect_err("preflight refuses")
        .to_string();
    for want in [
        "the source orders needs rds.logical_replication = 1 in its parameter group orders-params",
        "set allow_source_reboot = true",
        "an instance orders-pg17 exists and was not made by pgshift",
    ] {
        assert!(e.contains(want), "missing `{want}` in: {e}");
    }
    assert_eq!(moto.count("CreateDBInstance"), 0);
    assert_eq!(moto.count("ModifyDBParameterGroup"), 0);
    assert_eq!(moto.count("CreateDBParameterGroup"), 0);
}

/// Passwords from Secrets Manager (issue 12, item 2): the target's control-plane password
/// from an RDS-managed master secret (JSON), the application's backend password from a
/// plain secret; a rotation of the latter is picked up at the next failed login; a secret
/// that cannot be read stops start-up naming the key and the secret, never a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_passwords_are_read_at_start_and_after_a_rotation() {
    let Some(moto) = integration::moto::start_or_skip("secrets").await else {
        return;
    };
    let mut stack = Stack::start(StackOptions {
        pgbench_scale: 0,
        extra_config: "[upgrade]\napprove_cutover = true\npoll_interval_ms = 100\n".into(),
        env: moto.env(),
        ..Default::default()
    })
    .expect("stack");
    stack.source.psql("app", ACKED_TABLE_SQL).unwrap();
    let (tuser, tpw) = (
        stack.target.superuser.clone(),
        stack.target.password.clone(),
    );
    moto.python(&format!(
        "sm.create_secret(Name='rds!db-orders-pg17', SecretString=json.dumps({{'username': {tuser:?}, 'password': {tpw:?}}}))\n\
         sm.create_secret(Name='pgshift/app', SecretString={:?})",
        integration::stack::APP_PASSWORD
    ))
    .unwrap();
    let arn = moto
        .python("print(sm.describe_secret(SecretId='rds!db-orders-pg17')['ARN'])")
        .unwrap()
        .trim()
        .to_string();
    // [target] password becomes password_secret (the ARN); the app user gets
    // server_password_secret.
    let text = std::fs::read_to_string(&stack.pgshift.config_path).unwrap();
    let target_at = text.find("[target]").unwrap();
    let pw_line = format!("password = \"{tpw}\"\n");
    let at = target_at + text[target_at..].find(&pw_line).unwrap();
    let mut edited = format!(
        "{}password_secret = \"{arn}\"\n{}",
        &text[..at],
        &text[at + pw_line.len()..]
    );
    let app = format!("\nname = \"{}\"\n", integration::stack::APP_USER);
    edited = edited.replacen(
        &app,
        &format!("{app}server_password_secret = \"pgshift/app\"\n"),
        1,
    );
    std::fs::write(&stack.pgshift.config_path, &edited).unwrap();
    let check = std::process::Command::new(&stack.pgshift.bin)
        .args(["check", "--config"])
        .arg(&stack.pgshift.config_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{edited}",
        String::from_utf8_lossy(&check.stderr)
    );
    let endpoint = (
        "AWS_ENDPOINT_URL_SECRETS_MANAGER".to_string(),
        format!("http://127.0.0.1:{}", moto.port),
    );
    stack.pgshift.env.push(endpoint.clone());
    stack.pgshift.restart().expect("restart with secrets");
    assert!(
        stack
            .pgshift
            .log()
            .contains("passwords read from AWS Secrets Manager"),
        "{}",
        tail(&stack)
    );

    // The application's backend login uses the secret.
    let c = stack.app_client().await.expect("app through pgshift");
    c.batch_execute("INSERT INTO acked (id) VALUES (1)")
        .await
        .unwrap();
    // The control plane logs in to the target with the master secret's password.
    stack.admin("START UPGRADE").await.expect("START UPGRADE");
    stack
        .wait_state("waiting", Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Rotation: the role's password and the secret change; a new session's backend login
    // fails once with the old value, pgshift reads the secret again and logs in.
    let rotated = "rotated-Secret-7";
    stack
        .source
        .psql("postgres", &format!("ALTER ROLE app PASSWORD '{rotated}'"))
        .unwrap();
    moto.python(&format!(
        "sm.put_secret_value(SecretId='pgshift/app', SecretString={rotated:?})"
    ))
    .unwrap();
    let c2 = stack.app_client().await.expect("app after the rotation");
    c2.batch_execute("INSERT INTO acked (id) VALUES (2)")
        .await
        .unwrap();
    let log = stack.pgshift.log();
    assert!(log.contains("secret rotated"), "{}", tail(&stack));
    // (The target's harness password, `postgres`, is also a user name: only the rotated
    // value can be looked for.)
    assert!(!log.contains(rotated), "the rotated password is in the log");
    stack
        .admin("ROLLBACK UPGRADE")
        .await
        .expect("ROLLBACK UPGRADE");

    // A secret that does not exist: start-up stops, naming the key and the secret.
    stack.pgshift.stop();
    std::fs::write(
        &stack.pgshift.config_path,
        edited.replace("pgshift/app", "pgshift/missing"),
    )
    .unwrap();
    let out = std::process::Command::new(&stack.pgshift.bin)
        .args(["serve", "--config"])
        .arg(&stack.pgshift.config_path)
        .envs(moto.env())
        .env(&endpoint.0, &endpoint.1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "users[0].server_password_secret: secret pgshift/missing: ResourceNotFoundException"
        ),
        "{err}"
    );
}
