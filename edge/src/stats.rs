//! Counters of the edge: live connections and every reason a connection was closed or a push refused.
//! They are plain atomics, read by the stats responder (`ctl.stats.<edge id>` on NATS) and logged at exit.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why the edge closed (or lost) a connection. Every close is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or the socket failed.
    ClientGone,
    /// No successful auth within the handshake timeout.
    HandshakeTimeout,
    /// No op-2 heartbeat within the idle timeout.
    IdleTimeout,
    /// A packet violated goim's framing (headerLen, packLen, truncated WebSocket frame, …).
    ProtocolError,
    /// The auth body was not valid goim auth JSON, or its key or room was out of bounds.
    BadAuth,
    /// Another connection with the same key authenticated (on this or another edge).
    Kicked,
    /// The client did not read fast enough: its outbound queue exceeded `limits.max_outbound_bytes`.
    SlowConsumer,
    /// The token was missing, forged, expired, not yet valid, for another issuer or audience, or
    /// authsvc refused the delegated connect (the precise reason is counted in `denied`).
    BadToken,
    /// The token's claims do not cover what the client asked for (mid, key, room, accepts).
    OutOfScope,
    /// The token expired and the client sent no fresh one (or delegated renewal was refused).
    TokenExpired,
    /// Delegated mode: authsvc did not answer in time.
    AuthUnavailable,
    /// The edge is shutting down (drained on SIGTERM/SIGINT, or still open at the exit).
    Shutdown,
    /// Refused at accept: the edge already held `limits.max_connections` connections.
    MaxConnections,
    /// Refused at accept: the client's address exceeded `limits.connects_per_ip_per_sec`.
    ConnectRate,
    /// The client sent more than `limits.max_packets_per_sec` packets in one second.
    PacketRate,
    /// Refused at accept: `limits.max_handshakes` connections were already unauthenticated.
    MaxHandshakes,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientGone,
        CloseReason::HandshakeTimeout,
        CloseReason::IdleTimeout,
        CloseReason::ProtocolError,
        CloseReason::BadAuth,
        CloseReason::Kicked,
        CloseReason::SlowConsumer,
        CloseReason::BadToken,
        CloseReason::OutOfScope,
        CloseReason::TokenExpired,
        CloseReason::AuthUnavailable,
        CloseReason::Shutdown,
        CloseReason::MaxConnections,
        CloseReason::ConnectRate,
        CloseReason::PacketRate,
        CloseReason::MaxHandshakes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BadAuth => "bad_auth",
            CloseReason::Kicked => "kicked",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::BadToken => "bad_token",
            CloseReason::OutOfScope => "out_of_scope",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::AuthUnavailable => "auth_unavailable",
            CloseReason::Shutdown => "shutdown",
            CloseReason::MaxConnections => "max_connections",
            CloseReason::ConnectRate => "connect_rate",
            CloseReason::PacketRate => "packet_rate",
            CloseReason::MaxHandshakes => "max_handshakes",
        }
    }

    /// Reasons a hostile or broken client can cause by the thousand: logged through
    /// [`Stats::log_close`]'s gate, at most once per [`LOG_GATE`] per reason, not per connection.
    pub fn is_flood_prone(self) -> bool {
        matches!(
            self,
            CloseReason::ProtocolError
                | CloseReason::HandshakeTimeout
                | CloseReason::MaxConnections
                | CloseReason::ConnectRate
                | CloseReason::PacketRate
                | CloseReason::MaxHandshakes
        )
    }

    fn index(self) -> usize {
        CloseReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bounds (seconds) of the push latency histogram's buckets; the last bucket is `+Inf`.
pub const LATENCY_BOUNDS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A fixed-bucket latency histogram of plain atomics: recording is a bucket search over 14 bounds and
/// three relaxed adds, reading never blocks a recorder, and its size is fixed (never per connection).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); index `LATENCY_BOUNDS.len()` is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BOUNDS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (`le`), the `+Inf` count last, and the sum in seconds.
    pub fn read(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(LATENCY_BOUNDS.len() + 1);
        let mut total = 0;
        for b in &self.buckets {
            total += b.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        HistogramSnapshot { cumulative, sum_secs: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count: total }
    }
}

/// What [`Histogram::read`] saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistogramSnapshot {
    /// Observations at or under each of [`LATENCY_BOUNDS`], then all of them (`+Inf`).
    pub cumulative: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

/// How a client is connected: the label of the per-transport connection gauge (and of logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// goim over TCP.
    Tcp,
    /// goim over WebSocket.
    Ws,
    /// goim over WebSocket over TLS.
    Wss,
    /// goim over TCP over TLS.
    Tls,
    /// An HTTP session (Server-Sent Events or long-polling, `crate::transport::http`).
    Http,
}

