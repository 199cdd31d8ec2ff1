//! A raw PostgreSQL protocol client for tests that must send what no driver sends: part of
//! a message, a stall, a hang-up in the middle of a statement. It logs in as a user that
//! needs no password (`auth = "trust"` in pgshift's `[[users]]`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a session of `user` on `database` at `127.0.0.1:port` and reads through the first
/// ReadyForQuery. Panics when the login is refused.
pub async fn session(port: u16, user: &str, database: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup(user, database)).await.unwrap();
    loop {
        let (tag, body) = read_msg(&mut s).await.expect("start-up answer");
        assert_ne!(tag, b'E', "raw login refused: {:?}", error_fields(&body));
        if tag == b'Z' {
            return s;
        }
    }
}

/// A StartupMessage (protocol 3.0, 53.7) for `user` and `database`.
pub fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// A Query message (53.7) of `sql`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// One message from the server: tag and body; `None` at EOF.
pub async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).await.ok()?;
    let n = (u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize).checked_sub(4)?;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await.ok()?;
    Some((h[0], body))
}

/// The SQLSTATE (`C` field) and message (`M`) of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for f in body.split(|b| *b == 0) {
        match f.first() {
            Some(b'C') => code = String::from_utf8_lossy(&f[1..]).into_owned(),
            Some(b'M') => message = String::from_utf8_lossy(&f[1..]).into_owned(),
            _ => {}
        }
    }
    (code, message)
}
