//! The NATS auth callout (`goim_authsvc::callout`, run in-process) against a real nats-server with
//! accounts: native NATS and nats.ws clients connect with their goim token and get exactly the subjects
//! the token allows; bad tokens are refused at connect; an expiring token disconnects; replicas in a
//! queue group cover for each other. Negatives (a message that must not arrive) are proved with a later
//! marker on an allowed subject from the same publisher connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use goim_authsvc::callout::{CalloutKeys, CalloutStats};
use goim_nats_tests::callout::*;
use goim_token::{Claims, Grant, PublishRights};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(5);

async fn setup(opts: CalloutNatsOpts) -> (CalloutNats, TokenKeys, CalloutReplica) {
    let nats = CalloutNats::start(opts).await;
    let keys = TokenKeys::new();
    let replica = CalloutReplica::start(&nats, keys.verifier(), Arc::new(CalloutStats::default())).await;
    (nats, keys, replica)
}

async fn next_payload(sub: &mut async_nats::Subscriber, what: &str) -> Vec<u8> {
    timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: subscription closed"))
        .payload
        .to_vec()
}

fn assert_empty(sub: &mut async_nats::Subscriber, what: &str) {
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    if let std::task::Poll::Ready(Some(m)) = sub.poll_next_unpin(&mut cx) {
        panic!("{what}: received {:?} on {}", String::from_utf8_lossy(&m.payload), m.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_holder_subscribes_only_to_what_its_token_allows() {
    let (nats, keys, replica) = setup(CalloutNatsOpts::default()).await;
    let token = keys.mint(&Grant {
        mid: 1,
        key: Some("dev.1".into()),
        rooms: vec!["live://1".into(), "a.b://c d".into()],
        room_prefixes: vec!["chat://".into(), "game://7".into()],
        ..Grant::default()
    });
    let mut c = connect_token(&nats, &token, TokenConnect::default()).await.expect("connect with a good token");

    let allowed = [
        ("user.1", "own user"),
        ("key.dev=2E1", "own key"),
        ("broadcast", "broadcast"),
        ("room.live.1", "exact room"),
        ("room.a=2Eb.c=20d", "exact room with escaped bytes"),
        ("room.chat.42", "room under a type:// prefix"),
    ];
    let mut subs = Vec::new();
    for (subject, _) in allowed {
        subs.push(c.client.subscribe(subject).await.unwrap());
    }
    let denied = [
        "user.2",
        "key.other",
        "room.live.2",
        "room.game.7",
        "room.game.70",
        "room.>",
        ">",
        "_INBOX.>",
        "ingress.>",
    ];
    let mut denied_subs = Vec::new();
    for subject in denied {
        denied_subs.push(c.client.subscribe(subject).await.unwrap());
    }
    c.client.flush().await.unwrap();
    for (subject, _) in allowed {
        wait_subscribed(&nats, &c.name, subject).await;
    }
    for subject in denied {
        let e = c.expect_server_error(&format!("Permissions Violation for Subscription to \"{subject}\""), WAIT).await;
        assert!(e.contains(subject), "{e}");
    }

    let backend = nats.connect_static("backend").await;
    // Everything denied first, then the allowed ones: once the last allowed message is in, the denied
    // ones (published earlier on the same connection) would have been delivered too.
    for subject in ["user.2", "key.other", "room.live.2", "room.game.7", "room.game.70", "room.x.y"] {
        backend.publish(subject, "must-not-arrive".into()).await.unwrap();
    }
    for (subject, _) in allowed {
        backend.publish(subject, subject.into()).await.unwrap();
    }
    backend.flush().await.unwrap();
    for (sub, (subject, what)) in subs.iter_mut().zip(allowed) {
        assert_eq!(next_payload(sub, what).await, subject.as_bytes(), "{what}");
    }
    for (sub, subject) in denied_subs.iter_mut().zip(denied) {
        assert_empty(sub, subject);
    }
    for (sub, (subject, _)) in subs.iter_mut().zip(allowed) {
        assert_empty(sub, &format!("{subject} (once only)"));
    }
    let s = replica.stats.snapshot();
    assert_eq!((s.accepted, s.rejected, s.bad_request), (1, 0, 0), "{s:?}");
    // The server shows the connection as user "mid:1" in APP.
    let line = nats.wait_log(&["Subscription Violation", "\"APP/user:mid:1\"", "user.2"], WAIT).await;
    assert!(line.contains("token-holder"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_holder_publishes_only_where_its_token_allows() {
    let (nats, keys, _replica) = setup(CalloutNatsOpts::default()).await;
    let token = keys.mint(&Grant {
        mid: 1,
        rooms: vec!["live://1".into()],
        room_prefixes: vec!["chat://".into()],
        publish: PublishRights { ingress: true, rooms: vec!["live://1".into()], room_prefixes: vec![], users: vec![5] },
        ..Grant::default()
    });
    let mut c = connect_token(&nats, &token, TokenConnect { inbox_prefix: Some("_INBOX.mid_1".into()), ..Default::default() })
        .await
        .expect("connect");
    let admin = nats.connect_static_named("admin", "admin-all").await;
    let mut all = admin.subscribe(">").await.unwrap();
    admin.flush().await.unwrap();
    wait_subscribed(&nats, "admin-all", ">").await;

    // Never ingress, even with publish.ingress: only edges write ingress (its identity headers are
    // trusted by consumers).
    let denied = [
        "room.live.2", "broadcast", "user.6", "ingress.room.live.2", "key.x", "auth.mint", "room.chat.1",
        "ingress.room.live.1", "ingress.room.chat.9", "ingress.none",
    ];
    let allowed = ["room.live.1", "user.5"];
    for subject in denied {
        c.client.publish(subject, "denied".into()).await.unwrap();
    }
    for subject in allowed {
        c.client.publish(subject, "allowed".into()).await.unwrap();
    }
    c.client.flush().await.unwrap();
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("user.5") {
        let m = timeout(WAIT, all.next()).await.expect("admin sees the allowed publishes").unwrap();
        assert_eq!(&m.payload[..], b"allowed", "{} reached the admin", m.subject);
        got.push(m.subject.to_string());
    }
    assert_eq!(got, allowed);
    for subject in denied {
        c.expect_server_error(&format!("Permissions Violation for Publish to \"{subject}\""), WAIT).await;
    }

    // Requests work with the granted inbox prefix: a service answers on the client's inbox.
    let service = nats.connect_static_named("admin", "service-bot").await;
    let mut requests = service.subscribe("user.5").await.unwrap();
    service.flush().await.unwrap();
    wait_subscribed(&nats, "service-bot", "user.5").await;
    let answer = tokio::spawn(async move {
        let m = requests.next().await.unwrap();
        service.publish(m.reply.unwrap(), "pong".into()).await.unwrap();
        service.flush().await.unwrap();
    });
    let reply = timeout(WAIT, c.client.request("user.5", "ping".into())).await.expect("request in time").expect("reply");
    assert_eq!(&reply.payload[..], b"pong");
    answer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_disconnects_the_client() {
    let (nats, keys, _replica) = setup(CalloutNatsOpts::default()).await;
    let token = keys.mint(&Grant { mid: 3, ttl_secs: Some(2), ..Grant::default() });
    let connected_at = Instant::now();
    let mut c = connect_token(&nats, &token, TokenConnect::default()).await.expect("connect");
    let mut sub = c.client.subscribe("user.3").await.unwrap();
    c.client.flush().await.unwrap();
    wait_subscribed(&nats, &c.name, "user.3").await;
    let backend = nats.connect_static("backend").await;
    backend.publish("user.3", "before".into()).await.unwrap();
    backend.flush().await.unwrap();
    assert_eq!(next_payload(&mut sub, "before expiry").await, b"before");

    c.expect_server_error("User Authentication Expired", Duration::from_secs(5)).await;
    let after = connected_at.elapsed();
    assert!(after >= Duration::from_millis(900), "disconnected after only {after:?}");
    // The reconnects with the same (now expired) token are refused, so the client gives up.
    let events = c
        .wait_event("max reconnects", WAIT, |e| matches!(e, async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects)))
        .await;
    assert!(events.iter().any(|e| e.contains("disconnected")), "{events:?}");
    assert!(events.iter().any(|e| e.contains("authorization violation")), "{events:?}");
    nats.wait_log(&["Auth callout service returned an error", "goim token refused: expired"], WAIT).await;
    backend.publish("user.3", "after".into()).await.unwrap();
    backend.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_empty(&mut sub, "after expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_connect() {
    // Without xkey: the plaintext path (the other tests encrypt).
    let (nats, keys, replica) = setup(CalloutNatsOpts { xkey: false, ..Default::default() }).await;
    let good = keys.mint(&Grant { mid: 7, ..Grant::default() });
    let (_, base) = keys.dir.mint("k1", &Grant { mid: 7, ..Grant::default() });
    let now = goim_token::now_secs();
    let expired = keys.sign(Claims { iat: now - 60, nbf: now - 60, exp: now - 1, ..base.clone() });
    let wrong_aud = keys.sign(Claims { aud: "someone-else".into(), ..base.clone() });
    let forged = {
        let other = goim_nats_tests::KeyDir::new(&["k1"]);
        other.sign("k1", base.clone())
    };
    let cases = [
        (good.replace('.', ""), "malformed"),
        (forged, "bad_signature"),
        (expired, "expired"),
        (wrong_aud, "wrong_audience"),
        (String::new(), "no_token"),
    ];
    for (token, reason) in &cases {
        let started = Instant::now();
        let err = match connect_token(&nats, token, TokenConnect::default()).await {
            Ok(_) => panic!("{reason}: connected"),
            Err(e) => e,
        };
        // Refused by the callout's answer, not by the server's timeout.
        assert!(started.elapsed() < Duration::from_millis(1500), "{reason}: took {:?}", started.elapsed());
        assert!(err.to_lowercase().contains("authorization violation"), "{reason}: {err}");
        nats.wait_log(&["Auth callout service returned an error", &format!("goim token refused: {reason}")], WAIT).await;
    }
    let s = replica.stats.snapshot();
    assert_eq!(s.rejected, cases.len() as u64, "{s:?}");
    for (_, reason) in &cases {
        assert_eq!(s.rejected_by_reason.get(*reason), Some(&1), "{reason}: {s:?}");
    }

    // The token as the password of user "token" is accepted too; as anyone else's password it is not.
    let c = connect_token(&nats, &good, TokenConnect { as_password: true, ..Default::default() }).await.expect("user token");
    c.client.flush().await.unwrap();
    let err = async_nats::ConnectOptions::with_user_and_password("backend".into(), good.clone())
        .connect(nats.url())
        .await
        .expect_err("a static user with a wrong password");
    assert!(err.to_string().contains("authorization violation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_cover_for_each_other() {
    let nats = CalloutNats::start(CalloutNatsOpts { auth_timeout_secs: 1.0, ..Default::default() }).await;
    let keys = TokenKeys::new();
    let (sa, sb) = (Arc::new(CalloutStats::default()), Arc::new(CalloutStats::default()));
    let mut a = CalloutReplica::start(&nats, keys.verifier(), sa.clone()).await;
    let mut b = CalloutReplica::start(&nats, keys.verifier(), sb.clone()).await;
    let token = keys.mint(&Grant { mid: 8, ..Grant::default() });

    let mut keep = Vec::new();
    for _ in 0..4 {
        keep.push(connect_token(&nats, &token, TokenConnect::default()).await.expect("connect with both replicas"));
    }
    assert_eq!(sa.snapshot().accepted + sb.snapshot().accepted, 4);

    a.stop().await;
    let before_b = sb.snapshot().accepted;
    for _ in 0..4 {
        connect_token(&nats, &token, TokenConnect::default()).await.expect("connect with one replica left");
    }
    assert_eq!(sb.snapshot().accepted, before_b + 4, "the remaining replica answered all");

    // A client connected before the outage keeps receiving.
    let mut sub = keep[0].client.subscribe("user.8").await.unwrap();
    keep[0].client.flush().await.unwrap();
    wait_subscribed(&nats, &keep[0].name, "user.8").await;
    b.stop().await;
    let started = Instant::now();
    let err = connect_token(&nats, &token, TokenConnect::default()).await.err().expect("no replica: refused");
    let took = started.elapsed();
    assert!(err.to_lowercase().contains("authorization violation"), "{err}");
    // The server does not notice that nobody listens: it waits for its auth timeout (1 s here).
    assert!(took < Duration::from_secs(3), "refusal took {took:?}");
    let backend = nats.connect_static("backend").await;
    backend.publish("user.8", "still-here".into()).await.unwrap();
    backend.flush().await.unwrap();
    assert_eq!(next_payload(&mut sub, "existing client during the outage").await, b"still-here");
}

/// A raw NATS-over-WebSocket client (what nats.ws sends): CONNECT with `auth_token`, then PING.
async fn ws_connect(port: u16, token: &str) -> (tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String) {
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}")))
        .await
        .expect("ws connect in time")
        .expect("ws connect");
    let info = ws_text(&mut ws).await;
    assert!(info.starts_with("INFO "), "{info}");
    let connect = serde_json::json!({"verbose": false, "pedantic": false, "protocol": 1, "headers": true,
                                     "name": "nats.ws-like", "auth_token": token});
    ws.send(WsMessage::Binary(format!("CONNECT {connect}\r\nPING\r\n").into_bytes().into())).await.unwrap();
    let answer = ws_text(&mut ws).await;
    (ws, answer)
}

async fn ws_text(ws: &mut (impl StreamExt<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin)) -> String {
    loop {
        match timeout(WAIT, ws.next()).await.expect("ws frame in time") {
            Some(Ok(WsMessage::Binary(b))) => return String::from_utf8_lossy(&b).to_string(),
            Some(Ok(WsMessage::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return format!("<ws error {e}>"),
            None => return "<ws closed>".into(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_use_the_callout_too() {
    let (nats, keys, replica) = setup(CalloutNatsOpts { websocket: true, ..Default::default() }).await;
    let port = nats.ws_port().unwrap();
    let token = keys.mint(&Grant { mid: 11, ..Grant::default() });
    let (mut ws, answer) = ws_connect(port, &token).await;
    assert!(answer.starts_with("PONG"), "{answer}");
    ws.send(WsMessage::Binary(b"SUB user.11 1\r\nSUB user.12 2\r\nPING\r\n".to_vec().into())).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("PONG") {
        seen.push_str(&ws_text(&mut ws).await);
    }
    assert!(seen.contains("Permissions Violation for Subscription to \"user.12\""), "{seen}");
    let backend = nats.connect_static("backend").await;
    backend.publish("user.12", "no".into()).await.unwrap();
    backend.publish("user.11", "yes".into()).await.unwrap();
    backend.flush().await.unwrap();
    let msg = ws_text(&mut ws).await;
    assert!(msg.starts_with("MSG user.11 1 3\r\nyes"), "{msg:?}");

    let (_, answer) = ws_connect(port, "not-a-token").await;
    assert!(answer.contains("Authorization Violation"), "{answer}");
    let s = replica.stats.snapshot();
    assert_eq!((s.accepted, s.rejected), (1, 1), "{s:?}");
}

/// The committed dev configurations (nats-conf/dev.conf) start,
/// their roles have the documented permissions (a real edge runs with the edge role), token holders
/// connect through the callout with the committed dev keys, and APP reaches authsvc's `auth.>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_configs_work() {
    let paths = dev_auth_conf_paths();
    assert!(!paths.is_empty(), "no nats-conf/dev.conf with auth_callout");
    for path in paths {
        check_dev_conf(&path).await;
    }
}

async fn check_dev_conf(path: &std::path::Path) {
    eprintln!("checking {}", path.display());
    let root = path.parent().unwrap().to_path_buf();
    let store = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let mut conf = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        let replaced = if l.starts_with("listen:") {
            let indent = &line[..line.len() - l.len()];
            format!("{indent}listen: \"127.0.0.1:-1\"")
        } else if l.starts_with("http:") {
            "http: \"127.0.0.1:-1\"".to_string()
        } else if l.starts_with("store_dir:") {
            format!("  store_dir: {:?}", store.path().display().to_string())
        } else {
            line.to_string()
        };
        conf.push_str(&replaced);
        conf.push('\n');
    }
    let keys = CalloutKeys::from_seeds(
        &std::fs::read_to_string(root.join("dev-callout-issuer.nk")).unwrap(),
        &std::fs::read_to_string(root.join("dev-callout-xkey.nk")).unwrap(),
    )
    .unwrap();
    assert!(conf.contains(&keys.issuer_public), "dev config trusts the committed issuer key");
    let xkey = conf.contains(&keys.xkey_public);
    let nats = CalloutNats::start_conf(&conf, keys, CalloutNatsOpts { xkey, websocket: true, auth_timeout_secs: 2.0 }).await;
    let dev = |user: &str| {
        let url = nats.url();
        let user = user.to_string();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), format!("dev-{user}"))
                .name(format!("dev-{user}"))
                .connect(url)
                .await
                .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
        }
    };
    // The callout on the connection of the AUTH account's user; authsvc's auth.> service (in APP, or
    // in AUTH exported to APP, depending on the config).
    let (cu, cp) = account_user(&text, "AUTH").expect("a user in account AUTH");
    let callout_conn = nats.connect_static_named_pw(&cu, &cp, "dev-callout-conn").await;
    let tk = TokenKeys::new();
    let stats = Arc::new(CalloutStats::default());
    let callout = Arc::new(goim_authsvc::callout::Callout::new(nats.callout_config(), tk.verifier()).unwrap().with_stats(stats.clone()));
    let _callout_task = callout.spawn(callout_conn.clone(), "goim-authsvc").await.unwrap();
    wait_subscribed(&nats, "dev-callout-conn", "$SYS.REQ.USER.AUTH").await;
    let authsvc = dev("authsvc").await;
    let mut mint = authsvc.subscribe("auth.>").await.unwrap();
    authsvc.flush().await.unwrap();
    wait_subscribed(&nats, "dev-authsvc", "auth.>").await;
    let a2 = authsvc.clone();
    tokio::spawn(async move {
        while let Some(m) = mint.next().await {
            if let Some(r) = m.reply {
                a2.publish(r, format!("served {}", m.subject).into()).await.unwrap();
            }
        }
    });

    let backend = dev("backend").await;
    let reply = timeout(WAIT, backend.request("auth.mint", "{}".into())).await.unwrap().expect("auth.mint from APP");
    assert_eq!(&reply.payload[..], b"served auth.mint");
    let edge = dev("edge").await;
    let reply = timeout(WAIT, edge.request("auth.connect", "{}".into())).await.unwrap().unwrap();
    assert_eq!(&reply.payload[..], b"served auth.connect");

    // A token holder through the callout (native), receiving from the backend.
    let token = tk.mint(&Grant { mid: 5, ..Grant::default() });
    let holder = async_nats::ConnectOptions::with_token(token.clone()).name("dev-holder").connect(nats.url()).await.expect("token holder");
    let mut mine = holder.subscribe("user.5").await.unwrap();
    holder.flush().await.unwrap();
    wait_subscribed(&nats, "dev-holder", "user.5").await;
    backend.publish("user.5", "hello".into()).await.unwrap();
    backend.flush().await.unwrap();
    assert_eq!(next_payload(&mut mine, "token holder on the dev config").await, b"hello");
    // And over the dev WebSocket listener.
    let (_ws, answer) = ws_connect(nats.ws_port().unwrap(), &token).await;
    assert!(answer.starts_with("PONG"), "{answer}");
    assert_eq!(stats.snapshot().accepted, 2);

    // Role permissions: the edge reads the push subjects, the backend may not.
    let mut edge_room = edge.subscribe("room.>").await.unwrap();
    edge.flush().await.unwrap();
    wait_subscribed(&nats, "dev-edge", "room.>").await;
    backend.publish("room.live.1", "push".into()).await.unwrap();
    backend.flush().await.unwrap();
    assert_eq!(next_payload(&mut edge_room, "edge sees room pushes").await, b"push");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let backend2 = async_nats::ConnectOptions::with_user_and_password("backend".into(), "dev-backend".into())
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    let _denied = backend2.subscribe("room.>").await.unwrap();
    backend2.flush().await.unwrap();
    let e = timeout(WAIT, async {
        loop {
            let e = rx.recv().await.unwrap();
            if e.contains("Permissions Violation") {
                return e;
            }
        }
    })
    .await
    .expect("backend may not subscribe to room.>");
    assert!(e.contains("room.>"), "{e}");
    // history reaches the JetStream API of APP.
    let history = dev("history").await;
    let info = timeout(WAIT, history.request("$JS.API.INFO", "".into())).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(v["type"], "io.nats.jetstream.api.v1.account_info_response", "{v}");
    // A real edge with the edge role: pushes in, op 4 out to ingress, stats, presence; no permission
    // errors in its log.
    let mut eo = goim_nats_tests::EdgeOpts::new();
    eo.set_str("nats", "user", "edge").set_str("nats", "password", "dev-edge");
    let mut goim_edge = goim_nats_tests::Edge::start_with_urls(&[nats.url()], eo).await;
    let bot = nats.connect_static_named_pw("backend", "dev-backend", "dev-bot").await;
    let mut ingress = bot.subscribe("ingress.>").await.unwrap();
    bot.flush().await.unwrap();
    wait_subscribed(&nats, "dev-bot", "ingress.>").await;
    let mut g = goim_nats_tests::Client::connect_auth(
        goim_nats_tests::Transport::Tcp,
        &goim_edge,
        goim_nats_tests::Auth::new(21).room("live://5").accepts(&[1000]),
    )
    .await;
    backend.publish("room.live.5", "to-room".into()).await.unwrap();
    backend.flush().await.unwrap();
    g.expect_push(1000, b"to-room").await;
    g.request(4, b"up").await;
    let m = timeout(WAIT, ingress.next()).await.expect("op 4 reaches ingress").unwrap();
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("ingress.room.live.5", &b"up"[..]));
    assert_eq!(g.heartbeat().await, 1);
    let admin = dev("admin").await;
    let st = timeout(WAIT, admin.request(format!("ctl.stats.{}", goim_edge.id()), "".into())).await.unwrap().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.payload).unwrap();
    assert_eq!(st["authenticated"], 1, "{st}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    goim_edge.assert_alive();
    let bad: Vec<String> = goim_edge.logs().into_iter().filter(|l| l.to_lowercase().contains("permission")).collect();
    assert!(bad.is_empty(), "{}: the edge role lacks permissions: {bad:?}", path.display());
    let bad: Vec<String> =
        nats.log_lines().into_iter().filter(|l| l.contains("Violation") && !l.contains("\"APP/user:backend\" - Subscription Violation - Subject \"room.>\"")).collect();
    assert!(bad.is_empty(), "{}: permission violations other than the backend's deliberate one: {bad:?}", path.display());
    // sys is the system account's user.
    let sys = dev("sys").await;
    let varz = timeout(WAIT, sys.request("$SYS.REQ.SERVER.PING.VARZ", "".into())).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&varz.payload).contains("goim-dev"));
}
