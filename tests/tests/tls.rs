//! TLS on the edge (`[tls]`, `listen.wss`, `listen.tls`), with a self-signed certificate generated at
//! test time: goim clients over TLS-TCP and over WSS authenticate, heartbeat and get room and user
//! pushes (large ones too, across TLS records); plaintext and broken handshakes on a TLS port are
//! closed, not hung; the drain's close 1001 "going away" reaches a WSS client; a TLS client that
//! stops reading is closed as `slow_consumer`; the admission limits hold on the TLS listeners; a
//! missing or mismatched certificate is a clear start-up error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The name the test certificate is for (and 127.0.0.1).
const NAME: &str = "localhost";

/// A self-signed certificate and its key as PEM files in a temp dir.
struct TestCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

fn self_signed() -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec![NAME.to_string(), "127.0.0.1".to_string()])
        .expect("generate a self-signed certificate");
    let dir = tempfile::Builder::new().prefix("goim-tls-").tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let pem = certified.cert.pem();
    std::fs::write(&cert, &pem).expect("write cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    TestCert { _dir: dir, cert, key, pem }
}

async fn closed_count(edge: &Edge, nats: &NatsServer, reason: &str) -> u64 {
    edge.stats(nats).await["closed"][reason].as_u64().unwrap_or(0)
}