impl Transport {
    pub const ALL: [Transport; 5] = [Transport::Tcp, Transport::Ws, Transport::Wss, Transport::Tls, Transport::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Tls => "tls",
            Transport::Http => "http",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Accepted sockets that have not closed yet (authenticated or not), HTTP sessions included.
    pub connections: AtomicI64,
    /// The same, per [`Transport`] (indexed by its discriminant).
    by_transport: [AtomicI64; Transport::ALL.len()],
    /// Connections that completed auth.
    pub authenticated: AtomicU64,
    /// Rooms (`room.*` subjects) with local members.
    pub rooms: AtomicI64,
    /// NATS subscriptions held for client subjects: one per subject with its own subscription, plus
    /// the per-edge `user.*`/`key.*` wildcards (subjects riding a wildcard cost none).
    pub nats_subscriptions: AtomicI64,
    /// Bytes written to client sockets (framing included).
    pub bytes_written: AtomicU64,
    /// WebSocket connections (plain or over TLS) that agreed to permessage-deflate.
    pub ws_deflate: AtomicU64,
    /// From a push's arrival at the edge (its NATS message read off the connection) to the end of the
    /// socket write that carried it to a client: sampled once per write, for the oldest push in it.
    pub push_latency: Histogram,
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Pushes delivered into connection queues.
    pub delivered: AtomicU64,
    /// Socket writes of queued batches (deliveries / writes = how many frames go out per write).
    pub writes: AtomicU64,
    /// Pushes refused because their `Goim-Op` header was not an int32.
    pub bad_push_op: AtomicU64,
    /// Op-4 messages published on the ingress subject.
    pub ingress: AtomicU64,
    /// Op-4 messages that could not be handed to NATS.
    pub ingress_failed: AtomicU64,
    /// Op-4 messages not forwarded because the token grants no ingress.
    pub ingress_denied: AtomicU64,
    /// History: gaps in a stored subject's live copy, filled from JetStream or not.
    pub gaps: AtomicU64,
    pub gaps_unfilled: AtomicU64,
    /// History: messages replayed to resuming clients.
    pub replayed: AtomicU64,
    /// History: resumes that ended in an explicit recovery-failed signal.
    pub recovery_failed: AtomicU64,
    /// Tokens refused at auth or refresh, by reason (`expired`, `bad_signature`, …).
    denied: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Per close reason: when it was last logged, and how many closes were not logged since.
    gates: [LogGate; CloseReason::ALL.len()],
}

/// How often a flood-prone close reason is logged at most (with the count of those not logged).
pub const LOG_GATE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct LogGate {
    /// Milliseconds since [`log_epoch`] + 1 of the last logged close; 0 = never.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn log_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogGate {
    /// `Some(closes not logged since the last line)` if a line may be written now.
    fn pass(&self) -> Option<u64> {
        self.pass_at(log_epoch().elapsed().as_millis() as u64 + 1)
    }

    /// [`LogGate::pass`] at `now` (milliseconds since the epoch + 1).
    fn pass_at(&self, now: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let gate = LOG_GATE.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < gate {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One winner per gate period among concurrent closers.
        if self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Stats {
    /// A connection (or HTTP session) accepted on `transport`; [`Stats::connection_closed`] when it ends.
    pub fn connection_opened(&self, transport: Transport) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.by_transport[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, transport: Transport) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.by_transport[transport as usize].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Log a close of `reason` (already counted): flood-prone reasons at most once per [`LOG_GATE`],
    /// with how many went unlogged in between; `detail` says what was exceeded or seen.
    pub fn log_close(&self, reason: CloseReason, conn: u64, peer: Option<std::net::SocketAddr>, detail: &str) {
        if !reason.is_flood_prone() {
            tracing::info!(conn, ?peer, %reason, detail, "connection closed");
            return;
        }
        let Some(unlogged) = self.gates[reason.index()].pass() else { return };
        tracing::warn!(
            conn,
            ?peer,
            %reason,
            detail,
            unlogged_since_last = unlogged,
            total = self.closed_count(reason),
            "connection closed (logged at most once per {}s per reason)",
            LOG_GATE.as_secs()
        );
    }

    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Ordering::Relaxed)
    }

    pub fn count_denied(&self, reason: &'static str) {
        *self.denied.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    pub fn snapshot(&self, id: &str) -> Snapshot {
        Snapshot {
            id: id.to_string(),
            connections: self.connections.load(Ordering::Relaxed),
            connections_by_transport: Transport::ALL
                .iter()
                .map(|t| (t.as_str().to_string(), self.by_transport[*t as usize].load(Ordering::Relaxed).max(0) as u64))
                .collect(),
            authenticated: self.authenticated.load(Ordering::Relaxed),
            rooms: self.rooms.load(Ordering::Relaxed).max(0) as u64,
            nats_subscriptions: self.nats_subscriptions.load(Ordering::Relaxed).max(0) as u64,
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            ws_deflate: self.ws_deflate.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bad_push_op: self.bad_push_op.load(Ordering::Relaxed),
            ingress: self.ingress.load(Ordering::Relaxed),
            ingress_failed: self.ingress_failed.load(Ordering::Relaxed),
            ingress_denied: self.ingress_denied.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            gaps_unfilled: self.gaps_unfilled.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            recovery_failed: self.recovery_failed.load(Ordering::Relaxed),
            history_fetches: 0,
            subjects: 0,
            nats_connected: 0,
            nats_connections: 0,
            nats_reconnects: 0,
            push_latency: self.push_latency.read(),
            denied: self
                .denied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), self.closed_count(*r)))
                .collect(),
        }
    }
}

