//! Bounded fuzz smoke of the edge's input handling, on stable, in `make test`: the properties of the
//! cargo-fuzz targets in `fuzz/` (`packet_stream`, `packet_frame`, `ws_message`, `ws_frames`, `auth_body`), checked
//! over a few thousand proptest cases each, plus a replay of every committed corpus file.
//!
//! The properties live in `fuzz/src/edge_props.rs`, included here, so the smoke and the long fuzz check
//! the same thing. `GOIM_WRITE_CORPUS=1 cargo test -p goim-edge --test fuzz_smoke` (re)writes the seed
//! corpus in `fuzz/corpus/<target>/`; see fuzz/README.md.

#[path = "../../fuzz/src/edge_props.rs"]
mod edge_props;

use std::path::PathBuf;

use bytes::Bytes;
use edge_props::*;
use goim_edge::protocol::{op, raw, Packet, HEADER_LEN, MAX_BODY_LEN};
use proptest::prelude::*;

/// A fuzz target: its name (the corpus folder) and its property.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 5] = [
    ("packet_stream", packet_stream),
    ("packet_frame", packet_frame),
    ("ws_message", ws_message),
    ("ws_frames", ws_frames),
    ("auth_body", auth_body),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every seed is committed (or, with GOIM_WRITE_CORPUS=1, written), byte for byte.
#[test]
fn seed_corpus_is_committed() {
    let write = std::env::var_os("GOIM_WRITE_CORPUS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(name);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (GOIM_WRITE_CORPUS=1 regenerates the seeds)",
                path.display()
            )
        });
        assert_eq!(
            on_disk,
            bytes,
            "{} is stale (GOIM_WRITE_CORPUS=1 regenerates it)",
            path.display()
        );
    }
}

/// Every committed corpus file (seeds, inputs kept from fuzz runs, crash regressions) passes its target.
#[test]
fn corpus_replays() {
    for (target, check) in TARGETS {
        let dir = corpus_dir(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| check(&bytes));
            assert!(r.is_ok(), "{target}: corpus file {} fails", path.display());
            n += 1;
        }
        assert!(n > 0, "{target}: empty corpus");
    }
}

// --- Strategies: mostly well-formed inputs with targeted damage, which random bytes seldom reach.

fn raw_packet(pack_len: i32, header_len: i16, ver: i16, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.extend_from_slice(&pack_len.to_be_bytes());
    v.extend_from_slice(&header_len.to_be_bytes());
    v.extend_from_slice(&ver.to_be_bytes());
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn any_op() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => prop::sample::select(vec![
            op::HEARTBEAT, op::SEND_MSG, op::AUTH, op::RAW, op::CHANGE_ROOM, op::SUB, op::UNSUB, op::HISTORY, 1000,
        ]),
        1 => any::<i32>(),
    ]
}

/// A packet's bytes: usually well-formed, sometimes with a wrong packLen or headerLen.
fn wire_packet(max_body: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        any_op(),
        any::<i16>(),
        any::<i32>(),
        prop::collection::vec(any::<u8>(), 0..=max_body),
        prop_oneof![
            8 => Just(None),
            1 => prop::sample::select(vec![-1, 0, 3, 15, 16, 17, 4112, 4113, i32::MAX, i32::MIN]).prop_map(Some),
            1 => any::<i32>().prop_map(Some),
        ],
        prop_oneof![9 => Just(16i16), 1 => any::<i16>()],
    )
        .prop_map(|(op, ver, seq, body, pack_len, header_len)| {
            let pack_len = pack_len.unwrap_or((HEADER_LEN + body.len()) as i32);
            raw_packet(pack_len, header_len, ver, op, seq, &body)
        })
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}://[0-9]{1,6}",
        ".{0,40}",
        "[\\PC]{0,300}",
    ]
}

fn json_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        json_string().prop_map(|s| format!("{s:?}")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> =
                    v.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
    .boxed()
}

/// Auth bodies: goim's fields with right or wrong types, unknown fields, resume objects, and damage.
fn auth_json_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        any::<i64>().prop_map(|v| format!("\"mid\":{v}")),
        json_string().prop_map(|s| format!("\"key\":{s:?}")),
        json_string().prop_map(|s| format!("\"room_id\":{s:?}")),
        json_string().prop_map(|s| format!("\"platform\":{s:?}")),
        prop::collection::vec(any::<i32>(), 0..40).prop_map(|v| format!(
            "\"accepts\":[{}]",
            v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
        )),
        json_string().prop_map(|s| format!("\"token\":{s:?}")),
        (
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>()
        )
            .prop_map(|(r, u, b)| {
                let f = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
                format!(
                    "\"resume\":{{\"room\":{},\"user\":{},\"broadcast\":{}}}",
                    f(r),
                    f(u),
                    f(b)
                )
            }),
        (
            prop::sample::select(vec![
                "mid", "key", "room_id", "platform", "accepts", "token", "resume", "extra"
            ]),
            json_value()
        )
            .prop_map(|(k, v)| format!("{k:?}:{v}")),
    ];
    (
        prop::collection::vec(field, 0..8),
        prop_oneof![8 => Just(None), 1 => any::<(usize, u8)>().prop_map(Some)],
    )
        .prop_map(|(fields, damage)| {
            let mut body = format!("{{{}}}", fields.join(",")).into_bytes();
            if let Some((at, b)) = damage {
                let at = at % body.len();
                body[at] = b;
            }
            body
        })
}

