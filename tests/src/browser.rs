//! Headless Chromium driven over the Chrome DevTools Protocol (CDP), for the browser demo test.
//!
//! [`Chromium::start`] runs Debian's `chromium` (`$CHROMIUM_BIN`, else `/usr/bin/chromium`; `make test`
//! installs it when missing) headless with a fresh profile in a temp dir, on a DevTools port it picks
//! itself (`--remote-debugging-port=0`, read back from its "DevTools listening on ws://…" line). A
//! new page target is attached over that browser socket (flat session) and driven ([`Page`]):
//! navigate, evaluate JavaScript, type with
//! `Input.insertText`, click with real mouse events at the element's centre, and poll what the DOM
//! shows until a deadline. Chromium runs in its own process group, killed as a whole on drop.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process::{Proc, Stream};

/// How long Chromium may take to print its DevTools line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Console messages and exceptions kept for failure reports.
const CONSOLE_LINES: usize = 200;

/// The Chromium binary: `$CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    let bin = std::env::var_os("CHROMIUM_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.is_file(),
        "Chromium not found at {}: `make test` installs Debian's chromium (apt-get install -y chromium), \
         or set CHROMIUM_BIN",
        bin.display()
    );
    bin
}

/// A running headless Chromium; killed (with every process it started) on drop.
pub struct Chromium {
    proc: Proc,
    pgid: i32,
    /// The browser's DevTools WebSocket (`ws://127.0.0.1:<port>/devtools/browser/<id>`).
    pub ws_url: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    pub async fn start() -> Chromium {
        let profile = tempfile::Builder::new().prefix("goim-chromium-").tempdir().expect("tempdir");
        let mut cmd = Command::new(chromium_bin());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        // Its own process group: renderer, GPU and utility processes are killed with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut proc = Proc::spawn("chromium", cmd).expect("spawn chromium");
        let pgid = proc.pid().expect("chromium pid") as i32;
        let deadline = Instant::now() + START_TIMEOUT;
        let ws_url = loop {
            match tokio::time::timeout_at(deadline, proc.lines.recv()).await {
                Ok(Some(l)) if l.stream == Stream::Stderr && l.text.contains("DevTools listening on ws://") => {
                    let url = l.text.split("DevTools listening on ").nth(1).unwrap_or("").trim().to_string();
                    assert!(url.starts_with("ws://127.0.0.1:"), "unexpected DevTools address {url:?}");
                    break url;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    kill_group(pgid);
                    panic!("chromium printed no DevTools line within {START_TIMEOUT:?}:\n{}", proc.log_tail(60));
                }
            }
        };
        Chromium { proc, pgid, ws_url, _profile: profile }
    }

    /// A new page (tab) on about:blank, attached over the browser's DevTools socket (flat session).
    pub async fn page(&self) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url.as_str()).await.expect("connect to the DevTools socket");
        let mut page = Page { ws, session: None, next_id: 0, console: VecDeque::new() };
        let target = page.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = page.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        page.session = Some(attached["sessionId"].as_str().expect("sessionId").to_string());
        page.call("Runtime.enable", json!({})).await;
        page.call("Page.enable", json!({})).await;
        page
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on the process group of a child this harness started (pgid = its pid).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(self.pgid);
        self.proc.kill();
    }
}

/// One page target over CDP.
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The flat session of the page target (None: browser-level commands).
    session: Option<String>,
    next_id: u64,
    /// The page's console messages and uncaught exceptions, newest last.
    pub console: VecDeque<String>,
}

impl Page {
    /// Send a CDP command and wait for its answer (events meanwhile are kept in `console`); panics
    /// on a protocol error or a timeout.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("CDP {method}: {e}\nconsole:\n{}", self.console_text()),
        }
    }

    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let msg = msg.to_string();
        self.ws.send(Message::text(msg)).await.map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
                .ok_or("DevTools socket closed")?
                .map_err(|e| format!("DevTools socket: {e}"))?;
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad CDP JSON ({e}): {text}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("error {err}"));
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        let line = match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = v["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["value"].as_str().map(str::to_string).unwrap_or_else(|| a["description"].to_string()))
                    .collect();
                format!("console.{}: {}", v["params"]["type"].as_str().unwrap_or("?"), args.join(" "))
            }
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                format!("EXCEPTION: {} {}", d["text"], d["exception"]["description"])
            }
            _ => return,
        };
        if self.console.len() >= CONSOLE_LINES {
            self.console.pop_front();
        }
        self.console.push_back(line);
    }

    pub fn console_text(&self) -> String {
        self.console.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Uncaught exceptions seen so far.
    pub fn exceptions(&self) -> Vec<String> {
        self.console.iter().filter(|l| l.starts_with("EXCEPTION")).cloned().collect()
    }

    /// Evaluate `expression` in the page (promises awaited) and return its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("{expression}: threw {ex}\nconsole:\n{}", self.console_text());
        }
        r["result"]["value"].clone()
    }

    /// Navigate and wait until the document has loaded.
    pub async fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
        self.wait_for("document loaded", Duration::from_secs(15), "document.readyState", |v| v == "complete").await;
    }

    /// The text the element shows (`innerText`), or "" when there is no such element.
    pub async fn text(&mut self, selector: &str) -> String {
        let js = format!("(() => {{ const e = document.querySelector({}); return e ? e.innerText : ''; }})()", js_str(selector));
        self.eval(&js).await.as_str().unwrap_or("").to_string()
    }

    /// Poll `expression` every 50 ms until `ok(value)` or `within` has passed; panics with the last
    /// value, what the page shows and its console.
    pub async fn wait_for(&mut self, what: &str, within: Duration, expression: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expression).await;
            if ok(&v) {
                return v;
            }
            if Instant::now() >= deadline {
                let shown = self.eval("document.body ? document.body.innerText : ''").await;
                panic!(
                    "{what}: not reached within {within:?}; last value {v}\n----- the page shows -----\n{}\n----- console -----\n{}",
                    shown.as_str().unwrap_or(""),
                    self.console_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the element's text satisfies `ok`; returns it.
    pub async fn wait_text(&mut self, selector: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let js = format!("(() => {{ const e = document.querySelector({}); return e ? e.innerText : ''; }})()", js_str(selector));
        let what = format!("text of {selector}");
        let v = self.wait_for(&what, within, &js, |v| ok(v.as_str().unwrap_or(""))).await;
        v.as_str().unwrap_or("").to_string()
    }

    /// Click the element as a user would: real mouse press and release at the centre of its box
    /// (so a disabled or covered element does not react). Panics when it is missing or has no box.
    pub async fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, r.width * r.height]; }})()",
            js_str(selector)
        );
        let v = self.eval(&js).await;
        let (x, y, area) = (v[0].as_f64(), v[1].as_f64(), v[2].as_f64().unwrap_or(0.0));
        let (Some(x), Some(y)) = (x, y) else { panic!("click {selector}: no such element") };
        assert!(area > 0.0, "click {selector}: the element has no visible box");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call("Input.dispatchMouseEvent", json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}))
                .await;
        }
    }

    /// Focus the element (a click on it) and type `text` into it.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        let focused = self.eval(&format!("document.activeElement === document.querySelector({})", js_str(selector))).await;
        assert_eq!(focused, Value::Bool(true), "{selector} did not take the focus (disabled?)");
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap_or("")).expect("screenshot base64")
    }
}

/// A JavaScript string literal.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}
