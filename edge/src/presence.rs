//! Presence and node discovery without a discovery server.
//!
//! Every edge puts one report (`EdgeReport`, JSON) under the key `edge.<edge id>` of a JetStream KV
//! bucket (default `goim_presence`: history 1, `max_age`, limit markers, memory storage) every
//! `presence.report_interval_ms`. A report that is not renewed within `max_age` is removed by the
//! server with a purge marker that every watcher sees, so a dead edge's counts disappear on their own.
//!
//! [`ClusterView`] is the watcher's side, shared with goim-authsvc: it follows the bucket (last value
//! of every key, then every change) and keeps the live reports and the per-room sums. A report not
//! renewed within `max_age` is also dropped locally, so the view converges even if a marker is missed
//! (a server without limit markers, a watch re-created after a NATS outage).
//!
//! On the edge, [`Presence`] counts the authenticated connections and their distinct IPs, builds the
//! report from the hub's room groups, and answers the op-3 heartbeat with the cluster-wide room count:
//! the other edges' last reports plus this edge's live count. It also registers the edge as the NATS
//! service `goim-edge` (`$SRV.PING|INFO|STATS`, `nats micro ls`) with the endpoint
//! `ctl.presence.<edge id>` answering the current report.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_nats::service::ServiceExt;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{AdvertiseConfig, Config, PresenceConfig};
use crate::bridge::Bridge;
use crate::hub::Hub;
use crate::subjects;

/// Prefix of every edge's key in the presence bucket: `edge.<edge id>`.
pub const KEY_PREFIX: &str = "edge.";
/// NATS service name of every edge (`nats micro ls`).
pub const SERVICE_NAME: &str = "goim-edge";
/// Subject prefix of the service endpoint answering an edge's current report: `ctl.presence.<id>`.
pub const PRESENCE_ENDPOINT_PREFIX: &str = "ctl.presence.";
/// nats-server's minimum TTL of a subject delete marker.
pub const MIN_MARKER_TTL: Duration = Duration::from_secs(1);

/// One edge's report: the value of `edge.<edge id>` in the presence bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeReport {
    /// The edge id (`edge.id`).
    pub id: String,
    /// goim-edge version.
    pub version: String,
    /// Advertised host or IP for native clients.
    pub host: String,
    /// Advertised DNS name for web clients.
    pub domain: String,
    /// Advertised ports (0 = none).
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
    /// WebSocket path (`/sub`).
    pub ws_path: String,
    /// The listeners' bound addresses (`ip:port`, empty when disabled).
    pub tcp_listen: String,
    pub ws_listen: String,
    pub weight: u32,
    pub offline: bool,
    pub region: String,
    pub zone: String,
    /// Authenticated connections.
    pub conn_count: u64,
    /// Distinct client IPs among them.
    pub ip_count: u64,
    /// Room id (`type://id`) → connections in it on this edge; rooms with members only.
    pub rooms: BTreeMap<String, u64>,
    /// More rooms than `presence.max_rooms` were populated: only the most populated are listed.
    pub rooms_truncated: bool,
    /// Unix milliseconds: edge start and this report.
    pub started_ms: u64,
    pub updated_ms: u64,
    /// The edge's `presence.report_interval_ms`.
    pub report_interval_ms: u64,
}

impl EdgeReport {
    /// Load used to order nodes: connections per unit of weight.
    pub fn load(&self) -> f64 {
        self.conn_count as f64 / f64::from(self.weight.max(1))
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Checks shared by the edge's and authsvc's configs.
pub fn validate_bucket(bucket: &str, max_age_ms: u64) -> Result<(), String> {
    if bucket.is_empty() || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("presence.bucket {bucket:?} may hold only A-Z, a-z, 0-9, '_' and '-'"));
    }
    if Duration::from_millis(max_age_ms) < MIN_MARKER_TTL {
        return Err("presence.max_age_ms must be at least 1000 (nats-server's minimum delete-marker TTL)".into());
    }
    Ok(())
}

/// The edge config's `[presence]` and `[advertise]` rules.
pub fn validate_config(p: &PresenceConfig, a: &AdvertiseConfig) -> Result<(), String> {
    validate_bucket(&p.bucket, p.max_age_ms)?;
    if p.report_interval_ms < 50 {
        return Err("presence.report_interval_ms must be at least 50".into());
    }
    if p.report_interval_ms.saturating_mul(2) > p.max_age_ms {
        return Err("presence.max_age_ms must be at least twice presence.report_interval_ms".into());
    }
    if p.replicas == 0 || p.replicas > 5 {
        return Err("presence.replicas must be 1..=5".into());
    }
    if a.weight == 0 {
        return Err("advertise.weight must be at least 1".into());
    }
    Ok(())
}