/// Wait (bounded) until the edge has counted `n` closes for `reason`.
async fn await_closed(edge: &Edge, nats: &NatsServer, reason: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = closed_count(edge, nats, reason).await;
        if seen >= n {
            return;
        }
        assert!(Instant::now() < deadline, "closed.{reason} = {seen}, expected {n}: {}", edge.stats(nats).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read a raw connection until the server closes it, within `within`: the bytes it sent first (a
/// TLS alert, say). Panics if it stays open.
async fn read_until_closed(stream: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {within:?} ({} bytes received)", got.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goim_over_tls_tcp_and_wss() {
    let nats = NatsServer::start().await;
    let cert = self_signed();
    let mut edge = Edge::start(&nats, EdgeOpts::new().tls(&cert.cert, &cert.key)).await;
    let tls = tls_connector(cert.pem.as_bytes());
    let room = "live://tls";

    // Trusting only the test certificate: the handshakes prove the edge serves it.
    let mut t = Client::connect_tls(edge.tls_addr(), &tls, NAME).await;
    let mut w = Client::connect_wss(edge.wss_addr(), &tls, NAME).await;
    // The plain listeners still serve alongside.
    let mut p = Client::connect_auth(Transport::Tcp, &edge, Auth::new(3).room(room)).await;
    // (User pushes reach only the ops a connection accepts.)
    t.auth(&Auth::new(1).room(room).accepts(&[1000])).await;
    w.auth(&Auth::new(2).room(room).accepts(&[1000])).await;
    assert_eq!(t.heartbeat().await, 3, "op-3 room count over TLS-TCP");
    assert_eq!(w.heartbeat().await, 3, "op-3 room count over WSS");

    nats.publish("room.live.tls", b"hello").await;
    for c in [&mut t, &mut w, &mut p] {
        c.expect_push(1000, b"hello").await;
    }
    nats.publish("user.1", b"to-1").await;
    nats.publish("user.2", b"to-2").await;
    t.expect_push(1000, b"to-1").await;
    w.expect_push(1000, b"to-2").await;

    // Larger than a TLS record (16 KiB): several records, reassembled by the client.
    let mut big = Vec::with_capacity(100_000);
    for i in 0..100_000u32 {
        big.push(b'a' + (i % 26) as u8);
    }
    nats.publish("room.live.tls", &big).await;
    for c in [&mut t, &mut w, &mut p] {
        c.expect_push(1000, &big).await;
    }
    // And many small ones, coalesced into writes of several packets.
    for i in 0..200 {
        nats.publish("room.live.tls", format!("m{i}").as_bytes()).await;
    }
    for c in [&mut t, &mut w] {
        for i in 0..200 {
            c.expect_push(1000, format!("m{i}").as_bytes()).await;
        }
    }

    let stats = edge.stats(&nats).await;
    assert_eq!(stats["connections"].as_u64(), Some(3), "{stats}");
    assert_eq!(stats["authenticated"].as_u64(), Some(3), "{stats}");
    // A client that ends its TLS session is just gone.
    t.shutdown_write().await;
    t.expect_closed(WAIT).await;
    await_closed(&edge, &nats, "client_gone", 1).await;
    assert_eq!(w.heartbeat().await, 2);
    edge.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_tls_port_is_closed() {
    let nats = NatsServer::start().await;
    let cert = self_signed();
    // A long handshake timeout: the closes below must be refusals, not timeouts.
    let mut edge = Edge::start(&nats, EdgeOpts::new().tls(&cert.cert, &cert.key).handshake_timeout_ms(30_000)).await;
    let within = Duration::from_secs(5);

    // A goim client speaking plain TCP to the TLS port.
    let mut c = Client::connect_tcp(edge.tls_addr()).await;
    c.send(&Packet::new(1, OP_AUTH, 1, Auth::new(1).body())).await;
    c.expect_closed(within).await;
    // A plain WebSocket upgrade to the WSS port.
    let started = Instant::now();
    let r = Client::connect_ws_path(edge.wss_addr(), "/sub").await;
    assert!(r.is_err(), "a plain WebSocket upgrade on the WSS port must fail");
    assert!(started.elapsed() < within, "refused only after {:?}", started.elapsed());
    await_closed(&edge, &nats, "protocol_error", 2).await;

    // Still serving TLS clients.
    let tls = tls_connector(cert.pem.as_bytes());
    let mut t = Client::connect_tls(edge.tls_addr(), &tls, NAME).await;
    t.auth(&Auth::new(7)).await;
    assert_eq!(edge.stats(&nats).await["connections"].as_u64(), Some(1));
    edge.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_handshakes_are_closed() {
    let nats = NatsServer::start().await;
    let cert = self_signed();
    let timeout_ms = 3_000;
    let mut edge = Edge::start(&nats, EdgeOpts::new().tls(&cert.cert, &cert.key).handshake_timeout_ms(timeout_ms)).await;
    let refused_within = Duration::from_millis(timeout_ms / 2);

    // A client that does not trust the certificate gives up on the handshake.
    let other = self_signed();
    let distrustful = tls_connector(other.pem.as_bytes());
    let r = connect_tls_stream(edge.tls_addr(), &distrustful, NAME).await;
    let Err(e) = r else { panic!("a client trusting another certificate must fail its handshake") };
    assert!(e.contains("TLS handshake"), "{e}");

    // A handshake record that does not parse: refused at once (well within the handshake timeout).
    let mut s = TcpStream::connect(edge.tls_addr()).await.expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]).await.expect("write");
    let started = Instant::now();
    let sent = read_until_closed(&mut s, refused_within, "garbage ClientHello").await;
    assert!(started.elapsed() < refused_within);
    // At most a TLS alert record (content type 21) before the close.
    assert!(sent.is_empty() || sent[0] == 21, "server answered {sent:?}");
    await_closed(&edge, &nats, "protocol_error", 1).await;

    // A ClientHello cut short, then silence: closed by the handshake timeout.
    let mut s = TcpStream::connect(edge.tls_addr()).await.expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("write");
    let started = Instant::now();
    read_until_closed(&mut s, Duration::from_millis(timeout_ms) + WAIT, "truncated ClientHello").await;
    assert!(started.elapsed() >= Duration::from_millis(timeout_ms / 2), "closed before the timeout");
    await_closed(&edge, &nats, "handshake_timeout", 1).await;

    // Nothing leaked, and TLS clients still get in.
    let tls = tls_connector(cert.pem.as_bytes());
    let mut w = Client::connect_wss(edge.wss_addr(), &tls, NAME).await;
    w.auth(&Auth::new(9)).await;
    assert_eq!(edge.stats(&nats).await["connections"].as_u64(), Some(1));
    edge.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_says_going_away_over_wss() {
    let nats = NatsServer::start().await;
    let cert = self_signed();
    let mut edge = Edge::start(&nats, EdgeOpts::new().tls(&cert.cert, &cert.key).with("edge", "drain_ms", "200")).await;
    let tls = tls_connector(cert.pem.as_bytes());
    let mut w = Client::connect_wss(edge.wss_addr(), &tls, NAME).await;
    let mut t = Client::connect_tls(edge.tls_addr(), &tls, NAME).await;
    w.auth(&Auth::new(1).room("live://drain")).await;
    t.auth(&Auth::new(2).room("live://drain")).await;

    let closes: Vec<_> = [w, t]
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                match c.recv_packet(Duration::from_secs(20)).await {
                    Err(RecvError::Closed(how)) => (c.label, how),
                    other => panic!("{}: expected the drain's close, got {other:?}", c.label),
                }
            })
        })
        .collect();
    let status = tokio::task::block_in_place(|| edge.terminate());
    assert!(status.is_some_and(|s| s.success()), "edge exit: {status:?}");
    let mut hows = Vec::new();
    for close in closes {
        hows.push(close.await.expect("client task"));
    }
    let (label, how) = &hows[0];
    assert!(how.contains("Away") && how.contains("going away"), "{label}: closed by {how}");
    assert!(!hows[1].1.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_closed_as_slow_consumer() {
    const LIMIT: usize = 16384;
    const BODY: usize = 4096;
    const MAX_MESSAGES: usize = 1024; // 4 MiB: far beyond kernel buffers + one record + the limit
    let nats = NatsServer::start().await;
    let cert = self_signed();
    let mut edge = Edge::start(&nats, EdgeOpts::new().tls(&cert.cert, &cert.key).max_outbound_bytes(LIMIT)).await;
    let tls = tls_connector(cert.pem.as_bytes());
    let room = "live://slowtls";
    let mut slow = Client::connect_tls_small_buffers(edge.tls_addr(), &tls, NAME).await.with_label("slow");
    slow.auth(&Auth::new(1).room(room)).await;
    let mut fast = Client::connect_tls(edge.tls_addr(), &tls, NAME).await.with_label("fast");
    fast.auth(&Auth::new(2).room(room)).await;

    let body = |i: usize| {
        let mut b = format!("{i:010}:").into_bytes();
        b.resize(BODY, b'.');
        b
    };
    let mut published = 0;
    while published < MAX_MESSAGES {
        // Two messages (8 KiB, below the limit) per round; the fast client takes each round before
        // the next, so only the client that stopped reading accumulates.
        for _ in 0..2 {
            nats.publish("room.live.slowtls", &body(published)).await;
            fast.expect_push(1000, &body(published)).await;
            published += 1;
        }
        if published % 16 == 0 && closed_count(&edge, &nats, "slow_consumer").await >= 1 {
            break;
        }
    }
    assert_eq!(
        closed_count(&edge, &nats, "slow_consumer").await,
        1,
        "the non-reading TLS client was not closed after {published} x {BODY} B: {}",
        edge.stats(&nats).await
    );
    eprintln!("slow TLS client closed after {published} x {BODY} B published");
    let drained = slow.expect_closed_after_draining(WAIT).await;
    assert!(drained < published, "slow client got {drained} of {published}: it was not cut off");
    assert_eq!(fast.heartbeat().await, 1, "only the slow client left the room");
    assert_eq!(edge.stats(&nats).await["connections"].as_u64(), Some(1));
    edge.assert_alive();
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_certificate_is_a_clear_start_error() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    let write_config = |cert: &Path, key: &Path| {
        std::fs::write(
            &config,
            format!(
                "[listen]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\nwss = \"127.0.0.1:0\"\nreuse_port = false\n\
                 [nats]\nurls = [\"{}\"]\n[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
                nats.url(),
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
        .expect("write config");
    };

    let good = self_signed();
    let missing = dir.path().join("missing-cert.pem");
    write_config(&missing, &good.key);
    let (status, stderr) = goim_nats_tests::edge::run_to_exit(&config).await;
    assert!(!status.success(), "must exit non-zero");
    assert!(stderr.contains(&format!("tls.cert_path {}", missing.display())), "stderr must name the file: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A key that is not the certificate's.
    let other = self_signed();
    write_config(&good.cert, &other.key);
    let (status, stderr) = goim_nats_tests::edge::run_to_exit(&config).await;
    assert!(!status.success(), "must exit non-zero");
    assert!(stderr.contains("tls.key_path") && stderr.contains("does not fit"), "stderr must say what is wrong: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limits_apply_to_the_tls_listeners() {
    let nats = NatsServer::start().await;
    let cert = self_signed();
    let opts = EdgeOpts::new().tls(&cert.cert, &cert.key).with("limits", "max_connections", "1");
    let mut edge = Edge::start(&nats, opts).await;
    let tls = tls_connector(cert.pem.as_bytes());
    let mut first = Client::connect_wss(edge.wss_addr(), &tls, NAME).await;
    first.auth(&Auth::new(1)).await;
    // Over the limit: closed at accept, before any TLS byte is answered.
    let r = connect_tls_stream(edge.tls_addr(), &tls, NAME).await;
    assert!(r.is_err(), "a connect over limits.max_connections must not complete its handshake");
    await_closed(&edge, &nats, "max_connections", 1).await;
    assert_eq!(first.heartbeat().await, 0, "the first client is unaffected");
    assert_eq!(edge.stats(&nats).await["connections"].as_u64(), Some(1));
    edge.assert_alive();
}
