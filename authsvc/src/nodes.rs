//! The answers of goim logic's read-only routes, computed from the presence view (pure functions):
//! `/goim/online/top`, `/goim/online/room`, `/goim/online/total`, `/goim/nodes/weighted`,
//! `/goim/nodes/instances`. Field names, order and omissions follow goim's JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use goim_edge::presence::EdgeReport;
use serde::Serialize;

use crate::logic::{BackoffConfig, NodesConfig};

/// goim's `model.Top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Top {
    pub room_id: String,
    pub count: u64,
}

/// goim's `model.DecodeRoomKey` keeps `url.Parse(key).Host`: the id part of `type://id` up to the
/// first `/`, `?` or `#`. Room ids without `://` have no type and are left out.
pub fn room_host(room_key: &str) -> Option<&str> {
    let (_, rest) = room_key.split_once("://")?;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(""))
}

/// `online/top`: rooms whose id starts with `typ` (goim: `strings.HasPrefix(roomKey, type)`), by count
/// descending (ties by room id), at most `limit`.
pub fn online_top(rooms: Vec<(String, u64)>, typ: &str, limit: usize) -> Vec<Top> {
    let mut tops: Vec<Top> = rooms
        .into_iter()
        .filter(|(key, _)| key.starts_with(typ))
        .filter_map(|(key, count)| Some(Top { room_id: room_host(&key)?.to_string(), count }))
        .collect();
    tops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.room_id.cmp(&b.room_id)));
    tops.truncate(limit);
    tops
}

/// goim's `/goim/online/total` data (Go marshals the map with sorted keys).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Total {
    pub conn_count: u64,
    pub ip_count: u64,
}

/// goim's `pb.Backoff`, every field omitempty.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backoff {
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub max_delay: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub base_delay: i32,
    #[serde(skip_serializing_if = "is_zero_f32")]
    pub factor: f32,
    #[serde(skip_serializing_if = "is_zero_f32")]
    pub jitter: f32,
}

/// goim's `pb.NodesReply`, every field omitempty.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodesReply {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub tcp_port: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub ws_port: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub wss_port: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub heartbeat: i32,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub heartbeat_max: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    pub backoff: Backoff,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_f32(v: &f32) -> bool {
    *v == 0.0
}

/// Live, online edges, least loaded first (connections / weight; ties by id).
pub fn by_load(edges: &[Arc<EdgeReport>]) -> Vec<Arc<EdgeReport>> {
    let mut v: Vec<Arc<EdgeReport>> = edges.iter().filter(|e| !e.offline).cloned().collect();
    v.sort_by(|a, b| a.load().total_cmp(&b.load()).then_with(|| a.id.cmp(&b.id)));
    v
}

/// `nodes/weighted`: goim's reply with the live edges as nodes, least loaded first, at most
/// `cfg.max_nodes`; web clients get the edges' domains, others their hosts; none → `[domain]`.
pub fn nodes_weighted(edges: &[Arc<EdgeReport>], platform: &str, cfg: &NodesConfig, backoff: &BackoffConfig) -> NodesReply {
    let mut nodes: Vec<String> = Vec::new();
    for e in by_load(edges) {
        if nodes.len() >= cfg.max_nodes {
            break;
        }
        let name = if platform == "web" { &e.domain } else { &e.host };
        if !name.is_empty() && !nodes.contains(name) {
            nodes.push(name.clone());
        }
    }
    if nodes.is_empty() && !cfg.domain.is_empty() {
        nodes.push(cfg.domain.clone());
    }
    NodesReply {
        domain: cfg.domain.clone(),
        tcp_port: i32::from(cfg.tcp_port),
        ws_port: i32::from(cfg.ws_port),
        wss_port: i32::from(cfg.wss_port),
        heartbeat: i32::try_from(cfg.heartbeat_secs).unwrap_or(i32::MAX),
        heartbeat_max: i32::try_from(cfg.heartbeat_max).unwrap_or(i32::MAX),
        nodes,
        backoff: Backoff {
            max_delay: backoff.max_delay,
            base_delay: backoff.base_delay,
            factor: backoff.factor,
            jitter: backoff.jitter,
        },
    }
}

/// goim discovery's instance metadata (string values, as discovery stores them).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceMetadata {
    pub addrs: String,
    pub conn_count: String,
    pub ip_count: String,
    pub offline: String,
    pub weight: String,
}

/// One `nodes/instances` entry: goim discovery's instance fields, plus the edge's own report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Instance {
    pub region: String,
    pub zone: String,
    pub env: String,
    pub appid: String,
    pub hostname: String,
    pub addrs: Vec<String>,
    pub version: String,
    /// Unix nanoseconds of the edge's last report.
    pub latest_timestamp: i64,
    pub metadata: InstanceMetadata,
    /// Connections per room on this edge (goim-nats addition).
    pub rooms: BTreeMap<String, u64>,
}

