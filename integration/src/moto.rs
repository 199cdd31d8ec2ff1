//! moto in server mode (PyPI `moto[server]`) standing in for the AWS APIs, behind a small
//! HTTP proxy of the test's own that records every API action pgshift calls and injects
//! what moto does not model: throttling, `InsufficientDBInstanceCapacity`, instances that
//! stay `creating` for a while, and a response that never comes (to kill pgshift in the
//! middle of a call).
//!
//! moto runs no database: a test's data path uses local servers standing in for the
//! endpoints that moto reports.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a matching request instead of passing it on unchanged.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this AWS error (HTTP 400, or 503 for `Throttling`), never reaching moto.
    Error { code: String, message: String },
    /// Pass on; in the response, `<DBInstanceStatus>available` becomes this status.
    Status(String),
    /// Pass on to moto (so the call takes effect) and never answer.
    Hold,
}

/// One fault for the next `times` requests of `action` (and of `instance`, when given: the
/// request's `DBInstanceIdentifier`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: String,
    pub instance: Option<String>,
    pub times: usize,
    pub fault: Fault,
}

/// One request the proxy saw: the action and its form parameters.
#[derive(Debug, Clone)]
pub struct Seen {
    pub action: String,
    pub params: HashMap<String, String>,
}

#[derive(Default)]
struct Shared {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

/// A moto server and the fault proxy in front of it. Dropped: both stop.
pub struct Moto {
    child: Child,
    /// moto's own port (tests' setup scripts talk to it directly).
    pub port: u16,
    /// The proxy's port: what pgshift is given as `endpoint_url`.
    pub proxy_port: u16,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

/// The Python that has moto: the drivers' venv (scripts/prereqs installs moto there), else
/// `python3`.
pub fn python_bin() -> std::path::PathBuf {
    let venv = crate::cache_dir().join("drivers/venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// Whether moto's server can be imported by [`python_bin`].
pub fn available() -> bool {
    Command::new(python_bin())
        .args(["-c", "import moto.server, boto3, flask"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `None` (and a line saying so) when moto is not installed outside CI; in CI (`CI` set)
/// its absence fails the test, as scripts/test installs it.
pub async fn start_or_skip(test: &str) -> Option<Moto> {
    if !available() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: moto[server] is not installed (scripts/test installs it with pip)");
        }
        eprintln!("SKIPPED {test}: moto[server] is not installed (pip install 'moto[server]')");
        return None;
    }
    Some(Moto::start().await.expect("starting moto"))
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free loopback port and the proxy.
    pub async fn start() -> Result<Moto> {
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!("pgshift-moto-{port}.log"));
        let child = Command::new(python_bin())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting python3 -m moto.server")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "moto did not listen on {port} within 30 s: {}",
                    crate::tail_file(&log, 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy_port = listener.local_addr()?.port();
        let shared: Arc<Mutex<Shared>> = Default::default();
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s2.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, port, s).await;
                });
            }
        });
        Ok(Moto {
            child,
            port,
            proxy_port,
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:<proxy port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// The environment pgshift needs to reach moto: fake keys, a region, no instance
    /// metadata lookups.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Adds a fault rule.
    pub fn fault(&self, action: &str, instance: Option<&str>, times: usize, fault: Fault) {
        self.shared.lock().unwrap().rules.push(Rule {
            action: action.into(),
            instance: instance.map(String::from),
            times,
            fault,
        });
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.lock().unwrap().rules.clear();
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// How many requests of `action` the proxy saw.
    pub fn count(&self, action: &str) -> usize {
        self.seen().iter().filter(|s| s.action == action).count()
    }

    /// Runs a Python script with `rds` and `sm` (Secrets Manager) boto3 clients on moto
    /// (directly, not through the proxy); returns its stdout. `json` is imported.
    pub fn python(&self, script: &str) -> Result<String> {
        let prelude = format!(
            "import boto3, json\nkw = dict(endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nrds = boto3.client('rds', **kw)\nsm = boto3.client('secretsmanager', **kw)\n",
            self.port
        );
        let out = Command::new(python_bin())
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .stdin(Stdio::null())
            .output()
            .context("running python3")?;
        if !out.status.success() {
            bail!(
                "python script failed: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The JSON moto gives for DescribeDBInstances of `id` (`null` when there is none).
    pub fn instance(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.python(&format!(
            "r = [i for i in rds.describe_db_instances()['DBInstances'] if i['DBInstanceIdentifier'] == {id:?}]\nprint(json.dumps(r[0] if r else None, default=str))"
        ))?;
        Ok(serde_json::from_str(out.trim())?)
    }

    /// The custom (`Source=user`) parameters of a parameter group: name → value.
    pub fn parameters(&self, group: &str) -> Result<HashMap<String, String>> {
        let out = self.python(&format!(
            "p = rds.describe_db_parameters(DBParameterGroupName={group:?}, Source='user')['Parameters']\nprint(json.dumps({{x['ParameterName']: x.get('ParameterValue') for x in p}}))"
        ))?;
        Ok(serde_json::from_str(out.trim())?)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((
                k.to_string(),
                v.replace("%2F", "/").replace("%3A", ":").replace('+', " "),
            ))
        })
        .collect()
}

/// Reads one HTTP/1.1 message (head and a Content-Length body); `None` at EOF.
async fn read_message(conn: &mut TcpStream) -> Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

/// The head without `Connection` and `Content-Length`, ending before the blank line.
fn strip(head: &str) -> String {
    head.trim_end()
        .lines()
        .filter(|l| {
            let k = l.split(':').next().unwrap_or("").trim();
            !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("content-length")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn message(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        strip(head),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn serve(mut conn: TcpStream, moto: u16, shared: Arc<Mutex<Shared>>) -> Result<()> {
    let Some((head, body)) = read_message(&mut conn).await? else {
        return Ok(());
    };
    let params = form(&body);
    let action = params.get("Action").cloned().unwrap_or_default();
    let instance = params.get("DBInstanceIdentifier").cloned();
    let fault = {
        let mut g = shared.lock().unwrap();
        g.seen.push(Seen {
            action: action.clone(),
            params: params.clone(),
        });
        let hit = g.rules.iter_mut().find(|r| {
            r.times > 0 && r.action == action && (r.instance.is_none() || r.instance == instance)
        });
        hit.map(|r| {
            r.times -= 1;
            r.fault.clone()
        })
    };
    if let Some(Fault::Error {
        code,
        message: text,
    }) = &fault
    {
        let status = if code == "Throttling" {
            "503 Service Unavailable"
        } else {
            "400 Bad Request"
        };
        let xml = format!(
            "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{text}</Message></Error><RequestId>pgshift-test</RequestId></ErrorResponse>"
        );
        let head = format!("HTTP/1.1 {status}\r\nContent-Type: text/xml\r\n");
        conn.write_all(&message(&head, xml.as_bytes())).await?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", moto)).await?;
    up.write_all(&message(&head, &body)).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    if let Some(Fault::Hold) = fault {
        // The call took effect; its answer never comes.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }
    let Some(i) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        conn.write_all(&resp).await?;
        return Ok(());
    };
    let rhead = String::from_utf8_lossy(&resp[..i + 4]).into_owned();
    let mut rbody = resp[i + 4..].to_vec();
    if let Some(Fault::Status(s)) = fault {
        let text = String::from_utf8_lossy(&rbody).replace(
            "<DBInstanceStatus>available</DBInstanceStatus>",
            &format!("<DBInstanceStatus>{s}</DBInstanceStatus>"),
        );
        rbody = text.into_bytes();
    }
    conn.write_all(&message(&rhead, &rbody)).await?;
    Ok(())
}
