//! Reading one subject's history out of its stream with JetStream direct gets
//! (`$JS.API.DIRECT.GET.<stream>`, nats-server ≥ 2.11 for batches and `multi_last`).
//!
//! A page is "the last `limit` messages of subject S with sequence < before". JetStream has no
//! per-subject index by rank, and reading forward through a stream costs time proportional to the
//! sequence span scanned (all subjects share one sequence), so the read never starts at the
//! subject's first message unless the page reaches back that far:
//!
//! 1. three cheap probes, concurrently: the subject's first message with the count of its messages
//!    (`{"seq":0,"next_by_subj":S,"batch":1}` → `Nats-Num-Pending`), its last message
//!    (`last_by_subj`), and the newest one below `before` (`{"multi_last":[S],"up_to_seq":before-1}`);
//! 2. from the subject's average density (messages per stream sequence between its first and last)
//!    a window [lo, hi] expected to hold about 1.25 × limit of its messages, read forward in batches
//!    (`{"seq":lo,"next_by_subj":S,"batch":n}`), keeping the newest `limit`;
//! 3. when the window held fewer, the next older window (twice as wide each time) is read and its
//!    newest messages are put in front; when it held far more (a burst), the read skips ahead.
//!
//! The cost is thus proportional to the span that holds the page, not to the stream or the subject's
//! whole history (measured figures: subjects.md §9 and `examples/read_cost.rs`).
//!
//! A catch-up read (`after`) is one forward read from `after + 1`, which is what direct gets are
//! good at.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use crate::query::{MessageDoc, PageDoc};

/// JSON overhead of one message in a page besides its base64 body (seq, time, op, quotes).
pub const MESSAGE_OVERHEAD: usize = 96;
/// Most messages asked for in one batch request.
const MAX_BATCH: usize = 1024;
/// Most windows one page read may take (windows double, so this is never the limit in practice).
const MAX_WINDOWS: usize = 48;

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("JetStream did not answer: {0}")]
    Unavailable(String),
    #[error("message {0} is larger than one page may be")]
    TooLarge(u64),
}

/// One stored message as read.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub time: String,
    /// `None` when its `Goim-Op` header is not a decimal int32 (edges never delivered it).
    pub op: Option<i32>,
    pub payload: Bytes,
}

impl Stored {
    /// Bytes it adds to a JSON page.
    pub fn cost(&self) -> usize {
        self.payload.len().div_ceil(3) * 4 + MESSAGE_OVERHEAD
    }

    pub fn doc(&self) -> MessageDoc {
        MessageDoc {
            seq: self.seq,
            time: self.time.clone(),
            op: self.op.unwrap_or_default(),
            body: base64::engine::general_purpose::STANDARD.encode(&self.payload),
        }
    }
}

/// What a batch direct get returned.
#[derive(Debug, Default)]
struct Batch {
    msgs: Vec<Stored>,
    /// From the end-of-batch status: messages of the subject after the last one returned.
    pending: Option<u64>,
}

fn header<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h?.get(name).map(|v| v.as_str())
}

/// Reads pages of one subject's history.
#[derive(Debug, Clone)]
pub struct Reader {
    client: Client,
    timeout: Duration,
    default_op: i32,
    /// Direct get requests made (for tests and the cost figures).
    pub requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A page before it becomes JSON.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub messages: Vec<Stored>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub more: bool,
}

impl Page {
    pub fn doc(&self, subject: &str) -> PageDoc {
        PageDoc {
            subject: subject.to_string(),
            messages: self.messages.iter().map(Stored::doc).collect(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            more: self.more,
        }
    }
}

/// The newest messages of one window, oldest first, bounded by count and bytes.
struct Ring {
    msgs: VecDeque<Stored>,
    bytes: usize,
    max_len: usize,
    max_bytes: usize,
    /// Lowest sequence such that every message of the subject in [covered_from, hi] is held.
    covered_from: u64,
    /// The byte budget ran out: nothing older than `covered_from` fits into this page.
    bytes_full: bool,
    /// A message that alone did not fit into the remaining budget.
    blocked: Option<u64>,
}

impl Ring {
    fn new(max_len: usize, max_bytes: usize, from: u64) -> Ring {
        Ring { msgs: VecDeque::new(), bytes: 0, max_len, max_bytes, covered_from: from, bytes_full: false, blocked: None }
    }

