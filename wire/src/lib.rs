//! PostgreSQL frontend/backend protocol version 3.0: framing, the messages pgshift reads
//! and writes, and password authentication (SCRAM-SHA-256, MD5).
//!
//! Source of every protocol fact here: PostgreSQL documentation, chapter 53 "Frontend/Backend
//! Protocol" (sections 53.2 "Message Flow" and 53.7 "Message Formats").
//!
//! The proxy's hot path does not decode messages: it uses [`frame::header`] to find frame
//! boundaries and reads only a tag and, for `ReadyForQuery`, the transaction status byte.
//! The typed views in [`msg`] are for the startup phase, the admin console and the few
//! client messages session tracking needs (`Query`, `Parse`, `Close`).

pub mod auth;
pub mod frame;
pub mod msg;

pub use frame::{Frame, FrameCodec, StartupCodec, StartupFrame, WireError};
