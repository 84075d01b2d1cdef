//! goim's operation numbers (api/protocol/operation.go). Ops 0–17 are goim's own and keep their exact
//! meaning; pushed business messages use any other number chosen by the pusher (1000+ by convention).

pub const HANDSHAKE: i32 = 0;
pub const HANDSHAKE_REPLY: i32 = 1;
pub const HEARTBEAT: i32 = 2;
pub const HEARTBEAT_REPLY: i32 = 3;
pub const SEND_MSG: i32 = 4;
pub const SEND_MSG_REPLY: i32 = 5;
pub const DISCONNECT_REPLY: i32 = 6;
pub const AUTH: i32 = 7;
pub const AUTH_REPLY: i32 = 8;
pub const RAW: i32 = 9;
pub const PROTO_READY: i32 = 10;
pub const PROTO_FINISH: i32 = 11;
pub const CHANGE_ROOM: i32 = 12;
pub const CHANGE_ROOM_REPLY: i32 = 13;
pub const SUB: i32 = 14;
pub const SUB_REPLY: i32 = 15;
pub const UNSUB: i32 = 16;
pub const UNSUB_REPLY: i32 = 17;

// goim-nats ops beyond goim's 0–17 (history). goim's own ops keep their exact meaning.
/// C→S: read history; body JSON `{"target": "room"|"user"|"broadcast", "before": seq, "limit": n}`.
pub const HISTORY: i32 = 18;
/// S→C: the history read's answer (JSON, goim-history's `history.get` format); seq echoed.
pub const HISTORY_REPLY: i32 = 19;
/// S→C: the outcome of a resume requested on the auth packet, sent after the replayed messages and
/// before live ones; body JSON per class, e.g. `{"room":{"ok":true,"replayed":12}}` or
/// `{"user":{"ok":false,"reason":"retention"}}` (recovery failed).
pub const RESUME_REPLY: i32 = 20;

/// The `ver` field goim writes on server pushes.
pub const PUSH_VER: i16 = 1;
