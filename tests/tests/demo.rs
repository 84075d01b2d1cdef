//! The browser demo page (web/demo/, served by goim-authsvc at `http.demo_path`) in headless
//! Chromium, driven over the Chrome DevTools Protocol (tests/src/browser.rs), against real
//! nats-server, goim-history, goim-authsvc, goim-edge (token mode) and the example chatbot. Every
//! check reads what the page shows (DOM text), polled with a deadline.

use std::time::Duration;

use goim_nats_tests::authsvc::{http_request, AuthSvc, AuthSvcOpts, API_KEY};
use goim_nats_tests::browser::Chromium;
use goim_nats_tests::chatbot::Chatbot;
use goim_nats_tests::history::{History, HistoryOpts, JsPub};
use goim_nats_tests::{Auth, Client, Edge, EdgeOpts, KeyDir, NatsServer, Transport};

const SHOW: Duration = Duration::from_secs(15);

fn token_edge(keys: &KeyDir) -> EdgeOpts {
    EdgeOpts::new()
        .with("auth", "mode", "\"token\"")
        .with("auth", "keys_from_nats", "false")
        .extra_toml(&format!("[[auth.keys]]\nid = \"k1\"\nfile = {:?}\n", keys.public("k1").display().to_string()))
}

/// The online count the page shows, when it shows a number.
fn online(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_pushes_sent_messages_the_online_count_and_history() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let _history = History::start(&nats, HistoryOpts::new().key(&keys, "k1")).await;
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1").demo_path("/demo/")).await;
    let edge = Edge::start(&nats, token_edge(&keys)).await;
    let _bot = Chatbot::start(&nats, "demo-bot", "").await;

    // Earlier messages, stored by goim-history's room stream before the page exists.
    let mut js = JsPub::new(&nats).await;
    js.seq("room.demo.1", &[("Goim-Op", "1000")], b"earlier one").await;
    js.seq("room.demo.1", &[("Goim-Op", "1000")], b"earlier two").await;

    let browser = Chromium::start().await;
    let mut page = browser.page().await;
    let url = format!(
        "http://{}/demo/?ws=ws://{}/sub&room=demo://1&mid=42&apikey={API_KEY}",
        authsvc.http,
        edge.ws_addr()
    );
    page.goto(&url).await;
    assert_eq!(page.text("#status").await, "disconnected");
    assert_eq!(page.text("#subject").await, "room.demo.1", "the page computes the room's subject");
    assert!(page.text("#try-nats").await.contains("pub -H Goim-Op:1000 room.demo.1"));

    // Connect: the page mints a token from authsvc, authenticates (op 7 → op 8), beats (op 3) and
    // reads the room's history (op 18 → op 19).
    page.click("#connect").await;
    page.wait_text("#status", SHOW, |t| t == "connected as mid 42 in demo://1").await;
    let n = page.wait_text("#online", SHOW, |t| online(t).is_some_and(|n| n >= 1)).await;
    assert_eq!(online(&n), Some(1), "only the page is in the room");
    let history = page.wait_text("#history", SHOW, |t| t.contains("earlier one") && t.contains("earlier two")).await;
    assert!(history.find("earlier one") < history.find("earlier two"), "oldest first: {history}");

    // A push published on NATS (what `nats pub -H Goim-Op:1000 room.demo.1 …` sends) appears live,
    // with its history sequence (3: after the two stored ones).
    nats.hpublish("room.demo.1", &[("Goim-Op", "1000")], b"hello from nats").await;
    let shown = page.wait_text("#messages", SHOW, |t| t.contains("hello from nats")).await;
    assert!(shown.contains("op 1000 #3 hello from nats"), "{shown}");

    // goim's HTTP push API on authsvc.
    let (status, body) =
        http_request(authsvc.http, "POST", "/goim/push/room?operation=1001&type=demo&room=1", &[], b"hello from http").await;
    assert_eq!((status, body.as_str()), (200, r#"{"code":0,"message":""}"#));
    page.wait_text("#messages", SHOW, |t| t.contains("op 1001 #4 hello from http")).await;

    // Chromium offers permessage-deflate and the edge agrees; a push long enough to be compressed
    // shows like any other (the browser inflates it).
    let extensions = page
        .eval(&format!(
            "new Promise((ok, fail) => {{ const w = new WebSocket('ws://{}/sub'); w.onopen = () => {{ ok(w.extensions); w.close(); }}; w.onerror = () => fail('WebSocket error'); }})",
            edge.ws_addr()
        ))
        .await;
    assert_eq!(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    let long = "a chat line long enough to be sent compressed,".repeat(4);
    nats.hpublish("room.demo.1", &[("Goim-Op", "1000")], long.as_bytes()).await;
    page.wait_text("#messages", SHOW, |t| t.contains(&long)).await;

    // Send (op 4 → ingress.room.demo.1): the chatbot answers into the room, so the page shows it.
    page.type_into("#text", "hi bot").await;
    page.click("#send").await;
    page.wait_text("#messages", SHOW, |t| t.contains("bot: 42 said: hi bot")).await;
    page.wait_text("#log", SHOW, |t| t.contains("op 4 #") && t.contains("taken by the edge")).await;
    assert_eq!(page.text("#text").await, "", "the input is cleared after sending");
    page.type_into("#text", "/time").await;
    page.click("#send").await;
    page.wait_text("#messages", SHOW, |t| t.contains("bot: the time is 2")).await;

    // The online count follows the room: a second member, then the refresh button (op 2 now).
    let token = {
        let (status, body) = http_request(
            authsvc.http,
            "POST",
            "/auth/token",
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            br#"{"mid": 43, "rooms": ["demo://1"]}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"].as_str().unwrap().to_string()
    };
    let mut other =
        Client::connect_auth(Transport::Ws, &edge, Auth::new(43).room("demo://1").token(&token)).await.with_label("member-43");
    assert_eq!(other.heartbeat().await, 2);
    page.click("#refresh").await;
    page.wait_text("#online", SHOW, |t| online(t) == Some(2)).await;
    // The other member gets the page's messages (through the bot) like any goim client.
    page.type_into("#text", "for 43").await;
    page.click("#send").await;
    // (Stored room: the push carries its history sequence in seq, so not next_push's seq-0 check.)
    let p = other.try_next_push(SHOW).await.expect("member-43: the bot's answer to the page");
    assert_eq!((p.op, String::from_utf8_lossy(&p.body).as_ref()), (1000, "bot: 42 said: for 43"));

    // A reload shows what was said before in the history panel.
    page.goto(&url).await;
    page.click("#connect").await;
    page.wait_text("#history", SHOW, |t| {
        ["earlier one", "hello from nats", "hello from http", "bot: 42 said: hi bot"].iter().all(|m| t.contains(m))
    })
    .await;

    // GOIM_DEMO_SCREENSHOT=<file.png>: keep a picture of the page as the test saw it.
    if let Some(path) = std::env::var_os("GOIM_DEMO_SCREENSHOT") {
        std::fs::write(path, page.screenshot().await).expect("write screenshot");
    }

    // Disconnect.
    page.click("#disconnect").await;
    page.wait_text("#status", SHOW, |t| t.starts_with("disconnected")).await;
    assert!(page.exceptions().is_empty(), "uncaught exceptions: {:?}", page.exceptions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_is_shown_and_the_page_is_served_only_where_configured() {
    let nats = NatsServer::start().await;
    let keys = KeyDir::new(&["k1"]);
    let authsvc = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1").demo_path("/play/")).await;
    let edge = Edge::start(&nats, token_edge(&keys)).await;

    // The page and its scripts, with their types; the bare path redirects; nothing else is served.
    for (path, kind) in [("/play/", "text/html"), ("/play/index.html", "text/html"), ("/play/goim.js", "text/javascript"), ("/play/demo.js", "text/javascript")] {
        let (status, head) = head_of(authsvc.http, path).await;
        assert_eq!(status, 200, "{path}: {head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {kind}")), "{path}: {head}");
        assert!(head.to_ascii_lowercase().contains("content-security-policy:"), "{path}: {head}");
    }
    let (status, head) = head_of(authsvc.http, "/play").await;
    assert!(status == 308 && head.to_ascii_lowercase().contains("location: /play/"), "{head}");
    for path in ["/demo/", "/play/../Cargo.toml", "/play/x.js", "/play/goim.js/"] {
        assert_eq!(head_of(authsvc.http, path).await.0, 404, "{path}");
    }
    let off = AuthSvc::start(&nats, &keys, AuthSvcOpts::new("k1")).await;
    assert_eq!(head_of(off.http, "/demo/").await.0, 404, "no page unless http.demo_path is set");

    // A wrong API key: the page says the token was refused and stays disconnected.
    let browser = Chromium::start().await;
    let mut page = browser.page().await;
    page.goto(&format!("http://{}/play/?ws=ws://{}/sub&room=demo://2&mid=7&apikey=wrong", authsvc.http, edge.ws_addr())).await;
    page.click("#connect").await;
    let status = page.wait_text("#status", SHOW, |t| t.contains("refused")).await;
    assert!(status.contains("HTTP 401") && status.contains("invalid API key"), "{status}");
    assert_eq!(page.eval("document.getElementById('connect').disabled").await, false, "connect can be tried again");
    assert_eq!(page.eval("document.getElementById('send').disabled").await, true);
}

/// GET `path`; (status, response head).
async fn head_of(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp)).await.expect("HTTP timed out").unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head)
}