/// The JSON answer of `ctl.stats.<edge id>`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub connections: i64,
    /// Open connections per transport (`tcp`, `ws`, `wss`, `tls`, `http`).
    pub connections_by_transport: std::collections::BTreeMap<String, u64>,
    pub authenticated: u64,
    /// Rooms with local members.
    pub rooms: u64,
    /// NATS subscriptions for client subjects (see [`Stats::nats_subscriptions`]).
    pub nats_subscriptions: u64,
    pub bytes_written: u64,
    /// WebSocket connections that agreed to permessage-deflate.
    pub ws_deflate: u64,
    pub delivered: u64,
    pub writes: u64,
    pub bad_push_op: u64,
    pub ingress: u64,
    pub ingress_failed: u64,
    pub ingress_denied: u64,
    pub gaps: u64,
    pub gaps_unfilled: u64,
    pub replayed: u64,
    pub recovery_failed: u64,
    /// JetStream fetches made for gaps and resumes (collapsed ones counted once).
    pub history_fetches: u64,
    /// Distinct subjects this edge's clients are in (rooms, users, keys, broadcast), whether each has
    /// its own NATS subscription or rides a per-edge wildcard.
    pub subjects: usize,
    /// Shared NATS connections up, of `nats_connections`.
    pub nats_connected: usize,
    pub nats_connections: usize,
    /// NATS connections re-established after a loss, over all shared connections.
    pub nats_reconnects: u64,
    /// Push arrival → socket write, see [`Stats::push_latency`].
    pub push_latency: HistogramSnapshot,
    pub denied: std::collections::BTreeMap<String, u64>,
    pub closed: std::collections::BTreeMap<String, u64>,
}

