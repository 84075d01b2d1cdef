//! authsvc tokens enforced by the edge: minting over HTTP, scope on auth / change room / sub / op 4,
//! forged and expired tokens, in-band refresh, key rotation, delegated connects (allow-all and
//! webhook), and authsvc replicas coming and going.

use std::sync::Arc;
use std::time::Duration;

use goim_nats_tests::authsvc::{claims_for, WebhookAnswer};
use goim_nats_tests::goim::*;
use goim_nats_tests::*;
use goim_token::{now_secs, Claims};
use serde_json::json;

fn token_edge() -> EdgeOpts {
    EdgeOpts::new().with("auth", "mode", "\"token\"")
}

fn delegated_edge(timeout_ms: u64) -> EdgeOpts {
    EdgeOpts::new()
        .with("auth", "mode", "\"delegated\"")
        .with("auth", "delegate_timeout_ms", timeout_ms.to_string())
}

async fn connect(edge: &Edge, label: &str) -> Client {
    Client::connect_tcp(edge.tcp_addr()).await.with_label(label)
}

/// Op 7 with `auth`; the edge must close without any reply.
async fn expect_refused(edge: &Edge, label: &str, auth: Auth) {
    let mut c = connect(edge, label).await;
    c.send(&Packet::new(1, OP_AUTH, 1, auth.body())).await;
    c.expect_closed(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_token_scopes_are_enforced() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k9"]);
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let mut edge = Edge::start(&nats, token_edge()).await;

    // Mint over HTTP: without the API key it is refused.
    let (status, body) = goim_nats_tests::authsvc::http_request(
        authsvc.http,
        "POST",
        "/auth/token",
        &[],
        br#"{"mid":7}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = authsvc.mint_http(&json!({"mid": 7, "romz": []})).await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(-400)), "{body}");

    let token = authsvc
        .token(json!({
            "mid": 7,
            "rooms": ["live://1"],
            "room_prefixes": ["chat://"],
            "accepts": [1000, 1001],
        }))
        .await;

    // Allowed: its room, its accepts; the mid comes from the token.
    let mut ok = connect(&edge, "ok").await;
    ok.auth(&Auth::new(7).room("live://1").accepts(&[1000]).token(&token)).await;
    nats.publish("room.live.1", b"in-room").await;
    ok.expect_push(1000, b"in-room").await;
    nats.publish("user.7", b"to-user").await;
    ok.expect_push(1000, b"to-user").await;

    // Refused without reply: no token, forged signature, expired, other issuer, other audience,
    // a room or accepts outside the scope, another mid.
    expect_refused(&edge, "no-token", Auth::new(7).room("live://1")).await;
    let forged = keys.forge("k1", "k9", claims_for(7, 600));
    expect_refused(&edge, "forged", Auth::new(7).token(&forged)).await;
    let expired = keys.sign("k1", claims_for(7, -60));
    expect_refused(&edge, "expired", Auth::new(7).token(&expired)).await;
    let other_issuer = keys.sign("k1", Claims { iss: "someone-else".into(), ..claims_for(7, 600) });
    expect_refused(&edge, "issuer", Auth::new(7).token(&other_issuer)).await;
    let other_aud = keys.sign("k1", Claims { aud: "other".into(), ..claims_for(7, 600) });
    expect_refused(&edge, "audience", Auth::new(7).token(&other_aud)).await;
    let not_yet = keys.sign("k1", Claims { nbf: now_secs() + 600, ..claims_for(7, 900) });
    expect_refused(&edge, "nbf", Auth::new(7).token(&not_yet)).await;
    expect_refused(&edge, "room", Auth::new(7).room("live://2").token(&token)).await;
    expect_refused(&edge, "accepts", Auth::new(7).accepts(&[1002]).token(&token)).await;
    expect_refused(&edge, "mid", Auth::new(8).token(&token)).await;
    expect_refused(&edge, "garbage", Auth::new(7).token("not.a.token")).await;

    let stats = edge.stats(&nats).await;
    for reason in ["no_token", "bad_signature", "expired", "wrong_issuer", "wrong_audience", "not_yet_valid", "malformed"] {
        assert!(stats["denied"][reason].as_u64().unwrap_or(0) >= 1, "denied.{reason} not counted: {stats}");
    }
    assert!(stats["closed"]["bad_token"].as_u64().unwrap_or(0) >= 7, "{stats}");
    assert!(stats["closed"]["out_of_scope"].as_u64().unwrap_or(0) >= 3, "{stats}");

    // Change room outside the scope: answered, but the client stays where it was.
    ok.change_room("live://2").await;
    nats.publish("room.live.2", b"wrong-room").await;
    nats.publish("room.live.1", b"still-here").await;
    ok.expect_push(1000, b"still-here").await;
    assert_eq!(ok.heartbeat().await, 1);
    // Inside a prefix: it moves.
    ok.change_room("chat://9").await;
    nats.publish("room.chat.9", b"moved").await;
    ok.expect_push(1000, b"moved").await;

    // Sub outside the accepts is ignored (echoed); inside it works.
    ok.sub("1002").await;
    nats.hpublish("user.7", &[("Goim-Op", "1002")], b"not-accepted").await;
    ok.sub("1001").await;
    nats.hpublish("user.7", &[("Goim-Op", "1001")], b"accepted").await;
    ok.expect_push(1001, b"accepted").await;

    // Op 4 without ingress rights is echoed but never published; with them it is.
    let mut ingress = nats.raw().await;
    ingress.subscribe("ingress.>").await;
    ingress.flush().await;
    let r = ok.request(OP_SEND_MSG, b"denied").await;
    assert_eq!((r.op, r.body.len()), (OP_SEND_MSG, 0));
    let talker_token = authsvc
        .token(json!({"mid": 8, "rooms": ["chat://9"], "publish": {"ingress": true}}))
        .await;
    let mut talker = connect(&edge, "talker").await;
    talker.auth(&Auth::new(8).room("chat://9").token(&talker_token)).await;
    talker.request(OP_SEND_MSG, b"allowed").await;
    let msg = ingress.next_msg(Duration::from_secs(5)).await.expect("ingress message");
    assert_eq!(msg.payload, b"allowed", "the op 4 without ingress rights was published: {msg:?}");
    assert_eq!(msg.subject, "ingress.room.chat.9");
    assert_eq!(msg.header("Goim-Mid"), Some("8"));
    assert!(edge.stats(&nats).await["ingress_denied"].as_u64().unwrap_or(0) >= 1);
    edge.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_refresh_outlives_the_first_token() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let edge = Edge::start(&nats, token_edge()).await;
    let grant = |ttl: u64| json!({"mid": 3, "rooms": ["live://r"], "ttl_secs": ttl});

    let mut refreshing = connect(&edge, "refreshing").await;
    refreshing.auth(&Auth::new(3).room("live://r").token(&authsvc.token(grant(2)).await)).await;
    let mut lapsing = connect(&edge, "lapsing").await;
    lapsing.auth(&Auth::new(3).room("live://r").token(&authsvc.token(grant(2)).await)).await;

    // Refresh in-band: a new op 7 on the open connection, answered by op 8.
    let fresh = authsvc.token(grant(60)).await;
    let r = refreshing.request(OP_AUTH, &Auth::new(3).token(&fresh).body()).await;
    assert_eq!((r.op, r.body.len()), (OP_AUTH_REPLY, 0), "refresh answer {r:?}");

    // The other one closes at its token's expiry (≈2 s; generous bound for the whole-second exp).
    let started = tokio::time::Instant::now();
    lapsing.expect_closed(Duration::from_secs(6)).await;
    assert!(started.elapsed() >= Duration::from_millis(500), "closed too early");
    // The refreshed one is past the first token's expiry and still served.
    assert_eq!(refreshing.heartbeat().await, 1);
    nats.publish("room.live.r", b"after-expiry").await;
    refreshing.expect_push(1000, b"after-expiry").await;
    let stats = edge.stats(&nats).await;
    assert_eq!(stats["closed"]["token_expired"].as_u64(), Some(1), "{stats}");

    // A refresh for another mid closes the connection.
    let other = authsvc.token(json!({"mid": 4})).await;
    refreshing.send(&Packet::new(1, OP_AUTH, 99, Auth::new(4).token(&other).body())).await;
    refreshing.expect_closed(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_overlap_then_removal() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k2"]);
    let mut authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    let edge = Edge::start(&nats, token_edge()).await;
    let old = authsvc.token(json!({"mid": 1})).await;
    connect(&edge, "k1-before").await.auth(&Auth::new(1).token(&old)).await;

    // Rotate: k2 signs, k1 still verifies. Edges learn it from authsvc's announcement.
    authsvc.kill();
    let mut authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k2").also_accept("k1")).await;
    let new = authsvc.token(json!({"mid": 1})).await;
    let header: serde_json::Value = {
        use base64::Engine;
        let h = new.split('.').next().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
    };
    assert_eq!(header["kid"], "k2");
    let auth_ok = |label: &'static str, token: String| {
        let edge = &edge;
        async move {
            // The announcement reaches the edge asynchronously: allow a few attempts.
            for attempt in 0..50 {
                let mut c = connect(edge, label).await;
                c.send(&Packet::new(1, OP_AUTH, 1, Auth::new(1).token(&token).body())).await;
                match c.recv_packet(Duration::from_secs(5)).await {
                    Ok(p) if p.op == OP_AUTH_REPLY => return true,
                    Ok(p) => panic!("{label}: unexpected {p:?}"),
                    Err(_) if attempt < 49 => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => return false,
                }
            }
            false
        }
    };
    assert!(auth_ok("k2-overlap", new.clone()).await, "new key refused during the overlap");
    assert!(auth_ok("k1-overlap", old.clone()).await, "previous key refused during the overlap");

    // Remove k1: its tokens stop working, k2's keep working.
    authsvc.kill();
    let _authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k2")).await;
    let mut refused = false;
    for _ in 0..50 {
        let mut c = connect(&edge, "k1-removed").await;
        c.send(&Packet::new(1, OP_AUTH, 1, Auth::new(1).token(&old).body())).await;
        match c.recv_packet(Duration::from_secs(5)).await {
            Err(RecvError::Closed(_)) => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(refused, "a token of the removed key k1 is still accepted");
    assert!(auth_ok("k2-after", new).await);
    let stats = edge.stats(&nats).await;
    assert!(stats["denied"]["unknown_key"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_connects_follow_the_policy() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);

    // Webhook: mid 1 allowed into live://w, mid 2 refused, mid 3 too slow, mid 4 a server error.
    let answer: WebhookAnswer = Arc::new(|req| {
        let mid = req["auth"]["mid"].as_i64().unwrap_or(0);
        match mid {
            1 => (200, json!({"allow": true, "grant": {"mid": 1, "rooms": ["live://w"], "accepts": [1000]}}).to_string(), Duration::ZERO),
            2 => (200, json!({"allow": false, "reason": "banned"}).to_string(), Duration::ZERO),
            3 => (200, json!({"allow": true, "grant": {"mid": 3}}).to_string(), Duration::from_secs(3)),
            _ => (500, "oops".to_string(), Duration::ZERO),
        }
    });
    let hook = Webhook::start(answer).await;
    let _authsvc = AuthSvc::start(
        &nats,
        &keys,
        AuthSvcOpts::new("k1").connect(&format!("policy = \"webhook\"\nwebhook_url = \"{}\"\nwebhook_timeout_ms = 500", hook.url)),
    )
    .await;
    let edge = Edge::start(&nats, delegated_edge(2000)).await;

    // An unmodified goim client (no token) admitted by the webhook, scoped by its grant.
    let mut c = connect(&edge, "webhook-ok").await;
    c.auth(&Auth::new(1).room("live://w").accepts(&[1000])).await;
    nats.publish("room.live.w", b"hello").await;
    c.expect_push(1000, b"hello").await;
    // The grant's scope holds: change room outside it stays.
    c.change_room("live://other").await;
    assert_eq!(c.heartbeat().await, 1);

    expect_refused(&edge, "webhook-deny", Auth::new(2)).await;
    expect_refused(&edge, "webhook-slow", Auth::new(3)).await;
    expect_refused(&edge, "webhook-500", Auth::new(4)).await;
    // Asking for more than the grant (another room) is refused too.
    expect_refused(&edge, "webhook-scope", Auth::new(1).room("live://x")).await;
    let stats = edge.stats(&nats).await;
    assert!(stats["denied"]["refused"].as_u64().unwrap_or(0) >= 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authsvc_replicas_come_and_go() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let allow_all = || AuthSvcOpts::new("k1").dev().connect("policy = \"allow-all\"");
    let mut a = AuthSvc::start(&nats, &keys, allow_all()).await;
    let mut b = AuthSvc::start(&nats, &keys, allow_all()).await;
    let edge = Edge::start(&nats, delegated_edge(2000)).await;

    let mut first = connect(&edge, "first").await;
    first.auth(&Auth::new(10).room("live://rep").accepts(&[1000])).await;

    // One replica down: connects still succeed (the queue group routes to the other) once the server
    // has dropped the dead replica's subscription (until then a request may be routed to it).
    a.kill();
    wait_replicas(&nats, 1).await;
    for i in 0..10 {
        let mut c = connect(&edge, "one-left").await;
        c.auth(&Auth::new(100 + i).room("live://rep")).await;
    }

    // Both down: connects fail fast (no responders), already-connected clients keep receiving.
    b.kill();
    wait_replicas(&nats, 0).await;
    let started = tokio::time::Instant::now();
    expect_refused(&edge, "none-left", Auth::new(200)).await;
    assert!(started.elapsed() < Duration::from_millis(1900), "refusal took {:?}: not fast", started.elapsed());
    nats.publish("room.live.rep", b"still-served").await;
    first.expect_push(1000, b"still-served").await;
    let stats = edge.stats(&nats).await;
    assert!(stats["closed"]["auth_unavailable"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

/// Wait (bounded) until exactly `n` authsvc replicas serve `auth.connect`.
async fn wait_replicas(nats: &NatsServer, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subs = nats.subscriptions().await;
        let count = subs.iter().filter(|(_, s)| s == "auth.connect").count();
        if count == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{count} replicas serve auth.connect, want {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_over_nats_and_keys_from_edge_files() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1", "k2"]);
    let _authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;

    // Backends on the bus mint with a request to auth.mint.
    let mut raw = nats.raw().await;
    let reply = raw
        .request("auth.mint", br#"{"mid":21,"rooms":["live://n"],"ttl_secs":60}"#, Duration::from_secs(5))
        .await;
    let minted: serde_json::Value = serde_json::from_slice(&reply.payload).expect("mint answer is JSON");
    let token = minted["token"].as_str().unwrap_or_else(|| panic!("no token in {minted}")).to_string();
    assert_eq!(minted["kid"], "k1");
    let bad = raw.request("auth.mint", br#"{"mid":"x"}"#, Duration::from_secs(5)).await;
    let bad: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap();
    assert!(bad["error"].as_str().unwrap_or("").contains("invalid grant"), "{bad}");

    // An edge that takes its keys only from files (no NATS announcements): k2's public key file.
    let file_edge = Edge::start(
        &nats,
        token_edge().with("auth", "keys_from_nats", "false").extra_toml(&format!(
            "[[auth.keys]]\nid = \"k2\"\nfile = {:?}\n",
            keys.public("k2").display().to_string()
        )),
    )
    .await;
    // authsvc's k1 token is unknown to it; a k2 token (as a second authsvc would sign) is accepted.
    expect_refused(&file_edge, "k1-on-file-edge", Auth::new(21).token(&token)).await;
    let (k2_token, _) = keys.mint("k2", &goim_token::Grant { mid: 21, ..Default::default() });
    connect(&file_edge, "k2-on-file-edge").await.auth(&Auth::new(21).token(&k2_token)).await;

    // The NATS-fed edge accepts the minted token.
    let edge = Edge::start(&nats, token_edge()).await;
    let mut c = connect(&edge, "nats-minted").await;
    c.auth(&Auth::new(21).room("live://n").token(&token)).await;
    nats.publish("room.live.n", b"minted-on-the-bus").await;
    c.expect_push(1000, b"minted-on-the-bus").await;
}
