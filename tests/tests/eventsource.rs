//! A browser's own `EventSource` (headless Chromium over CDP, tests/src/browser.rs) against the edge's
//! SSE transport: a page served by the test from another origin (so CORS is exercised) receives room,
//! user and broadcast pushes published on NATS as `nats pub` does, and survives its stream being cut:
//! the browser's automatic reconnect (`Last-Event-ID`) continues the same session without loss.

use std::net::SocketAddr;
use std::time::Duration;

use goim_nats_tests::browser::Chromium;
use goim_nats_tests::http::Sse;
use goim_nats_tests::{Edge, EdgeOpts, NatsServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SHOW: Duration = Duration::from_secs(20);

/// The page: opens an EventSource on `edge` and records what arrives in `window` variables.
const PAGE: &str = r#"<!doctype html><html><body><pre id="log"></pre><script>
const edge = new URLSearchParams(location.search).get('edge');
const auth = JSON.stringify({mid: 77, room_id: 'live://browser', accepts: [1000]});
window.sessions = []; window.got = []; window.replies = []; window.opens = 0;
const es = new EventSource(edge + '/sse?auth=' + encodeURIComponent(auth));
es.onopen = () => { window.opens += 1; };
es.addEventListener('session', e => window.sessions.push(JSON.parse(e.data)));
es.addEventListener('reply', e => window.replies.push(JSON.parse(e.data).op));
es.addEventListener('push', e => {
  const d = JSON.parse(e.data);
  window.got.push({op: d.op, body: atob(d.body), id: e.lastEventId});
  document.getElementById('log').textContent += d.op + ' ' + atob(d.body) + '\n';
});
</script></body></html>"#;

/// Serve `PAGE` to every request on a loopback port (the page's origin); returns its address.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind page server");
    let addr = listener.local_addr().expect("page address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // The request head, then one answer and close.
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_event_source_receives_pushes_published_on_nats_and_reconnects_without_loss() {
    let page_addr = serve_page().await;
    let origin = format!("http://{page_addr}");
    let nats = NatsServer::start().await;
    let edge = Edge::start(
        &nats,
        EdgeOpts::new()
            .with("listen", "http", "\"127.0.0.1:0\"")
            .with("listen", "http_cors_origins", format!("[{:?}]", origin)),
    )
    .await;
    let browser = Chromium::start().await;
    let mut page = browser.page().await;
    page.goto(&format!("{origin}/?edge=http://{}", edge.http_addr())).await;
    let sessions = page.wait_for("the session event", SHOW, "window.sessions", |v| v.as_array().is_some_and(|a| !a.is_empty())).await;
    let id = sessions[0]["session"].as_str().expect("session id").to_string();
    page.wait_for("op 8", SHOW, "window.replies", |v| *v == serde_json::json!([8])).await;

    // What `nats pub` sends: core publishes on the room, the user and broadcast.
    let mut p = nats.raw().await;
    p.hpublish("room.live.browser", &[("Goim-Op", "1001")], b"to the room").await;
    p.publish("user.77", b"to the user").await;
    p.hpublish("broadcast", &[("Goim-Op", "1002")], b"not accepted").await;
    p.publish("broadcast", b"to everyone").await;
    let got = page.wait_for("three pushes", SHOW, "window.got", |v| v.as_array().is_some_and(|a| a.len() >= 3)).await;
    let mut bodies: Vec<(i64, String)> = got.as_array().into_iter().flatten().map(|g| (g["op"].as_i64().unwrap_or(0), g["body"].as_str().unwrap_or("").to_string())).collect();
    bodies.sort();
    assert_eq!(bodies, [(1000, "to everyone".into()), (1000, "to the user".into()), (1001, "to the room".into())]);
    let last_id = got[2]["id"].as_str().unwrap_or("").to_string();
    assert!(last_id.starts_with(&format!("{id}:3:")), "EventSource's lastEventId is the edge's event id: {last_id}");

    // Cut the browser's stream: another stream takes the session over (the browser's one ends), and
    // pushes come meanwhile. The browser reconnects by itself with Last-Event-ID and gets them all.
    let taker = Sse::open_path(edge.http_addr(), &format!("/sse?session={id}"), &[]).await.expect("take the session over");
    for i in 0..5 {
        p.publish("room.live.browser", format!("while away {i}").as_bytes()).await;
    }
    let got = page.wait_for("the reconnect and the 5 pushes", SHOW, "window.got", |v| v.as_array().is_some_and(|a| a.len() >= 8)).await;
    let after: Vec<&str> = got.as_array().into_iter().flatten().skip(3).map(|g| g["body"].as_str().unwrap_or("")).collect();
    assert_eq!(after, (0..5).map(|i| format!("while away {i}")).collect::<Vec<_>>(), "in order, none lost, none twice");
    let sessions = page.eval("window.sessions").await;
    assert_eq!(sessions[1], serde_json::json!({"session": id, "reattached": true}), "{sessions}");
    assert_eq!(page.eval("window.opens").await, Value::from(2));
    assert_eq!(page.eval("window.replies").await, serde_json::json!([8]), "no second auth");
    drop(taker);
    // Live again on the re-attached stream.
    p.publish("room.live.browser", b"live again").await;
    page.wait_text("#log", SHOW, |t| t.contains("1000 live again")).await;
    assert!(page.exceptions().is_empty(), "uncaught exceptions: {:?}", page.exceptions());
}
