//! A small HTTP/1.1 client for pgshift's HTTP server (`[http] listen`): one request per
//! connection, `Connection: close`, the whole answer read to EOF.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP answer: status code, header lines (`name: value`, as sent) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The value of the first header `name` (case-insensitive), or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// `Content-Type`, or `""`.
    pub fn content_type(&self) -> &str {
        self.header("content-type")
    }

    /// The body as JSON (the error names the body).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("answer {} is not JSON: {}", self.status, self.body))
    }
}

/// One request `method path` to `host:port` with the extra `headers` and `body` (a
/// `Content-Length` is always sent). Chunked answers are refused (pgshift sends lengths).
pub fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpAnswer> {
    let mut s = TcpStream::connect((host, port))
        .with_context(|| format!("connecting to the HTTP port {host}:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes())
        .with_context(|| format!("sending {method} {path}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let text = String::from_utf8(raw).map_err(|_| anyhow!("{method} {path}: answer not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let answer = HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    };
    if answer
        .header("transfer-encoding")
        .eq_ignore_ascii_case("chunked")
    {
        bail!("{method} {path}: unexpected chunked answer");
    }
    Ok(answer)
}