    /// Add a message newer than every one held.
    fn push(&mut self, m: Stored) {
        if m.cost() > self.max_bytes {
            // Neither it nor anything older fits.
            self.msgs.clear();
            self.bytes = 0;
            self.covered_from = m.seq + 1;
            self.bytes_full = true;
            self.blocked = Some(m.seq);
            return;
        }
        self.bytes += m.cost();
        self.msgs.push_back(m);
        while self.msgs.len() > self.max_len || self.bytes > self.max_bytes {
            if self.bytes > self.max_bytes {
                self.bytes_full = true;
            }
            let old = self.msgs.pop_front().expect("non-empty");
            self.bytes -= old.cost();
            self.covered_from = old.seq + 1;
        }
    }

    /// Skip ahead to `seq`: drop what is held; the caller reads [seq, hi] next.
    fn restart_at(&mut self, seq: u64) {
        self.msgs.clear();
        self.bytes = 0;
        self.covered_from = seq;
        self.bytes_full = false;
        self.blocked = None;
    }
}

impl Reader {
    pub fn new(client: Client, timeout: Duration, default_op: i32) -> Reader {
        Reader { client, timeout, default_op, requests: Default::default() }
    }

    fn stored(&self, m: &Message) -> Option<Stored> {
        let h = m.headers.as_ref();
        let seq = header(h, "Nats-Sequence")?.trim().parse().ok()?;
        let time = header(h, "Nats-Time-Stamp").unwrap_or_default().to_string();
        let op = match header(h, goim_edge::subjects::OP_HEADER) {
            None => Some(self.default_op),
            Some(v) => goim_edge::subjects::parse_op(v),
        };
        Some(Stored { seq, time, op, payload: m.payload.clone() })
    }