fn ops_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<i32>(), 1..20).prop_map(|v| v
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()),
        "[0-9,+\\- ]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn limits() -> impl Strategy<Value = [u8; 3]> {
    prop_oneof![Just([255u8, 255, 255]), any::<[u8; 3]>()]
}

/// A client message whose packet carries a body fit for its op.
fn ws_client_message() -> impl Strategy<Value = WsMessage> {
    let body = prop_oneof![
        auth_json_body().prop_map(|b| (op::AUTH, b)),
        json_string().prop_map(|s| (op::CHANGE_ROOM, s.into_bytes())),
        ops_body().prop_map(|b| (op::SUB, b)),
        ops_body().prop_map(|b| (op::UNSUB, b)),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..5).prop_map(|inner| {
            let enc: Vec<Bytes> = inner
                .iter()
                .map(|b| goim_edge::protocol::encode_push(1000, b))
                .collect();
            (op::RAW, raw::wrap(enc.iter())[HEADER_LEN..].to_vec())
        }),
        (any::<i32>(), prop::collection::vec(any::<u8>(), 0..64)),
    ];
    (
        body,
        any::<i32>(),
        any::<bool>(),
        prop_oneof![9 => Just(Vec::new()), 1 => wire_packet(32)],
    )
        .prop_map(|((op, body), seq, text, trailing)| {
            let body = &body[..body.len().min(MAX_BODY_LEN)];
            let mut payload = Packet::new(1, op, seq, Bytes::copy_from_slice(body))
                .encode()
                .to_vec();
            payload.extend_from_slice(&trailing);
            WsMessage { text, payload }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn stream_of_packets(
        packets in prop::collection::vec(wire_packet(300), 0..12),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
        chunks in prop::collection::vec(1usize..=300, 0..6),
    ) {
        let mut stream: Vec<u8> = packets.concat();
        stream.extend_from_slice(&garbage);
        check_stream(&stream, &chunks);
    }

    #[test]
    fn stream_of_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        packet_stream(&data);
    }

    #[test]
    fn frame(packet in wire_packet(MAX_BODY_LEN + 8), cut in any::<prop::sample::Index>(), trailing in prop::collection::vec(any::<u8>(), 0..20)) {
        let mut msg = packet.clone();
        msg.extend_from_slice(&trailing);
        packet_frame(&msg);
        // Truncated anywhere.
        packet_frame(&packet[..cut.index(packet.len() + 1)]);
    }

    #[test]
    fn raw_bodies(inner in prop::collection::vec(wire_packet(64), 0..6), data in prop::collection::vec(any::<u8>(), 0..200)) {
        check_raw(&inner.concat());
        check_raw(&data);
    }

    #[test]
    fn websocket_messages(msgs in prop::collection::vec(ws_client_message(), 0..8)) {
        ws_message(&ws_input(&msgs));
    }

    #[test]
    fn websocket_frames(
        msgs in prop::collection::vec((prop::sample::select(vec![0x1u8, 0x2, 0x8, 0x9, 0xA]), ws_client_message(), any::<[u8; 4]>(), any::<bool>()), 0..6),
        chunks in prop::collection::vec(0u8..=255, 0..6),
        max in prop_oneof![Just(255u8), any::<u8>()],
        damage in prop_oneof![8 => Just(None), 1 => any::<(prop::sample::Index, u8)>().prop_map(Some)],
    ) {
        // Client frames carrying goim packets (text ones only when UTF-8), control frames, and a final
        // fragment flag cleared now and then; sometimes one byte damaged.
        let mut stream = Vec::new();
        for (opcode, m, mask, fin) in msgs {
            let payload: &[u8] = if opcode & 0x8 != 0 { &m.payload[..m.payload.len().min(125)] } else { &m.payload };
            let mut f = client_ws_frame(opcode, payload, mask);
            if !fin && opcode & 0x8 == 0 {
                f[0] &= 0x7f;
            }
            stream.extend(f);
        }
        if let Some((at, b)) = damage {
            if !stream.is_empty() {
                let i = at.index(stream.len());
                stream[i] = b;
            }
        }
        let mut input = vec![max, chunks.len() as u8];
        input.extend(&chunks);
        input.extend(stream);
        ws_frames(&input);
    }

    #[test]
    fn websocket_frame_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        ws_frames(&data);
    }

    #[test]
    fn auth_bodies(body in auth_json_body(), l in limits()) {
        check_auth_body(&body, &limits_of(l[0], l[1], l[2]));
    }

    #[test]
    fn rooms_and_ops(room in json_string(), bytes in prop::collection::vec(any::<u8>(), 0..64), ops in ops_body(), l in limits()) {
        let limits = limits_of(l[0], l[1], l[2]);
        check_room_body(room.as_bytes(), &limits);
        check_room_body(&bytes, &limits);
        check_ops(&ops);
    }

    #[test]
    fn ops_lists_round_trip(ops in prop::collection::vec(any::<i32>(), 1..50)) {
        let text = ops.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        prop_assert_eq!(goim_edge::session::auth::parse_ops(text.as_bytes()), Some(ops));
    }
}