/// Bucket settings used when the bucket does not exist yet.
#[derive(Debug, Clone)]
pub struct BucketSettings {
    pub bucket: String,
    pub max_age: Duration,
    pub replicas: usize,
}

/// Bind the presence bucket, creating it (history 1, max_age, limit markers, memory storage) if it
/// does not exist. An existing bucket is used as it is, whoever created it.
pub async fn open_bucket(js: &jetstream::Context, s: &BucketSettings) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(s.bucket.clone()).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: s.bucket.clone(),
        description: "goim-nats presence: one report per live edge (edge.<id>)".into(),
        history: 1,
        max_age: s.max_age,
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: s.replicas,
        limit_markers: Some(s.max_age.max(MIN_MARKER_TTL)),
        ..Default::default()
    };
    match js.create_key_value(config.clone()).await {
        Ok(store) => {
            info!(bucket = %s.bucket, max_age = ?s.max_age, "presence bucket created");
            Ok(store)
        }
        Err(e) if e.kind() == jetstream::context::CreateKeyValueErrorKind::LimitMarkersNotSupported => {
            warn!(bucket = %s.bucket, "the server has no limit markers (< 2.11): dead edges are dropped by age only");
            let config = kv::Config { limit_markers: None, ..config };
            match js.create_key_value(config).await {
                Ok(store) => Ok(store),
                Err(e) => js.get_key_value(s.bucket.clone()).await.map_err(|_| e.to_string()),
            }
        }
        // Another edge or authsvc may have created it meanwhile.
        Err(e) => js.get_key_value(s.bucket.clone()).await.map_err(|_| e.to_string()),
    }
}

/// The bucket's own max_age (the creator's), or `fallback` when it has none.
pub async fn bucket_max_age(store: &kv::Store, fallback: Duration) -> Duration {
    match store.status().await {
        Ok(status) if !status.max_age().is_zero() => status.max_age(),
        _ => fallback,
    }
}

#[derive(Debug)]
struct Seen {
    report: Arc<EdgeReport>,
    /// Dropped locally after this without a fresher put (the marker normally comes first).
    expires: Instant,
}

#[derive(Debug, Default)]
struct ViewInner {
    edges: HashMap<String, Seen>,
    /// Sum of every live report's room counts.
    rooms: HashMap<String, u64>,
}

/// The watcher's view of the presence bucket. See the module docs.
#[derive(Debug)]
pub struct ClusterView {
    /// The edge's own id: its own report is left out (it uses its live counts instead).
    exclude: Option<String>,
    max_age_ms: AtomicU64,
    inner: RwLock<ViewInner>,
    /// Live edges including the excluded one, when set.
    live_edges: Option<Arc<AtomicUsize>>,
}

impl ClusterView {
    pub fn new(exclude: Option<String>, max_age: Duration, live_edges: Option<Arc<AtomicUsize>>) -> Arc<ClusterView> {
        Arc::new(ClusterView {
            exclude,
            max_age_ms: AtomicU64::new(max_age.as_millis() as u64),
            inner: RwLock::new(ViewInner::default()),
            live_edges,
        })
    }

    pub fn set_max_age(&self, max_age: Duration) {
        self.max_age_ms.store(max_age.as_millis() as u64, Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply one bucket entry (a put, or a delete/purge marker).
    pub fn apply(&self, entry: &kv::Entry) {
        let Some(id) = entry.key.strip_prefix(KEY_PREFIX) else { return };
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<EdgeReport>(&entry.value) {
                Ok(report) => self.upsert(id, report),
                Err(e) => {
                    warn!(key = %entry.key, error = %e, "ignoring a presence report that is not valid JSON");
                    self.remove(id);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                debug!(key = %entry.key, op = ?entry.operation, "edge left");
                self.remove(id);
            }
        }
    }

    pub fn upsert(&self, id: &str, report: EdgeReport) {
        if self.exclude.as_deref() == Some(id) {
            return;
        }
        // A little grace so the server's purge marker, not the local clock, normally decides.
        let grace = Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed)) + Duration::from_secs(1);
        let mut inner = self.write();
        if let Some(old) = inner.edges.remove(id) {
            subtract_rooms(&mut inner.rooms, &old.report);
        }
        for (room, n) in &report.rooms {
            *inner.rooms.entry(room.clone()).or_default() += n;
        }
        inner.edges.insert(id.to_string(), Seen { report: Arc::new(report), expires: Instant::now() + grace });
        self.publish_live(&inner);
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.write();
        if let Some(old) = inner.edges.remove(id) {
            subtract_rooms(&mut inner.rooms, &old.report);
            self.publish_live(&inner);
        }
    }