impl Snapshot {
    /// The Prometheus text exposition of these counters (`/metrics` on the HTTP listener). Its size
    /// depends on the number of reasons, never on the number of connections.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP goim_edge_{name} {help}\n# TYPE goim_edge_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "goim_edge_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        metric("connections", "gauge", "Open client connections (accepted, not yet closed).", &one(self.connections.max(0) as u64));
        let by_transport: Vec<(String, u64)> =
            self.connections_by_transport.iter().map(|(t, v)| (format!("{{transport=\"{t}\"}}"), *v)).collect();
        metric("connections_by_transport", "gauge", "Open client connections by transport.", &by_transport);
        metric("authenticated_total", "counter", "Connections that completed auth.", &one(self.authenticated));
        metric("subjects", "gauge", "Distinct subjects of this edge's clients.", &one(self.subjects as u64));
        metric("rooms", "gauge", "Rooms with members on this edge.", &one(self.rooms));
        metric(
            "nats_subscriptions",
            "gauge",
            "NATS subscriptions held for client subjects (own subscriptions plus per-edge wildcards).",
            &one(self.nats_subscriptions),
        );
        metric("bytes_written_total", "counter", "Bytes written to client sockets, framing included.", &one(self.bytes_written));
        metric("ws_deflate_total", "counter", "WebSocket connections that agreed to permessage-deflate.", &one(self.ws_deflate));
        metric("deliveries_total", "counter", "Pushes queued for clients.", &one(self.delivered));
        metric("writes_total", "counter", "Socket writes of queued batches.", &one(self.writes));
        metric("bad_push_op_total", "counter", "Pushes refused for a Goim-Op that is not an int32.", &one(self.bad_push_op));
        metric(
            "ingress_total",
            "counter",
            "Op-4 messages by outcome.",
            &[
                ("{result=\"published\"}".into(), self.ingress),
                ("{result=\"failed\"}".into(), self.ingress_failed),
                ("{result=\"denied\"}".into(), self.ingress_denied),
            ],
        );
        metric("history_gaps_total", "counter", "Gaps in a stored subject's live copy.", &one(self.gaps));
        metric("history_gaps_unfilled_total", "counter", "Gaps that could not be filled from JetStream.", &one(self.gaps_unfilled));
        metric("history_fetches_total", "counter", "JetStream fetches for gaps and resumes.", &one(self.history_fetches));
        metric("replayed_total", "counter", "Messages replayed to resuming clients.", &one(self.replayed));
        metric("recovery_failed_total", "counter", "Resumes answered with recovery failed.", &one(self.recovery_failed));
        let reasons: Vec<(String, u64)> = self.closed.iter().map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v)).collect();
        metric("closed_total", "counter", "Closed connections by reason.", &reasons);
        let denied: Vec<(String, u64)> = self.denied.iter().map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v)).collect();
        metric("auth_denied_total", "counter", "Tokens refused at auth or refresh, by reason.", &denied);
        metric("nats_connections", "gauge", "Shared NATS connections of the edge.", &one(self.nats_connections as u64));
        metric("nats_connected", "gauge", "Shared NATS connections up right now.", &one(self.nats_connected as u64));
        metric("nats_reconnects_total", "counter", "NATS connections re-established after a loss.", &one(self.nats_reconnects));
        let h = &self.push_latency;
        let _ = writeln!(
            out,
            "# HELP goim_edge_push_latency_seconds From a push's arrival at the edge to the socket write that carried it (oldest push per write).\n\
             # TYPE goim_edge_push_latency_seconds histogram"
        );
        for (i, count) in h.cumulative.iter().enumerate() {
            match LATENCY_BOUNDS.get(i) {
                Some(bound) => { let _ = writeln!(out, "goim_edge_push_latency_seconds_bucket{{le=\"{bound}\"}} {count}"); }
                None => { let _ = writeln!(out, "goim_edge_push_latency_seconds_bucket{{le=\"+Inf\"}} {count}"); }
            }
        }
        let _ = writeln!(out, "goim_edge_push_latency_seconds_sum {}\ngoim_edge_push_latency_seconds_count {}", h.sum_secs, h.count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_name_and_a_counter() {
        let names: std::collections::BTreeSet<&str> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), CloseReason::ALL.len());
        let stats = Stats::default();
        for r in CloseReason::ALL {
            stats.closed(r);
        }
        stats.closed(CloseReason::PacketRate);
        let snap = stats.snapshot("e");
        assert_eq!(snap.closed["packet_rate"], 2);
        assert_eq!(snap.closed["max_connections"], 1);
        assert_eq!(snap.closed.len(), CloseReason::ALL.len());
    }

    #[test]
    fn the_latency_histogram_counts_into_cumulative_buckets() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50)); // ≤ 0.0001
        h.record(Duration::from_micros(100)); // ≤ 0.0001 (bounds are inclusive)
        h.record(Duration::from_millis(3)); // ≤ 0.005
        h.record(Duration::from_secs(10)); // +Inf only
        let s = h.read();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[4], 2, "≤ 0.0025");
        assert_eq!(s.cumulative[5], 3, "≤ 0.005");
        assert_eq!(s.cumulative[LATENCY_BOUNDS.len() - 1], 3, "≤ 2.5");
        assert_eq!(s.cumulative[LATENCY_BOUNDS.len()], 4, "+Inf");
        assert!((s.sum_secs - 10.00315).abs() < 1e-9, "{}", s.sum_secs);
        let stats = Stats::default();
        stats.push_latency.record(Duration::from_millis(1));
        let text = stats.snapshot("e").prometheus();
        assert!(text.contains("# TYPE goim_edge_push_latency_seconds histogram"), "{text}");
        assert!(text.contains("goim_edge_push_latency_seconds_bucket{le=\"0.0005\"} 0\n"), "{text}");
        assert!(text.contains("goim_edge_push_latency_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("goim_edge_push_latency_seconds_bucket{le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("goim_edge_push_latency_seconds_count 1\n"), "{text}");
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_period() {
        let gate = LogGate::default();
        let period = LOG_GATE.as_millis() as u64;
        assert_eq!(gate.pass_at(5), Some(0), "the first close is logged");
        for t in 0..1000 {
            assert_eq!(gate.pass_at(5 + t), None);
        }
        assert_eq!(gate.pass_at(5 + period - 1), None);
        assert_eq!(gate.pass_at(5 + period), Some(1001), "the next line counts the closes not logged");
        assert_eq!(gate.pass_at(6 + period), None);
    }
}
