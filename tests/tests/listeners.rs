//! Listeners: SO_REUSEPORT lets several edge processes share one TCP and one WebSocket port, and
//! without it a second edge on a taken port refuses to start with a clear error.


use goim_nats_tests::goim::*;
use goim_nats_tests::*;

/// A loopback port that is free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn shared_port_opts(tcp: u16, ws: u16) -> EdgeOpts {
    let mut o = EdgeOpts::new();
    o.set_str("listen", "tcp", &format!("127.0.0.1:{tcp}"));
    o.set_str("listen", "ws", &format!("127.0.0.1:{ws}"));
    o.set("listen", "reuse_port", "true");
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_share_one_port_with_reuse_port() {
    let nats = NatsServer::start().await;
    let (tcp, ws) = (free_port(), free_port());
    let a = Edge::start(&nats, shared_port_opts(tcp, ws)).await;
    let b = Edge::start(&nats, shared_port_opts(tcp, ws)).await;
    assert_eq!(a.tcp_addr(), b.tcp_addr());
    assert_eq!(a.ws_addr(), b.ws_addr());

    // The kernel spreads connections over both listeners by hash; with 24 connections per port the
    // chance that one edge gets none is 2^-23.
    let mut clients = Vec::new();
    for i in 0..24 {
        let transport = if i % 2 == 0 { Transport::Tcp } else { Transport::Ws };
        clients.push(Client::connect_auth(transport, &a, Auth::new(100 + i).room("live://shared")).await);
        let mut c = match transport {
            Transport::Tcp => Client::connect_tcp(a.tcp_addr()).await,
            Transport::Ws => Client::connect_ws(a.ws_addr()).await,
        };
        c.auth(&Auth::new(200 + i).room("live://shared")).await;
        clients.push(c);
    }
    let sa = a.stats(&nats).await;
    let sb = b.stats(&nats).await;
    let (na, nb) = (sa["authenticated"].as_u64().unwrap_or(0), sb["authenticated"].as_u64().unwrap_or(0));
    assert_eq!(na + nb, 48, "every client authenticated on one of the two edges: {sa} {sb}");
    assert!(na > 0 && nb > 0, "both edges must take connections on the shared ports: a={na} b={nb}");

    // Whichever edge a client landed on, a room push reaches it.
    nats.publish("room.live.shared", b"{\"all\":1}").await;
    for c in &mut clients {
        c.expect_push(1000, b"{\"all\":1}").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_without_reuse_port_is_a_clear_start_error() {
    let nats = NatsServer::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ntcp = \"127.0.0.1:{port}\"\nws = \"127.0.0.1:0\"\nreuse_port = false\n[nats]\nurls = [\"{}\"]\n",
            nats.url()
        ),
    )
    .expect("write config");
    let (status, stderr) = goim_nats_tests::edge::run_to_exit(&config).await;
    assert!(!status.success(), "must exit non-zero");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "stderr must name the address: {stderr}"
    );
    drop(taken);
}