    /// Drop reports that were not renewed in time.
    pub fn prune(&self) {
        let now = Instant::now();
        if !self.read().edges.values().any(|s| s.expires <= now) {
            return;
        }
        let mut inner = self.write();
        let expired: Vec<String> = inner.edges.iter().filter(|(_, s)| s.expires <= now).map(|(k, _)| k.clone()).collect();
        for id in expired {
            if let Some(old) = inner.edges.remove(&id) {
                info!(edge = %id, "edge report expired locally (no renewal, no marker seen)");
                subtract_rooms(&mut inner.rooms, &old.report);
            }
        }
        self.publish_live(&inner);
    }

    fn publish_live(&self, inner: &ViewInner) {
        if let Some(live) = &self.live_edges {
            live.store(inner.edges.len() + usize::from(self.exclude.is_some()), Ordering::Relaxed);
        }
    }

    /// Live reports (this edge's own excluded), ordered by id.
    pub fn edges(&self) -> Vec<Arc<EdgeReport>> {
        let mut v: Vec<Arc<EdgeReport>> = self.read().edges.values().map(|s| s.report.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Number of live reports in the view.
    pub fn len(&self) -> usize {
        self.read().edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections in `room` over the reports in the view.
    pub fn room_count(&self, room: &str) -> u64 {
        self.read().rooms.get(room).copied().unwrap_or(0)
    }

    /// Rooms whose id passes `filter`, with their counts.
    pub fn rooms_where(&self, filter: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        self.read().rooms.iter().filter(|(r, n)| **n > 0 && filter(r)).map(|(r, n)| (r.clone(), *n)).collect()
    }

    /// (ip_count, conn_count) summed over the reports, as goim's logic sums its comets'.
    pub fn totals(&self) -> (u64, u64) {
        self.read().edges.values().fold((0, 0), |(ip, conn), s| (ip + s.report.ip_count, conn + s.report.conn_count))
    }

    /// Follow the bucket (current values, then changes) for as long as the process lives, re-watching
    /// after errors, and prune expired reports.
    pub fn spawn_watch(self: &Arc<Self>, store: kv::Store) {
        let view = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match store.watch_with_history(format!("{KEY_PREFIX}>")).await {
                    Ok(mut watch) => {
                        backoff = Duration::from_millis(100);
                        while let Some(item) = watch.next().await {
                            match item {
                                Ok(entry) => view.apply(&entry),
                                Err(e) => {
                                    warn!(error = %e, "presence watch failed; watching again");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, retry_in = ?backoff, "cannot watch the presence bucket"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        let view = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let every = match view.upgrade() {
                    Some(v) => {
                        v.prune();
                        Duration::from_millis((v.max_age_ms.load(Ordering::Relaxed) / 4).clamp(100, 1000))
                    }
                    None => return,
                };
                tokio::time::sleep(every).await;
            }
        });
    }
}

fn subtract_rooms(rooms: &mut HashMap<String, u64>, report: &EdgeReport) {
    for (room, n) in &report.rooms {
        if let Some(sum) = rooms.get_mut(room) {
            *sum = sum.saturating_sub(*n);
            if *sum == 0 {
                rooms.remove(room);
            }
        }
    }
}

/// Advertised address of this edge, resolved at start.
#[derive(Debug, Clone, Default)]
struct Advertised {
    host: String,
    domain: String,
    tcp_port: u16,
    ws_port: u16,
    wss_port: u16,
    tcp_listen: String,
    ws_listen: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn resolve_advertised(a: &AdvertiseConfig, tcp: Option<SocketAddr>, ws: Option<SocketAddr>, wss: Option<SocketAddr>) -> Advertised {
    let host = if !a.host.is_empty() {
        a.host.clone()
    } else {
        match tcp.or(ws) {
            Some(addr) if !addr.ip().is_unspecified() => addr.ip().to_string(),
            _ => hostname(),
        }
    };
    Advertised {
        domain: if a.domain.is_empty() { host.clone() } else { a.domain.clone() },
        host,
        tcp_port: if a.tcp_port != 0 { a.tcp_port } else { tcp.map_or(0, |t| t.port()) },
        ws_port: if a.ws_port != 0 { a.ws_port } else { ws.map_or(0, |w| w.port()) },
        wss_port: if a.wss_port != 0 { a.wss_port } else { wss.map_or(0, |w| w.port()) },
        tcp_listen: tcp.map(|t| t.to_string()).unwrap_or_default(),
        ws_listen: ws.map(|w| w.to_string()).unwrap_or_default(),
    }
}

/// The edge's presence: its counters, its report, and its view of the other edges.
#[derive(Debug)]
pub struct Presence {
    edge_id: String,
    cfg: PresenceConfig,
    advertise: AdvertiseConfig,
    ws_path: String,
    hub: Arc<Hub>,
    view: Arc<ClusterView>,
    /// Authenticated live connections.
    conns: AtomicU64,
    /// Client IP → authenticated live connections from it.
    ips: Mutex<HashMap<IpAddr, u64>>,
    started_ms: u64,
    advertised: OnceLock<Advertised>,
    store: OnceLock<kv::Store>,
    /// The reporting task, stopped by [`Presence::withdraw`] so that it cannot put the report back.
    reporter: OnceLock<tokio::task::AbortHandle>,
}

impl Presence {
    pub fn new(config: &Config, hub: Arc<Hub>) -> Arc<Presence> {
        let view = ClusterView::new(
            Some(hub.edge_id().to_string()),
            Duration::from_millis(config.presence.max_age_ms),
            Some(hub.live_edges().clone()),
        );
        Arc::new(Presence {
            edge_id: hub.edge_id().to_string(),
            cfg: config.presence.clone(),
            advertise: config.advertise.clone(),
            ws_path: config.listen.ws_path.clone(),
            hub,
            view,
            conns: AtomicU64::new(0),
            ips: Mutex::new(HashMap::new()),
            started_ms: unix_ms(),
            advertised: OnceLock::new(),
            store: OnceLock::new(),
            reporter: OnceLock::new(),
        })
    }

    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    /// A connection from `ip` authenticated.
    pub fn conn_up(&self, ip: IpAddr) {
        self.conns.fetch_add(1, Ordering::Relaxed);
        *self.ips.lock().unwrap_or_else(|p| p.into_inner()).entry(ip).or_default() += 1;
    }

    /// Authenticated live connections on this edge.
    pub fn online(&self) -> u64 {
        self.conns.load(Ordering::Relaxed)
    }

    /// An authenticated connection from `ip` ended.
    pub fn conn_down(&self, ip: IpAddr) {
        self.conns.fetch_sub(1, Ordering::Relaxed);
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = ips.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                ips.remove(&ip);
            }
        }
    }

    /// The op-3 count of `room`: `local` (this edge's live members) plus the other edges' last reports.
    pub fn room_online(&self, room: &str, local: usize) -> usize {
        local.saturating_add(self.view.room_count(room) as usize)
    }

    /// This edge's current report.
    pub fn report(&self) -> EdgeReport {
        let adv = self.advertised.get().cloned().unwrap_or_default();
        let mut rooms: Vec<(String, u64)> = self
            .hub
            .room_counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(subject, n)| Some((subjects::room_id_of(&subject)?, n as u64)))
            .collect();
        let truncated = rooms.len() > self.cfg.max_rooms;
        if truncated {
            rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            rooms.truncate(self.cfg.max_rooms);
        }
        EdgeReport {
            id: self.edge_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            host: adv.host,
            domain: adv.domain,
            tcp_port: adv.tcp_port,
            ws_port: adv.ws_port,
            wss_port: adv.wss_port,
            ws_path: self.ws_path.clone(),
            tcp_listen: adv.tcp_listen,
            ws_listen: adv.ws_listen,
            weight: self.advertise.weight,
            offline: self.advertise.offline,
            region: self.advertise.region.clone(),
            zone: self.advertise.zone.clone(),
            conn_count: self.conns.load(Ordering::Relaxed),
            ip_count: self.ips.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            rooms: rooms.into_iter().collect(),
            rooms_truncated: truncated,
            started_ms: self.started_ms,
            updated_ms: unix_ms(),
            report_interval_ms: self.cfg.report_interval_ms,
        }
    }

    /// Register the `$SRV` service (done, and confirmed by a round trip, when this returns: a ready
    /// edge answers `$SRV.PING`), then report and watch in the background (a NATS server without
    /// JetStream delays nothing, it only leaves the counts local).
    pub async fn start(self: &Arc<Self>, bridge: &Bridge, tcp: Option<SocketAddr>, ws: Option<SocketAddr>, wss: Option<SocketAddr>) {
        let _ = self.advertised.set(resolve_advertised(&self.advertise, tcp, ws, wss));
        if !self.cfg.enabled {
            info!("presence disabled: op-3 counts are local, this edge is not listed by nodes/weighted");
            return;
        }
        let client = bridge.publisher().clone();
        if self.cfg.service {
            if let Some((service, endpoint)) = self.register_service(&client).await {
                bridge.barrier(0).await;
                let this = self.clone();
                tokio::spawn(async move { this.serve_endpoint(service, endpoint).await });
            }
        }
        let this = self.clone();
        let reporter = tokio::spawn(async move { this.run(client).await });
        let _ = self.reporter.set(reporter.abort_handle());
    }

    async fn run(self: Arc<Self>, client: async_nats::Client) {
        let js = jetstream::new(client);
        let settings = BucketSettings {
            bucket: self.cfg.bucket.clone(),
            max_age: Duration::from_millis(self.cfg.max_age_ms),
            replicas: self.cfg.replicas,
        };
        let mut backoff = Duration::from_millis(200);
        let store = loop {
            match open_bucket(&js, &settings).await {
                Ok(store) => break store,
                Err(e) => {
                    warn!(bucket = %settings.bucket, error = %e, retry_in = ?backoff, "presence bucket unavailable (JetStream off?): counts stay local");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let max_age = bucket_max_age(&store, settings.max_age).await;
        if max_age < Duration::from_millis(self.cfg.report_interval_ms * 2) {
            warn!(?max_age, report_interval_ms = self.cfg.report_interval_ms, "the presence bucket's max_age is shorter than two report intervals: this edge may flap");
        }
        self.view.set_max_age(max_age);
        self.view.spawn_watch(store.clone());
        let _ = self.store.set(store.clone());
        let key = format!("{KEY_PREFIX}{}", self.edge_id);
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.report_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let body = match serde_json::to_vec(&self.report()) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot encode the presence report");
                    continue;
                }
            };
            match store.put(&key, body.into()).await {
                Ok(_) if failing => {
                    info!("presence report stored again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if failing {
                        debug!(error = %e, "presence report still failing");
                    } else {
                        warn!(error = %e, "cannot store the presence report; retrying every interval");
                        failing = true;
                    }
                    // The bucket may be gone (a memory bucket after a nats-server restart): create it
                    // again; the watchers re-attach by name.
                    if let Err(e) = open_bucket(&js, &settings).await {
                        debug!(error = %e, "presence bucket still unavailable");
                    }
                }
            }
        }
    }

    async fn register_service(
        &self,
        client: &async_nats::Client,
    ) -> Option<(async_nats::service::Service, async_nats::service::endpoint::Endpoint)> {
        let adv = self.advertised.get().cloned().unwrap_or_default();
        let metadata: HashMap<String, String> = [
            ("edge_id", self.edge_id.clone()),
            ("host", adv.host.clone()),
            ("tcp", adv.tcp_listen.clone()),
            ("ws", adv.ws_listen.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let service = match client
            .service_builder()
            .description("goim-compatible TCP/WebSocket edge")
            .metadata(metadata)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot register the NATS service goim-edge");
                return None;
            }
        };
        let subject = format!("{PRESENCE_ENDPOINT_PREFIX}{}", self.edge_id);
        match service.endpoint_builder().name("presence").add(subject.clone()).await {
            Ok(endpoint) => Some((service, endpoint)),
            Err(e) => {
                warn!(error = %e, %subject, "cannot add the presence endpoint");
                None
            }
        }
    }

    async fn serve_endpoint(self: Arc<Self>, service: async_nats::service::Service, mut endpoint: async_nats::service::endpoint::Endpoint) {
        while let Some(request) = endpoint.next().await {
            let body = serde_json::to_vec(&self.report()).unwrap_or_default();
            if let Err(e) = request.respond(Ok(body.into())).await {
                debug!(error = %e, "cannot answer a presence request");
            }
        }
        drop(service);
    }

    /// Remove this edge's report at shutdown, so it leaves the lists at once (bounded).
    pub async fn withdraw(&self) {
        if let Some(reporter) = self.reporter.get() {
            reporter.abort();
        }
        let Some(store) = self.store.get() else { return };
        let key = format!("{KEY_PREFIX}{}", self.edge_id);
        match tokio::time::timeout(Duration::from_secs(2), store.delete(&key)).await {
            Ok(Ok(())) => info!("presence report withdrawn"),
            Ok(Err(e)) => warn!(error = %e, "cannot withdraw the presence report; it expires by itself"),
            Err(_) => warn!("withdrawing the presence report timed out; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, rooms: &[(&str, u64)], conns: u64) -> EdgeReport {
        EdgeReport {
            id: id.into(),
            conn_count: conns,
            ip_count: 1,
            rooms: rooms.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            ..EdgeReport::default()
        }
    }

    #[test]
    fn view_sums_rooms_and_forgets_removed_edges() {
        let live = Arc::new(AtomicUsize::new(1));
        let v = ClusterView::new(Some("me".into()), Duration::from_secs(20), Some(live.clone()));
        v.upsert("me", report("me", &[("live://1", 5)], 5));
        assert_eq!(v.len(), 0, "own report is excluded");
        v.upsert("a", report("a", &[("live://1", 2), ("live://2", 1)], 3));
        v.upsert("b", report("b", &[("live://1", 4)], 4));
        assert_eq!(live.load(Ordering::Relaxed), 3);
        assert_eq!(v.room_count("live://1"), 6);
        assert_eq!(v.totals(), (2, 7));
        // A newer report replaces the old one's counts.
        v.upsert("a", report("a", &[("live://2", 2)], 2));
        assert_eq!(v.room_count("live://1"), 4);
        assert_eq!(v.room_count("live://2"), 2);
        v.remove("b");
        assert_eq!(v.room_count("live://1"), 0);
        assert_eq!(v.rooms_where(|_| true), vec![("live://2".to_string(), 2)]);
        assert_eq!(live.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unrenewed_reports_expire_locally() {
        let v = ClusterView::new(None, Duration::from_secs(2), None);
        v.upsert("a", report("a", &[("x://1", 1)], 1));
        tokio::time::advance(Duration::from_millis(2500)).await;
        v.prune();
        assert_eq!(v.len(), 1, "within max_age + grace");
        tokio::time::advance(Duration::from_millis(600)).await;
        v.prune();
        assert_eq!(v.len(), 0);
        assert_eq!(v.room_count("x://1"), 0);
    }

    #[test]
    fn advertised_address_falls_back_to_listeners() {
        let a = AdvertiseConfig::default();
        let tcp: SocketAddr = "10.0.0.5:3101".parse().unwrap();
        let ws: SocketAddr = "10.0.0.5:3102".parse().unwrap();
        let r = resolve_advertised(&a, Some(tcp), Some(ws), None);
        assert_eq!((r.host.as_str(), r.domain.as_str(), r.tcp_port, r.ws_port, r.wss_port), ("10.0.0.5", "10.0.0.5", 3101, 3102, 0));
        let a = AdvertiseConfig { host: "edge1.example".into(), domain: "e1.example".into(), tcp_port: 443, ..a };
        let r = resolve_advertised(&a, Some(tcp), None, None);
        assert_eq!((r.host.as_str(), r.domain.as_str(), r.tcp_port, r.ws_port), ("edge1.example", "e1.example", 443, 0));
        let any: SocketAddr = "0.0.0.0:3101".parse().unwrap();
        assert_eq!(resolve_advertised(&AdvertiseConfig::default(), Some(any), None, None).host, hostname());
        // The WSS listener's port, when TLS is on; an explicit wss_port wins.
        let wss: SocketAddr = "10.0.0.5:3103".parse().unwrap();
        assert_eq!(resolve_advertised(&AdvertiseConfig::default(), Some(tcp), None, Some(wss)).wss_port, 3103);
        let a = AdvertiseConfig { wss_port: 443, ..AdvertiseConfig::default() };
        assert_eq!(resolve_advertised(&a, Some(tcp), None, Some(wss)).wss_port, 443);
    }

    #[test]
    fn config_rules() {
        let p = PresenceConfig::default();
        let a = AdvertiseConfig::default();
        assert!(validate_config(&p, &a).is_ok());
        assert!(validate_config(&PresenceConfig { max_age_ms: 500, ..p.clone() }, &a).is_err());
        assert!(validate_config(&PresenceConfig { report_interval_ms: 15_000, ..p.clone() }, &a).is_err());
        assert!(validate_config(&PresenceConfig { bucket: "a.b".into(), ..p.clone() }, &a).is_err());
        assert!(validate_config(&p, &AdvertiseConfig { weight: 0, ..a }).is_err());
    }
}
