//! Checks of the harness itself against a real nats-server (no edge needed).

use std::time::Duration;

use goim_nats_tests::edge::parse_ready_line;
use goim_nats_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_client_pub_hpub_sub_and_request() {
    let nats = NatsServer::start().await;
    let mut sub = nats.raw().await;
    sub.subscribe("room.live.1000").await;
    let mut p = nats.raw().await;
    p.hpublish("room.live.1000", &[("Goim-Op", "1001")], br#"{"test":1}"#)
        .await;
    p.publish("room.live.1000", b"plain").await;
    let m = sub.next_msg(WAIT).await.expect("HMSG");
    assert_eq!(m.subject, "room.live.1000");
    assert_eq!(m.header("Goim-Op"), Some("1001"));
    assert_eq!(m.payload, br#"{"test":1}"#);
    let m = sub.next_msg(WAIT).await.expect("MSG");
    assert!(m.headers.is_empty());
    assert_eq!(m.payload, b"plain");
    assert!(sub.next_msg(Duration::from_millis(100)).await.is_none());

    // A responder answering on the reply subject.
    let mut responder = nats.raw().await;
    responder.subscribe("svc.echo").await;
    let task = tokio::spawn(async move {
        let m = responder.next_msg(WAIT).await.expect("request");
        let reply = m.reply.clone().expect("reply subject");
        responder.publish(&reply, &m.payload).await;
    });
    let mut req = nats.raw().await;
    let r = req.request("svc.echo", b"ping?", WAIT).await;
    assert_eq!(r.payload, b"ping?");
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_shows_subscriptions_and_restart_keeps_ports() {
    let mut nats = NatsServer::start_with(NatsOpts { websocket: true }).await;
    assert!(nats.ws_port().is_some());
    let (port, mport) = (nats.port(), nats.monitor_port());
    // Raw clients are excluded from `subscriptions()`, so subscribe from a client with another name.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"CONNECT {\"verbose\":false,\"name\":\"other\"}\r\nSUB room.a 1\r\nPING\r\n")
        .await
        .unwrap();
    nats.wait_subscription("room.a", true, Duration::from_secs(5))
        .await;
    drop(s);
    nats.wait_subscription("room.a", false, Duration::from_secs(5))
        .await;

    nats.restart().await;
    assert_eq!((nats.port(), nats.monitor_port()), (port, mport));
    assert!(nats.is_alive());
    let mut sub = nats.raw().await;
    sub.subscribe("x").await;
    nats.publish("x", b"after restart").await;
    assert_eq!(sub.next_msg(WAIT).await.unwrap().payload, b"after restart");
    let varz = nats.monitor("/varz").await;
    assert_eq!(varz["port"].as_u64(), Some(port as u64));
}

#[test]
fn ready_line_parsing() {
    let (id, tcp, ws) = parse_ready_line("goim-edge ready id=e1 tcp=127.0.0.1:4000 ws=-");
    assert_eq!(id, "e1");
    assert_eq!(tcp.unwrap().port(), 4000);
    assert!(ws.is_none());
}

#[test]
fn subject_map_check() {
    for ok in [
        "room.live.1000",
        "room.live.1=0D=0A",
        "user.-5",
        "key.a=2Eb",
        "broadcast",
        "ctl.kick",
        "_INBOX.x.*",
    ] {
        assert!(subject_in_map(ok), "{ok}");
    }
    for bad in [
        "room.>",
        "room.live.*",
        "x",
        "PUB",
        "room.live.a b",
        "ingress.room.x",
        "roomx",
        "room..a",
    ] {
        assert!(!subject_in_map(bad), "{bad}");
    }
}

#[test]
fn packet_codec() {
    let p = Packet::new(1, 2, 3, b"ab".to_vec());
    assert_eq!(p.encode(), raw_packet(18, 16, 1, 2, 3, b"ab"));
    let mut body = Packet::new(1, 1000, 0, b"x".to_vec()).encode();
    body.extend(Packet::new(1, 1001, 0, Vec::new()).encode());
    let inner = unwrap_raw(&body, "t");
    assert_eq!(inner.len(), 2);
    assert_eq!((inner[0].op, inner[1].op), (1000, 1001));
}
