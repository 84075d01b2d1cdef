//! (a) The goim operations over TCP and WebSocket: auth, heartbeat counts, change room, sub/unsub,
//! echo of every other op, packets before auth ignored, WebSocket framing rules.

use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use tokio_tungstenite::tungstenite::Message;

fn other(t: Transport) -> Transport {
    match t {
        Transport::Tcp => Transport::Ws,
        Transport::Ws => Transport::Tcp,
    }
}

async fn operations(t: Transport) {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;

    // Packets before auth are ignored: no reply, no disconnect. The first reply must be op 8 with the
    // auth packet's ver and seq (request_with panics on any other reply).
    let mut c = Client::connect(t, &edge).await.with_label("c");
    c.send(&Packet::new(1, OP_HEARTBEAT, 101, b"")).await;
    c.send(&Packet::new(1, OP_SEND_MSG, 102, b"hello")).await;
    c.send(&Packet::new(1, OP_CHANGE_ROOM, 103, b"live://9"))
        .await;
    c.send(&Packet::new(1, OP_SUB, 104, b"1000")).await;
    c.send(&Packet::new(1, 1000, 105, b"")).await;
    c.send(&Packet::new(1, OP_HANDSHAKE, 106, b"")).await;
    let auth = Auth::new(1)
        .key("key-c")
        .room("live://1000")
        .accepts(&[1000]);
    let r = c.request_with(5, OP_AUTH, 77, &auth.body()).await;
    assert_eq!(
        r,
        Packet::new(5, OP_AUTH_REPLY, 77, vec![]),
        "auth reply must be op 8, ver/seq echoed, empty body"
    );

    // Heartbeat: op 3, ver/seq echoed, int32 = members of the room on this edge.
    let r = c.request_with(3, OP_HEARTBEAT, 9, b"any body").await;
    assert_eq!((r.ver, r.op, r.seq), (3, OP_HEARTBEAT_REPLY, 9), "{r:?}");
    assert_eq!(r.body_i32(), 1, "one member in live://1000");
    // The ignored change-room before auth must not have moved it: still in live://1000.

    let mut d = Client::connect_auth(other(t), &edge, Auth::new(2).room("live://1000"))
        .await
        .with_label("d");
    let mut e = Client::connect_auth(t, &edge, Auth::new(3))
        .await
        .with_label("e-no-room");
    let mut f = Client::connect_auth(other(t), &edge, Auth::new(4).room("live://2000"))
        .await
        .with_label("f");
    assert_eq!(c.heartbeat().await, 2);
    assert_eq!(d.heartbeat().await, 2);
    assert_eq!(e.heartbeat().await, 0, "a connection in no room counts 0");
    assert_eq!(f.heartbeat().await, 1);
    // ver 0, as the goim TCP benchmark client sends it.
    let r = e.request_with(0, OP_HEARTBEAT, 1234, b"").await;
    assert_eq!(
        (r.ver, r.op, r.seq, r.body_i32()),
        (0, OP_HEARTBEAT_REPLY, 1234, 0)
    );

    // Change room: op 13 echoing the body, ver and seq.
    let r = c.request_with(2, OP_CHANGE_ROOM, 100, b"live://2000").await;
    assert_eq!(
        r,
        Packet::new(2, OP_CHANGE_ROOM_REPLY, 100, b"live://2000".to_vec())
    );
    assert_eq!(c.heartbeat().await, 2, "c and f in live://2000");
    assert_eq!(d.heartbeat().await, 1, "d alone in live://1000 now");
    assert_eq!(f.heartbeat().await, 2);
    // Into a room from no room, then out again.
    e.change_room("live://1000").await;
    assert_eq!(e.heartbeat().await, 2);
    assert_eq!(d.heartbeat().await, 2);
    e.change_room("").await;
    assert_eq!(e.heartbeat().await, 0);
    assert_eq!(d.heartbeat().await, 1);

    // Sub / unsub: echoed bodies, ver and seq.
    let r = c.request_with(4, OP_SUB, 200, b"1000,1001").await;
    assert_eq!(r, Packet::new(4, OP_SUB_REPLY, 200, b"1000,1001".to_vec()));
    let r = c.request_with(6, OP_UNSUB, 201, b"1000,1001").await;
    assert_eq!(
        r,
        Packet::new(6, OP_UNSUB_REPLY, 201, b"1000,1001".to_vec())
    );
    // A bad element makes the whole request ignored, but it is still echoed.
    let r = c.request_with(1, OP_SUB, 202, b"1000,x").await;
    assert_eq!(r, Packet::new(1, OP_SUB_REPLY, 202, b"1000,x".to_vec()));

    // Every other op after auth: echoed with same op/ver/seq and an empty body.
    let mut seq = 300;
    for op in [
        OP_HANDSHAKE,
        OP_SEND_MSG,
        OP_AUTH,
        1000,
        1001,
        5000,
        1,
        5,
        6,
        9,
        10,
        11,
    ] {
        seq += 1;
        let body: &[u8] = if op == OP_AUTH {
            &auth.body()
        } else {
            b"some body"
        };
        let r = c.request_with(7, op, seq, body).await;
        assert_eq!(
            r,
            Packet::new(7, op, seq, vec![]),
            "op {op} after auth must be echoed with an empty body"
        );
    }
    // The echoed op 7 changed nothing: c is still in live://2000 with f.
    assert_eq!(c.heartbeat().await, 2);
    assert_eq!(f.heartbeat().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_tcp() {
    operations(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_websocket() {
    operations(Transport::Ws).await;
}

/// goim parses only the first packet of a WebSocket message, accepts text frames, and upgrades only
/// at `/sub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing_rules() {
    let nats = NatsServer::start().await;
    // On one runtime thread (`edge.worker_threads`), the set-up BENCHMARKS.md S4 recommends for idle
    // connections: everything works the same.
    let edge = Edge::start(&nats, EdgeOpts::new().with("edge", "worker_threads", "1")).await;

    let bad = Client::connect_ws_path(edge.ws_addr(), "/other").await;
    assert!(bad.is_err(), "upgrade at /other must be refused");

    let mut c = Client::connect_auth(Transport::Ws, &edge, Auth::new(1).room("live://1")).await;
    // Two packets in one message: only the first is answered.
    let mut two = Packet::new(1, OP_HEARTBEAT, 11, b"").encode();
    two.extend(Packet::new(1, OP_HEARTBEAT, 12, b"").encode());
    c.send_raw(&two).await;
    let r = c
        .recv_packet(WAIT)
        .await
        .expect("reply to the first packet");
    assert_eq!((r.op, r.seq), (OP_HEARTBEAT_REPLY, 11));
    let r = c.request_with(1, OP_HEARTBEAT, 13, b"").await;
    assert_eq!(
        (r.op, r.seq, r.body_i32()),
        (OP_HEARTBEAT_REPLY, 13, 1),
        "the second packet of a frame was answered"
    );

    // A text frame carrying a packet (all header bytes < 0x80, so valid UTF-8).
    let p = Packet::new(1, OP_HEARTBEAT, 14, b"").encode();
    let text = String::from_utf8(p).expect("ascii header");
    c.send_ws_message(Message::Text(text.into())).await.unwrap();
    let r = c.recv_packet(WAIT).await.expect("reply to a text frame");
    assert_eq!((r.op, r.seq, r.body_i32()), (OP_HEARTBEAT_REPLY, 14, 1));
}
