#!/usr/bin/env bash
# Started by `make run`: nats-server with nats-conf/dev.conf, then goim-history, goim-authsvc,
# goim-edge and the example chatbot with their dev configs (history/goim-history.dev.toml,
# authsvc/goim-authsvc.dev.toml, edge/goim-edge.dev.toml, examples/chatbot/goim-chatbot.dev.toml).
# History first: it provisions the streams the edge asks about at start.
# Stays in the foreground; Ctrl-C (or `make stop` from elsewhere) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=${NATS_SERVER_BIN:-nats-server}
EDGE_BIN=target/release/goim-edge
AUTHSVC_BIN=target/release/goim-authsvc
HISTORY_BIN=target/release/goim-history
CHATBOT_BIN=target/release/goim-chatbot
HISTORY_CONFIG=${HISTORY_CONFIG:-history/goim-history.dev.toml}
EDGE_CONFIG=${EDGE_CONFIG:-edge/goim-edge.dev.toml}
AUTHSVC_CONFIG=${AUTHSVC_CONFIG:-authsvc/goim-authsvc.dev.toml}
CHATBOT_CONFIG=${CHATBOT_CONFIG:-examples/chatbot/goim-chatbot.dev.toml}
source scripts/lib.sh

start_nats nats-server nats-conf/dev.conf
await_line "$LOGS/nats-server.log" "Server is ready" nats-server
start goim-history "goim-history ready" "$HISTORY_BIN" --config "$HISTORY_CONFIG"
start goim-authsvc "goim-authsvc ready" "$AUTHSVC_BIN" --config "$AUTHSVC_CONFIG"
start goim-edge "goim-edge ready" "$EDGE_BIN" --config "$EDGE_CONFIG"
# The example chatbot (examples/chatbot): answers op-4 messages into their room, so the demo page's
# "Send" shows a reply.
start goim-chatbot "goim-chatbot ready" "$CHATBOT_BIN" --config "$CHATBOT_CONFIG"

cat <<MSG

  goim-nats is running (development credentials: see README, "Credentials").
    $(cat "$LOGS/goim-history.out")
    $(cat "$LOGS/goim-authsvc.out")
    $(cat "$LOGS/goim-edge.out")
    $(cat "$LOGS/goim-chatbot.out")
    Browser demo page      -> http://127.0.0.1:3111/demo/   (dev only; try room live://1000, then Send /time)
    goim TCP clients       -> 127.0.0.1:3101
    goim WebSocket clients -> ws://127.0.0.1:3102/sub
    SSE / long-poll        -> http://127.0.0.1:3104/sse, /poll   (edge metrics: http://127.0.0.1:3104/metrics, /healthz)
    authsvc HTTP           -> http://127.0.0.1:3111   (API key: dev-api-key)
    NATS                   -> nats://127.0.0.1:4222   (monitoring http://127.0.0.1:8222, nats.ws ws://127.0.0.1:8080)

  1. Mint a token:
     curl -s -H 'Authorization: Bearer dev-api-key' -d '{"mid":123,"rooms":["live://1000"],"accepts":[1000,1001,1002]}' http://127.0.0.1:3111/auth/token
  2. Connect a goim client with it:
     python3 scripts/goim_client.py --mid 123 --room live://1000 --token <token>
  3. Push (as the backend role):
     nats --user backend --password dev-backend pub -H 'Goim-Op:1000' room.live.1000 '{"test":1}'
     (without the nats CLI: python3 scripts/nats_pub.py --user backend --password dev-backend -H Goim-Op:1000 room.live.1000 '{"test":1}')
  4. Or receive natively with the same token: nats --token <token> sub user.123
  5. Or open the demo page above: connect, watch step 3's pushes arrive, send a message (the chatbot
     answers into the room), see the online count and the room's history.

  Logs: $LOGS/   Stop: Ctrl-C here, or 'make stop'.

MSG

# Exit (and stop the others) as soon as any process ends.
wait -n "${pids[@]}"
