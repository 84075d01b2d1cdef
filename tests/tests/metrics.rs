//! The edge's `/metrics` (Prometheus text) and `/healthz` on its HTTP listener: values follow
//! connections, deliveries and closes; health follows the NATS connections.

use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::*;

/// The value of the sample `name` (with its label set, if any) in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_metric(edge: &Edge, name: &str, want: u64) -> String {
    poll(&format!("{name} = {want}"), 200, Duration::from_millis(25), || async {
        let (status, body) = nats::http_get(edge.http_addr().port(), "/metrics").await;
        (status == 200 && sample(&body, name) == Some(want)).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connections_deliveries_and_closes_and_health_follows_nats() {
    let mut nats = NatsServer::start().await;
    // A short grace: an HTTP session without its stream ends 100 ms after the stream does.
    let opts = EdgeOpts::new().with("listen", "http", "\"127.0.0.1:0\"").with("listen", "http_session_grace_ms", "100");
    let edge = Edge::start(&nats, opts).await;
    let port = edge.http_addr().port();
    let first = wait_metric(&edge, "goim_edge_connections", 0).await;
    assert!(first.contains("# TYPE goim_edge_deliveries_total counter"), "{first}");
    assert_eq!(sample(&first, "goim_edge_authenticated_total"), Some(0), "{first}");

    let mut tcp = Client::connect_auth(Transport::Tcp, &edge, Auth::new(1).room("live://m")).await;
    let ws = Client::connect_auth(Transport::Ws, &edge, Auth::new(2).room("live://m")).await;
    wait_metric(&edge, "goim_edge_authenticated_total", 2).await;
    let body = wait_metric(&edge, "goim_edge_connections", 2).await;
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"tcp\"}"), Some(1), "{body}");
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"ws\"}"), Some(1), "{body}");
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"http\"}"), Some(0), "{body}");

    for i in 0..3 {
        nats.publish("room.live.m", format!("m{i}").as_bytes()).await;
        tcp.expect_push(1000, format!("m{i}").as_bytes()).await;
    }
    let body = wait_metric(&edge, "goim_edge_deliveries_total", 6).await;
    assert!(sample(&body, "goim_edge_writes_total").is_some_and(|w| w >= 2), "{body}");
    // Two clients in one room: one room, one own subscription for it plus the per-edge
    // `user.*`/`key.*` wildcards; every write of six pushes (and two auth replies) put bytes out.
    assert_eq!(sample(&body, "goim_edge_rooms"), Some(1), "{body}");
    let subs = sample(&body, "goim_edge_nats_subscriptions").expect("goim_edge_nats_subscriptions");
    assert!(subs >= 2, "room + wildcards: {body}");
    assert!(sample(&body, "goim_edge_bytes_written_total").is_some_and(|b| b >= 6 * 16), "{body}");
    assert_eq!(sample(&body, "goim_edge_nats_reconnects_total"), Some(0), "{body}");
    // Push latency: one observation per write carrying pushes (the TCP client alone saw three).
    let body = poll("push latency observed", 200, Duration::from_millis(25), || async {
        let body = nats::http_get(port, "/metrics").await.1;
        sample(&body, "goim_edge_push_latency_seconds_count").is_some_and(|n| n >= 3).then_some(body)
    })
    .await;
    let count = sample(&body, "goim_edge_push_latency_seconds_count");
    assert_eq!(sample(&body, "goim_edge_push_latency_seconds_bucket{le=\"+Inf\"}"), count, "{body}");
    assert!(sample(&body, "goim_edge_push_latency_seconds_bucket{le=\"2.5\"}") == count, "on loopback every push is written within 2.5 s: {body}");
    let mut other = Client::connect_auth(Transport::Tcp, &edge, Auth::new(3).room("live://n")).await;
    let body = wait_metric(&edge, "goim_edge_rooms", 2).await;
    assert_eq!(sample(&body, "goim_edge_nats_subscriptions"), Some(subs + 1), "{body}");
    other.change_room("").await;
    let body = wait_metric(&edge, "goim_edge_rooms", 1).await;
    assert_eq!(sample(&body, "goim_edge_nats_subscriptions"), Some(subs), "{body}");

    // An HTTP session counts as a connection of transport "http".
    let sse = goim_nats_tests::http::Sse::open(edge.http_addr(), &Auth::new(4).room("live://m").body()).await.expect("SSE session");
    let body = wait_metric(&edge, "goim_edge_connections", 4).await;
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"http\"}"), Some(1), "{body}");
    drop(sse);
    let body = wait_metric(&edge, "goim_edge_connections", 3).await;
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"http\"}"), Some(0), "{body}");

    drop(ws);
    let body = wait_metric(&edge, "goim_edge_connections", 2).await;
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"ws\"}"), Some(0), "{body}");
    assert_eq!(sample(&body, "goim_edge_connections_by_transport{transport=\"tcp\"}"), Some(2), "{body}");
    assert_eq!(sample(&body, "goim_edge_closed_total{reason=\"client_gone\"}"), Some(2), "the SSE session (expired) and the WebSocket: {body}");

    // Health: up with NATS, 503 while it is down, up again after it returns.
    assert_eq!(nats::http_get(port, "/healthz").await.0, 200);
    nats.kill();
    poll("healthz 503 with NATS down", 200, Duration::from_millis(50), || async {
        (nats::http_get(port, "/healthz").await.0 == 503).then_some(())
    })
    .await;
    let body = nats::http_get(port, "/metrics").await.1;
    assert!(sample(&body, "goim_edge_nats_connected").is_some_and(|n| n < sample(&body, "goim_edge_nats_connections").unwrap_or(0)), "{body}");
    nats.restart().await;
    poll("healthz 200 after NATS returned", 400, Duration::from_millis(50), || async {
        (nats::http_get(port, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let body = nats::http_get(port, "/metrics").await.1;
    assert!(sample(&body, "goim_edge_nats_reconnects_total").is_some_and(|n| n >= 1), "{body}");
}

/// goim-authsvc's and goim-history's `/metrics`: their counters, moving as tokens are minted and
/// history is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authsvc_and_history_metrics_follow_their_counters() {
    use goim_nats_tests::authsvc::{AuthSvc, AuthSvcOpts, KeyDir};
    use goim_nats_tests::history::{History, HistoryOpts, HISTORY_API_KEY};

    let mut nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let auth = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let metric = |addr: std::net::SocketAddr, name: &'static str| async move {
        let (status, body) = nats::http_get(addr.port(), "/metrics").await;
        assert_eq!(status, 200, "{body}");
        sample(&body, name)
    };
    let before = metric(auth.http, "goim_authsvc_minted_http").await.expect("goim_authsvc_minted_http");
    let (status, _) = auth.mint_http(&serde_json::json!({"mid": 7})).await;
    assert_eq!(status, 200);
    assert_eq!(metric(auth.http, "goim_authsvc_minted_http").await, Some(before + 1));
    // The callout's counters are there too (zero: this authsvc serves no callout; the counting itself
    // is tests/tests/callout.rs').
    assert_eq!(metric(auth.http, "goim_authsvc_callout_requests").await, Some(0));

    let history = History::start(&nats, HistoryOpts::new()).await;
    let reads = metric(history.http, "goim_history_reads").await.expect("goim_history_reads");
    let (status, _) = history.get_http("room=live%3A%2F%2F1", Some(HISTORY_API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(metric(history.http, "goim_history_reads").await, Some(reads + 1));

    // Health follows NATS for both: 503 while it is down, 200 (and a reconnect counted) after.
    for addr in [auth.http, history.http] {
        assert_eq!(nats::http_get(addr.port(), "/healthz").await.0, 200);
        assert_eq!(metric(addr, if addr == auth.http { "goim_authsvc_nats_reconnects_total" } else { "goim_history_nats_reconnects_total" }).await, Some(0));
    }
    nats.kill();
    for addr in [auth.http, history.http] {
        let body = poll("healthz 503 with NATS down", 200, Duration::from_millis(50), || async {
            let (status, body) = nats::http_get(addr.port(), "/healthz").await;
            (status == 503).then_some(body)
        })
        .await;
        assert!(body.contains("NATS"), "{body}");
    }
    nats.restart().await;
    for (addr, prefix) in [(auth.http, "goim_authsvc"), (history.http, "goim_history")] {
        poll("healthz 200 after NATS returned", 400, Duration::from_millis(50), || async {
            (nats::http_get(addr.port(), "/healthz").await.0 == 200).then_some(())
        })
        .await;
        let body = nats::http_get(addr.port(), "/metrics").await.1;
        assert!(sample(&body, &format!("{prefix}_nats_reconnects_total")).is_some_and(|n| n >= 1), "{body}");
        assert_eq!(sample(&body, &format!("{prefix}_nats_connected")), Some(1), "{body}");
    }
}
