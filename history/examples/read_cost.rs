//! What a history page costs, and a brute-force check that pages are right.
//!
//! ```text
//! cargo run --release -p goim-history --example read_cost -- nats://127.0.0.1:4222 [file|memory] [total]
//! ```
//!
//! Creates the stream `HISTORY_BENCH` over `bench.>` (deleted first if present; never touches the goim
//! streams), stores `total` (300,000) messages of 100 bytes over 5,000 background subjects plus a
//! sparse subject (every 5,000th message), a medium one (every 300th) and a dense one (every 30th),
//! then for each of those: the newest page of 50, a catch-up read of 50, a page of 50 from the middle, paging back through
//! the whole subject (checked against the expected sequences), and for comparison the naive read of
//! the same newest page forward from the subject's first message.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use goim_history::store::Reader;

const STREAM: &str = "HISTORY_BENCH";

fn subject_of(i: u64) -> String {
    if i % 5000 == 2500 {
        "bench.sparse".into()
    } else if i % 300 == 17 {
        "bench.medium".into()
    } else if i % 30 == 7 {
        "bench.dense".into()
    } else {
        format!("bench.s{}", i % 5000)
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let storage = match std::env::args().nth(2).as_deref() {
        Some("memory") => stream::StorageType::Memory,
        _ => stream::StorageType::File,
    };
    let total: u64 = std::env::args().nth(3).and_then(|t| t.parse().ok()).unwrap_or(300_000);
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.>".into()],
        allow_direct: true,
        storage,
        max_messages_per_subject: 1_000_000,
        ..Default::default()
    })
    .await
    .expect("create stream");
    let body = bytes::Bytes::from(vec![b'x'; 100]);
    let t = Instant::now();
    for i in 0..total {
        client.publish(subject_of(i), body.clone()).await.expect("publish");
        if i % 10_000 == 0 {
            client.flush().await.expect("flush");
        }
    }
    client.flush().await.expect("flush");
    loop {
        let mut s = js.get_stream(STREAM).await.expect("stream");
        if s.info().await.expect("info").state.messages >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stored {total} messages ({storage:?}) in {:?}", t.elapsed());
    let reader = Reader::new(client.clone(), Duration::from_secs(30), 1000);
    let gets = || reader.requests.load(std::sync::atomic::Ordering::Relaxed);
    for subject in ["bench.sparse", "bench.medium", "bench.dense"] {
        // Stream sequence i+1 holds message i (one publisher, a fresh stream).
        let expected: Vec<u64> = (0..total).filter(|i| subject_of(*i) == subject).map(|i| i + 1).collect();
        println!("--- {subject}: {} messages, one per {} stream sequences", expected.len(), total / expected.len() as u64);
        let (g0, t) = (gets(), Instant::now());
        let newest = reader.page(STREAM, subject, None, 50, 4 << 20).await.expect("page");
        println!("newest page of 50 (cold)     {:>10.2?}  {} direct gets", t.elapsed(), gets() - g0);
        let t = Instant::now();
        reader.page(STREAM, subject, None, 50, 4 << 20).await.expect("page");
        println!("newest page of 50 (again)    {:>10.2?}", t.elapsed());
        let t = Instant::now();
        reader.page(STREAM, subject, None, 5, 4 << 20).await.expect("page");
        println!("newest page of 5             {:>10.2?}", t.elapsed());
        let want: Vec<u64> = expected[expected.len().saturating_sub(50)..].to_vec();
        assert_eq!(newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), want, "newest page");
        assert_eq!(newest.first_seq, expected[0]);

        let from = expected[expected.len().saturating_sub(101)];
        let (g0, t) = (gets(), Instant::now());
        let p = reader.page_after(STREAM, subject, from, 50, 4 << 20).await.expect("page");
        println!("catch-up: 50 after the 101st newest {:>10.2?}  {} direct gets", t.elapsed(), gets() - g0);
        let at = expected.iter().position(|s| *s == from).unwrap() + 1;
        assert_eq!(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), expected[at..(at + 50).min(expected.len())].to_vec());

        let mid = expected[expected.len() / 2];
        let (g0, t) = (gets(), Instant::now());
        let page = reader.page(STREAM, subject, Some(mid), 50, 4 << 20).await.expect("page");
        println!("page of 50 before the middle {:>10.2?}  {} direct gets", t.elapsed(), gets() - g0);
        let end = expected.iter().position(|s| *s == mid).unwrap();
        assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), expected[end.saturating_sub(50)..end].to_vec());

        let (g0, t) = (gets(), Instant::now());
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let p = reader.page(STREAM, subject, before, 50, 4 << 20).await.expect("page");
            pages += 1;
            let mut seqs: Vec<u64> = p.messages.iter().map(|m| m.seq).collect();
            seqs.extend(seen);
            seen = seqs;
            if !p.more {
                break;
            }
            before = Some(p.messages[0].seq);
            assert!(pages < 10_000, "paging does not end");
        }
        assert_eq!(seen, expected, "paging back through everything");
        println!(
            "all {pages} pages, newest first  {:>10.2?}  {} direct gets ({:.2?} per page)",
            t.elapsed(),
            gets() - g0,
            t.elapsed() / pages
        );

        // The naive way: forward from the subject's first message until the newest 50 are reached.
        let t = Instant::now();
        let mut seq = expected[0];
        let mut n = 0;
        loop {
            let inbox = client.new_inbox();
            let mut sub = client.subscribe(inbox.clone()).await.expect("sub");
            let req = serde_json::json!({"seq": seq, "next_by_subj": subject, "batch": 1000});
            client.publish_with_reply(format!("$JS.API.DIRECT.GET.{STREAM}"), inbox, req.to_string().into()).await.expect("pub");
            let mut last = 0;
            let mut done = false;
            while let Some(m) = futures_util::StreamExt::next(&mut sub).await {
                if m.status.is_some() {
                    done = m.headers.as_ref().and_then(|h| h.get("Nats-Num-Pending")).map(|v| v.as_str() == "0").unwrap_or(true);
                    break;
                }
                n += 1;
                last = m.headers.as_ref().and_then(|h| h.get("Nats-Sequence")).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
            }
            if done || last == 0 {
                break;
            }
            seq = last + 1;
        }
        println!("naive: forward from the first {:>10.2?}  ({n} messages read to keep 50)", t.elapsed());
    }
    let _ = js.delete_stream(STREAM).await;
}
