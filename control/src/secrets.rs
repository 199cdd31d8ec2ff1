//! Passwords from AWS Secrets Manager (`password_secret`, `server_password_secret`).
//!
//! At start, [`resolve`] reads every secret the configuration names (`GetSecretValue`,
//! region from the ARN, else the usual AWS environment; endpoint from `AWS_ENDPOINT_URL` or
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER` as the SDK reads them) and puts each value in the
//! password it stands for, so every connection pgshift makes uses it. A secret string that
//! is a JSON object with a `password` (the RDS-managed master secret,
//! `{"username": ..., "password": ...}`) gives that; any other string is the password.
//!
//! After a rotation the value held is stale: a login that fails with it (SQLSTATE 28P01)
//! calls [`refresh`], which reads the secret again (at most once a second per secret) and
//! says whether it changed; the caller then retries with [`current`]. Values are held
//! only in memory and never logged, nor put in an error: errors name the secret id.

use config::Config;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The value last read of each secret id, and when.
static HELD: Mutex<Option<HashMap<String, (String, Instant)>>> = Mutex::new(None);

/// Reads once more than this apart at most.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn held() -> std::sync::MutexGuard<'static, Option<HashMap<String, (String, Instant)>>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value held for `id` (read by [`resolve`] or [`refresh`]).
pub fn current(id: &str) -> Option<String> {
    held().as_ref()?.get(id).map(|(v, _)| v.clone())
}

/// The password in a secret string (module docs).
pub fn password_of(secret: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(secret) {
        Ok(serde_json::Value::Object(m)) => match m.get("password") {
            Some(serde_json::Value::String(p)) => p.clone(),
            _ => secret.to_string(),
        },
        _ => secret.to_string(),
    }
}

/// Reads secret `id`. Errors name the id and the AWS error code, never a value.
#[cfg(feature = "rds")]
pub async fn fetch(id: &str) -> Result<String, String> {
    use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    // arn:<partition>:secretsmanager:<region>:<account>:secret:<name>
    if let Some(region) = id
        .strip_prefix("arn:")
        .and_then(|r| r.split(':').nth(2))
        .filter(|r| !r.is_empty())
    {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let client = aws_sdk_secretsmanager::Client::new(&loader.load().await);
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some(code) => format!("secret {id}: {code}: {}", e.message().unwrap_or("refused")),
            None => format!("secret {id}: {}", DisplayErrorContext(&e)),
        })?;
    let text = out.secret_string().ok_or_else(|| {
        format!("secret {id} has no SecretString (a binary secret): store the password as a string")
    })?;
    Ok(password_of(text))
}

/// Without the `rds` feature there is no AWS SDK: every secret fails.
#[cfg(not(feature = "rds"))]
pub async fn fetch(id: &str) -> Result<String, String> {
    Err(format!(
        "secret {id}: this pgshift was built without the `rds` feature (AWS SDK)"
    ))
}

/// Holds `value` for `id`, read at `at`.
fn hold_at(id: &str, value: String, at: Instant) {
    held()
        .get_or_insert_with(HashMap::new)
        .insert(id.to_string(), (value, at));
}

fn hold(id: &str, value: String) {
    hold_at(id, value, Instant::now());
}

/// Reads every secret `cfg` names and fills the passwords they stand for. Returns the keys
/// filled (`source.password`, `users[0].server_password`...); errors name each key and
/// secret that could not be read, all at once.
pub async fn resolve(cfg: &mut Config) -> Result<Vec<String>, String> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (side, s) in [("source", &cfg.source), ("target", &cfg.target)] {
        if let Some(id) = &s.password_secret {
            wanted.push((format!("{side}.password"), id.clone()));
        }
    }
    for (i, u) in cfg.users.iter().enumerate() {
        if let Some(id) = &u.password_secret {
            wanted.push((format!("users[{i}].password"), id.clone()));
        }
        if let Some(id) = &u.server_password_secret {
            wanted.push((format!("users[{i}].server_password"), id.clone()));
        }
    }
    let mut values: HashMap<String, String> = HashMap::new();
    let mut errors = Vec::new();
    for (key, id) in &wanted {
        if values.contains_key(id) {
            continue;
        }
        match fetch(id).await {
            Ok(v) => {
                // The first failed login may re-read at once: the limit is between re-reads.
                let at = Instant::now()
                    .checked_sub(REFRESH_EVERY)
                    .unwrap_or_else(Instant::now);
                hold_at(id, v.clone(), at);
                values.insert(id.clone(), v);
            }
            Err(e) => errors.push(format!("{key}_secret: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let v = |id: &Option<String>| id.as_ref().and_then(|i| values.get(i).cloned());
    if let Some(p) = v(&cfg.source.password_secret) {
        cfg.source.password = Some(p);
    }
    if let Some(p) = v(&cfg.target.password_secret) {
        cfg.target.password = Some(p);
    }
    for u in &mut cfg.users {
        if let Some(p) = v(&u.password_secret) {
            u.password = Some(p);
        }
        if let Some(p) = v(&u.server_password_secret) {
            u.server_password = Some(p);
        }
    }
    Ok(wanted.into_iter().map(|(k, _)| k).collect())
}

/// After a failed login with secret `id`'s value: reads it again, unless it was read less
/// than 1 s ago. Returns the new value when it changed; `None` when it did not, when it
/// was read too recently, or when it cannot be read (logged, by id only).
pub async fn refresh(id: &str) -> Option<String> {
    let (old, at) = held().as_ref()?.get(id).cloned()?;
    if at.elapsed() < REFRESH_EVERY {
        return None;
    }
    hold(id, old.clone());
    match fetch(id).await {
        Ok(v) if v != old => {
            tracing::info!(
                secret = id,
                "secret rotated: the new value is used from now on"
            );
            hold(id, v.clone());
            Some(v)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read the secret after a failed login");
            None
        }
    }
}
