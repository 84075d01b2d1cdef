//! A three-node nats-server cluster per test, on free 127.0.0.1 ports, with JetStream (one store dir
//! per node), monitoring on, and full-mesh routes; nodes can be SIGKILLed and restarted on the same
//! ports and store, and the cluster's state is read from the monitoring endpoints (`/routez`, `/jsz`,
//! `/connz`) and the JetStream API.
//!
//! Ports: client and monitoring ports are picked by each server itself (`-1`, no race with parallel
//! tests) and read back from its log; the route ports must be in every node's config, so they are
//! picked free beforehand (a collision with a parallel test fails that start, which is repeated with
//! new ports). A restarted node keeps all its ports and its store.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::nats::{http_get, nats_server_bin, wait_ready};
use crate::process::Proc;

/// How long one nats-server may take to print "Server is ready" and its route port.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the whole cluster may take to form (routes and a JetStream meta leader).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One node of a [`NatsCluster`].
pub struct ClusterNode {
    /// `server_name` (also its JetStream peer name): `n1`, `n2`, `n3`.
    pub name: String,
    proc: Option<Proc>,
    port: u16,
    cluster_port: u16,
    monitor_port: u16,
    /// How many times it was started.
    pub generation: u32,
}

impl ClusterNode {
    /// `nats://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cluster_port(&self) -> u16 {
        self.cluster_port
    }

    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub fn is_alive(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_wait().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// The node's output so far.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc.as_ref().map(|p| p.log_tail(n)).unwrap_or_default()
    }

    /// GET a monitoring path; None when the node does not answer (dead, starting) or answers non-JSON.
    pub async fn try_monitor(&self, path_and_query: &str) -> Option<Value> {
        try_monitor_port(self.monitor_port, path_and_query).await
    }

    /// GET a monitoring path; panics unless the node answers 200 with JSON.
    pub async fn monitor(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.monitor_port, path_and_query).await;
        assert_eq!(status, 200, "{}: GET {path_and_query}: HTTP {status}: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{}: GET {path_and_query}: bad JSON ({e}): {body}", self.name))
    }

    /// The distinct server names this node has routes to (`/routez`; route pooling opens several
    /// connections per peer).
    pub async fn route_peers(&self) -> Option<BTreeSet<String>> {
        let v = self.try_monitor("/routez").await?;
        Some(
            v["routes"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["remote_name"].as_str().map(String::from)).collect())
                .unwrap_or_default(),
        )
    }

    /// Names of the client connections on this node (`/connz`).
    pub async fn connection_names(&self) -> Option<Vec<String>> {
        let v = self.try_monitor("/connz?limit=10000").await?;
        Some(
            v["connections"]
                .as_array()
                .map(|a| a.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect())
                .unwrap_or_default(),
        )
    }
}

/// Three nats-server processes forming one cluster; killed on drop.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    cluster_name: String,
    pub nodes: Vec<ClusterNode>,
}