/// `nodes/instances`: every live edge (offline ones included), ordered by id.
pub fn instances(edges: &[Arc<EdgeReport>]) -> Vec<Instance> {
    let mut v: Vec<Instance> = edges
        .iter()
        .map(|e| {
            let mut addrs = Vec::new();
            if e.tcp_port != 0 {
                addrs.push(format!("tcp://{}:{}", e.host, e.tcp_port));
            }
            if e.ws_port != 0 {
                addrs.push(format!("ws://{}:{}{}", e.host, e.ws_port, e.ws_path));
            }
            if e.wss_port != 0 {
                addrs.push(format!("wss://{}:{}{}", e.domain, e.wss_port, e.ws_path));
            }
            Instance {
                region: e.region.clone(),
                zone: e.zone.clone(),
                env: String::new(),
                appid: "goim.comet".into(),
                hostname: e.id.clone(),
                addrs,
                version: e.version.clone(),
                latest_timestamp: i64::try_from(e.updated_ms).unwrap_or(0).saturating_mul(1_000_000),
                metadata: InstanceMetadata {
                    addrs: e.host.clone(),
                    conn_count: e.conn_count.to_string(),
                    ip_count: e.ip_count.to_string(),
                    offline: e.offline.to_string(),
                    weight: e.weight.to_string(),
                },
                rooms: e.rooms.clone(),
            }
        })
        .collect();
    v.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, host: &str, conns: u64, weight: u32) -> Arc<EdgeReport> {
        Arc::new(EdgeReport {
            id: id.into(),
            host: host.into(),
            domain: format!("{id}.example"),
            conn_count: conns,
            weight,
            tcp_port: 3101,
            ws_port: 3102,
            ws_path: "/sub".into(),
            ..EdgeReport::default()
        })
    }

    #[test]
    fn top_filters_by_type_prefix_and_sorts() {
        let rooms = vec![
            ("test://1".to_string(), 5),
            ("test://2/x".to_string(), 9),
            ("testing://3".to_string(), 7),
            ("live://4".to_string(), 100),
            ("lobby".to_string(), 50),
        ];
        let t = online_top(rooms.clone(), "test", 10);
        assert_eq!(
            t,
            vec![
                Top { room_id: "2".into(), count: 9 },
                Top { room_id: "3".into(), count: 7 },
                Top { room_id: "1".into(), count: 5 }
            ]
        );
        assert_eq!(online_top(rooms.clone(), "test://", 1), vec![Top { room_id: "2".into(), count: 9 }]);
        assert!(online_top(rooms, "none", 5).is_empty());
        assert_eq!(serde_json::to_string(&Top { room_id: "1".into(), count: 2 }).unwrap(), r#"{"room_id":"1","count":2}"#);
    }

    #[test]
    fn weighted_orders_by_load_and_falls_back_to_the_domain() {
        let cfg = NodesConfig::default();
        let b = BackoffConfig::default();
        let edges = vec![edge("a", "10.0.0.1", 30, 10), edge("b", "10.0.0.2", 5, 10), edge("c", "10.0.0.3", 40, 20)];
        let r = nodes_weighted(&edges, "ios", &cfg, &b);
        assert_eq!(r.nodes, vec!["10.0.0.2", "10.0.0.3", "10.0.0.1"]);
        assert_eq!(nodes_weighted(&edges, "web", &cfg, &b).nodes, vec!["b.example", "c.example", "a.example"]);
        let r = nodes_weighted(&[], "", &cfg, &b);
        assert_eq!(r.nodes, vec!["conn.goim.io"]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"domain":"conn.goim.io","tcp_port":3101,"ws_port":3102,"wss_port":3103,"heartbeat":240,"heartbeat_max":2,"nodes":["conn.goim.io"],"backoff":{"max_delay":300,"base_delay":3,"factor":1.8,"jitter":0.3}}"#
        );
        let many: Vec<_> = (0..8).map(|i| edge(&format!("e{i}"), &format!("h{i}"), i, 10)).collect();
        assert_eq!(nodes_weighted(&many, "", &cfg, &b).nodes.len(), 5);
    }

    #[test]
    fn instances_carry_discovery_fields() {
        let i = instances(&[edge("b", "h2", 3, 10), edge("a", "h1", 1, 10)]);
        assert_eq!(i[0].hostname, "a");
        assert_eq!(i[0].addrs, vec!["tcp://h1:3101", "ws://h1:3102/sub"]);
        assert_eq!(i[1].metadata.conn_count, "3");
    }
}
