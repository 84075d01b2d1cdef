//! The example chatbot (examples/chatbot, binary goim-chatbot) against a real nats-server and edge:
//! goim clients send op 4, the bot consumes `ingress.>` in a queue group and answers into the room
//! with a `Goim-Op` header; replicas share the messages, each answered exactly once.

use std::collections::BTreeMap;

use goim_nats_tests::chatbot::Chatbot;
use goim_nats_tests::{Auth, Client, Edge, EdgeOpts, NatsServer, Transport};
use serde_json::Value;

fn text(p: &goim_nats_tests::Packet) -> String {
    String::from_utf8_lossy(&p.body).to_string()
}

/// op 4 and its echo (same op and seq, empty body: goim's behaviour).
async fn say(c: &mut Client, body: &str) {
    let r = c.request(4, body.as_bytes()).await;
    assert_eq!((r.op, r.body.len()), (4, 0), "{}: op 4 is echoed with an empty body: {r:?}", c.label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_answers_op_4_into_the_senders_room() {
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let _bot = Chatbot::start(&nats, "bot-a", "op = 1001").await;

    let mut sender =
        Client::connect_auth(Transport::Ws, &edge, Auth::new(7).room("chat://1").accepts(&[1000])).await.with_label("sender-ws");
    let mut member =
        Client::connect_auth(Transport::Tcp, &edge, Auth::new(8).room("chat://1")).await.with_label("member-tcp");
    let mut elsewhere =
        Client::connect_auth(Transport::Tcp, &edge, Auth::new(9).room("chat://2")).await.with_label("other-room");

    // An echo reaches every member of the sender's room (room pushes ignore accept sets), with the
    // configured op.
    say(&mut sender, "hello").await;
    for c in [&mut sender, &mut member] {
        let p = c.next_push().await;
        assert_eq!((p.op, text(&p).as_str()), (1001, "bot: 7 said: hello"), "{}", c.label);
    }

    // Commands.
    say(&mut member, "/time").await;
    for c in [&mut sender, &mut member] {
        let p = c.next_push().await;
        let t = text(&p);
        let stamp = t.strip_prefix("bot: the time is ").unwrap_or_else(|| panic!("{}: {t:?}", c.label));
        assert!(stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{}: {t:?}", c.label);
    }
    say(&mut sender, "/help").await;
    for c in [&mut sender, &mut member] {
        assert!(text(&c.next_push().await).starts_with("bot: commands: /time"), "{}", c.label);
    }

    // Room 2 gets only its own answers: its first push is the answer to its own message, not one of
    // room 1's three.
    say(&mut elsewhere, "mine").await;
    let p = elsewhere.next_push().await;
    assert_eq!(text(&p), "bot: 9 said: mine");

    // A sender in no room is answered on its own key subject (accept filter applies: op 1001).
    let mut solo = Client::connect_auth(Transport::Ws, &edge, Auth::new(11).key("solo-1").accepts(&[1001]))
        .await
        .with_label("no-room");
    say(&mut solo, "anyone?").await;
    assert_eq!(text(&solo.next_push().await), "bot: 11 said: anyone?");
    // Empty messages are not answered: the next answer the room sees is the one after it.
    say(&mut sender, "").await;
    say(&mut sender, "after").await;
    assert_eq!(text(&member.next_push().await), "bot: 7 said: after");
}

/// (out_msgs, in_msgs) of the NATS connection named `name`: messages the server delivered to it and
/// messages it published.
async fn msg_counts(nats: &NatsServer, name: &str) -> (u64, u64) {
    let connz: Value = nats.monitor("/connz?limit=10000").await;
    let conns = connz["connections"].as_array().cloned().unwrap_or_default();
    let c = conns.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no connection named {name} in {connz}"));
    (c["out_msgs"].as_u64().unwrap(), c["in_msgs"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_messages_and_answer_each_exactly_once() {
    const N: usize = 40;
    let nats = NatsServer::start().await;
    let edge = Edge::start(&nats, EdgeOpts::new()).await;
    let mut a = Chatbot::start(&nats, "bot-a", "").await;
    let mut b = Chatbot::start(&nats, "bot-b", "").await;

    let mut sender = Client::connect_auth(Transport::Tcp, &edge, Auth::new(5).room("chat://q")).await.with_label("sender");
    let mut listener = Client::connect_auth(Transport::Ws, &edge, Auth::new(6).room("chat://q")).await.with_label("listener");
    for i in 0..N {
        say(&mut sender, &format!("m{i}")).await;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..N {
        let p = listener.next_push().await;
        assert_eq!(p.op, 1000);
        *seen.entry(text(&p)).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = (0..N).map(|i| (format!("bot: 5 said: m{i}"), 1)).collect();
    assert_eq!(seen, want, "every message answered, each once");

    // The server's own counters: the group received each message once in all (a replica outside the
    // queue group would have been handed every message as it was published, before any answer
    // existed), both replicas took a share, and together they published exactly N answers.
    let (a_got, a_sent) = msg_counts(&nats, "bot-a").await;
    let (b_got, b_sent) = msg_counts(&nats, "bot-b").await;
    assert_eq!(a_got + b_got, N as u64, "deliveries to the replicas: a {a_got}, b {b_got}");
    assert!(a_got > 0 && b_got > 0, "both replicas took a share: a {a_got}, b {b_got}");
    assert_eq!((a_sent, b_sent), (a_got, b_got), "each replica answered what it got, once");

    // A replica stopped (SIGTERM: unsubscribe, flush, exit 0) leaves the whole load to the other.
    assert!(a.stop(), "bot-a exits cleanly on SIGTERM:\n{}", a.log_tail(20));
    say(&mut sender, "after-stop").await;
    assert_eq!(text(&listener.next_push().await), "bot: 5 said: after-stop");
    let (b_got_after, _) = msg_counts(&nats, "bot-b").await;
    assert_eq!(b_got_after, b_got + 1);
    assert!(b.stop(), "bot-b exits cleanly on SIGTERM");
}