impl NatsCluster {
    /// Start three nodes and wait until every node routes to both others and JetStream has a meta
    /// leader with all three peers current.
    pub async fn start() -> NatsCluster {
        let dir = tempfile::Builder::new().prefix("goim-cluster-").tempdir().expect("tempdir");
        let cluster_name = format!("goim-test-{}", std::process::id());
        let mut c = NatsCluster {
            dir,
            cluster_name,
            nodes: (1..=3)
                .map(|i| ClusterNode {
                    name: format!("n{i}"),
                    proc: None,
                    port: 0,
                    cluster_port: 0,
                    monitor_port: 0,
                    generation: 0,
                })
                .collect(),
        };
        // Route ports must be known to every node up front: free ports picked here (bound and released;
        // a port taken meanwhile by a parallel test makes a node fail to start, and the attempt is
        // repeated with new ports). Client and monitoring ports are picked by each server (-1).
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let mut ok = true;
            for i in 0..3 {
                c.nodes[i].cluster_port = routes[i];
                if let Err(e) = c.spawn_node(i, (None, routes[i], None), &routes).await {
                    last_err = format!("{}: {e}", c.nodes[i].name);
                    ok = false;
                    break;
                }
            }
            if ok {
                c.wait_formed(FORM_TIMEOUT).await;
                return c;
            }
            for i in 0..3 {
                c.kill(i);
                let _ = std::fs::remove_dir_all(c.dir.path().join(&c.nodes[i].name));
            }
        }
        panic!("the cluster did not start: {last_err}");
    }

    /// Client URLs of all nodes, n1 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    pub fn node(&self, name: &str) -> &ClusterNode {
        &self.nodes[self.index_of(name)]
    }

    /// SIGKILL node `i` (its store and ports are kept for [`NatsCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// Start node `i` again on its ports and store, routing to every node (bounded retries while a
    /// port is not yet bindable). Does not wait for it to rejoin: see [`NatsCluster::wait_formed`].
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let n = &self.nodes[i];
        let ports = (Some(n.port), n.cluster_port, Some(n.monitor_port));
        let routes: Vec<u16> = self.nodes.iter().map(|n| n.cluster_port).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_err = String::new();
        while Instant::now() < deadline {
            match self.spawn_node(i, ports, &routes).await {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} could not be restarted on its ports {ports:?}: {last_err}", self.nodes[i].name);
    }

    /// `ports`: client (None = -1), route, monitoring (None = -1).
    fn write_config(&self, i: usize, ports: (Option<u16>, u16, Option<u16>), routes: &[u16]) -> PathBuf {
        let p = ports.0.map_or(-1, i32::from);
        let c = ports.1;
        let m = ports.2.map_or(-1, i32::from);
        let name = &self.nodes[i].name;
        let store = self.dir.path().join(name);
        let routes: Vec<String> = routes.iter().map(|r| format!("\"nats-route://127.0.0.1:{r}\"")).collect();
        let conf = format!(
            "server_name: {name:?}\n\
             listen: \"127.0.0.1:{p}\"\n\
             http: \"127.0.0.1:{m}\"\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{\n  name: {cluster:?}\n  listen: \"127.0.0.1:{c}\"\n  routes: [{routes}]\n}}\n",
            store = store.display().to_string(),
            cluster = self.cluster_name,
            routes = routes.join(", "),
        );
        let path = self.dir.path().join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("write node config");
        path
    }

    async fn spawn_node(&mut self, i: usize, ports: (Option<u16>, u16, Option<u16>), routes: &[u16]) -> Result<(), String> {
        let conf = self.write_config(i, ports, routes);
        let node = &mut self.nodes[i];
        node.generation += 1;
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&conf);
        let label = format!("nats-server {}#{}", node.name, node.generation);
        let mut proc = Proc::spawn(&label, cmd).map_err(|e| format!("spawn nats-server: {e}"))?;
        let ports = wait_ready(&mut proc, NODE_READY_TIMEOUT, true).await?;
        node.port = ports.client.ok_or("no client port in the log")?;
        node.cluster_port = ports.route.ok_or("no route port in the log")?;
        node.monitor_port = ports.monitor.ok_or("no monitoring port in the log")?;
        node.proc = Some(proc);
        Ok(())
    }

    /// Wait until every node is up, routes to both others, and sees the same JetStream meta leader
    /// with all three peers (the leader and two current replicas). Panics after `limit`.
    pub async fn wait_formed(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.formed().await {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.nodes.iter().map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(30))).collect();
                panic!("cluster not formed within {limit:?}: {last}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn formed(&mut self) -> Result<(), String> {
        let names: BTreeSet<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let mut leader = None;
        for n in self.nodes.iter_mut() {
            if !n.is_alive() {
                return Err(format!("{} is not running", n.name));
            }
        }
        for n in &self.nodes {
            let peers = n.route_peers().await.ok_or_else(|| format!("{}: no /routez", n.name))?;
            let want: BTreeSet<String> = names.iter().filter(|x| **x != n.name).cloned().collect();
            if peers != want {
                return Err(format!("{} routes to {peers:?}, want {want:?}", n.name));
            }
            let jsz = n.try_monitor("/jsz").await.ok_or_else(|| format!("{}: no /jsz", n.name))?;
            let meta = &jsz["meta_cluster"];
            let l = meta["leader"].as_str().unwrap_or("").to_string();
            if l.is_empty() {
                return Err(format!("{}: no meta leader yet", n.name));
            }
            if meta["cluster_size"].as_u64() != Some(3) {
                return Err(format!("{}: meta cluster_size {}", n.name, meta["cluster_size"]));
            }
            match &leader {
                None => leader = Some(l),
                Some(prev) if *prev != l => return Err(format!("meta leaders differ: {prev} vs {l}")),
                _ => {}
            }
            if n.name == *leader.as_ref().unwrap() {
                let replicas = meta["replicas"].as_array().cloned().unwrap_or_default();
                let current = replicas.iter().filter(|r| r["current"] == Value::Bool(true) && r["offline"] != Value::Bool(true)).count();
                if current != 2 {
                    return Err(format!("meta leader {}: {current} current replicas: {}", n.name, meta["replicas"]));
                }
            }
        }
        Ok(())
    }

    /// For every node (dead ones count 0): how many client connections whose name contains `needle`
    /// it holds.
    pub async fn connections_matching(&self, needle: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let count = match n.connection_names().await {
                Some(names) => names.iter().filter(|x| x.contains(needle)).count(),
                None => 0,
            };
            out.push((n.name.clone(), count));
        }
        out
    }
}

