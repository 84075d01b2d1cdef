//! goim-edge: a goim-compatible TCP/WebSocket edge that serves clients straight from NATS subjects.
//!
//! Layout: `access` (token verification and delegated connects), `protocol` (the wire codec, pure), `subjects` (the NATS subject map, pure), `config`,
//! `session` (one client's state machine), `outbox` (per-connection bounded queue), `hub` (subject
//! membership and fan-out), `bridge` (the shared NATS connections), `transport` (TCP and WebSocket
//! I/O), `server` (listeners and start-up), `stats` (counters).

pub mod access;
pub mod bridge;
pub mod history;
pub mod config;
pub mod hub;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
pub mod subjects;
pub mod transport;