    /// One direct get. Single requests answer one message (or a status); batch requests answer
    /// messages then an end-of-batch status (204). 404 = no such message.
    async fn direct(&self, stream: &str, req: serde_json::Value, batch: bool) -> Result<Batch, ReadError> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unavailable = |e: String| ReadError::Unavailable(format!("direct get on {stream}: {e}"));
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.map_err(|e| unavailable(e.to_string()))?;
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, req.to_string().into())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let mut out = Batch::default();
        loop {
            let m = match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(unavailable("subscription closed".into())),
                Err(_) => return Err(unavailable(format!("no answer within {:?}", self.timeout))),
            };
            match m.status.map(|c| c.as_u16()) {
                None | Some(200) => {
                    // `Nats-Num-Pending` on a data message counts what follows it.
                    if let Some(s) = self.stored(&m) {
                        out.pending = header(m.headers.as_ref(), "Nats-Num-Pending").and_then(|v| v.parse().ok());
                        out.msgs.push(s);
                    }
                    if !batch {
                        return Ok(out);
                    }
                }
                Some(204) => {
                    // End of batch.
                    if let Some(p) = header(m.headers.as_ref(), "Nats-Num-Pending").and_then(|v| v.parse().ok()) {
                        out.pending = Some(p);
                    }
                    return Ok(out);
                }
                Some(404) => {
                    if out.msgs.is_empty() {
                        out.pending = Some(0);
                    }
                    return Ok(out);
                }
                Some(503) => return Err(unavailable("no responders (stream missing or JetStream down)".into())),
                Some(code) => {
                    return Err(unavailable(format!("status {code} {}", m.description.clone().unwrap_or_default())));
                }
            }
        }
    }

    /// The last `limit` messages of `subject` below `before`, at most `max_bytes` of JSON.
    pub async fn page(&self, stream: &str, subject: &str, before: Option<u64>, limit: usize, max_bytes: usize) -> Result<Page, ReadError> {
        let first_req = self.direct(stream, json!({"seq": 0, "next_by_subj": subject, "batch": 1}), true);
        let last_req = self.direct(stream, json!({"last_by_subj": subject}), false);
        let (first, last, below) = match before {
            None => {
                let (f, l) = tokio::join!(first_req, last_req);
                (f?, l?, None)
            }
            Some(b) => {
                let below_req = self.direct(stream, json!({"multi_last": [subject], "up_to_seq": b - 1, "batch": 1}), true);
                let (f, l, u) = tokio::join!(first_req, last_req, below_req);
                (f?, l?, Some(u?))
            }
        };
        let Some(first_msg) = first.msgs.first() else {
            return Ok(Page::default());
        };
        let first_seq = first_msg.seq;
        let count = first.pending.unwrap_or(0) + 1;
        let last_seq = last.msgs.first().map_or(first_seq, |m| m.seq).max(first_seq);
        let mut page = Page { first_seq, last_seq, ..Page::default() };
        let hi = match (before, below) {
            (None, _) => last_seq,
            (Some(b), _) if b <= first_seq => return Ok(page),
            // (multi_last answers nothing for an up_to_seq past the stream's end.)
            (Some(b), _) if b > last_seq => last_seq,
            (Some(_), Some(below)) => match below.msgs.iter().map(|m| m.seq).max() {
                Some(s) => s,
                None => return Ok(page),
            },
            (Some(_), None) => unreachable!("before implies the below probe"),
        };
        // Messages of the subject per stream sequence, over its whole stored history.
        let density = (count as f64 / (last_seq - first_seq + 1) as f64).clamp(1e-9, 1.0);
        let mut out: VecDeque<Stored> = VecDeque::new();
        let mut bytes = 0usize;
        let mut blocked = None;
        let mut upper = hi;
        let mut widen = 1.0f64;
        let mut windows = 0;
        while out.len() < limit && upper >= first_seq && windows < MAX_WINDOWS {
            windows += 1;
            let need = limit - out.len();
            let span = ((need as f64 * 1.25 + 2.0) / density * widen).ceil().min(u64::MAX as f64 / 4.0) as u64;
            let lo = upper.saturating_sub(span.saturating_sub(1)).max(first_seq);
            let ring = self.window(stream, subject, lo, upper, need, max_bytes - bytes).await?;
            let got = ring.msgs.len();
            for m in ring.msgs.into_iter().rev() {
                bytes += m.cost();
                out.push_front(m);
            }
            blocked = blocked.or(ring.blocked);
            if ring.bytes_full || ring.covered_from <= first_seq {
                break;
            }
            upper = ring.covered_from - 1;
            if got < need {
                widen *= 2.0;
            }
        }
        if out.is_empty() {
            if let Some(seq) = blocked {
                return Err(ReadError::TooLarge(seq));
            }
        }
        page.more = out.front().is_some_and(|m| m.seq > first_seq);
        page.messages = out.into_iter().collect();
        Ok(page)
    }

    /// The oldest `limit` messages of `subject` after `after` (exclusive), at most `max_bytes` of
    /// JSON: catching up from a known sequence. One forward read from `after + 1`, whose cost is the
    /// span from there to the page's last message. `first_seq > after + 1` tells the caller that
    /// retention has dropped messages it never saw.
    pub async fn page_after(&self, stream: &str, subject: &str, after: u64, limit: usize, max_bytes: usize) -> Result<Page, ReadError> {
        let first_req = self.direct(stream, json!({"seq": 0, "next_by_subj": subject, "batch": 1}), true);
        let last_req = self.direct(stream, json!({"last_by_subj": subject}), false);
        let (first, last) = tokio::join!(first_req, last_req);
        let (first, last) = (first?, last?);
        let Some(first_msg) = first.msgs.first() else {
            return Ok(Page::default());
        };
        let first_seq = first_msg.seq;
        let last_seq = last.msgs.first().map_or(first_seq, |m| m.seq).max(first_seq);
        let mut page = Page { first_seq, last_seq, ..Page::default() };
        let mut cursor = after.saturating_add(1).max(first_seq);
        let mut bytes = 0usize;
        let mut reads = 0;
        while page.messages.len() < limit && cursor <= last_seq && reads < MAX_WINDOWS {
            reads += 1;
            let need = limit - page.messages.len();
            let req = json!({"seq": cursor, "next_by_subj": subject, "batch": need.min(MAX_BATCH), "max_bytes": (max_bytes - bytes).max(1024)});
            let b = self.direct(stream, req, true).await?;
            let Some(batch_last) = b.msgs.last().map(|m| m.seq) else { break };
            for m in b.msgs {
                if m.op.is_none() {
                    continue;
                }
                if page.messages.len() == limit {
                    break;
                }
                if bytes + m.cost() > max_bytes {
                    if page.messages.is_empty() {
                        return Err(ReadError::TooLarge(m.seq));
                    }
                    page.more = true;
                    return Ok(page);
                }
                bytes += m.cost();
                page.messages.push(m);
            }
            if b.pending == Some(0) {
                break;
            }
            cursor = batch_last + 1;
        }
        page.more = page.messages.last().is_some_and(|m| m.seq < last_seq);
        Ok(page)
    }

    /// The newest `need` messages of `subject` in [lo, hi] (and within `max_bytes`).
    async fn window(&self, stream: &str, subject: &str, lo: u64, hi: u64, need: usize, max_bytes: usize) -> Result<Ring, ReadError> {
        let mut ring = Ring::new(need, max_bytes, lo);
        let mut start = lo;
        let mut cursor = lo;
        let mut read = 0usize;
        let batch = (need + need / 4 + 8).min(MAX_BATCH);
        loop {
            let req = json!({"seq": cursor, "next_by_subj": subject, "batch": batch, "max_bytes": max_bytes.max(1024)});
            let b = self.direct(stream, req, true).await?;
            let Some(last) = b.msgs.last().map(|m| m.seq) else { break };
            let mut past = false;
            for m in b.msgs {
                if m.seq > hi {
                    past = true;
                    break;
                }
                read += 1;
                // Pushes with an invalid Goim-Op were never delivered by the edges: not history.
                if m.op.is_some() {
                    ring.push(m);
                }
            }
            if past || last >= hi || b.pending == Some(0) {
                break;
            }
            cursor = last + 1;
            // A burst: far more than needed in this window. Jump to where the newest `need` should be.
            if read > 4 * need + 64 {
                let local = read as f64 / (cursor - start) as f64;
                let jump = hi.saturating_sub(((need as f64 * 1.25 + 2.0) / local).ceil() as u64);
                if jump > cursor {
                    tracing::debug!(subject, from = cursor, to = jump, "burst in the window: skipping ahead");
                    ring.restart_at(jump);
                    start = jump;
                    cursor = jump;
                    read = 0;
                }
            }
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, len: usize) -> Stored {
        Stored { seq, time: String::new(), op: Some(1000), payload: Bytes::from(vec![b'x'; len]) }
    }

    fn seqs(r: &Ring) -> Vec<u64> {
        r.msgs.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn ring_keeps_the_newest_by_count() {
        let mut r = Ring::new(3, 1 << 20, 10);
        for s in [10, 12, 15, 17, 20] {
            r.push(msg(s, 3));
        }
        assert_eq!(seqs(&r), [15, 17, 20]);
        // Everything of the subject from 13 on is held (12 was the last one dropped).
        assert_eq!((r.covered_from, r.bytes_full, r.blocked), (13, false, None));
    }

    #[test]
    fn ring_keeps_the_newest_by_bytes() {
        let one = msg(1, 300).cost();
        assert_eq!(one, 400 + MESSAGE_OVERHEAD);
        let mut r = Ring::new(10, 2 * one, 1);
        for s in 1..=4 {
            r.push(msg(s, 300));
        }
        assert_eq!(seqs(&r), [3, 4]);
        assert_eq!((r.covered_from, r.bytes_full), (3, true));
        // A message larger than the whole budget blocks everything older than it.
        let mut r = Ring::new(10, 2 * one, 1);
        r.push(msg(1, 30));
        r.push(msg(2, 3000));
        r.push(msg(3, 30));
        assert_eq!(seqs(&r), [3]);
        assert_eq!((r.covered_from, r.bytes_full, r.blocked), (3, true, Some(2)));
        r.restart_at(9);
        assert_eq!((seqs(&r).len(), r.covered_from, r.bytes_full, r.blocked), (0, 9, false, None));
    }

    #[test]
    fn documents_what_a_client_sees() {
        let s = Stored { seq: 7, time: "2026-01-01T00:00:00Z".into(), op: Some(1001), payload: Bytes::from_static(b"{\"a\":1}") };
        let d = serde_json::to_value(s.doc()).unwrap();
        assert_eq!(d, serde_json::json!({"seq": 7, "time": "2026-01-01T00:00:00Z", "op": 1001, "body": "eyJhIjoxfQ=="}));
    }
}