/// GET a monitoring path on 127.0.0.1:`port` within 3 s; None when nothing answers 200 with JSON.
pub async fn try_monitor_port(port: u16, path_and_query: &str) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let text = String::from_utf8_lossy(&resp).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fut).await.ok().flatten()
}

/// A free loopback TCP port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Stream cluster state as the JetStream API reports it (`$JS.API.STREAM.INFO.<stream>`).
#[derive(Debug, Clone)]
pub struct StreamCluster {
    pub leader: String,
    /// (name, current, offline, lag) of every non-leader replica.
    pub replicas: Vec<(String, bool, bool, u64)>,
    pub num_replicas: usize,
    pub last_seq: u64,
}

impl StreamCluster {
    /// The leader exists and every other configured replica is current and online.
    pub fn healthy(&self) -> bool {
        !self.leader.is_empty()
            && self.replicas.len() + 1 == self.num_replicas
            && self.replicas.iter().all(|(_, current, offline, _)| *current && !*offline)
    }
}

/// `$JS.API.STREAM.INFO.<stream>` through `client`, with a deadline; None when JetStream does not answer
/// (no leader, election in progress) or the stream is missing.
pub async fn stream_cluster(client: &async_nats::Client, stream: &str, t: Duration) -> Option<StreamCluster> {
    let req = client.request(format!("$JS.API.STREAM.INFO.{stream}"), "{}".into());
    let msg = tokio::time::timeout(t, req).await.ok()?.ok()?;
    let v: Value = serde_json::from_slice(&msg.payload).ok()?;
    if v.get("error").is_some() {
        return None;
    }
    let cl = &v["cluster"];
    Some(StreamCluster {
        leader: cl["leader"].as_str().unwrap_or("").to_string(),
        replicas: cl["replicas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap_or("").to_string(),
                            r["current"].as_bool().unwrap_or(false),
                            r["offline"].as_bool().unwrap_or(false),
                            r["lag"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        num_replicas: v["config"]["num_replicas"].as_u64().unwrap_or(1) as usize,
        last_seq: v["state"]["last_seq"].as_u64().unwrap_or(0),
    })
}

/// Ask the stream's leader to step down, preferring `preferred` as the next leader (honoured by
/// nats-server ≥ 2.11; an older server elects any replica). Returns the answer.
pub async fn stream_stepdown(client: &async_nats::Client, stream: &str, preferred: &str) -> Option<Value> {
    let body = serde_json::json!({"placement": {"preferred": preferred}}).to_string();
    let req = client.request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"), body.into());
    let msg = tokio::time::timeout(Duration::from_secs(5), req).await.ok()?.ok()?;
    serde_json::from_slice(&msg.payload).ok()
}
