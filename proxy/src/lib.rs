//! The `pgshift` proxy as a library: the session relay, routing, admin console, HTTP API,
//! mirror and capture engines that `src/main.rs` starts. It is a library so that the fuzz
//! targets under `fuzz/` and the tests can reach the parsers (admin commands, session state,
//! capture queue records) without going through a socket.

pub mod admin;
pub mod backend;
pub mod capture;
pub mod http;
pub mod logfmt;
pub mod metrics;
pub mod mirror;
pub mod routing;
pub mod server;
pub mod session;
pub mod stats;
